"""Time turned into money (lesson 08): cloud prices, dollars per million images served, the
break-even point of extra training, and the Pareto front of accuracy against cost.

    usd_per_million(price_per_hour, images_per_s)
        = price_per_hour / (images_per_s * 3600) * 1e6
    break_even_images(extra_training_usd, usd_per_image_before, usd_per_image_after)
        = extra_training_usd / (usd_per_image_before - usd_per_image_after)

The prices are on-demand list prices of named instances, kept in ``prices.csv`` beside this
module with the date they were read and their source (``load_prices``); a reader puts in their
own by passing another file. ``closest_instance`` maps the machine a timing ran on to the listed
instance with the same kind of processor.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PRICES = Path(__file__).with_name("prices.csv")
_COLUMNS = ("instance", "provider", "processor", "kind", "vcpus", "usd_per_hour", "read_on",
            "source")


@dataclass(frozen=True)
class Instance:
    """One cloud instance and its on-demand price."""

    instance: str
    provider: str
    processor: str
    kind: str  # "cpu" or "gpu"
    vcpus: int
    usd_per_hour: float
    read_on: str  # when the price was read (YYYY-MM)
    source: str


def load_prices(path: str | os.PathLike = PRICES) -> dict[str, Instance]:
    """The instances of a price file (CSV with the columns of ``prices.csv``), by name."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: a price file needs the columns {', '.join(_COLUMNS)}; "
                             f"{', '.join(missing)} missing (see {PRICES} for the format)")
        instances = {}
        for line, row in enumerate(reader, start=2):
            try:
                price, vcpus = float(row["usd_per_hour"]), int(row["vcpus"])
            except ValueError:
                raise ValueError(f"{path}, line {line}: usd_per_hour must be a number and vcpus "
                                 f"a whole number; got {row['usd_per_hour']!r} and "
                                 f"{row['vcpus']!r}") from None
            if not price > 0 or row["kind"] not in ("cpu", "gpu"):
                raise ValueError(f"{path}, line {line}: a price above zero and a kind of 'cpu' "
                                 f"or 'gpu' expected; got {price} and {row['kind']!r}")
            instances[row["instance"]] = Instance(
                row["instance"], row["provider"], row["processor"], row["kind"], vcpus, price,
                row["read_on"], row["source"])
    if not instances:
        raise ValueError(f"{path}: no instances listed")
    return instances


def closest_instance(machine: str, instances: dict[str, Instance]) -> Instance:
    """The listed 2-vCPU instance with the processor of ``machine`` (a ``machine_info`` line):
    an Intel Xeon maps to AWS c7i.large (Sapphire Rapids, with AMX), an AMD EPYC to c7a.large,
    an Arm processor to c7g.large, anything else to GCP's e2-standard-2 (shared Intel or
    AMD)."""
    text = machine.lower()
    if "amd" in text:
        name = "AWS c7a.large"
    elif "intel" in text:
        name = "AWS c7i.large"
    elif "arm" in text or "aarch64" in text or "graviton" in text:
        name = "AWS c7g.large"
    else:
        name = "GCP e2-standard-2"
    if name not in instances:
        raise ValueError(f"the price list has no {name!r}, the instance closest to {machine!r}; "
                         f"it lists {', '.join(instances)}")
    return instances[name]


def usd_per_million(usd_per_hour: float, images_per_s: float) -> float:
    """Dollars to serve a million images at ``images_per_s`` on a machine rented at
    ``usd_per_hour`` (kept busy: the offline scenario)."""
    if not images_per_s > 0:
        raise ValueError(f"images per second must be above zero, got {images_per_s}")
    return usd_per_hour / (images_per_s * 3600) * 1e6


def usd_for_seconds(usd_per_hour: float, seconds: float) -> float:
    """Dollars for ``seconds`` of a machine rented at ``usd_per_hour``."""
    return usd_per_hour * seconds / 3600


def break_even_images(extra_training_usd: float, usd_per_image_before: float,
                      usd_per_image_after: float) -> float:
    """How many images a cheaper model must serve before its extra training has paid for
    itself; ``math.inf`` when it saves nothing per image."""
    saving = usd_per_image_before - usd_per_image_after
    if saving <= 0:
        return math.inf
    return max(extra_training_usd, 0.0) / saving


def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: none is at most as costly and at least as
    accurate, and better in one of the two. In order of cost."""
    if len(costs) != len(accuracies):
        raise ValueError(f"one cost per accuracy: got {len(costs)} costs and "
                         f"{len(accuracies)} accuracies")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front, best = [], -math.inf
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front
