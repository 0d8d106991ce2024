"""Structured pruning: remove whole attention heads and MLP hidden units, so that the weight
matrices shrink and the model really does less work.

Where a head and a hidden unit live in the weights of a ``Block``:

* head ``h`` of ``Attention`` (``head_dim`` = d): rows ``p * attn_dim + h * d ... + d`` of ``qkv``
  for each of q, k and v (p = 0, 1, 2), and columns ``h * d ... + d`` of ``proj``;
* hidden unit ``u`` of ``Mlp``: row ``u`` of ``fc1`` (and its bias) and column ``u`` of ``fc2``.

``prune_linear`` keeps the chosen rows or columns of one ``nn.Linear``; ``prune_heads_``
and ``prune_mlp_`` apply it to a block's attention and MLP, in place (the trailing
underscore); ``prune_model`` returns a smaller copy of a ``VisionTransformer`` whose
config records the new widths, so that ``save_model`` and ``load_model`` round-trip it,
and leaves the model it was given as it was; ``keep_top`` turns scores into the indices
to keep. ``drop_blocks`` removes whole blocks: every block adds its output to the residual
stream, so a model without block ``i`` is the same model with that block's two branches
set to zero, and the blocks after it read what the blocks before it wrote.
``prune_tokenizer_channels`` removes output channels of the convolutional tokenizer's first
convolution (channel ``c``: filter ``c`` of that convolution and input channel ``c`` of the
next; the ReLU and max-pool between them act on each channel alone). The last convolution's
channels are the tokens' width, which every block reads, and stay.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..model import Attention, Block, Mlp, VisionTransformer


def _blocks(model: VisionTransformer) -> list[Block]:
    """``model.blocks`` as the ``Block``s they are: an ``nn.ModuleList`` only promises
    ``nn.Module``s, whose attributes a type checker cannot see."""
    blocks = []
    for b in model.blocks:
        if not isinstance(b, Block):
            raise TypeError(f"expected the model's blocks to be Blocks, found a {type(b).__name__}")
        blocks.append(b)
    return blocks


def reconfigured(pruned: VisionTransformer, source: VisionTransformer,
                 **changes: object) -> VisionTransformer:
    """``pruned`` (a pruned copy of ``source``) given ``source``'s config with ``changes`` and
    the head width pinned, so that ``save_model`` and ``load_model`` rebuild it, and an empty
    provenance: its record is written by whoever saves it."""
    pruned.cfg = type(source.cfg)(**{**source.cfg.to_dict(), **changes,
                                     "head_dim": source.cfg.head_width})
    # A plain attribute: torch types nn.Module.__setattr__ for tensors and modules only.
    setattr(pruned, "provenance", {})
    return pruned


def prune_linear(layer: nn.Linear, index: torch.Tensor | Sequence[int], dim: int) -> nn.Linear:
    """A new ``nn.Linear`` that keeps the output rows (``dim=0``) or input columns (``dim=1``) of
    ``layer`` listed in ``index``. The bias belongs to the rows, so it is sliced only with them."""
    index = torch.as_tensor(index, dtype=torch.long, device=layer.weight.device)
    weight = layer.weight.detach().index_select(dim, index).clone()
    has_bias = layer.bias is not None
    out_f, in_f = weight.shape
    new = nn.Linear(in_f, out_f, bias=has_bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if has_bias:
            new.bias.copy_(layer.bias.detach()[index] if dim == 0 else layer.bias.detach())
    return new


def head_columns(attn: Attention, heads: Sequence[int]) -> torch.Tensor:
    """The columns of ``attn.proj`` (and the positions within q, k or v) that belong to ``heads``."""
    d = attn.head_dim
    return (torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads]) if len(heads)
            else torch.zeros(0, dtype=torch.long))


def head_rows(attn: Attention, heads: Sequence[int]) -> torch.Tensor:
    """The rows of ``attn.qkv`` that belong to ``heads``: their q rows, then k rows, then v rows."""
    cols = head_columns(attn, heads)
    return torch.cat([p * attn.attn_dim + cols for p in range(3)])


def prune_heads_(attn: Attention, keep: Iterable[int]) -> Attention:
    """Keep only the heads listed in ``keep``, in place: slice ``qkv`` rows and ``proj``
    columns. Returns ``attn`` itself."""
    keep = sorted(int(h) for h in keep)
    if any(h < 0 or h >= attn.num_heads for h in keep):
        raise ValueError(f"heads to keep must be in 0..{attn.num_heads - 1}, got {keep}")
    if not keep:
        raise ValueError(f"a block must keep at least one of its {attn.num_heads} heads; "
                         "to remove attention from a block, build a model whose config says so")
    attn.qkv = prune_linear(attn.qkv, head_rows(attn, keep), dim=0)
    attn.proj = prune_linear(attn.proj, head_columns(attn, keep), dim=1)
    attn.num_heads, attn.attn_dim = len(keep), len(keep) * attn.head_dim
    return attn


def prune_mlp_(mlp: Mlp, keep: Iterable[int]) -> Mlp:
    """Keep only the hidden units listed in ``keep``, in place: ``fc1`` rows, ``fc2``
    columns. Returns ``mlp`` itself."""
    index = torch.as_tensor(sorted(int(u) for u in keep), dtype=torch.long)
    if not len(index):
        raise ValueError(f"an MLP must keep at least one of its {mlp.fc1.out_features} hidden units")
    if index.min() < 0 or index.max() >= mlp.fc1.out_features:
        raise ValueError(f"units to keep must be in 0..{mlp.fc1.out_features - 1}, "
                         f"got {index.min().item()}..{index.max().item()}")
    mlp.fc1 = prune_linear(mlp.fc1, index, dim=0)
    mlp.fc2 = prune_linear(mlp.fc2, index, dim=1)
    return mlp


def prune_model(model: VisionTransformer, keep_heads: Sequence[Iterable[int]],
                keep_units: Sequence[Iterable[int]]) -> VisionTransformer:
    """A pruned copy of ``model``: block ``i`` keeps heads ``keep_heads[i]`` and MLP units
    ``keep_units[i]``. The copy's config records the new widths (``ViTConfig.block_widths``)."""
    if len(keep_heads) != len(model.blocks) or len(keep_units) != len(model.blocks):
        raise ValueError(f"give one list of heads and one of units per block ({len(model.blocks)} blocks)")
    pruned = copy.deepcopy(model)
    for block, heads, units in zip(_blocks(pruned), keep_heads, keep_units):
        prune_heads_(block.attn, heads)
        prune_mlp_(block.mlp, units)
    widths = tuple((b.attn.num_heads, b.mlp.fc1.out_features) for b in _blocks(pruned))
    return reconfigured(pruned, model, block_widths=widths)


