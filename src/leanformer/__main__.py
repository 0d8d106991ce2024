"""Command line: ``python -m leanformer train|evaluate|make-subset|...``. Run with -h for help."""
import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _data(path, verbose=True):
    from .data import load_cifar10

    return load_cifar10(path, verbose=verbose)


def _command(args):
    """The command line as typed, for a file's provenance (``main(argv)`` records ``argv``)."""
    return "python -m leanformer " + " ".join(args.argv)


def _data_sha256(path):
    """sha256 of the data file a command read, for its provenance (None for a folder or none)."""
    from .files import sha256_file

    return sha256_file(path) if path and Path(path).is_file() else None


class UsageError(Exception):
    """A command line that asks for something that cannot be: reported in one line on stderr
    with exit status 2, as argparse reports a flag it does not know."""


# The distillation setting that lesson 06 found best for its students (soft targets, most of the
# weight on the teacher, softened at T = 4): what --teacher means without --alpha or
# --temperature. Hard targets (DeiT) split the weight evenly, as DeiT and lesson 06 do, and take
# no temperature.
DISTILL_DEFAULTS = {"soft": {"alpha": 0.9, "temperature": 4.0},
                    "hard": {"alpha": 0.5, "temperature": 1.0}}
# torchao's intx quantizers take int1 to int8; a symmetric 1-bit integer holds only -1 and 0 and
# so no positive weight, which makes 2 bits the fewest that mean anything.
QAT_BITS = range(2, 9)


def _distillation_setting(args):
    """(kind, alpha, temperature) for ``train``: the flags given, lesson 06's setting for the
    rest. Raises UsageError for flags that do not go together."""
    given = {k: v for k, v in (("--kind", args.kind), ("--alpha", args.alpha),
                                ("--temperature", args.temperature)) if v is not None}
    if not args.teacher:
        if given:
            raise UsageError(f"{', '.join(given)} set the distillation loss; give --teacher too")
        return None
    kind = args.kind or "soft"
    alpha = DISTILL_DEFAULTS[kind]["alpha"] if args.alpha is None else args.alpha
    temperature = DISTILL_DEFAULTS[kind]["temperature"] if args.temperature is None else args.temperature
    if kind == "hard" and temperature != 1.0:
        raise UsageError("--kind hard takes the teacher's top class; --temperature does not apply")
    if not 0.0 <= alpha <= 1.0 or temperature <= 0:
        raise UsageError(f"--alpha must lie in [0, 1] and --temperature be positive "
                         f"(got {alpha:g} and {temperature:g})")
    return kind, alpha, temperature


def _describe_setting(args, kind, alpha, temperature):
    """The distillation setting in words, saying which part came from the defaults."""
    words = f"{kind} targets, alpha {alpha:g}" + (f", temperature {temperature:g}" if kind == "soft" else "")
    unset = [flag for flag, value in (("--alpha", args.alpha), ("--temperature", args.temperature))
             if value is None and not (flag == "--temperature" and kind == "hard")]
    return words + (f" ({' and '.join(unset)}: lesson 06's setting)" if unset else "")


def _refuse_to_overwrite(model_path, state_path, resume, force):
    """Stop before any work if this run would overwrite a finished model (its .safetensors or
    its .json) or another run's training state, unless the flags say to.

    --resume continues the run whose state is ``state_path``; it never replaces a finished model
    on its own, so that ``--out checkpoints`` cannot silently replace a shipped one. --force
    replaces (with --resume too: continue that run, then replace the model it finishes)."""
    if force:
        return
    for path in (model_path, model_path.with_suffix(".json")):
        if path.exists():
            how = (f"--force trains afresh and replaces it, --resume --force continues {state_path} "
                   "and replaces it at the end" if state_path.exists() else
                   "--force trains afresh and replaces it")
            sys.exit(f"error: {path} exists: a finished model, which this run would replace; "
                     f"{how}; or choose another --out or --name")
    if state_path.exists() and not resume:
        sys.exit(f"error: {state_path} exists: the state of another run in this folder; --resume "
                 "continues that run, --force starts afresh and replaces it; or choose another "
                 "--out or --name")


