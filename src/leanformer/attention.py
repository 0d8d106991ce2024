"""Scaled dot-product attention, written from the formula.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

The conventions follow ``torch.nn.functional.scaled_dot_product_attention``: any number of
leading batch/head dimensions, and a boolean mask in which True means "may attend".
"""
import math

import torch


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(output, weights)`` for queries ``q (..., L, d_k)``, keys ``k (..., S, d_k)``
    and values ``v (..., S, d_v)``.

    ``mask`` is a boolean tensor that broadcasts to ``(..., L, S)``; True marks the pairs
    that may attend. A float mask is added to the scores, as PyTorch does.
    """
    d_k = q.size(-1)
    # Dividing by sqrt(d_k) keeps the scores at unit variance whatever the head width,
    # so the softmax does not saturate (lesson 01 plots why).
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights


def causal_mask(length: int, device: str | torch.device | None = None) -> torch.Tensor:
    """Boolean (length, length) mask: position i may attend to positions 0..i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean (batch, 1, 1, max_length) mask that hides the padded keys of each sequence.

    The two singleton dimensions broadcast over heads and queries.
    """
    positions = torch.arange(max_length, device=lengths.device)
    return (positions[None, :] < lengths[:, None])[:, None, None, :]
