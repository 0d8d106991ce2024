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


def _data_sha256(path):
    """sha256 of the data file a command read, for its provenance (None for a folder or none)."""
    from .data import sha256_file

    return sha256_file(path) if path and Path(path).is_file() else None


def cmd_train(args):
    from . import checkpoint
    from .train import accuracies_with_tta, evaluate, fit, get_recipe

    if not args.teacher and (args.alpha != 1.0 or args.temperature != 1.0 or args.kind != "soft"):
        raise SystemExit("error: --alpha, --temperature and --kind set the distillation loss; "
                         "give --teacher too")
    if args.kind == "hard" and args.temperature != 1.0:
        raise SystemExit("error: --kind hard takes the teacher's top class; --temperature does not apply")
    if not 0.0 <= args.alpha <= 1.0 or args.temperature <= 0:
        raise SystemExit(f"error: --alpha must lie in [0, 1] and --temperature be positive "
                         f"(got {args.alpha} and {args.temperature})")
    overrides = {"epochs": args.epochs} if args.epochs else {}
    recipe = get_recipe(args.recipe, **overrides)
    start = checkpoint.load_model(args.init) if args.init else None
    # fit() writes the new training record onto the model it trains: keep the starting one.
    init = ({"path": str(args.init), "weights_sha256": start.weights_sha256,
             "provenance": start.provenance} if start is not None else None)
    loss_fn, teacher = None, None
    if args.teacher:
        from .distill import DistillationLoss
        from .train import recipe_loss

        teacher_model = checkpoint.load_model(args.teacher)
        loss_fn = DistillationLoss(teacher_model, args.alpha, args.temperature, recipe_loss(recipe),
                                   kind=args.kind)
        teacher = {"path": str(args.teacher), "weights_sha256": teacher_model.weights_sha256,
                   "arch": checkpoint.arch_of(teacher_model), **loss_fn.describe()}
    qat = None
    if args.qat_bits:
        from .quantize import convert_qat, intx_quantize, prepare_qat

        if start is None:
            raise SystemExit("error: --qat-bits fine-tunes a trained model; give it with --init")
        prepare_qat(start, args.qat_bits, args.qat_group or None)
        qat = dict(start.qat)
    data = _data(args.data)
    out = Path(args.out)
    name = args.name or recipe.name
    state_path = out / f"{name}.last.pt"
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
        "command": "python -m leanformer " + " ".join(sys.argv[1:]),
        "data_sha256": _data_sha256(args.data),
        "init": init,
        "teacher": teacher,
        "qat": qat,
        **accuracies,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    model_path = out / f"{name}.safetensors"
    _save_with_json(model, model_path, provenance)
    print(f"test accuracy {accuracies['test_acc']:.4f} (flip TTA {accuracies['test_acc_flip_tta']:.4f}, "
          f"flip+shift TTA {accuracies['test_acc_flip_shift_tta']:.4f}); "
          f"wrote {model_path}")


def cmd_distill_sweep(args):
    from . import checkpoint
    from .distill import sweep, sweep_settings
    from .train import get_recipe

    teacher = checkpoint.load_model(args.teacher)
    settings = sweep_settings(args.temperatures, args.alphas, args.hard_alphas)
    about = {"command": "python -m leanformer " + " ".join(sys.argv[1:]),
             "teacher": {"path": str(args.teacher), "weights_sha256": teacher.weights_sha256}}
    sweep(teacher, get_recipe(args.recipe), _data(args.data), settings, out=args.out, about=about)
    print(f"wrote {args.out}")


def _save_with_json(model, path, provenance):
    """Save ``model`` with ``provenance`` to ``path`` and the same provenance, with the weights'
    sha256, to the .json beside it (readable without Python). Returns the sha256."""
    from . import checkpoint

    path = Path(path)
    sha = checkpoint.save_model(model, path, provenance)
    checkpoint.atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(
        json.dumps({**provenance, "weights_sha256": sha}, indent=1) + "\n"))
    return sha


def cmd_prune(args):
    from . import checkpoint
    from .prune import prune_by_score

    model = checkpoint.load_model(args.checkpoint)
    data = _data(args.data) if args.score == "taylor" else None
    try:
        pruned, record = prune_by_score(model, args.heads, args.mlp_units, args.score, data,
                                        n_images=args.images, seed=args.seed)
    except ValueError as e:
        raise SystemExit(f"error: --{str(e).replace('units:', 'mlp-units:')}") from None
    provenance = {
        "command": "python -m leanformer " + " ".join(sys.argv[1:]),
        "pruned_from": {"path": str(args.checkpoint), "weights_sha256": model.weights_sha256},
        "data_sha256": _data_sha256(args.data),
        **record,
    }
    sha = _save_with_json(pruned, args.out, provenance)
    print(f"kept heads {record['kept_heads']} and {len(record['kept_units'][0])} MLP units per block ({args.score} score); "
          f"wrote {args.out} (sha256 {sha[:12]}…)")