def cmd_train(args):
    from . import checkpoint
    from .evaluate import accuracies_with_tta, evaluate
    from .recipes import get_recipe
    from .train import fit

    # Every check of the flags comes before anything is loaded or trained.
    setting = _distillation_setting(args)
    if args.qat_bits is None and args.qat_group is not None:
        raise UsageError("--qat-group sets the groups of --qat-bits; give --qat-bits too")
    if args.qat_bits is not None and not args.init:
        raise UsageError("--qat-bits fine-tunes a trained model; give it with --init")
    if args.qat_group is not None and args.qat_group < 0:
        raise UsageError(f"--qat-group is a number of weights per group, or 0 for one scale per "
                         f"row (got {args.qat_group})")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    recipe = get_recipe(args.recipe, **({"epochs": args.epochs} if args.epochs else {}))
    name = args.name or recipe.name
    model_path, state_path = out / f"{name}.safetensors", out / f"{name}.last.pt"
    _refuse_to_overwrite(model_path, state_path, args.resume, args.force)
    if args.resume and not state_path.exists():
        print(f"no training state at {state_path} to resume: starting afresh")

    start = checkpoint.load_model(args.init) if args.init else None
    # fit() writes the new training record onto the model it trains: keep the starting one.
    init = ({"path": str(args.init), "weights_sha256": start.weights_sha256,
             "provenance": start.provenance} if start is not None else None)
    loss_fn, teacher = None, None
    if args.teacher:
        from .distill import DistillationLoss
        from .families import arch_of
        from .train import recipe_loss

        kind, alpha, temperature = setting
        teacher_model = checkpoint.load_model(args.teacher)
        loss_fn = DistillationLoss(teacher_model, alpha, temperature, recipe_loss(recipe), kind=kind)
        teacher = {"path": str(args.teacher), "weights_sha256": teacher_model.weights_sha256,
                   "arch": arch_of(teacher_model), **loss_fn.describe()}
        print(f"distilling from {args.teacher}: {_describe_setting(args, *setting)}")
    qat = None
    if args.qat_bits is not None:
        from torch import nn

        from .quantize import convert_qat, intx_quantize, prepare_qat

        group = _qat_group_default() if args.qat_group is None else args.qat_group
        uneven = [f"{n} ({m.in_features})" for n, m in start.named_modules()
                  if isinstance(m, nn.Linear) and group and m.in_features % group]
        if uneven:
            raise UsageError(f"--qat-group {group} must divide the inputs of every Linear layer; "
                             f"it does not divide {', '.join(uneven[:3])}")
        prepare_qat(start, args.qat_bits, group or None)
        qat = dict(start.qat)
    data = _data(args.data)
    model, history = fit(recipe, data, state_path=state_path, resume=args.resume, model=start,
                         loss_fn=loss_fn)
    if qat:  # save the float weights; the quantized model is rebuilt from them (intx_quantize)
        convert_qat(model)
        quantized = intx_quantize(model, qat["weight_bits"], qat["group_size"], qat["activations"])
        qat["test_acc_quantized"] = evaluate(quantized, data.test_images, data.test_labels)[0]
        print(f"quantized ({qat['weight_bits']}-bit weights): test accuracy {qat['test_acc_quantized']:.4f}")
    accuracies = accuracies_with_tta(model, data)
    provenance = {
        **model.provenance,
        "command": _command(args),
        "data_sha256": _data_sha256(args.data),
        "init": init,
        "teacher": teacher,
        "qat": qat,
        **accuracies,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    _save_with_json(model, model_path, provenance)
    print(f"test accuracy {accuracies['test_acc']:.4f} (flip TTA {accuracies['test_acc_flip_tta']:.4f}, "
          f"flip+shift TTA {accuracies['test_acc_flip_shift_tta']:.4f}); "
          f"wrote {model_path}")


def _qat_group_default():
    """The group size ``quantize.prepare_qat`` uses when given none, as --qat-group counts it
    (0: one scale per row): the command line and the library mean the same by default."""
    import inspect

    from .quantize import prepare_qat

    return inspect.signature(prepare_qat).parameters["group_size"].default or 0


def cmd_distill_sweep(args):
    from . import checkpoint
    from .distill import sweep, sweep_settings
    from .recipes import get_recipe

    teacher = checkpoint.load_model(args.teacher)
    settings = sweep_settings(args.temperatures, args.alphas, args.hard_alphas)
    about = {"command": _command(args),
             "teacher": {"path": str(args.teacher), "weights_sha256": teacher.weights_sha256}}
    sweep(teacher, get_recipe(args.recipe), _data(args.data), settings, out=args.out, about=about)
    print(f"wrote {args.out}")


def _save_with_json(model, path, provenance):
    """Save ``model`` with ``provenance`` to ``path`` and the same provenance, with the weights'
    sha256, to the .json beside it (readable without Python). Returns the sha256."""
    from . import checkpoint
    from .files import atomic_write

    path = Path(path)
    sha = checkpoint.save_model(model, path, provenance)
    atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(
        json.dumps({**provenance, "weights_sha256": sha}, indent=1) + "\n"))
    return sha