def drop_blocks(model: VisionTransformer, keep: Iterable[int]) -> VisionTransformer:
    """A copy of ``model`` with only the blocks ``keep`` (indices, in their order in the
    model); its config records the new depth and the kept blocks' widths. Stochastic depth
    is spread again over the new depth, as a model of that depth is built, so that a saved
    and reloaded copy trains the same way. ``model`` is left as it was."""
    keep = sorted(set(int(i) for i in keep))
    n = len(model.blocks)
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep: give at least one block index in 0..{n - 1}, got {keep}")
    pruned = copy.deepcopy(model)
    widths = model.cfg.widths()
    pruned.blocks = nn.ModuleList(pruned.blocks[i] for i in keep)
    rates = torch.linspace(0, model.cfg.drop_path_rate, len(keep)).tolist()
    for block, rate in zip(_blocks(pruned), rates):
        block.drop_path.p = rate
    return reconfigured(pruned, model, depth=len(keep),
                        block_widths=tuple(tuple(widths[i]) for i in keep))


def prune_tokenizer_channels(model: VisionTransformer, keep: Iterable[int]) -> VisionTransformer:
    """A copy of ``model`` whose conv tokenizer keeps channels ``keep`` of its first
    convolution; its config records the new ``conv_channels``. ``model`` is left as it was."""
    convs = [m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
    if model.cfg.tokenizer != "conv" or len(convs) < 2:
        raise ValueError("only a conv tokenizer with two or more convolutions has channels "
                         "that can go (the last one's are the tokens' width)")
    index = torch.as_tensor(sorted(set(int(i) for i in keep)), dtype=torch.long)
    c = convs[0].out_channels
    if len(index) == 0 or index.min() < 0 or index.max() >= c:
        raise ValueError(f"channels: keep between 1 and {c} indices in 0..{c - 1}, got {index.tolist()}")
    pruned = copy.deepcopy(model)
    first, second = [m for m in pruned.patch_embed.modules() if isinstance(m, nn.Conv2d)][:2]
    for conv, dim in ((first, 0), (second, 1)):
        conv.weight = nn.Parameter(conv.weight.detach().index_select(dim, index).clone()
                                   .contiguous(memory_format=torch.channels_last))
        if dim == 0:
            conv.out_channels = len(index)
            if conv.bias is not None:
                conv.bias = nn.Parameter(conv.bias.detach()[index].clone())
        else:
            conv.in_channels = len(index)
    return reconfigured(pruned, model, conv_channels=(len(index), *model.cfg.conv_channels[1:]))


def keep_top(scores: list[torch.Tensor], n_keep: int) -> list[list[int]]:
    """In every block, the indices of the ``n_keep`` highest scores, in ascending order."""
    return [sorted(s.topk(min(n_keep, len(s))).indices.tolist()) for s in scores]