def cmd_sparsity_sweep(args):
    from . import checkpoint
    from .measure import machine_info
    from .prune import sparsity_sweep
    from .train import get_recipe

    bad = [level for level in args.levels if not 0 <= level < 1]
    if bad:
        raise SystemExit(f"--levels are shares of weights to zero, each in [0, 1); got {bad}")
    model = checkpoint.load_model(args.checkpoint)
    recipe = get_recipe(args.recipe, **({"epochs": args.epochs} if args.epochs else {}))
    data = _data(args.data)
    t0 = time.perf_counter()
    rows, models = sparsity_sweep(model, data, args.levels, recipe, progress=True)
    command = "python -m leanformer " + " ".join(sys.argv[1:])
    if args.save_dir:
        for row in rows:
            path = Path(args.save_dir) / f"sparse-{100 * row['sparsity']:g}.safetensors"
            _save_with_json(models[row["sparsity"]], path, {
                **models[row["sparsity"]].provenance,  # the fine-tune's record: history, machine
                "command": command, "pruned_from": {"path": str(args.checkpoint),
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
        "checkpoint": {"path": str(args.checkpoint), "weights_sha256": model.weights_sha256},
        "data_source": data.source, "data_sha256": _data_sha256(args.data),
        "train_images": len(data.train_labels), "test_images": len(data.test_labels),
        "recipe": recipe.to_dict(), "machine": machine_info(),
        "wall_time_s": time.perf_counter() - t0,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "rows": rows,
    }
    checkpoint.atomic_write(Path(args.out), lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.out}")


def cmd_evaluate(args):
    from .checkpoint import load_model
    from .train import accuracies_with_tta, evaluate

    model = load_model(args.checkpoint)
    data = _data(args.data, verbose=not args.json)  # --json: standard output holds the JSON alone
    acc, loss = evaluate(model, data.test_images, data.test_labels)
    result = {"checkpoint": str(args.checkpoint), "weights_sha256": model.weights_sha256,
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
    from .measure import machine_info

    stamp_notebooks(".")
    machine = machine_info()
    for path in args.notebooks:
        t0 = time.perf_counter()
        execute_notebook(path, machine=machine)
        print(f"executed {path} in {time.perf_counter() - t0:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m leanformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe; writes OUT/NAME.safetensors and NAME.json")
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", help="CIFAR-10 path (class folders, .tar.gz or cifar-10-batches-py)")
    p.add_argument("--out", default="runs", help="output directory (default: runs)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/NAME.last.pt")
    p.add_argument("--epochs", type=int, help="override the recipe's number of epochs")
    p.add_argument("--init", help="start from this .safetensors model (a fine-tune) instead of scratch")
    p.add_argument("--name", help="file name for OUT/NAME.safetensors and .json (default: the recipe's)")
    p.add_argument("--teacher", help="distil from this .safetensors model (leanformer.distill)")
    p.add_argument("--alpha", type=float, default=1.0, help="weight of the teacher's soft targets (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature (default 1)")
    p.add_argument("--kind", choices=("soft", "hard"), default="soft", help="soft targets (Hinton, the "
                   "default) or the teacher's top class as a label (DeiT's hard distillation)")
    p.add_argument("--qat-bits", type=int, help="quantization-aware training: fake-quantize the Linear weights "
                   "to this many bits (and their inputs to int8) while fine-tuning --init (leanformer.quantize)")
    p.add_argument("--qat-group", type=int, default=0, help="with --qat-bits: weights in groups of this many "
                   "along each row (default 0: one scale per row)")
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
    p.add_argument("checkpoint")
    p.add_argument("--data", help="CIFAR-10 path")
    p.add_argument("--levels", type=float, nargs="+", default=[0.3, 0.5, 0.6, 0.7, 0.8, 0.9])
    p.add_argument("--recipe", default="finetune-brief", help="fine-tune recipe (default finetune-brief)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--out", required=True, help="the JSON file to write")
    p.add_argument("--save-dir", help="also save each fine-tuned sparse model there (sparse-NN.safetensors)")
    p.set_defaults(func=cmd_sparsity_sweep)

    p = sub.add_parser("prune", help="remove attention heads and MLP units by importance; writes a smaller model")
    p.add_argument("checkpoint")
    p.add_argument("--heads", type=int, required=True, help="heads to keep in every block")
    p.add_argument("--mlp-units", type=int, required=True, help="MLP hidden units to keep in every block")
    p.add_argument("--score", default="taylor", choices=("taylor", "magnitude", "random"))
    p.add_argument("--data", help="CIFAR-10 path; the taylor score ranks on its training images")
    p.add_argument("--images", type=int, default=2048, help="training images for the taylor score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the pruned .safetensors file to write")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="test accuracy of a .safetensors model")
    p.add_argument("checkpoint")
    p.add_argument("--data")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation: flips, "
                   "and flips with 1-pixel shifts (leanformer.train.tta_logits)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("make-subset", help="derive the shipped subset from a class-folder .tar.gz")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_subset)

    p = sub.add_parser("stamp-notebooks", help="write Colab badges and set-up cells from _config.yml")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p.set_defaults(func=cmd_stamp)

    p = sub.add_parser("execute-notebooks", help="stamp, then run notebooks in place, keeping outputs")
    p.add_argument("notebooks", nargs="+")
    p.set_defaults(func=cmd_execute)

    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DataError
    from .train import RecipeError

    try:
        args.func(args)
    except (DataError, CheckpointError, RecipeError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
