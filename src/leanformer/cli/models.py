"""The commands that read a model file and write a smaller one or a measurement of it:
``prune`` (remove heads and MLP units), ``sparsity-sweep`` (zero weights at several sparsities
and fine-tune each), ``quantize`` (an int8 file), ``evaluate`` (test accuracy), ``costs``
(models side by side), ``ledger`` (every shipped model in every served form, lesson 08) and
``serve`` (a model behind HTTP, lesson 09)."""
import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, load_model
from ..evaluate import accuracies_with_tta, evaluate
from ..export import load_runner
from ..files import atomic_write, sha256_file
from ..ledger import measure_ledger, write_ledger
from ..machine import machine_info
from ..measure import measure_costs, show_costs
from ..model import VisionTransformer
from ..prune import (GRADIENT_SCORES, drop_blocks_by_loss, highest_within, prune_by_score,
                     prune_tokenizer_by_score, sparsity_sweep)
from ..quantize import PATHS, intx_form, load_quantized, quantize_model, save_quantized
from ..recipes import get_recipe
from ..record import record_predictions, recorded_accuracy, test_set_sha256
from ..serve import create_app
from .shared import UsageError, _command, _data, _data_sha256, _save_with_json


def cmd_prune(args: argparse.Namespace) -> None:
    model = load_model(args.model)
    if not isinstance(model, VisionTransformer):
        raise UsageError(f"{args.model} holds a {type(model).__name__}; prune removes the heads, "
                         "MLP units and blocks of a VisionTransformer")
    source_sha = model.weights_sha256
    images = labels = None
    if args.score in GRADIENT_SCORES or args.blocks is not None or args.tokenizer_channels is not None:
        data = _data(args.data)  # a sample of training images ranks blocks, heads and units
        n = min(args.images, len(data.train_labels))
        images, labels = data.train_sample(n, args.seed)
    extra: dict[str, Any] = {}  # what went besides heads and units
    try:
        if args.blocks is not None:
            assert images is not None and labels is not None  # drawn above for --blocks
            model, extra = drop_blocks_by_loss(model, args.blocks, images, labels)
        if args.tokenizer_channels is not None:
            assert images is not None and labels is not None  # and for --tokenizer-channels
            model, channels = prune_tokenizer_by_score(model, args.tokenizer_channels, images, labels)
            extra.update(channels)
        pruned, record = prune_by_score(model, args.heads, args.mlp_units, args.score,
                                        images, labels, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: --{str(e).replace('units:', 'mlp-units:')}") from None
    provenance = {
        "command": _command(args),
        "pruned_from": {"path": str(args.model), "weights_sha256": source_sha},
        "data_sha256": _data_sha256(args.data),
        **extra,
        **record,
    }
    sha = _save_with_json(pruned, args.out, provenance)
    if "kept_blocks" in extra:
        print(f"kept blocks {extra['kept_blocks']} of {len(extra['block_losses'])} "
              f"(loss without each: {extra['block_losses']})")
    if "kept_tokenizer_channels" in extra:
        print(f"kept {len(extra['kept_tokenizer_channels'])} of "
              f"{len(extra['tokenizer_channel_scores'])} channels of the tokenizer's first convolution")
    print(f"kept heads {record['kept_heads']} and {len(record['kept_units'][0])} MLP units per block ({args.score} score); "
          f"wrote {args.out} (sha256 {sha[:12]}…)")


def cmd_serve(args: argparse.Namespace) -> None:
    import torch
    import uvicorn

    if args.max_batch < 1 or args.max_queue < 1 or args.max_wait_ms < 0:
        raise UsageError("--max-batch and --max-queue must be at least 1, --max-wait-ms at least 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.model)
    # A .safetensors checkpoint is rebuilt by leanformer; an exported file (.onnx, .pt2 from
    # leanformer.export) is served as it is.
    model = load_model(path) if path.suffix == ".safetensors" else load_runner(path)
    app = create_app(model, path.stem, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    print(f"serving {args.model} on http://{args.host}:{args.port} (POST /predict, GET /health); "
          f"batches of up to {args.max_batch}, waiting up to {args.max_wait_ms:g} ms; "
          f"{torch.get_num_threads()} threads", flush=True)
    # On SIGTERM or Ctrl-C uvicorn stops accepting, lets the accepted requests finish, then
    # the app's shutdown answers whatever is still queued.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=30)


def cmd_sparsity_sweep(args: argparse.Namespace) -> None:
    bad = [level for level in args.levels if not 0 <= level < 1]
    if bad:
        raise UsageError(f"--levels are shares of weights to zero, each in [0, 1); got {bad}")
    model = load_model(args.model)
    recipe = get_recipe(args.recipe, **({"epochs": args.epochs} if args.epochs else {}))
    data = _data(args.data)
    t0 = time.perf_counter()
    rows, models = sparsity_sweep(model, data, args.levels, recipe, progress=True)
    command = _command(args)
    if args.save_dir:
        for row in rows:
            path = Path(args.save_dir) / f"sparse-{100 * row['sparsity']:g}.safetensors"
            _save_with_json(models[row["sparsity"]], path, {
                **getattr(models[row["sparsity"]], "provenance"),  # the fine-tune's record: history, machine
                "command": command, "pruned_from": {"path": str(args.model),
                                                     "weights_sha256": model.weights_sha256},
                "sparsity": row["sparsity"], "scope": "global", "recipe": recipe.to_dict(),
                "data_source": data.source, "test_images": len(data.test_labels),
                "test_set_sha256": test_set_sha256(data), "test_acc": row["fine-tuned"], "train_wall_time_s": row["fine-tune (s)"],
                "epochs": recipe.epochs, "train_images_seen": recipe.epochs * len(data.train_labels)})
    # The highest sparsity within a point of the checkpoint's recorded accuracy on these test images.
    ref_acc = recorded_accuracy(model, data)  # None unless measured on these very test images
    tuned = {r["sparsity"]: r["fine-tuned"] for r in rows}
    highest = highest_within(tuned, ref_acc) if ref_acc is not None else None
    result = {
        "command": command,
        "checkpoint_test_acc": ref_acc,
        "highest_sparsity_within_1_point": highest,
        "checkpoint": {"path": str(args.model), "weights_sha256": model.weights_sha256},
        "data_source": data.source, "data_sha256": _data_sha256(args.data),
        "train_images": len(data.train_labels), "test_images": len(data.test_labels),
        "recipe": recipe.to_dict(), "machine": machine_info(),
        "wall_time_s": time.perf_counter() - t0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }
    atomic_write(Path(args.out), lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.out}")


def _load(path):
    """A model file of either kind the course writes: a float model (.safetensors, load_model) or
    a quantized one (.pt, .pt2, optionally gzipped; load_quantized). Neither runs code from it."""
    path = Path(path)
    if path.suffix == ".safetensors" or not path.exists():
        return load_model(path)  # which names a missing file and says how to make one
    if {".pt", ".pt2"} & set(path.suffixes):
        return load_quantized(path)[0]
    raise CheckpointError(f"{path}: not a model file the course writes (expected .safetensors, or "
                          ".pt / .pt2 from `python -m leanformer quantize`, optionally .gz)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    model = _load(args.model)
    quantized = getattr(model, "quantization", None)
    form = None
    if args.intx_bits is not None:
        if quantized:
            raise UsageError("--intx-bits builds a form of a float model (.safetensors); "
                             f"{args.model} is quantized already")
        try:
            form = intx_form(args.intx_bits, args.intx_group)
        except ValueError as e:
            raise UsageError(f"--intx-bits/--intx-group: {e}") from None
    data = _data(args.data, verbose=not args.json)  # --json: standard output holds the JSON alone
    scored = model if form is None else form[1](model)
    acc, loss = evaluate(scored, data.test_images, data.test_labels)
    result = {"model": str(args.model), "file_sha256": sha256_file(args.model),
              # a float model's weights digest; a quantized file is named by the file's own
              "weights_sha256": None if quantized else model.weights_sha256,
              "quantization": quantized, "form": form[0] if form else None,
              "data_source": data.source, "test_images": len(data.test_labels), "test_acc": acc,
              "test_loss": loss}
    if args.tta:
        result.update(accuracies_with_tta(scored, data, modes=("flip", "flip-shift")))
    if args.record_predictions:
        if result["weights_sha256"] is None:
            raise UsageError("--record-predictions records a float model (.safetensors), or "
                             "its form with --intx-bits; a quantized file is measured where "
                             "it is used")
        record_predictions(model, data, name=Path(args.model).stem, path=args.record_predictions,
                           form=form)
        result["predictions_recorded_in"] = args.record_predictions
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"test accuracy {acc:.2%} on {len(data.test_labels):,} images from {data.source}")
        if args.tta:
            print(f"with flip test-time augmentation: {result['test_acc_flip_tta']:.2%}; "
                  f"with flips and 1-pixel shifts: {result['test_acc_flip_shift_tta']:.2%}")


def _path_slug(name):
    return name.lower().replace(" ", "-").replace("_", "-")


def _quantize_paths():
    """The command line's names for leanformer.quantize's int8 paths: {slug: the path's name}."""
    return {_path_slug(name): name for name in PATHS}


def cmd_quantize(args: argparse.Namespace) -> None:
    path = _quantize_paths()[args.path]
    out = Path(args.out)
    wanted = ".pt2" if path.startswith("PT2E") else ".pt"
    if wanted not in out.suffixes or out.suffixes[-1] not in (wanted, ".gz"):
        raise UsageError(f"--out {out}: the {args.path} path writes a {wanted} file "
                         f"(name it {out.stem.split('.')[0]}{wanted}, or {wanted}.gz to gzip it)")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; give --force to replace it, or another --out")
    model = load_model(args.model)
    calibration = None
    if path.startswith("PT2E"):  # static int8 reads the ranges of its inputs off training images
        data = _data(args.data)
        n = min(args.calibration_images, len(data.train_labels))
        calibration = data.train_sample(n, args.seed)[0]
    quantized, _ = quantize_model(model, path, calibration)
    save_quantized(quantized, out, source=model)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {path} of {args.model}"
          + (f", calibrated on {len(calibration):,} training images" if calibration is not None else ""))


def cmd_costs(args: argparse.Namespace) -> None:
    names = [Path(m).name for m in args.models]
    if len(set(names)) < len(names):
        names = [str(m) for m in args.models]
    models = {name: _load(m) for name, m in zip(names, args.models)}
    data = _data(args.data)
    costs = measure_costs(models, data, files=dict(zip(names, args.models)), rounds=args.rounds)
    show_costs(costs)
    if args.out:
        text = json.dumps({"command": _command(args), "costs": [c.to_dict() for c in costs]}, indent=1)
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.out}")


def cmd_ledger(args: argparse.Namespace) -> None:
    data = _data(args.data)
    record, predictions = measure_ledger(data, rounds=args.rounds)
    record["command"] = _command(args)
    out = write_ledger(record, predictions, args.out)
    for name, row in record["rows"].items():
        cost = row["cost"]
        print(f"{name:>44}: {cost['test_acc']:.2%}, "
              f"{cost['throughput']['median']:,.0f} images/s at batch {cost['batch_size']}")
    print(f"wrote {out} and its predictions on {record['machine']}")


def cmd_serving(args: argparse.Namespace) -> None:
    from ..deploy import measure_serving

    data = _data(args.data)
    record = measure_serving(data, rounds=args.rounds, duration_ms=args.duration_ms)
    record["command"] = _command(args)
    for fmt, row in record["formats"].items():
        print(f"{fmt:>18}: {row['accuracy']:.2%}, agrees on {row['agreement']:.2%}, "
              f"{row['images_per_s']['median']:,.0f} images/s, p90 {row['latency_ms']['p90']:.2f} ms")
    for tests in record["load"]:
        for where in ("in_process", "http"):
            for sweep in tests[where]:
                print(f"{tests['name']}, {where}, batch {sweep['max_batch']}, wait "
                      f"{sweep['max_wait_ms']:g} ms: {sweep['best_qps']:,.0f} requests/s "
                      f"within p99 {sweep['bound_ms']:g} ms")
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))
    print(f"wrote {args.out} on {record['machine']} in {record['wall_time_s']:.0f} s")
