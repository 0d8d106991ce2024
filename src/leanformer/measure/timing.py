"""How fast a model runs: several models timed side by side, their repeats interleaved
(model A, model B, model A, ...) with the same thread count, so that a slow minute on a shared
machine slows them all and their ratios hold. A timing is a ``Spread`` over its repeats.

``time_side_by_side`` times serving (latency and throughput), ``rate_side_by_side`` any
call that handles a known number of inputs (``measure.training_speed`` times training
steps with it); both time each call the same way (``_time_calls``), and
``ratio_interval`` turns two timings of one run into a speed-up with its interval.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..precision import Precision, autocast

# How a model runs when it is timed: a precision, or "int8" for a quantized model that
# runs as it is (its own integer kernels, no autocast); the label goes into the cost
# table.
RunsAs = Precision | Literal["int8"]


def brief_timing() -> bool:
    """Whether ``LEANFORMER_TIMING=brief`` is set (``make test`` sets it: the lessons
    must run there, and nobody reads their timings), which cuts every timing to one
    short round."""
    return os.environ.get("LEANFORMER_TIMING", "") == "brief"


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

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the samples, interpolated linearly between the
        two nearest (p50 is the median; MLPerf's single-stream figure is p90)."""
        ordered = sorted(self.samples)
        at = (len(ordered) - 1) * q / 100
        low = int(at)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (at - low)

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


def _runner(model: nn.Module, precision: RunsAs,
            make_input: Callable[[], torch.Tensor]) -> Callable[[], None]:
    """A no-argument function that runs ``model`` on one input batch as it would be
    served: under autocast to ``precision``, or as it is for "int8"."""
    device = _device_of(model)
    x = make_input()
    runs_as: Precision = "fp32" if precision == "int8" else precision

    def run() -> None:
        with torch.inference_mode(), autocast(runs_as, device):
            model(x)

    return run


def _time_calls(run: Callable[[], object], calls: int,
                value: Callable[[float], float]) -> list[float]:
    """Call ``run`` ``calls`` times and return ``value(seconds)`` of each call: the one
    clock that every timing of the package reads."""
    values = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        values.append(value(time.perf_counter() - t0))
    return values


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
            latency, throughput = samples[name]
            latency.extend(_time_calls(one, latency_calls, lambda s: s * 1000))
            throughput.extend(_time_calls(many, throughput_calls,
                                          lambda s: batch_size / s))
    return {name: (Spread.of(lat), Spread.of(thr)) for name, (lat, thr) in samples.items()}


def rate_side_by_side(runs: Mapping[str, Callable[[], object]], items: int, rounds: int,
                      calls: int, warmup: int) -> dict[str, Spread]:
    """Items per second of every entry of ``runs`` ({name: a call that handles
    ``items`` inputs}), interleaved as ``time_side_by_side`` interleaves: after
    ``warmup`` untimed calls each, ``rounds`` rounds in which every entry in turn makes
    ``calls`` timed calls. The i-th samples of two entries come from the same round, so
    ``ratio_interval`` pairs them."""
    if rounds < 1 or calls < 1:
        raise ValueError(f"a timing needs at least one round and one call, got "
                         f"rounds={rounds}, calls={calls}")
    for run in runs.values():
        for _ in range(warmup):
            run()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            samples[name].extend(_time_calls(run, calls, lambda s: items / s))
    return {name: Spread.of(values) for name, values in samples.items()}


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
