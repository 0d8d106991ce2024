"""The command line, ``python -m leanformer <command>``: the parser and its one-line errors here,
the commands by what they do in the modules beside it.

    training  train, distill-sweep: the commands that train
    models    prune, sparsity-sweep, quantize, evaluate, costs, ledger, serve: the commands that
              read model files
    data      make-subset: the command that writes a data file
    shared    what the commands share: UsageError, reading the data, provenance, saving a model
              with its .json

This is the top layer of the package: every leanformer module it uses is imported at the top of
its module. Those modules import their heavy libraries (torchao, torch_pruning, pandas,
matplotlib, safetensors) inside the functions that need them, so that ``python -m leanformer -h``
costs no more than importing torch.
"""
import argparse
import sys
from typing import NoReturn

from ..checkpoint import CheckpointError
from ..config import SERVING_RECORD as SERVING_DEFAULT
from ..ledger import LEDGER as LEDGER_DEFAULT
from ..data import DataError
from ..prune import SCORES  # the choices a flag offers come from the package
from ..recipes import RecipeError
from .data import cmd_make_subset
from .models import (_quantize_paths, cmd_costs, cmd_evaluate, cmd_ledger, cmd_prune, cmd_quantize,
                     cmd_serve, cmd_serving, cmd_sparsity_sweep)
from .shared import UsageError
from .training import _qat_group_default, cmd_distill_sweep, cmd_train

__all__ = ["build_parser", "main", "UsageError"]

DESCRIPTION = ("Command line: ``python -m leanformer train|evaluate|make-subset|...``. "
               "Run with -h for help. In every command, --out names the file it "
               "writes.")

