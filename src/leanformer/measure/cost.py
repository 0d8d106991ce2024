"""What one model costs, in one record (``Cost``): accuracy, parameters, bytes on disk, FLOPs,
latency, throughput, precision, training cost and the machine. ``measure_costs`` fills one for
each of several models measured side by side. A column that cannot be measured for a model is
left empty and ``Cost.notes`` says why, instead of showing a wrong number. ``Cost.to_dict`` and
``Cost.from_dict`` write a record to JSON and read it back.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..evaluate import evaluate, mode_is_fixed
from ..machine import machine_info
from ..precision import resolve_precision
from .flops import count_flops
from .size import count_parameters, safetensors_bytes, size_on_disk
from .timing import (RunsAs, Spread, _device_of, _random_images, _runner, brief_timing,
                     time_side_by_side)


class LabelledTestSet(Protocol):
    """What ``measure_costs`` reads of its ``data``, a ``leanformer.data.CIFAR10`` (measure sits
    below leanformer.data and does not import it): the test images and their labels."""

    test_images: torch.Tensor
    test_labels: torch.Tensor


@dataclass
class Cost:
    """What one model costs. ``None`` in a column means "not measured"; ``notes`` says why."""

    name: str
    test_acc: float | None = None
    test_images: int | None = None
    parameters: int | None = None
    file_bytes: int | None = None
    file_format: str = ""
    flops: int | None = None  # forward, per image
    latency_ms: Spread | None = None  # batch 1
    throughput: Spread | None = None  # images per second at batch ``batch_size``
    batch_size: int = 256
    precision: str = "fp32"
    threads: int = 0
    machine: str = ""
    train_time_s: float | None = None
    train_epochs: float | None = None
    train_images_seen: int | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain numbers, strings and dicts, ready for ``json.dump``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Cost:
        """The record that ``to_dict`` wrote (after a trip through JSON, say)."""
        unknown = sorted(set(record) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"a Cost has no fields {unknown}")
        spreads = {key: Spread(**{**record[key], "samples": tuple(record[key].get("samples", ()))})
                   for key in ("latency_ms", "throughput") if record.get(key) is not None}
        return cls(**{**record, **spreads, "notes": dict(record.get("notes") or {})})


def training_cost(provenance: dict[str, Any] | None) -> tuple[float | None, float | None, int | None]:
    """(wall time in s, epochs, images seen) of training, from a checkpoint's provenance or the
    record ``fit`` attaches to a model; ``None`` for what the record does not hold. The
    wall time is the undisturbed one (``train_wall_time_undisturbed_s``) where the
    record holds it: the run without the minutes another job on the same cores took.
    It is a time on the machine the record names (``provenance["machine"]``)."""
    if not provenance:
        return None, None, None
    seconds = provenance.get("train_wall_time_undisturbed_s",
                             provenance.get("train_wall_time_s"))
    epochs = provenance.get("epochs")
    images = provenance.get("train_images")
    seen = provenance.get("train_images_seen")
    if seen is None and epochs is not None and images is not None:
        seen = int(epochs * images)
    return seconds, epochs, seen


def _quantized_parts(model: nn.Module) -> list[str]:
    """Names of modules whose weights are not plain float tensors (quantized kernels)."""
    names = []
    for name, m in model.named_modules():
        if "quantized" in type(m).__module__:
            names.append(name or type(m).__name__)
            continue
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and (type(w) not in (torch.Tensor, nn.Parameter)
                                            or not w.is_floating_point()):
            names.append(name)
    return names


def _file_size(model: nn.Module,
               shipped_file: str | os.PathLike | None) -> tuple[int, str, str | None]:
    if shipped_file is not None:
        path = Path(shipped_file)
        return path.stat().st_size, path.suffix.lstrip(".") or "file", None
    try:
        return safetensors_bytes(model), "safetensors", None
    except Exception as e:  # tensor subclasses (quantized weights) that safetensors cannot hold
        return size_on_disk(model), "torch.save", f"safetensors cannot hold these weights ({type(e).__name__})"


def _uncompiled(model: nn.Module) -> nn.Module:
    """The eager module behind a compiled one (``torch.compile``'s wrapper, or
    ``leanformer.quantize.CompiledForCPU``): counting FLOPs through the compiled module would
    make it compile again on its next call."""
    inner = getattr(model, "uncompiled", None) or getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def measure_costs(models: dict[str, nn.Module], data: LabelledTestSet | None = None, *,
                  files: dict[str, str | os.PathLike] | None = None,
                  precision: RunsAs | dict[str, RunsAs] = "fp32",
                  test_acc: dict[str, float] | None = None,
                  batch_size: int = 256, rounds: int = 5, latency_calls: int = 10,
                  throughput_calls: int = 2, warmup: int = 3, image_size: int = 32,
                  inputs: dict[str, Callable[[int], torch.Tensor]] | None = None) -> list[Cost]:
    """Measure every model of ``models`` (a dict name -> model) side by side. Returns a list of
    ``Cost``, in the order given.

    data:       a ``leanformer.data.CIFAR10``; its test images give each model's accuracy.
    files:      {name: path} of the file a lesson would ship for that model (a quantized model's
                own format, say). Otherwise the size of its weights as one .safetensors file,
                without metadata, so that a trained and an untrained model of one shape match.
    precision:  a ``leanformer.precision.Precision`` ("fp32"; "bf16" or "fp16"
                autocast; "auto", recorded as what it means on the model's device), or
                "int8" for a quantized model that runs as it is; one value for all
                models or a dict by name.
    test_acc:   {name: accuracy} already measured, to skip evaluating it again.
    inputs:     {name: function(batch_size) -> input batch} for a model that does not take
                CIFAR-10 images (a text model, say); its FLOPs are then per input of that kind.

    Timing (``time_side_by_side``): after ``warmup`` untimed calls each, ``rounds`` rounds; in
    each round every model in turn runs ``latency_calls`` single images and ``throughput_calls``
    batches of ``batch_size``. ``LEANFORMER_TIMING=brief`` (which ``make test`` sets: the lessons
    must run there, and nobody reads their timings) cuts that to one round of at most 3 single
    images and one batch; the table's note on the timing gives the counts either way.
    """
    if brief_timing():
        rounds, latency_calls, throughput_calls = 1, min(latency_calls, 3), 1

    files, test_acc, inputs = files or {}, test_acc or {}, inputs or {}
    prec: dict[str, RunsAs] = {}
    for name, model in models.items():
        p = precision.get(name, "fp32") if isinstance(precision, dict) else precision
        prec[name] = p if p == "int8" else resolve_precision(p, _device_of(model))
    machine = machine_info()
    costs, runs = {}, {}
    for name, model in models.items():
        if not mode_is_fixed(model):
            model.eval()
        cost = Cost(name, precision=prec[name], batch_size=batch_size, threads=torch.get_num_threads(),
                    machine=machine)
        quantized = _quantized_parts(model)
        # A quantized or compiled model records the parameters of the float model it was made
        # from: an int8 weight is still a parameter, though its packing hides it from counting.
        params = (getattr(model, "quantization", None) or {}).get("parameters") or count_parameters(model)
        if params == 0:
            cost.notes["parameters"] = "the weights are packed inside quantized modules"
        else:
            cost.parameters = params
        cost.file_bytes, cost.file_format, note = _file_size(model, files.get(name))
        if note:
            cost.notes["file"] = note
        if quantized:
            cost.notes["flops"] = ("not counted: torch.utils.flop_counter does not count quantized "
                                   f"kernels ({', '.join(quantized[:3])}{', ...' if len(quantized) > 3 else ''})")
        make: Callable[[int], torch.Tensor] = (
            inputs.get(name) or functools.partial(_random_images, model, image_size=image_size))
        if name in inputs:
            cost.notes["input"] = ("its own inputs (from `inputs`), not images: its FLOPs, latency "
                                   "and throughput are per input of that kind")
        if not quantized:
            try:
                with torch.no_grad():
                    cost.flops = count_flops(_uncompiled(model), make(1))[0]
            except Exception as e:
                cost.notes["flops"] = f"not counted: {type(e).__name__}: {e}"
        if name in test_acc:
            cost.test_acc = test_acc[name]
            cost.test_images = len(data.test_labels) if data is not None else None
        elif data is not None:
            p = prec[name]
            cost.test_acc = evaluate(model, data.test_images, data.test_labels,
                                     precision="fp32" if p == "int8" else p)[0]
            cost.test_images = len(data.test_labels)
        cost.train_time_s, cost.train_epochs, cost.train_images_seen = training_cost(
            getattr(model, "provenance", None))
        costs[name] = cost
        runs[name] = (_runner(model, prec[name], lambda: make(1)),
                      _runner(model, prec[name], lambda: make(batch_size)))

    timings = time_side_by_side(runs, batch_size, rounds, latency_calls, throughput_calls, warmup)
    for name, (latency, throughput) in timings.items():
        costs[name].latency_ms, costs[name].throughput = latency, throughput
    return list(costs.values())


def measure_cost(model: nn.Module, data: LabelledTestSet | None = None, name: str = "model",
                 **kwargs: Any) -> Cost:
    """``measure_costs`` for a single model."""
    return measure_costs({name: model}, data, **kwargs)[0]
