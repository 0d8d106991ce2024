"""Quantization by hand: the arithmetic of storing and computing with small integers instead
of 32-bit floats, written out in tensors (no library kernels).


An affine quantizer with ``b`` bits maps a real number x to an integer q in [q_min, q_max]:

    q = clamp(round(x / s) + z, q_min, q_max),        x_hat = s * (q - z)

The scale ``s`` is the width of one integer step and the zero-point ``z`` the integer that stands
for 0.0. From the range [lo, hi] that must be covered (always containing 0, so that 0.0 is exact):

    affine:     s = (hi - lo) / (q_max - q_min),   z = q_min - round(lo / s)
    symmetric:  s = max(|lo|, |hi|) / q_max,        z = 0, and q_min = -q_max

A value inside the range is off by at most s/2 after the round trip; a value outside is clipped.
One scale per tensor must cover its largest value, so a single outlier widens every step; one
scale per output channel (per row of a weight matrix) lets each row use its own range.

A linear layer y = x W^T + b in integers: with x ≈ s_x (q_x - z_x) and W ≈ s_w q_w (symmetric,
per row), y ≈ s_x s_w [(q_x - z_x) q_w^T] + b. The bracket is a product of integers, summed in
int32 (a sum of k products of two int8 values needs up to 2 * 7 + log2(k) bits), and is rescaled
to float once per output. That is what the int8 kernels (VNNI, AMX) compute; ``integer``
carries it through to an int8 output without any float (``int8_linear_integer``).
"""
from __future__ import annotations

import torch


def int_range(bits: int, symmetric: bool = False) -> tuple[int, int]:
    """(q_min, q_max) of a signed ``bits``-bit integer; symmetric drops the lowest value, so that
    the range is centred on 0 (int8: -127..127)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    q_max = 2 ** (bits - 1) - 1
    return (-q_max if symmetric else -q_max - 1), q_max


def _reduce(x: torch.Tensor, fn: str, dim: int | None) -> torch.Tensor:
    """``fn`` ("amin"/"amax") over all of ``x``, or over every dimension except ``dim`` (kept
    for broadcasting)."""
    if dim is None:
        return getattr(x, fn)()
    dims = [d for d in range(x.ndim) if d != dim % x.ndim]
    return getattr(x, fn)(dim=dims, keepdim=True)


def quant_params(x: torch.Tensor, bits: int = 8, symmetric: bool = True, dim: int | None = None,
                 lo: torch.Tensor | float | None = None,
                 hi: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero-point that cover ``x`` (or the given range ``lo``..``hi``).

    dim: None for one scale for the whole tensor (per tensor); 0 for one per output channel
         (a row of a Linear weight, a filter of a Conv2d weight).
    Returns (scale, zero_point) as float32 and int32 tensors shaped for broadcasting against x.
    """
    x = x.detach().float()
    lo = _reduce(x, "amin", dim) if lo is None else torch.as_tensor(lo, dtype=torch.float32)
    hi = _reduce(x, "amax", dim) if hi is None else torch.as_tensor(hi, dtype=torch.float32)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)  # 0.0 must be representable
    q_min, q_max = int_range(bits, symmetric)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = torch.maximum(-lo, hi) / q_max
        scale = torch.clamp(scale, min=tiny)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (q_max - q_min), min=tiny)
        zero_point = (q_min - torch.round(lo / scale)).clamp(q_min, q_max).to(torch.int32)
    return scale, zero_point


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, bits: int = 8,
             symmetric: bool = True) -> torch.Tensor:
    """Integers q = clamp(round(x / s) + z): int8 up to 8 bits, int16 above."""
    q_min, q_max = int_range(bits, symmetric)
    q = torch.clamp(torch.round(x.float() / scale) + zero_point, q_min, q_max)
    return q.to(torch.int8 if bits <= 8 else torch.int16)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int) -> torch.Tensor:
    """Back to float: x_hat = s * (q - z)."""
    return scale * (q.float() - zero_point)


def fake_quantize(x: torch.Tensor, bits: int = 8, symmetric: bool = True, dim: int | None = None,
                  lo: torch.Tensor | float | None = None,
                  hi: torch.Tensor | float | None = None) -> torch.Tensor:
    """``x`` after a quantize/dequantize round trip: float values that lie on the integer grid."""
    scale, zero_point = quant_params(x, bits, symmetric, dim, lo, hi)
    return dequantize(quantize(x, scale, zero_point, bits, symmetric), scale, zero_point).to(x.dtype)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                x_range: tuple[torch.Tensor | float, torch.Tensor | float] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """y = x W^T + b computed as an int8 kernel does it, written out.

    The input is quantized affine per tensor (over ``x_range`` = (lo, hi) if given, as a static
    scheme calibrated beforehand would; otherwise over x itself, as a dynamic one does), the
    weight symmetric per output row. The integer products are summed in int32, then rescaled.
    Returns (y, details) with the integer tensors, for inspection.
    """
    lo, hi = x_range if x_range is not None else (None, None)
    s_x, z_x = quant_params(x, 8, symmetric=False, lo=lo, hi=hi)
    s_w, _ = quant_params(weight, 8, symmetric=True, dim=0)  # (out, 1)
    q_x = quantize(x, s_x, z_x, 8, symmetric=False)
    q_w = quantize(weight, s_w, 0, 8, symmetric=True)
    acc = (q_x.to(torch.int32) - z_x) @ q_w.to(torch.int32).T  # int32 accumulation
    y = acc.float() * (s_x * s_w.T)  # one rescale per output
    if bias is not None:
        y = y + bias
    return y, dict(q_x=q_x, q_w=q_w, acc=acc, s_x=s_x, z_x=z_x, s_w=s_w)
