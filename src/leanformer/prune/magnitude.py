"""Unstructured pruning: zero single weights, the smallest in absolute value first.

It goes through ``torch.nn.utils.prune``: ``magnitude_prune`` attaches a mask to every
``nn.Linear`` and ``nn.Conv2d`` weight of a copy, ``remove_masks_`` makes the zeros
permanent in place, and ``sparsity_table`` counts them layer by layer.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

if TYPE_CHECKING:
    import pandas as pd


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    """(module name, module) of every ``nn.Linear`` and ``nn.Conv2d``: the weights unstructured
    pruning zeroes. Biases, LayerNorms and the position embedding stay dense."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global") -> nn.Module:
    """A copy of ``model`` with the share ``sparsity`` of its prunable weights set to zero, the
    smallest in absolute value first: ranked over all layers together (``scope="global"``) or
    within each layer (``"layer"``). The masks stay attached (``weight_orig`` and ``weight_mask``;
    the weight is their product), so a fine-tune keeps the zeros; ``remove_masks_``
    bakes them in."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity is the share of weights to zero, in [0, 1), got {sparsity}")
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for _, m in prunable_weights(pruned)]
    # The global ranking views every weight as one vector, so the tokenizer's channels-last
    # convolution weights are made contiguous for it, and given their layout back afterwards.
    channels_last = [m for m, _ in targets if m.weight.ndim == 4
                     and m.weight.is_contiguous(memory_format=torch.channels_last)]
    for m, _ in targets:
        m.weight.data = m.weight.data.contiguous()
    if scope == "global":
        torch_prune.global_unstructured(targets, torch_prune.L1Unstructured, amount=float(sparsity))
    elif scope == "layer":
        for m, name in targets:
            torch_prune.l1_unstructured(m, name, amount=float(sparsity))
    else:
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    with torch.no_grad():
        for m in channels_last:
            orig = m.get_parameter("weight_orig")
            orig.data = orig.data.contiguous(memory_format=torch.channels_last)
            mask = m.get_buffer("weight_mask").contiguous(memory_format=torch.channels_last)
            m.weight_mask = mask
            m.weight = orig * mask
    # A plain attribute: torch types nn.Module.__setattr__ for tensors and modules only.
    setattr(pruned, "provenance", {})
    return pruned


def remove_masks_(model: nn.Module) -> nn.Module:
    """Make the pruning permanent, in place: each ``weight_orig * weight_mask`` becomes
    a plain ``weight`` again, with its zeros. Returns ``model`` itself."""
    for _, m in prunable_weights(model):
        if hasattr(m, "weight_mask"):
            torch_prune.remove(m, "weight")
    return model


def sparsity_table(model: nn.Module) -> pd.DataFrame:
    """One row per prunable layer: its weights, how many are zero, and the share."""
    import pandas as pd

    rows = []
    for name, m in prunable_weights(model):
        w = m.weight.detach()
        rows.append((name, w.numel(), int((w == 0).sum()), (w == 0).float().mean().item()))
    return pd.DataFrame(rows, columns=["layer", "weights", "zeros", "sparsity"])
