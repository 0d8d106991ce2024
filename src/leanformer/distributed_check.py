"""A few steps of ``fit`` on a slice of CIFAR-10, in one process or under ``torchrun``, with the
weights and the timings written out: what lesson 10 and its test compare.

    python -m leanformer.distributed_check --data D --steps 5 --batch-size 64 --out one.safetensors
    torchrun --standalone --nproc-per-node 2 -m leanformer.distributed_check \\
        --data D --steps 5 --batch-size 64 --out two.safetensors

Both train recipe ``quick`` (or ``--recipe``) in float32 for one epoch of ``steps`` global batches (``steps * batch_size``
training images spread evenly over the set), from the same starting weights. Without ``--augment``
nothing random is drawn per process (no crops, flips or mixing; the quick recipe has no
dropout), so the two runs differ only in how each batch's gradient is summed: their weights
must agree to float32 rounding, which SGD (``--optimizer sgd``) keeps at that size; AdamW
divides each update by the gradient's running size, so where a gradient is zero in exact
arithmetic (a bias that a softmax cancels) it turns rounding into steps of the full rate.
``--augment`` keeps the recipe's augmentation, which each
process draws for itself. Rank 0 writes the weights to ``--out`` and, beside it, a JSON file
with the loss of every step, the seconds between steps (the first includes the start), the
seconds of each of ten all-reduces of the gradients' size, and the world size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from . import distributed
from .data import CIFAR10, load_cifar10
from .files import atomic_write
from .recipes import get_recipe
from .train import fit, recipe_loss


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m leanformer.distributed_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 path (the shipped subset will do)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--augment", action="store_true", help="keep the recipe's augmentation")
    p.add_argument("--recipe", default="quick", help="whose model and optimizer (default quick)")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"),
                   help="the quick recipe's AdamW, or SGD with momentum at a tenth of its rate")
    p.add_argument("--out", required=True, help="the weights to write, NAME.safetensors")
    args = p.parse_args(argv)
    world = distributed.init_from_env()
    full = load_cifar10(args.data, download=False)
    n = args.steps * args.batch_size
    if n > len(full.train_labels):
        raise SystemExit(f"error: {args.steps} steps of {args.batch_size} need {n} training "
                         f"images; {args.data} has {len(full.train_labels)}")
    every = len(full.train_labels) // n  # spread over the set: the shipped subset is in class order
    data = CIFAR10(full.train_images[::every][:n], full.train_labels[::every][:n],
                   full.test_images[::40][:256], full.test_labels[::40][:256], full.source)
    changes: dict[str, object] = {} if args.augment else dict(crop_padding=0, flip=False, mix_prob=0.0)
    if args.optimizer == "sgd":
        changes.update(optimizer="sgd", lr=get_recipe(args.recipe).lr / 10)
    recipe = get_recipe(args.recipe, epochs=1, batch_size=args.batch_size, precision="fp32",
                        warmup_epochs=0, **changes)
    losses, times = [], []
    base = recipe_loss(recipe)
    clock = [time.perf_counter()]

    def loss_fn(logits: torch.Tensor, batch) -> torch.Tensor:  # records each step as it passes
        loss = base(logits, batch)
        now = time.perf_counter()
        times.append(now - clock[0])
        clock[0] = now
        losses.append(loss.item())
        return loss

    model, _ = fit(recipe, data, progress=False, loss_fn=loss_fn,
                   device=distributed.device_for(world))
    # Each process's mean loss weighted by its share, summed: the global batch's mean loss.
    part = distributed.shard(args.batch_size, world)
    share = (part.stop - part.start) / args.batch_size
    global_losses = distributed.all_sum([v * share for v in losses], world)
    allreduce_s = _time_allreduce(sum(p.numel() for p in model.parameters()), world)
    if world.is_main:
        out = Path(args.out)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        atomic_write(out, lambda tmp: save_file(state, str(tmp)))
        record = {"world_size": world.size, "threads": torch.get_num_threads(),
                  "steps": args.steps, "batch_size": args.batch_size, "augment": args.augment,
                  "optimizer": args.optimizer, "recipe": recipe.name,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "allreduce_s": allreduce_s,
                  "losses": global_losses, "step_times_s": times}
        atomic_write(out.with_suffix(".json"),
                     lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    distributed.close(world)


def launch(processes: int, out: str | os.PathLike, data: str | os.PathLike, threads: int | None = None,
           **options: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Run this check in ``processes`` processes (torchrun, standalone on this machine; one
    process is started directly) with
    ``threads`` threads each (default: the cores shared out), wait for it, and return the
    weights and the record it wrote to ``out``. ``options`` are its flags, ``steps=5`` for
    ``--steps 5`` and ``augment=True`` for ``--augment``. A failed run raises RuntimeError
    with the end of what it printed."""
    from safetensors.torch import load_file

    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    flags = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
             for k, v in options.items() if v is not False]
    # One process runs the check directly: under torchrun it would start no process group
    # either (WORLD_SIZE 1), so it computes the same, without the launcher's own process.
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc-per-node={processes}"] if processes > 1 else [sys.executable])
    cmd = [*launcher, "-m", "leanformer.distributed_check",
           "--data", str(data), "--out", str(out), *flags]
    run = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
    return load_file(str(out)), json.loads(Path(out).with_suffix(".json").read_text())


def _time_allreduce(values: int, world: distributed.World, repeats: int = 10) -> list[float]:
    """Seconds for each of ``repeats`` all-reduces of ``values`` float32 numbers, the size of
    the model's gradients, after one untimed (empty in one process)."""
    if world.size == 1:
        return []
    import torch.distributed as dist

    buf = torch.zeros(values, device=distributed.device_for(world))
    dist.all_reduce(buf)
    times = []
    for _ in range(repeats):
        distributed.barrier(world)
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        if buf.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    main()
