"""The sparsity sweep: magnitude-prune a model to several sparsities, measure each, fine-tune it
through the masks, and count the bytes of each way of storing it."""
from __future__ import annotations

from torch import nn

from ..data import CIFAR10
from ..evaluate import evaluate
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
    the global models (fine-tuned, if they were) with their masks removed, by sparsity."""
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
        models[float(s)] = tuned = remove_masks_(tuned)
        row.update({fmt: len(sparse_file_bytes(tuned, fmt)) for fmt in SPARSE_FORMATS})
        rows.append(row)
        if progress:
            print(f"sparsity {s:.0%}: global {row['global']:.2%}, layer {row['layer']:.2%}"
                  + (f", fine-tuned {row['fine-tuned']:.2%}" if finetune else ""), flush=True)
    return rows, models
