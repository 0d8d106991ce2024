"""Integer-only inference of one Linear layer, as an int8 kernel runs it: int8 inputs
and weights, sums in int32, the bias added in int32, and the output requantized to int8
by a fixed-point multiplier: no float between the int8 input and the int8 output.

With the input affine per tensor, x ≈ s_x (q_x - z_x), the weight symmetric per row,
W_j ≈ s_w,j q_w,j, and the output stored as int8 too, y ≈ s_y (q_y - z_y):

    acc_j = sum_k (q_x,k - z_x) q_w,jk + q_b,j      q_b,j = round(b_j / (s_x s_w,j))
    q_y,j = clamp(z_y + round(M_j acc_j), -128, 127)      M_j = s_x s_w,j / s_y

The bias is stored at the scale of the sums, s_x s_w,j, so that it adds to them as an
integer. M_j is the one real number left. A kernel holds it as an int32 multiplier M0_j
and a right shift n_j, M_j ≈ M0_j 2^-n_j with M0_j in [2^30, 2^31) (31 significant
bits), and computes round(M_j acc_j) as (acc_j M0_j + 2^(n_j - 1)) >> n_j in 64-bit
integers, as gemmlowp and TensorFlow Lite do. The scales s_x and s_y come from
calibration (ranges seen on training images): every multiplier is fixed ahead of time.
"""
from __future__ import annotations

import torch

from .arithmetic import int_range, quant_params, quantize

_ONE = 2 ** 31  # M0 keeps 31 bits: M0 in [2^30, 2^31)


def fixed_point_multiplier(multiplier: torch.Tensor | float,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M0, n) with ``multiplier`` ≈ M0 * 2^-n, elementwise: M0 an int32 in
    [2^30, 2^31) and n an int32 right shift from 1 to 62; the relative error is at most
    2^-31. Raises ValueError for a multiplier that is not positive and finite, or that
    needs a shift outside 1 to 62."""
    m = torch.as_tensor(multiplier, dtype=torch.float64)
    if not bool(torch.isfinite(m).all()) or bool((m <= 0).any()):
        raise ValueError("a requantization multiplier must be positive and finite, got "
                         f"{m.flatten()[:4].tolist()}")
    mantissa, exponent = torch.frexp(m)  # m = mantissa 2^exponent, mantissa in [0.5, 1)
    m0 = torch.round(mantissa * _ONE).long()
    carry = m0 == _ONE  # the mantissa rounded up to 1.0: halve it, one more power of 2
    m0 = torch.where(carry, m0 // 2, m0)
    shift = 31 - exponent.long() - carry.long()
    if bool((shift < 1).any()) or bool((shift > 62).any()):
        raise ValueError("multiplier out of range for a right shift of 1 to 62 bits: "
                         f"{m.min().item():.3g} to {m.max().item():.3g}")
    return m0.to(torch.int32), shift.to(torch.int32)


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor,
               zero_point: torch.Tensor | int, bits: int = 8) -> torch.Tensor:
    """int32 sums to ``bits``-bit integers (int8 up to 8 bits):
    clamp(z + round(acc M0 2^-n)), the product taken in int64 and the rounding a right
    shift that rounds halves up. ``m0`` and ``shift`` broadcast against ``acc`` (one per
    output channel, say)."""
    if acc.dtype != torch.int32:
        raise ValueError(f"requantize takes the int32 sums of an integer product, "
                         f"got {acc.dtype}")
    wide = acc.long() * m0.long()  # |acc| < 2^31 and M0 < 2^31: fits in 63 bits
    n = shift.long()
    half = torch.bitwise_left_shift(torch.ones_like(n), n - 1)  # 2^(n-1): round
    rounded = torch.bitwise_right_shift(wide + half, n)
    q_min, q_max = int_range(bits)
    z = torch.as_tensor(zero_point, dtype=torch.int64)
    q = torch.clamp(rounded + z, q_min, q_max)
    return q.to(torch.int8 if bits <= 8 else torch.int16)


def int8_linear_integer(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None,
                        x_range: tuple[torch.Tensor | float, torch.Tensor | float],
                        y_range: tuple[torch.Tensor | float, torch.Tensor | float],
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One Linear layer, y = x W^T + b, in integers only, as an int8 kernel computes it:
    ``x`` (N, in) quantized affine per tensor over the calibrated ``x_range`` (lo, hi),
    the weight (out, in) symmetric per row, the bias in int32 at scale s_x s_w, the sums
    in int32, and the output requantized to int8 over the calibrated ``y_range`` with a
    fixed-point multiplier per row (``fixed_point_multiplier``, ``requantize``).

    Returns (q_y, details): q_y the int8 output, standing for s_y (q_y - z_y), and the
    tensors of every step (q_x, q_w, q_b, acc, m0, shift, s_x, z_x, s_w, s_y, z_y)."""
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError("int8_linear_integer takes x of shape (N, in) and a weight of "
                         f"shape (out, in); got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"the bias must hold one value per output "
                         f"({weight.shape[0]}), "
                         f"got shape {tuple(bias.shape)}")
    s_x, z_x = quant_params(x, 8, symmetric=False, lo=x_range[0], hi=x_range[1])
    s_w, _ = quant_params(weight, 8, symmetric=True, dim=0)  # (out, 1)
    s_y, z_y = quant_params(x.new_zeros(()), 8, symmetric=False,
                            lo=y_range[0], hi=y_range[1])
    q_x = quantize(x, s_x, z_x, 8, symmetric=False)
    q_w = quantize(weight, s_w, 0, 8, symmetric=True)
    s_acc = (s_x * s_w).flatten()  # the scale of each output's int32 sums
    b = torch.zeros_like(s_acc) if bias is None else bias.detach().float()
    q_b = torch.round(b / s_acc).to(torch.int32)
    acc = (q_x.to(torch.int32) - z_x) @ q_w.to(torch.int32).T + q_b  # int32 throughout
    m0, shift = fixed_point_multiplier(s_acc.double() / s_y.double())
    q_y = requantize(acc, m0, shift, z_y)
    return q_y, dict(q_x=q_x, q_w=q_w, q_b=q_b, acc=acc, m0=m0, shift=shift,
                     s_x=s_x, z_x=z_x, s_w=s_w, s_y=s_y, z_y=z_y)
