"""The cost ledger (lesson 08): every model the course ships, in each form it can be served in,
measured side by side in one run on one machine.

    record, predictions = measure_ledger(data)      # minutes: compiles, times, scores
    write_ledger(record, predictions)                # checkpoints/ledger.json (+ predictions)
    record, predictions = read_ledger()              # what a lesson in quick mode reads

A row is one model in one form (``FORMS``): float32 as trained, its weights cast to bf16, or
PT2E static int8 compiled for this CPU (lesson 05's judged path). Each row holds a ``Cost`` of
``leanformer.measure`` (accuracy on all the test images, bytes, FLOPs, batch-1 latency and
batch-256 throughput, every timing's samples kept so that ``ratio_interval`` can pair rounds),
the raw bytes of its tensors (like with like: no file structure, no compression), and the
training runs it needed (``lineage``: its own, the model it started from, its teachers, each
once). The predictions of every row on every test image go to a file beside the record, so
that any two rows can be compared image by image (``paired_comparison``) without a forward pass.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from .checkpoint import load_model
from .config import CHECKPOINTS
from .data import CIFAR10
from .evaluate import predict
from .files import atomic_write, sha256_file
from .machine import machine_info
from .measure import (Cost, count_flops, measure_costs, paired_comparison, ratio_interval,
                      safetensors_bytes, training_cost)
from .quantize import quantize_model, save_quantized, tensor_bytes_in_file
from .record import predicted_classes, test_set_sha256

if TYPE_CHECKING:
    import pandas as pd

Form = Literal["fp32", "bf16", "int8"]
FORMS: tuple[Form, ...] = ("fp32", "bf16", "int8")
FORM_NAMES: dict[Form, str] = {"fp32": "float32", "bf16": "bf16 weights",
                               "int8": "PT2E int8, compiled"}
INT8_PATH = "PT2E static int8"  # leanformer.quantize.PATHS: lesson 05's judged path
LEDGER = CHECKPOINTS / "ledger.json"
FORMAT = "leanformer-ledger-1"


@dataclass(frozen=True)
class Entry:
    """A model of the ledger: its name, its file (relative to ``checkpoints/``) and how it was
    made, in a few words."""

    name: str
    file: str
    made: str


ENTRIES: tuple[Entry, ...] = (
    Entry("reference", "reference.safetensors", "lesson 03: trained from scratch"),
    Entry("reference, pruned", "pruned/pruned-2h128u-taylor-kd.safetensors",
          "lesson 04: 2 heads and 128 MLP units a block, fine-tuned with the reference"),
    Entry("student", "distill/student-kd.safetensors",
          "lesson 06: half the reference's width, distilled from it"),
    Entry("student, 50 epochs", "distill/student-kd-cnn50.safetensors",
          "the student distilled from the ConvNet for 50 epochs instead of 20"),
    Entry("distilled ViT", "distill/vit-kd-scratch.safetensors",
          "lesson 06: the reference's size, distilled from the ConvNet"),
    Entry("distilled ViT, pruned 2h64u", "stacks/vit-kd-2h64u.safetensors",
          "the distilled ViT cut to 2 heads and 64 MLP units, fine-tuned with the ConvNet"),
    Entry("distilled ViT, pruned 1h128u", "stacks/vit-kd-1h128u.safetensors",
          "the distilled ViT cut to 1 head and 128 MLP units, fine-tuned with the ConvNet"),
    Entry("distilled ViT, pruned 1h64u", "stacks/vit-kd-1h64u.safetensors",
          "the distilled ViT cut to 1 head and 64 MLP units, fine-tuned with the ConvNet"),
    Entry("distilled ViT, pruned 1h128u, 3 blocks", "stacks/vit-kd-1h128u-3b.safetensors",
          "the distilled ViT cut to 3 of its 4 blocks, 1 head and 128 MLP units each, "
          "fine-tuned with the ConvNet"),
    Entry("distilled ViT, pruned 1h128u, 2 blocks", "stacks/vit-kd-1h128u-2b.safetensors",
          "the distilled ViT cut to 2 of its 4 blocks, 1 head and 128 MLP units each, "
          "fine-tuned with the ConvNet"),
    Entry("distilled ViT, pruned 1h128u, 3 blocks, 54 epochs",
          "stacks/vit-kd-1h128u-3b-54ep.safetensors",
          "the 3-block stack fine-tuned 36 epochs more with the ConvNet (54 in all)"),
)
BASELINE: tuple[str, Form] = ("reference", "fp32")  # the row every speed-up divides by, named before timing


def row_name(model: str, form: Form) -> str:
    return f"{model}, {FORM_NAMES[form]}"


def _record_file(path: str | os.PathLike, root: Path) -> dict[str, Any] | None:
    """The JSON record beside a model file named in a provenance (relative to the repository
    root, as the training commands write it), or None when this copy does not hold it."""
    p = Path(path)
    p = p if p.is_absolute() else root / p
    json_path = p.with_suffix(".json")
    return json.loads(json_path.read_text()) if json_path.is_file() else None


def lineage(provenance: dict[str, Any], root: Path = CHECKPOINTS.parent,
            path: str | None = None) -> list[dict[str, Any]]:
    """The training runs a model needed, each once: its own, then those of the model it started
    from (``init``, through a pruning record's ``pruned_from``) and of its teachers, recursively.
    Each run: its command, seconds (undisturbed where recorded, ``training_cost``), the machine
    it ran on, epochs and training images seen, and the files of the model it trained
    (``path``: the given one for the model itself) and of its teacher, relative to ``root``
    (``train_flops`` counts their FLOPs). A pruning step, which trains nothing, is followed to
    what it pruned but not listed."""
    runs: list[dict[str, Any]] = []
    seen: set[str] = set()

    def visit(prov: dict[str, Any] | None, key: str, path: str | None) -> None:
        if not prov or key in seen:
            return
        seen.add(key)
        seconds, epochs, images = training_cost(prov)
        teacher: dict[str, Any] = prov["teacher"] if isinstance(prov.get("teacher"), dict) else {}
        if seconds is not None:
            runs.append({"command": prov.get("command", ""), "seconds": seconds,
                         "machine": prov.get("machine", ""), "epochs": epochs,
                         "images_seen": images, "weights_sha256": prov.get("weights_sha256"),
                         "path": path, "teacher_path": teacher.get("path")})
        for part in ("init", "pruned_from", "teacher"):
            ref = prov.get(part)
            if not isinstance(ref, dict):
                continue
            parent = ref.get("provenance") or (_record_file(ref["path"], root)
                                               if ref.get("path") else None)
            visit(parent, ref.get("weights_sha256") or str(ref.get("path")), ref.get("path"))

    visit(provenance, provenance.get("weights_sha256") or "model", path)
    return runs


def train_flops(runs: list[dict[str, Any]], root: Path = CHECKPOINTS.parent) -> list[float | None]:
    """FLOPs of each run of a ``lineage``: per training image seen, three forward passes of the
    model it trained (the forward pass, and a backward pass that costs about two) and one of its
    teacher. None for a run whose model file this copy does not hold."""
    flops: dict[str, float | None] = {}

    def forward(path: str | None) -> float | None:
        if path is None:
            return 0.0
        if path not in flops:
            p = Path(path) if Path(path).is_absolute() else root / path
            flops[path] = (float(count_flops(load_model(p), torch.rand(1, 3, 32, 32))[0])
                           if p.is_file() else None)
        return flops[path]

    out: list[float | None] = []
    for run in runs:
        student, teacher = forward(run["path"] or None), forward(run.get("teacher_path"))
        ok = run["path"] and student is not None and teacher is not None and run["images_seen"]
        out.append(run["images_seen"] * (3 * student + teacher) if ok else None)  # type: ignore[operator]
    return out


def serving_form(model: nn.Module, form: Form,
                 calibration: torch.Tensor) -> tuple[nn.Module, float | None]:
    """``model`` as served in ``form``: as it is (float32), a copy with bf16 weights, or PT2E
    static int8 calibrated on ``calibration`` and compiled. Returns (model, compile seconds)."""
    if form == "fp32":
        return model, None
    if form == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16), None
    return quantize_model(model, INT8_PATH, calibration, compile=True)


def _tensor_bytes(model: nn.Module, form: Form, folder: Path) -> tuple[int, Path | None]:
    """Raw bytes of a served model's tensors, and for int8 the file it ships as."""
    if form != "int8":
        return safetensors_bytes(model), None
    path = save_quantized(getattr(model, "uncompiled", model), folder / "model.pt2")
    return tensor_bytes_in_file(path), path


def measure_ledger(data: CIFAR10, entries: Sequence[Entry] = ENTRIES,
                   forms: Sequence[Form] = FORMS, rounds: int = 10,
                   calibration_images: int = 512, seed: int = 0,
                   root: Path = CHECKPOINTS) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Measure every entry in every form side by side (``measure_costs``) on ``data``'s test
    images. Returns (the record, {row name: predicted class of every test image})."""
    missing = [str(root / e.file) for e in entries if not (root / e.file).is_file()]
    if missing:
        raise FileNotFoundError(f"the ledger's models are not all here: {', '.join(missing)} "
                                "missing (checkpoints/README.md gives the command for each)")
    start = time.perf_counter()
    calibration = data.train_sample(calibration_images, seed)[0].float() / 255
    models: dict[str, nn.Module] = {}
    rows: dict[str, dict[str, Any]] = {}
    predictions: dict[str, torch.Tensor] = {}
    files: dict[str, Path] = {}
    folder = Path(tempfile.mkdtemp(prefix="ledger-"))
    for entry in entries:
        source = load_model(root / entry.file)
        training = lineage(source.provenance or {}, root.parent,
                           str((root / entry.file).relative_to(root.parent)))
        for run, flops in zip(training, train_flops(training, root.parent)):
            run["flops"] = flops
        for form in forms:
            name = row_name(entry.name, form)
            served, compile_s = serving_form(source, form, calibration)
            if form == "fp32":
                classes = predicted_classes(source, data)
            else:
                classes = predict(served, data.test_images,
                                  precision="bf16" if form == "bf16" else "fp32").argmax(1)
            predictions[name] = classes.to(torch.uint8)
            tensor_bytes, shipped = _tensor_bytes(served, form, folder / name.replace(" ", "_"))
            if shipped is not None:
                files[name] = shipped
            models[name] = served
            rows[name] = {"model": entry.name, "form": form, "file": entry.file,
                          "made": entry.made, "weights_sha256": sha256_file(root / entry.file),
                          "tensor_bytes": tensor_bytes, "compile_s": compile_s,
                          "training": training}
    accuracy = {n: (p.long() == data.test_labels).float().mean().item()
                for n, p in predictions.items()}
    precision = {n: r["form"] for n, r in rows.items()}  # "int8" runs as it is
    costs = measure_costs(models, data, files=files, precision=precision,  # type: ignore[arg-type]
                          test_acc=accuracy, rounds=rounds)
    shutil.rmtree(folder, ignore_errors=True)  # the files were measured
    for cost in costs:
        rows[cost.name]["cost"] = cost.to_dict()
    record = {"format": FORMAT, "machine": machine_info(), "threads": torch.get_num_threads(),
              "rounds": rounds, "test_set_sha256": test_set_sha256(data),
              "test_images": len(data.test_labels), "calibration_images": calibration_images,
              "baseline": row_name(*BASELINE), "wall_time_s": time.perf_counter() - start,
              "rows": rows}
    return record, predictions


def write_ledger(record: dict[str, Any], predictions: dict[str, torch.Tensor],
                 path: str | os.PathLike = LEDGER) -> Path:
    """Write the record to ``path`` (JSON) and the predictions beside it
    (``NAME-predictions.safetensors``), each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    pred_path = path.with_name(path.stem + "-predictions.safetensors")
    atomic_write(pred_path, lambda tmp: save_file(
        {n: p.contiguous() for n, p in predictions.items()}, str(tmp),
        metadata={"test_set_sha256": record["test_set_sha256"]}))
    text = json.dumps(record, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def read_ledger(path: str | os.PathLike = LEDGER) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The record and predictions that ``write_ledger`` wrote, checked to belong together."""
    from safetensors.torch import load_file

    path = Path(path)
    pred_path = path.with_name(path.stem + "-predictions.safetensors")
    for p in (path, pred_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: write the ledger with `python -m leanformer "
                                    "ledger --data path/to/cifar10`")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT or not isinstance(record.get("rows"), dict):
        raise ValueError(f"{path} is not a ledger of this course (format {FORMAT!r} expected, "
                         f"got {record.get('format')!r}): write it again with `python -m "
                         "leanformer ledger`")
    predictions = load_file(str(pred_path))
    if set(predictions) != set(record["rows"]):
        raise ValueError(f"{pred_path} does not hold the predictions of {path}'s rows: write "
                         "the two again together with `python -m leanformer ledger`")
    return record, {n: p.long() for n, p in predictions.items()}


def ledger_frame(record: dict[str, Any], predictions: dict[str, torch.Tensor],
                 labels: torch.Tensor) -> pd.DataFrame:
    """One row per model and form, the baseline first: accuracy and its paired difference from
    the baseline on the same test images (points, 95% interval, McNemar's p), raw tensor
    megabytes, forward GFLOPs per image (the float model's: int8 does the same arithmetic),
    batch-256 throughput and its speed-up over the baseline with the interval of the ratio
    (rounds paired), batch-1 latency p50 and p90 over every timed call, and the training the
    model needed in minutes and PFLOPs, its own run and with what it started from and its
    teachers (``lineage``), and the processors those runs ran on."""
    import pandas as pd

    rows = record["rows"]
    base = record["baseline"]
    base_right = predictions[base] == labels
    costs = {name: Cost.from_dict(row["cost"]) for name, row in rows.items()}
    base_speed = costs[base].throughput
    gflops = {r["model"]: r["cost"]["flops"] / 1e9 for r in rows.values()
              if r["form"] == "fp32" and r["cost"]["flops"]}
    table = {}
    for name, row in rows.items():
        cost = costs[name]
        assert cost.throughput is not None and cost.latency_ms is not None and base_speed
        right = predictions[name] == labels
        paired = paired_comparison(right, base_right)
        speed = ratio_interval(cost.throughput, base_speed)
        runs = row["training"]
        flops = [r.get("flops") for r in runs]
        table[name] = {
            "model": row["model"], "form": row["form"], "accuracy (%)": 100 * right.float().mean().item(),
            "vs reference (points)": 100 * paired.diff, "low": 100 * paired.low,
            "high": 100 * paired.high, "p": paired.p_value,
            "MB": row["tensor_bytes"] / 1e6, "GFLOPs": gflops.get(row["model"]),
            "images/s": cost.throughput.median, "speed-up": speed[0],
            "speed-up low": speed[1], "speed-up high": speed[2],
            "p50 (ms)": cost.latency_ms.percentile(50),
            "p90 (ms)": cost.latency_ms.percentile(90),
            "training (min)": runs[0]["seconds"] / 60 if runs else 0.0,
            "with start and teachers (min)": sum(r["seconds"] for r in runs) / 60,
            "training PFLOPs": (sum(f for f in flops if f is not None) / 1e15
                                if None not in flops else None),
            "trained on": ", ".join(dict.fromkeys(r["machine"].split(" (")[0].split(",")[0]
                                                  for r in runs))
        }
    return pd.DataFrame.from_dict(table, orient="index")


def not_worse(frame: pd.DataFrame, level: float = 0.05) -> pd.Series:
    """Rows not worse than the baseline by the paired test: more accurate, or a difference
    McNemar's test cannot tell from chance at ``level``."""
    return (frame["vs reference (points)"] >= 0) | (frame["p"] >= level)


def fastest_forms(frame: pd.DataFrame) -> pd.DataFrame:
    """Each model in its fastest form (the highest median speed-up), indexed by model, with
    its row's name in a ``row`` column."""
    best = frame.loc[frame.groupby("model", sort=False)["speed-up"].idxmax()]
    return best.rename_axis("row").reset_index().set_index("model")


def plot_pareto(frame: pd.DataFrame, cost: str = "$ per million", ax: Any = None,
                baseline: str | None = None) -> Any:
    """Accuracy against ``cost`` (a column of ``frame``, drawn on a log scale), one marker per
    form, the Pareto front (``money.pareto_front``) dashed and labelled, the baseline's
    accuracy dotted. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    from .money import pareto_front

    if ax is None:
        _, ax = plt.subplots(figsize=(7.2, 4.6))
    markers = {"fp32": "o", "bf16": "s", "int8": "^"}
    for form, group in frame.groupby("form", sort=False):
        ax.scatter(group[cost], group["accuracy (%)"], marker=markers.get(str(form), "o"),
                   label=FORM_NAMES.get(form, str(form)), alpha=0.8)
    front = frame.iloc[pareto_front(list(frame[cost]), list(frame["accuracy (%)"]))]
    ax.plot(front[cost], front["accuracy (%)"], "k--", lw=1, label="Pareto front")
    for k, (_, r) in enumerate(front.iterrows()):  # labels above and below, in turn
        ax.annotate(r["model"], (r[cost], r["accuracy (%)"]), fontsize=7,
                    xytext=(4, 4 if k % 2 else -10), textcoords="offset points")
    if baseline is not None:
        ax.axhline(frame.loc[baseline, "accuracy (%)"], color="grey", ls=":", lw=1)
    ax.set(xscale="log", ylabel="test accuracy (%)")
    dollars = FuncFormatter(lambda v, _: f"${v:.3g}")
    some = FuncFormatter(lambda v, _: f"${v:.3g}" if f"{v:.1e}"[0] in "235" else "")
    ax.xaxis.set_major_formatter(dollars)
    ax.xaxis.set_minor_formatter(some)  # 2, 3 and 5 times a power of ten
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.legend(fontsize=8, loc="lower right")
    return ax
