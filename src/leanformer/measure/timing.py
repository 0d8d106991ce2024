"""How fast a model serves: several models timed side by side, their repeats interleaved
(model A, model B, model A, ...) with the same thread count, so that a slow minute on a shared
machine slows them all and their ratios hold. A timing is a ``Spread`` over its repeats.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..precision import autocast, autocast_dtype


@dataclass
class Spread:
    """A timed quantity over repeated runs: median, quartiles and range, and the values in the
    order they were measured (``samples``), so that two models timed side by side can be
    compared round by round (``ratio_interval``)."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    samples: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        measured = tuple(values)
        ordered = sorted(measured)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered), measured)

    def overlaps(self, other: Spread) -> bool:
        """Whether the two ranges (min to max) share any value: two timings that overlap are not
        told apart by this measurement."""
        return self.min <= other.max and other.min <= self.max

    def format(self, digits: int = 2) -> str:
        return f"{self.median:,.{digits}f} ({self.min:,.{digits}f}–{self.max:,.{digits}f})"


def _device_of(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _input_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _random_images(model: nn.Module, batch_size: int, image_size: int = 32) -> torch.Tensor:
    return torch.rand(batch_size, 3, image_size, image_size, device=_device_of(model)).to(
        _input_dtype(model))


def _runner(model: nn.Module, precision: str,
            make_input: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """A no-argument function that runs ``model`` on one input batch as it would be served."""
    device = _device_of(model)
    x = make_input()
    dtype = autocast_dtype(precision, device) if precision in ("fp32", "bf16", "fp16") else None

    def run() -> None:
        with torch.inference_mode(), autocast(dtype, device):
            model(x)

    return run


def time_side_by_side(runs: Mapping[str, tuple[Callable[[], object], Callable[[], object]]],
                      batch_size: int, rounds: int,
                      latency_calls: int, throughput_calls: int,
                      warmup: int) -> dict[str, tuple[Spread, Spread]]:
    """Time every entry of ``runs`` ({name: (run one input, run a batch of ``batch_size``)}),
    interleaved: after ``warmup`` untimed single calls and one untimed batch each, ``rounds``
    rounds in which every entry in turn makes ``latency_calls`` single calls and
    ``throughput_calls`` batch calls. Returns {name: (latency in ms, inputs per second)}."""
    for one, many in runs.values():
        for _ in range(warmup):
            one()
        many()
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runs}
    for _ in range(rounds):
        for name, (one, many) in runs.items():
            for _ in range(latency_calls):
                t0 = time.perf_counter()
                one()
                samples[name][0].append((time.perf_counter() - t0) * 1000)
            for _ in range(throughput_calls):
                t0 = time.perf_counter()
                many()
                samples[name][1].append(batch_size / (time.perf_counter() - t0))
    return {name: (Spread.of(lat), Spread.of(thr)) for name, (lat, thr) in samples.items()}


def ratio_interval(num: Spread, den: Spread, level: float = 0.95, n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """The ratio of two timings measured side by side (``time_side_by_side``: the i-th sample of
    each comes from the same round), as (median, low, high): the median of the per-round ratios
    and a percentile-bootstrap interval for it at ``level``, resampling the rounds. For
    throughputs, ``ratio_interval(pruned, reference)`` is the pruned model's speed-up."""
    if not num.samples or len(num.samples) != len(den.samples):
        raise ValueError(f"ratio_interval pairs the samples of two timings from one side-by-side run; "
                         f"got {len(num.samples)} and {len(den.samples)} samples")
    ratios = torch.tensor([a / b for a, b in zip(num.samples, den.samples)], dtype=torch.float64)
    picks = torch.randint(len(ratios), (n_boot, len(ratios)), generator=torch.Generator().manual_seed(seed))
    medians = ratios[picks].median(dim=1).values
    tail = (1 - level) / 2
    low, high = torch.quantile(medians, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(ratios.median()), low, high


def verdict(interval: tuple[float, float, float], target: float) -> str:
    """A target on a ratio, judged from its interval (``ratio_interval``): "met" when the whole
    interval clears it, "missed" when the whole interval falls short, else "at the margin"."""
    _, low, high = interval
    return "met" if low >= target else "missed" if high < target else "at the margin"
