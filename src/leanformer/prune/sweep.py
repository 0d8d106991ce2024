"""The sparsity sweep: magnitude-prune a model to several sparsities, measure each, fine-tune it
through the masks, and count the bytes of each way of storing it; and the choice of a
sparsity on one half of the test images, to be reported on the other."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..data import CIFAR10
from ..evaluate import evaluate, predict
from ..recipes import Recipe, get_recipe
from ..train import fit
from .magnitude import magnitude_prune, remove_masks_
from .sparse_files import SPARSE_FORMATS, sparse_file_bytes


def sparsity_sweep(model: nn.Module, data: CIFAR10, levels: list[float], recipe: Recipe | None = None,
                   finetune: bool = True,
                   progress: bool = False) -> tuple[list[dict[str, float]], dict[float, nn.Module]]:
    """Magnitude-prune ``model`` to each sparsity in ``levels`` and measure it on ``data``'s test
    images: with global and with layer-by-layer thresholds, then (global, masks attached) after a
    fine-tune by ``recipe`` (default ``finetune-brief``) on ``data``'s training images, unless
    ``finetune=False``. Returns (rows, models): one dict per level (the accuracies, and the bytes
    of the global model's weights dense, in CSR with int64 and int32 indices, and gzipped), and
    the global models (fine-tuned, if they were) with their masks removed, by sparsity.
    A fine-tuned row also holds its accuracy on each half of the test images
    (``fine-tuned (even)``, ``fine-tuned (odd)``, see ``half_accuracies``), so that a
    sparsity can be chosen on one half and reported on the other."""
    recipe = recipe or get_recipe("finetune-brief")
    rows: list[dict[str, float]] = []
    models: dict[float, nn.Module] = {}
    for s in levels:
        row: dict[str, float] = {"sparsity": float(s)}
        for scope in ("global", "layer"):
            row[scope] = evaluate(magnitude_prune(model, s, scope), data.test_images, data.test_labels)[0]
        tuned = magnitude_prune(model, s)
        if finetune:
            # The masks stay attached while it trains: a zeroed weight's gradient is multiplied by 0.
            tuned, history = fit(recipe, data, model=tuned, progress=progress)
            row["fine-tuned"] = history[-1]["test_acc"]
            row["fine-tune (s)"] = sum(h["epoch_time_s"] for h in history)
            right = predict(tuned, data.test_images).argmax(1) == data.test_labels
            row["fine-tuned (even)"], row["fine-tuned (odd)"] = half_accuracies(right)
        models[float(s)] = tuned = remove_masks_(tuned)
        row.update({fmt: len(sparse_file_bytes(tuned, fmt)) for fmt in SPARSE_FORMATS})
        rows.append(row)
        if progress:
            print(f"sparsity {s:.0%}: global {row['global']:.2%}, layer {row['layer']:.2%}"
                  + (f", fine-tuned {row['fine-tuned']:.2%}" if finetune else ""), flush=True)
    return rows, models


def half_accuracies(correct: torch.Tensor) -> tuple[float, float]:
    """(accuracy on the even-indexed test images, on the odd-indexed ones) from one
    boolean per test image: the course's fixed split of the test set into a half that
    chooses a setting and a half that reports it."""
    if correct.ndim != 1 or len(correct) < 2:
        raise ValueError("half_accuracies takes one boolean per test image (at least "
                         f"two), got shape {tuple(correct.shape)}")
    right = correct.float()
    return right[0::2].mean().item(), right[1::2].mean().item()


def highest_within(accuracy: Mapping[float, float], reference: float,
                   drop: float = 0.01) -> float | None:
    """The highest sparsity whose ``accuracy`` (a dict by sparsity) is at least
    ``reference - drop``, or None if none is."""
    within = [float(s) for s, acc in accuracy.items() if acc >= reference - drop]
    return max(within) if within else None