# torchao's intx quantizers take int1 to int8; a symmetric 1-bit integer holds only -1 and 0 and
# so no positive weight, which makes 2 bits the fewest that mean anything.
QAT_BITS = range(2, 9)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (exit status 2) rather than the usage text
    followed by it: the line says what is wrong, and -h says the rest."""

    def error(self, message: str) -> NoReturn:
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
    parser = _Parser(prog="python -m leanformer", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a recipe; writes the model --out "
                       "(DIR/NAME.safetensors) and DIR/NAME.json beside it")
    p.add_argument("--recipe", required=True)
    p.add_argument("--data", help="CIFAR-10 path (class folders, .tar.gz or cifar-10-batches-py)")
    p.add_argument("--out", help="the model file to write, DIR/NAME.safetensors; its "
                   ".json and the training state DIR/NAME.last.pt go beside it "
                   "(default: runs/RECIPE.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue the run whose state is "
                   "DIR/NAME.last.pt (the same recipe, data, --init and --teacher)")
    p.add_argument("--force", action="store_true", help="replace --out, its .json and "
                   "DIR/NAME.last.pt if they exist; without it, train refuses to")
    p.add_argument("--epochs", type=_positive_int, help="override the recipe's number of epochs")
    p.add_argument("--seed", type=int, help="override the recipe's seed (a second training run)")
    p.add_argument("--init", help="start from this .safetensors model (a fine-tune) instead of scratch")
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
                   "along each row, 0 for one scale per row "
                   f"(default: prepare_qat_'s, {_qat_group_default()})")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill-sweep", help="train a student once per distillation setting, write a JSON table")
    p.add_argument("--teacher", required=True, help="the teacher's .safetensors file")
    p.add_argument("--recipe", default="student-sweep", help="the student's recipe (default student-sweep)")
    p.add_argument("--data", help="CIFAR-10 path (default: the first source that works, see leanformer.data)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1, 2, 4])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    p.add_argument("--hard-alphas", type=float, nargs="*", default=[0.5])
    p.add_argument("--val-images", type=_positive_int,
                   help="hold out this many training images, stratified, as a "
                        "validation split to choose the setting on "
                        "(leanformer.splits.holdout)")
    p.add_argument("--train-images", type=_positive_int,
                   help="with --val-images: train on this many other training images, "
                        "stratified (default: all the others)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the validation split")
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

    p = sub.add_parser("serve", help="serve a model over HTTP (POST /predict, GET /health), "
                                     "with dynamic batching")
    p.add_argument("model", metavar="MODEL", help="a .safetensors model file, or a file from "
                   "leanformer.export (.onnx, .pt2)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="largest batch (1: no batching)")
    p.add_argument("--max-wait-ms", type=float, default=2.0,
                   help="longest a request waits for others to join its batch")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait; beyond them the server answers 503 at once")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prune", help="remove attention heads, MLP units and whole blocks by importance; "
                                     "writes a smaller model")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--heads", type=int, required=True, help="heads to keep in every block")
    p.add_argument("--mlp-units", type=int, required=True, help="MLP hidden units to keep in every block")
    p.add_argument("--blocks", type=int,
                   help="whole blocks to keep (default: all): first the blocks whose removal alone "
                        "costs least on the training images go, then heads and units are scored")
    p.add_argument("--tokenizer-channels", type=int,
                   help="channels to keep in the conv tokenizer's first convolution (default: all; "
                        "taylor score on the training images)")
    p.add_argument("--score", default="taylor", choices=SCORES, help="importance score (leanformer.prune.SCORES)")
    p.add_argument("--data",
                   help="CIFAR-10 path; the Taylor scores rank on its training images")
    p.add_argument("--images", type=int, default=2048,
                   help="training images for the Taylor scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the pruned .safetensors file to write")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("evaluate", help="test accuracy of a model file (.safetensors, or a quantized .pt/.pt2)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--data")
    p.add_argument("--json", action="store_true")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation: flips, "
                   "and flips with 1-pixel shifts (leanformer.evaluate.tta_logits)")
    p.add_argument("--record-predictions", metavar="FILE", nargs="?", const="checkpoints/"
                   "test-predictions.safetensors", help="add the class predicted for each test "
                   "image to FILE (default checkpoints/test-predictions.safetensors), which "
                   "lessons read in place of the forward passes (leanformer.record)")
    p.add_argument("--intx-bits", type=int, metavar="BITS", help="evaluate (and record) the "
                   "model's torchao intx form instead: Linear weights to BITS bits, their "
                   "inputs to int8 (leanformer.quantize.intx_form, lesson 05's QAT scheme)")
    p.add_argument("--intx-group", type=int, default=0, metavar="N", help="with --intx-bits: "
                   "weights in groups of N along each row, 0 for one scale per row (default)")
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
    p.add_argument("--out", help="also write the costs to this JSON file")
    p.set_defaults(func=cmd_costs)

    p = sub.add_parser("ledger", help="lesson 08's cost ledger: every shipped model in every "
                       "served form (float32, bf16 weights, PT2E int8) measured side by side")
    p.add_argument("--data", required=True, help="CIFAR-10 path: its test images score every "
                   "row, its training images calibrate int8")
    p.add_argument("--rounds", type=_positive_int, default=10, help="interleaved timing rounds")
    p.add_argument("--out", default=str(LEDGER_DEFAULT), help="the ledger to write (JSON; its "
                   "predictions go beside it)")
    p.set_defaults(func=cmd_ledger)

    p = sub.add_parser("serving", help="lesson 09's measurements: the served model in every export "
                       "format, MLPerf LoadGen's scenarios in process and through HTTP, the edge")
    p.add_argument("--data", required=True, help="CIFAR-10 path: its test images score every file "
                   "and are the queries, its training images calibrate int8")
    p.add_argument("--rounds", type=_positive_int, default=5, help="interleaved timing rounds")
    p.add_argument("--duration-ms", type=_positive_int, default=3000,
                   help="the length of each LoadGen run")
    p.add_argument("--out", default=str(SERVING_DEFAULT), help="the JSON record to write")
    p.set_defaults(func=cmd_serving)

    p = sub.add_parser("make-subset", help="derive the shipped subset from a class-folder .tar.gz")
    p.add_argument("source")
    p.add_argument("dest")
    p.add_argument("--per-class", type=_positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_subset)

    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args.func(args)
    except UsageError as e:
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
    except (DataError, CheckpointError, RecipeError) as e:
        sys.exit(f"error: {e}")
