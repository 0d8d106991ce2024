"""How much arithmetic a model does: FLOPs counted by ``torch.utils.flop_counter``
(``count_flops``), the same by formula for attention, MLP and block (``attention_flops``,
``mlp_flops``, ``block_flops``), and where a Vision Transformer's parameters and FLOPs sit
(``component_costs``)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .size import count_parameters

if TYPE_CHECKING:
    import pandas as pd


def count_flops(model: nn.Module, *inputs: torch.Tensor,
                backward: bool = False) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass (plus its backward pass with ``backward=True``), counted by
    ``torch.utils.flop_counter``. One multiply-add counts as two FLOPs. Returns
    (total, {module name: flops}) for the top-level children of ``model``."""
    total, per_module = _flop_counts(model, *inputs, backward=backward)
    top = {name.split(".", 1)[1]: n for name, n in per_module.items() if name.count(".") == 1}
    return total, top


def _flop_counts(model: nn.Module, *inputs: torch.Tensor, backward: bool = False,
                 ) -> tuple[int, dict[str, int]]:
    """(total, {fully qualified module name: flops}) with names as ``Root.child.grandchild``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_flops())
    with counter:
        out = model(*inputs)
        if backward:
            out.float().sum().backward()
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()
                  if name != "Global"}
    return counter.get_total_flops(), per_module


def _cpu_sdpa_flops() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the CPU kernels of ``F.scaled_dot_product_attention``, which
    ``torch.utils.flop_counter`` does not count (it knows the GPU kernels only): without them a
    fused ``Attention`` on a CPU would count only its projections. Same formulas as the GPU ones."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = (
            lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v))
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = (
            lambda g, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(g, q, k, v))
    return mapping


# --- the FLOPs of one block, by formula -------------------------------------------------------

def attention_flops(tokens: int, dim: int, heads: int, head_dim: int) -> int:
    """Forward FLOPs of ``Attention`` on ``tokens`` tokens: the q/k/v projection, the scores
    Q K^T, the weighted sum of V and the output projection (a multiply-add is 2 FLOPs)."""
    attn_dim = heads * head_dim
    return (2 * tokens * dim * 3 * attn_dim            # [Q, K, V] = X W_qkv
            + 2 * heads * tokens * tokens * head_dim   # scores Q K^T
            + 2 * heads * tokens * tokens * head_dim   # weights times V
            + 2 * tokens * attn_dim * dim)             # output projection


def mlp_flops(tokens: int, dim: int, hidden: int) -> int:
    """Forward FLOPs of ``Mlp``: two linear layers, dim -> hidden -> dim."""
    return 2 * 2 * tokens * dim * hidden


def block_flops(tokens: int, dim: int, heads: int, head_dim: int, hidden: int) -> int:
    """Forward FLOPs of one ``Block``; LayerNorm, softmax and GELU are not counted, as
    ``torch.utils.flop_counter`` does not count them either."""
    return attention_flops(tokens, dim, heads, head_dim) + mlp_flops(tokens, dim, hidden)


# --- where the parameters and the FLOPs of a VisionTransformer sit ----------------------------

def component_costs(model: nn.Module, image_size: int = 32) -> pd.DataFrame:
    """Parameters and forward FLOPs per image of each part of a ``VisionTransformer``: the
    tokenizer (with the position embedding and class token), the attention and the MLP of every
    block (LayerNorms counted with their block), and the head (final LayerNorm, pooling, linear
    head). Returns a pandas DataFrame with one row per part; the rows add up to the whole model,
    which is checked."""
    import pandas as pd

    # A VisionTransformer, read by its attributes: measure sits below leanformer.model and does
    # not import it (tests/test_measure.py, RANKS).
    vit: Any = model
    x = torch.zeros(1, vit.cfg.in_chans, image_size, image_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        total, per_module = _flop_counts(model, x)
    model.train(was_training)
    root = type(model).__name__

    def flops(prefix: str) -> int:
        name = f"{root}.{prefix}"
        return per_module.get(name, 0)

    rows = [("tokenizer", "tokenizer", count_parameters(vit.patch_embed) + vit.pos_embed.numel()
             + (vit.cls_token.numel() if vit.cls_token is not None else 0), flops("patch_embed"))]
    for i, block in enumerate(vit.blocks):
        rows.append((f"block {i} attention", "attention",
                     count_parameters(block.attn) + count_parameters(block.norm1),
                     flops(f"blocks.{i}.attn")))
        rows.append((f"block {i} MLP", "MLP", count_parameters(block.mlp) + count_parameters(block.norm2),
                     flops(f"blocks.{i}.mlp")))
    head = [m for m in (vit.norm, vit.attn_pool, vit.head) if m is not None]
    rows.append(("head", "head", sum(map(count_parameters, head)),
                 flops("head") + flops("attn_pool") + flops("norm")))
    df = pd.DataFrame(rows, columns=["component", "kind", "parameters", "flops"])
    if df.parameters.sum() != count_parameters(model) or df.flops.sum() != total:
        raise AssertionError(f"components ({df.parameters.sum()}, {df.flops.sum()}) do not add up "
                             f"to the model ({count_parameters(model)}, {total})")
    return df
