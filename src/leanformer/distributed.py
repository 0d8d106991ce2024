"""Training in several processes: what ``fit`` needs to run under ``torchrun`` unchanged.

``torchrun --nproc-per-node N -m leanformer train ...`` starts N copies of the command and tells
each, through its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``), who it is and where to meet the others. ``init_from_env`` joins that group
(gloo on CPUs, NCCL on GPUs); without torchrun it does nothing and ``fit`` runs as one process.

How ``fit`` splits the work, so that an update means what it means in one process:

* every process draws the epoch's order from the same seed, so all of them see the same
  global batch of ``recipe.batch_size`` images; ``shard`` gives each its share of it;
* each process augments its share with its own generator (seeded by the seed, the epoch and
  its rank), so a run is reproducible and the processes do not repeat each other's draws;
* ``DistributedDataParallel`` averages the gradients over the processes (an all-reduce); a
  local loss is weighted by its share of the global batch (``loss_weight``), so the average
  is the gradient of the global batch's mean loss even when the shares differ by an image;
* evaluation splits the test images the same way and adds up the counts (``all_sum``);
* only rank 0 writes checkpoints and training states, and all ranks read them to resume.

What that costs per step, on paper, is ``leanformer.scaling``'s arithmetic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Iterable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: rank ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


def world() -> World:
    """The process group this process is in, or one process alone if none was started."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env() -> World:
    """Join the process group that ``torchrun`` describes in the environment: NCCL where this
    process has a GPU, gloo otherwise. Without torchrun (no ``WORLD_SIZE`` above 1) nothing
    is started and one process alone comes back."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={size} but {', '.join(missing)} not set: start the "
                           "processes with torchrun (torchrun --standalone --nproc-per-node N -m "
                           "leanformer train ...)")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return world()


def device_for(w: World) -> torch.device | None:
    """The device a process trains on: its own GPU (``LOCAL_RANK``) in a group on GPUs, else
    None (``fit`` picks the default)."""
    if w.size > 1 and torch.cuda.is_available():
        return torch.device("cuda", w.local_rank)
    return None


def shard(n: int, w: World) -> slice:
    """The part of a batch of ``n`` items that rank ``w.rank`` takes: ``n`` split in
    ``w.size`` contiguous parts whose sizes differ by at most one (the first ones larger)."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (w.rank < extra))


def loss_weight(local: int, total: int, w: World) -> float:
    """What a process's mean loss over ``local`` images is multiplied by before its backward
    pass, so that the average of the processes' gradients (what DistributedDataParallel
    computes) is the gradient of the mean loss over all ``total`` images."""
    return local * w.size / total


def all_sum(values: Iterable[float], w: World) -> list[float]:
    """The sums of ``values`` over all processes (float64), the same on every rank."""
    values = list(values)
    if w.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier(w: World) -> None:
    """Wait until every process arrives (nothing to wait for in one process)."""
    if w.size > 1:
        dist.barrier()


def close(w: World) -> None:
    """Leave the process group, once the run is over."""
    if w.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
