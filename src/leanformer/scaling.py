"""The arithmetic of training in N processes, from what one process measures.

A step of data-parallel training computes each process's share of the global batch, then
averages the gradients across the processes with an all-reduce. In a ring all-reduce each of
the N processes sends its gradients in N chunks around the ring, N - 1 times to add them up and
N - 1 times to hand out the sums, so each process sends

    bytes = 2 (N - 1) / N * 4 * parameters        (float32 gradients)

whatever N is: the traffic per process stays about twice the model's gradients, while the
compute per process falls as 1 / N. A step therefore takes about

    t(N) = t_compute / N + bytes / bandwidth + 2 (N - 1) * latency

when the two run one after the other, and max(t_compute / N, bytes / bandwidth + ...) when
``DistributedDataParallel`` overlaps them perfectly (it sends each bucket of gradients as soon
as the backward pass has produced it). Lesson 10 fills in t_compute and the parameters from
measurements on this machine; the bandwidths and the latency are stated assumptions.
"""
from __future__ import annotations


def ring_allreduce_bytes(parameters: int, processes: int, bytes_per_value: int = 4) -> float:
    """Bytes each process sends in one ring all-reduce of ``parameters`` values:
    2 (N - 1) / N of the gradients' bytes (none in one process)."""
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    return 2 * (processes - 1) / processes * parameters * bytes_per_value


def step_seconds(compute_s: float, parameters: int, processes: int, gbit_per_s: float,
                 latency_s: float = 0.0, overlap: bool = False) -> float:
    """Seconds per step in ``processes`` processes, each on its own machine: the compute of
    one process for the whole global batch (``compute_s``) split evenly, and a ring
    all-reduce of the float32 gradients at ``gbit_per_s`` with ``latency_s`` per message
    (2 (N - 1) messages), added (``overlap=False``) or perfectly overlapped."""
    if gbit_per_s <= 0:
        raise ValueError(f"gbit_per_s must be positive, got {gbit_per_s}")
    compute = compute_s / processes
    send = ring_allreduce_bytes(parameters, processes) * 8 / (gbit_per_s * 1e9)
    send += 2 * (processes - 1) * latency_s
    return max(compute, send) if overlap else compute + send


def largest_useful(compute_s: float, parameters: int, gbit_per_s: float, max_processes: int,
                   efficiency: float = 0.5, latency_s: float = 0.0, overlap: bool = False) -> int:
    """The largest N up to ``max_processes`` whose speed-up over one process is at least
    ``efficiency`` * N: beyond it, more than half (by default) of what each added machine
    costs buys waiting, not compute."""
    best = 1
    for n in range(1, max_processes + 1):
        t = step_seconds(compute_s, parameters, n, gbit_per_s, latency_s, overlap)
        if compute_s / t >= efficiency * n:
            best = n
    return best


def sending_overtakes(compute_s: float, parameters: int, gbit_per_s: float, max_processes: int,
                      latency_s: float = 0.0) -> int | None:
    """The smallest N up to ``max_processes`` at which a step's all-reduce takes at least as
    long as its share of the computing (t_compute / N), or None if it never does: from there
    on, perfect overlap could hide no more of it."""
    for n in range(2, max_processes + 1):
        send = step_seconds(compute_s, parameters, n, gbit_per_s, latency_s) - compute_s / n
        if send >= compute_s / n:
            return n
    return None