def cmd_prune(args):
    from . import checkpoint
    from .prune import prune_by_score

    model = checkpoint.load_model(args.model)
    data = _data(args.data) if args.score == "taylor" else None
    try:
        pruned, record = prune_by_score(model, args.heads, args.mlp_units, args.score, data,
                                        n_images=args.images, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: --{str(e).replace('units:', 'mlp-units:')}") from None
    provenance = {
        "command": _command(args),
        "pruned_from": {"path": str(args.model), "weights_sha256": model.weights_sha256},
        "data_sha256": _data_sha256(args.data),
        **record,
    }
    sha = _save_with_json(pruned, args.out, provenance)
    print(f"kept heads {record['kept_heads']} and {len(record['kept_units'][0])} MLP units per block ({args.score} score); "
          f"wrote {args.out} (sha256 {sha[:12]}…)")


def cmd_sparsity_sweep(args):
    from . import checkpoint
    from .files import atomic_write
    from .machine import machine_info
    from .prune import sparsity_sweep
    from .recipes import get_recipe

    bad = [level for level in args.levels if not 0 <= level < 1]
    if bad:
        raise UsageError(f"--levels are shares of weights to zero, each in [0, 1); got {bad}")
    model = checkpoint.load_model(args.model)
    recipe = get_recipe(args.recipe, **({"epochs": args.epochs} if args.epochs else {}))
    data = _data(args.data)
    t0 = time.perf_counter()
    rows, models = sparsity_sweep(model, data, args.levels, recipe, progress=True)
    command = _command(args)
    if args.save_dir:
        for row in rows:
            path = Path(args.save_dir) / f"sparse-{100 * row['sparsity']:g}.safetensors"
            _save_with_json(models[row["sparsity"]], path, {
                **models[row["sparsity"]].provenance,  # the fine-tune's record: history, machine
                "command": command, "pruned_from": {"path": str(args.model),
                                                     "weights_sha256": model.weights_sha256},
                "sparsity": row["sparsity"], "scope": "global", "recipe": recipe.to_dict(),
                "data_source": data.source, "test_images": len(data.test_labels),
                "test_acc": row["fine-tuned"], "train_wall_time_s": row["fine-tune (s)"],
                "epochs": recipe.epochs, "train_images_seen": recipe.epochs * len(data.train_labels)})
    # The highest sparsity within a point of the checkpoint's recorded accuracy on these test images.
    ref_acc = model.provenance.get("test_acc")
    if model.provenance.get("test_images") != len(data.test_labels):
        ref_acc = None
    within = [r["sparsity"] for r in rows if ref_acc is not None and r["fine-tuned"] >= ref_acc - 0.01]
    result = {
        "command": command,
        "checkpoint_test_acc": ref_acc,
        "highest_sparsity_within_1_point": max(within) if within else None,
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
    from .checkpoint import CheckpointError, load_model
    from .quantize import load_quantized

    path = Path(path)
    if path.suffix == ".safetensors" or not path.exists():
        return load_model(path)  # which names a missing file and says how to make one
    if {".pt", ".pt2"} & set(path.suffixes):
        return load_quantized(path)[0]
    raise CheckpointError(f"{path}: not a model file the course writes (expected .safetensors, or "
                          ".pt / .pt2 from `python -m leanformer quantize`, optionally .gz)")


def cmd_evaluate(args):
    from .data import sha256_file
    from .evaluate import accuracies_with_tta, evaluate

    model = _load(args.model)
    data = _data(args.data, verbose=not args.json)  # --json: standard output holds the JSON alone
    acc, loss = evaluate(model, data.test_images, data.test_labels)
    result = {"model": str(args.model), "file_sha256": sha256_file(args.model),
              "weights_sha256": getattr(model, "weights_sha256", None),
              "quantization": getattr(model, "quantization", None),
              "data_source": data.source, "test_images": len(data.test_labels), "test_acc": acc,
              "test_loss": loss}
    if args.tta:
        result.update(accuracies_with_tta(model, data, modes=("flip", "flip-shift")))
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
    from .quantize import PATHS

    return {_path_slug(name): name for name in PATHS}


def cmd_quantize(args):
    from .checkpoint import load_model
    from .quantize import quantize_model, save_quantized

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
        pick = torch.randperm(len(data.train_labels), generator=torch.Generator().manual_seed(args.seed))
        calibration = data.train_images[pick[:args.calibration_images]]
    quantized, _ = quantize_model(model, path, calibration)
    save_quantized(quantized, out, source=model)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): {path} of {args.model}"
          + (f", calibrated on {len(calibration):,} training images" if calibration is not None else ""))


