"""The commands that train: ``train`` (a recipe from scratch, or a fine-tune of a model, with a
teacher or quantization-aware if asked) and ``distill-sweep`` (a student per distillation
setting, judged on a validation split of the training images with ``--val-images``)."""
import argparse
import inspect
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import checkpoint, distributed
from ..distill import DistillationLoss, sweep, sweep_settings
from ..evaluate import accuracies_with_tta, evaluate
from ..families import arch_of
from ..quantize import convert_qat_, intx_quantize, prepare_qat_
from ..recipes import get_recipe
from ..splits import holdout
from ..train import fit, recipe_loss
from .shared import UsageError, _command, _data, _data_sha256, _save_with_json

# The distillation setting that lesson 06 found best for its students (soft targets, most of the
# weight on the teacher, softened at T = 4): what --teacher means without --alpha or
# --temperature. Hard targets (DeiT) split the weight evenly, as DeiT and lesson 06 do, and take
# no temperature.
DISTILL_DEFAULTS = {"soft": {"alpha": 0.9, "temperature": 4.0},
                    "hard": {"alpha": 0.5, "temperature": 1.0}}


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

    --resume continues the run whose state is ``state_path``; it never replaces a
    finished model on its own, so that ``--out checkpoints/reference.safetensors``
    cannot silently replace a shipped one. --force
    replaces (with --resume too: continue that run, then replace the model it finishes)."""
    if force:
        return
    for path in (model_path, model_path.with_suffix(".json")):
        if path.exists():
            how = (f"--force trains afresh and replaces it, --resume --force continues {state_path} "
                   "and replaces it at the end" if state_path.exists() else
                   "--force trains afresh and replaces it")
            sys.exit(f"error: {path} exists: a finished model, which this run would replace; "
                     f"{how}; or choose another --out")
    if state_path.exists() and not resume:
        sys.exit(f"error: {state_path} exists: the state of another run writing "
                 f"{model_path}; --resume continues that run, --force starts afresh "
                 "and replaces it; or choose another --out")


def _out_paths(out, recipe_name):
    """(model file, training state) for ``--out``: the model file it names (default
    runs/RECIPE.safetensors) and NAME.last.pt beside it. Raises UsageError for a folder
    or a name that is not a .safetensors file."""
    model_path = Path(out) if out else Path("runs") / f"{recipe_name}.safetensors"
    if model_path.is_dir():
        raise UsageError(f"--out {model_path} is a folder; --out names the model file "
                         f"to write, e.g. {model_path / recipe_name}.safetensors")
    if model_path.suffix != ".safetensors":
        raise UsageError("--out names the model file to write, NAME.safetensors; "
                         f"got {model_path}")
    return model_path, model_path.with_suffix(".last.pt")


def _qat_group_default():
    """The group size ``quantize.prepare_qat_`` uses when given none, as --qat-group
    counts it (0: one scale per row): the command line and the library mean the same by
    default."""
    return inspect.signature(prepare_qat_).parameters["group_size"].default or 0


def cmd_train(args: argparse.Namespace) -> None:
    # Every check of the flags comes before anything is loaded or trained.
    setting = _distillation_setting(args)
    if args.qat_bits is None and args.qat_group is not None:
        raise UsageError("--qat-group sets the groups of --qat-bits; give --qat-bits too")
    if args.qat_bits is not None and not args.init:
        raise UsageError("--qat-bits fine-tunes a trained model; give it with --init")
    if args.qat_group is not None and args.qat_group < 0:
        raise UsageError(f"--qat-group is a number of weights per group, or 0 for one scale per "
                         f"row (got {args.qat_group})")
    overrides = {"epochs": args.epochs, "seed": args.seed}
    recipe = get_recipe(args.recipe, **{k: v for k, v in overrides.items() if v is not None})
    model_path, state_path = _out_paths(args.out, recipe.name)
    _refuse_to_overwrite(model_path, state_path, args.resume, args.force)
    world = distributed.init_from_env()  # under torchrun: this process's rank in the group
    if world.size > 1:
        # Every rank has read the files above before rank 0 may replace them.
        distributed.barrier(world)
        if world.is_main:
            print(f"{world.size} processes (torch.distributed, {dist.get_backend()}), "
                  f"{torch.get_num_threads()} thread(s) each; global batch {recipe.batch_size}")
    if args.resume and not state_path.exists() and world.is_main:
        print(f"no training state at {state_path} to resume: starting afresh")

    start = checkpoint.load_model(args.init) if args.init else None
    # fit() writes the new training record onto the model it trains: keep the starting one.
    init = ({"path": str(args.init), "weights_sha256": start.weights_sha256,
             "provenance": start.provenance} if start is not None else None)
    loss_fn, teacher = None, None
    if args.teacher:
        kind, alpha, temperature = setting
        teacher_model = checkpoint.load_model(args.teacher)
        loss_fn = DistillationLoss(teacher_model, alpha, temperature, recipe_loss(recipe), kind=kind)
        teacher = {"path": str(args.teacher), "weights_sha256": teacher_model.weights_sha256,
                   "arch": arch_of(teacher_model), **loss_fn.describe()}
        print(f"distilling from {args.teacher}: {_describe_setting(args, *setting)}")
    qat = None
    if args.qat_bits is not None:
        group = _qat_group_default() if args.qat_group is None else args.qat_group
        assert start is not None  # --qat-bits without --init was refused above
        uneven = [f"{n} ({m.in_features})" for n, m in start.named_modules()
                  if isinstance(m, nn.Linear) and group and m.in_features % group]
        if uneven:
            raise UsageError(f"--qat-group {group} must divide the inputs of every Linear layer; "
                             f"it does not divide {', '.join(uneven[:3])}")
        prepare_qat_(start, args.qat_bits, group or None)
        qat = dict(getattr(start, "qat"))  # the scheme prepare_qat_ put on the model
    data = _data(args.data)
    model, history = fit(recipe, data, state_path=state_path, resume=args.resume, model=start,
                         loss_fn=loss_fn, device=distributed.device_for(world))
    distributed.close(world)
    if not world.is_main:  # rank 0 alone scores and writes the model
        return
    if qat:  # save the float weights; the quantized model is rebuilt from them (intx_quantize)
        convert_qat_(model)
        quantized = intx_quantize(model, qat["weight_bits"], qat["group_size"], qat["activations"])
        qat["test_acc_quantized"] = evaluate(quantized, data.test_images, data.test_labels)[0]
        print(f"quantized ({qat['weight_bits']}-bit weights): test accuracy {qat['test_acc_quantized']:.4f}")
    accuracies = accuracies_with_tta(model, data)
    provenance = {
        **getattr(model, "provenance"),  # fit's training record
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


def cmd_distill_sweep(args: argparse.Namespace) -> None:
    if args.train_images is not None and args.val_images is None:
        raise UsageError("--train-images sets the training part of a validation split; "
                         "give --val-images too")
    recipe = get_recipe(args.recipe)
    teacher = checkpoint.load_model(args.teacher)
    settings = sweep_settings(args.temperatures, args.alphas, args.hard_alphas)
    about = {"command": _command(args),
             "teacher": {"path": str(args.teacher), "weights_sha256": teacher.weights_sha256}}
    data = _data(args.data)
    if args.val_images is not None:
        n_train = args.train_images or len(data.train_labels) - args.val_images
        data = holdout(data, n_train, args.val_images, args.split_seed)
        print(f"choosing on {args.val_images:,} held-out training images; training on "
              f"{n_train:,} others")
    sweep(teacher, recipe, data, settings, out=args.out, about=about)
    print(f"wrote {args.out}")
