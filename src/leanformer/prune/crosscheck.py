"""A cross-check of the structured pruning by the Torch-Pruning library: prune a model with it,
then find which heads and MLP units of the original survived (``kept_by``), to prune the same
ones with ``prune_model`` and compare.
"""
import copy

import torch
from torch import nn

from ..model import VisionTransformer
from .structured import _blocks, reconfigured


def prune_with_torch_pruning(model: VisionTransformer, heads: int, units: int) -> VisionTransformer:
    """A copy of ``model`` pruned by the Torch-Pruning library (``pip install torch-pruning``) to
    ``heads`` heads and ``units`` MLP hidden units per block, ranked by its group L2 magnitude. Only
    heads and hidden units go; the model width stays. The copy's config records the new widths."""
    import torch_pruning as tp

    if len({b.attn.num_heads for b in _blocks(model)}) > 1:
        raise ValueError("prune_with_torch_pruning expects every block to have the same number of heads")
    pruned = copy.deepcopy(model).eval()
    blocks = _blocks(pruned)
    ratios: dict[nn.Module, float] = {}
    for b in blocks:
        if not 1 <= heads <= b.attn.num_heads or not 1 <= units <= b.mlp.fc1.out_features:
            raise ValueError(f"keep 1..{b.attn.num_heads} heads and 1..{b.mlp.fc1.out_features} units")
        ratios[b.attn.qkv] = 1 - heads / b.attn.num_heads
        ratios[b.mlp.fc1] = 1 - units / b.mlp.fc1.out_features
    example = torch.zeros(1, model.cfg.in_chans, model.cfg.img_size, model.cfg.img_size)
    pruner = tp.pruner.MetaPruner(
        pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.0, pruning_ratio_dict=ratios,  # nothing but the listed layers
        num_heads={b.attn.qkv: b.attn.num_heads for b in blocks},
        prune_num_heads=True, prune_head_dims=False,  # whole heads, each keeps its width
        head_pruning_ratio=1 - heads / blocks[0].attn.num_heads, ignored_layers=[pruned.head],
        unwrapped_parameters=[(pruned.pos_embed, 2)])  # (1, tokens, width): only the width could go
    pruner.step()
    for b in blocks:  # Torch-Pruning slices the layers; the head count is ours to update
        b.attn.num_heads = pruner.num_heads[b.attn.qkv]
        b.attn.attn_dim = b.attn.num_heads * b.attn.head_dim
    widths = tuple((b.attn.num_heads, b.mlp.fc1.out_features) for b in blocks)
    return reconfigured(pruned, model, block_widths=widths)


def kept_by(original: VisionTransformer, pruned: VisionTransformer) -> tuple[list[list[int]], list[list[int]]]:
    """(keep_heads, keep_units): which heads and MLP units of ``original`` survive in ``pruned``,
    found by matching the weights (each kept head's ``proj`` columns, each unit's ``fc1`` row)."""
    keep_heads: list[list[int]] = []
    keep_units: list[list[int]] = []
    for a, b in zip(_blocks(original), _blocks(pruned)):
        d = a.attn.head_dim
        cols = a.attn.proj.weight.detach().view(-1, a.attn.num_heads, d)
        kept = b.attn.proj.weight.detach().view(-1, b.attn.num_heads, d)
        where = f"block {len(keep_heads)}"
        keep_heads.append([_match(cols.transpose(0, 1).flatten(1), kept[:, k].flatten(), f"{where}, head {k}")
                           for k in range(b.attn.num_heads)])
        rows = a.mlp.fc1.weight.detach()
        keep_units.append([_match(rows, r, f"{where}, unit {u}") for u, r in enumerate(b.mlp.fc1.weight.detach())])
    return keep_heads, keep_units


def _match(candidates: torch.Tensor, row: torch.Tensor, where: str) -> int:
    hits = (candidates == row).all(1).nonzero().flatten().tolist()
    if len(hits) != 1:
        raise ValueError(f"{where} of the pruned model matches {len(hits)} of the original's, not one: "
                         "is it a pruned copy of this model, without identical rows?")
    return hits[0]