def cmd_costs(args):
    from .measure import measure_costs, show_costs

    names = [Path(m).name for m in args.models]
    if len(set(names)) < len(names):
        names = [str(m) for m in args.models]
    models = {name: _load(m) for name, m in zip(names, args.models)}
    data = _data(args.data)
    costs = measure_costs(models, data, files=dict(zip(names, args.models)), rounds=args.rounds)
    show_costs(costs)
    if args.json:
        from .files import atomic_write

        text = json.dumps({"command": _command(args), "costs": [c.to_dict() for c in costs]}, indent=1)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.json}")


def cmd_make_subset(args):
    from .data import make_subset

    sha = make_subset(args.source, args.dest, per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.dest}  sha256 {sha}")


def cmd_stamp(args):
    from .lesson import stamp_notebooks

    changed = stamp_notebooks(".", check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'stamped'}: {path}")
    if args.check and changed:
        sys.exit("Colab badges or set-up cells differ from _config.yml; run `make stamp`.")


def cmd_execute(args):
    from .lesson import execute_notebook, stamp_notebooks
    from .machine import machine_info

    stamp_notebooks(".")
    machine = machine_info()
    for path in args.notebooks:
        t0 = time.perf_counter()
        execute_notebook(path, machine=machine)
        print(f"executed {path} in {time.perf_counter() - t0:.0f} s")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (exit status 2) rather than the usage text
    followed by it: the line says what is wrong, and -h says the rest."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _qat_bits(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in QAT_BITS:
        raise argparse.ArgumentTypeError(f"torchao's intx quantizers take {QAT_BITS.start} to "
                                         f"{QAT_BITS.stop - 1} bits, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: ``python -m leanformer -h`` prints what it knows."""
    from .prune import SCORES  # the choices a flag offers come from the package
    parser = _Parser(prog="python -m leanformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe; writes OUT/NAME.safetensors and NAME.json")
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", help="CIFAR-10 path (class folders, .tar.gz or cifar-10-batches-py)")
    p.add_argument("--out", default="runs", help="output directory (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue the run whose state is "
                   "OUT/NAME.last.pt (the same recipe, data, --init and --teacher)")
    p.add_argument("--force", action="store_true", help="replace OUT/NAME.safetensors, its .json "
                   "and OUT/NAME.last.pt if they exist; without it, train refuses to")
    p.add_argument("--epochs", type=_positive_int, help="override the recipe's number of epochs")
    p.add_argument("--init", help="start from this .safetensors model (a fine-tune) instead of scratch")
    p.add_argument("--name", help="file name for OUT/NAME.safetensors and .json (default: the recipe's)")
    p.add_argument("--teacher", help="distil from this .safetensors model (leanformer.distill)")
    p.add_argument("--kind", choices=("soft", "hard"), help="with --teacher: soft targets (Hinton, "
                   "the default) or the teacher's top class as a label (DeiT's hard distillation)")
    p.add_argument("--alpha", type=float, help="with --teacher: weight of the teacher's term "
                   "(default: lesson 06's, 0.9 for soft targets, 0.5 for hard ones)")
    p.add_argument("--temperature", type=float, help="with --teacher: the soft targets' temperature "
                   "(default: lesson 06's, 4)")
    p.add_argument("--qat-bits", type=_qat_bits, help="quantization-aware training: fake-quantize "
                   f"the Linear weights to this many bits, {QAT_BITS.start} to {QAT_BITS.stop - 1} "
                   "(and their inputs to int8) while fine-tuning --init (leanformer.quantize)")
    p.add_argument("--qat-group", type=int, help="with --qat-bits: weights in groups of this many "
                   f"along each row, 0 for one scale per row (default: prepare_qat's, "
                   f"{_qat_group_default()})")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill-sweep", help="train a student once per distillation setting, write a JSON table")
    p.add_argument("--teacher", required=True, help="the teacher's .safetensors file")
    p.add_argument("--recipe", default="student-sweep", help="the student's recipe (default student-sweep)")
    p.add_argument("--data", help="CIFAR-10 path (default: the first source that works, see leanformer.data)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1, 2, 4])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--hard-alphas", type=float, nargs="*", default=[0.5])
    p.add_argument("--out", required=True, help="the JSON file to write (resumes the settings it holds)")
    p.set_defaults(func=cmd_distill_sweep)

    p = sub.add_parser("sparsity-sweep", help="magnitude-prune to several sparsities, fine-tune each, write a JSON table")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data", help="CIFAR-10 path")
    p.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    p.add_argument("--recipe", default="finetune-brief", help="fine-tune recipe (default finetune-brief)")
    p.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--save-dir", help="also save each fine-tuned sparse model there (sparse-NN.safetensors)")
    p.set_defaults(func=cmd_sparsity_sweep)

    p = sub.add_parser("prune", help="remove attention heads and MLP units by importance; writes a smaller model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--heads", type=int, required=True, help="heads to keep in every block")
    p.add_argument("--mlp-units", type=int, required=True, help="MLP hidden units to keep in every block")
    p.add_argument("--score", default="taylor", choices=SCORES, help="importance score (leanformer.prune.SCORES)")
    p.add_argument("--data", help="CIFAR-10 path; the taylor score ranks on its training images")
    p.add_argument("--images", type=int, default=2048, help="training images for the taylor score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the pruned .safetensors file to write")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="test accuracy of a model file (.safetensors, or a quantized .pt/.pt2)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation: flips, "
                   "and flips with 1-pixel shifts (leanformer.evaluate.tta_logits)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("quantize", help="write an int8 file of a .safetensors model (leanformer.quantize)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--path", required=True, choices=sorted(_quantize_paths()),
                   help="the int8 path (leanformer.quantize.PATHS)")
    p.add_argument("--out", required=True, help="the file to write: .pt (.pt2 for PT2E), .gz to gzip")
    p.add_argument("--data", help="CIFAR-10 path: PT2E calibrates on its training images")
    p.add_argument("--calibration-images", type=_positive_int, default=512)
    p.add_argument("--seed", type=int, default=0, help="which training images calibrate")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("costs", help="measure models side by side (accuracy, size, FLOPs, latency, "
                       "throughput), print the table and optionally write it as JSON")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--data", help="CIFAR-10 path; its test images give each model's accuracy")
    p.add_argument("--rounds", type=_positive_int, default=5, help="interleaved timing rounds")
    p.add_argument("--json", help="also write the costs to this JSON file")
    p.set_defaults(func=cmd_costs)

    p = sub.add_parser("make-subset", help="derive the shipped subset from a class-folder .tar.gz")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--per-class", type=_positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_subset)

    p = sub.add_parser("stamp-notebooks", help="write Colab badges and set-up cells from _config.yml")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p.set_defaults(func=cmd_stamp)

    p = sub.add_parser("execute-notebooks", help="stamp, then run notebooks in place, keeping outputs")
    p.add_argument("notebooks", nargs="+")
    p.set_defaults(func=cmd_execute)

    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    from .checkpoint import CheckpointError
    from .data import DataError
    from .recipes import RecipeError

    try:
        args.func(args)
    except UsageError as e:
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
    except (DataError, CheckpointError, RecipeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
