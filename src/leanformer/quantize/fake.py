"""Fake quantization of a whole model: weights and layer inputs rounded to the integer grid but
kept in float, to measure what the rounding costs before any int8 kernel runs."""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Collection, Iterator, Mapping

import torch
from torch import nn

from ..evaluate import evaluate
from .arithmetic import fake_quantize
from .layers import quantizable_layers


@torch.no_grad()
def fake_quantize_weights(model: nn.Module, bits: int, per_channel: bool = True,
                          symmetric: bool = True, layers: Collection[str] | None = None) -> nn.Module:
    """A copy of ``model`` whose Linear and Conv2d weights (or only those named in ``layers``)
    are rounded to ``bits`` bits, per output channel or per tensor. Biases, LayerNorm and the
    position embedding stay in float, as the int8 kernels keep them."""
    out = copy.deepcopy(model)
    targets = quantizable_layers(out)
    if layers is not None:
        unknown = sorted(set(layers) - set(targets))
        if unknown:
            raise KeyError(f"{unknown} are not quantizable layers; choose from {list(targets)}")
        targets = {n: targets[n] for n in layers}
    for m in targets.values():
        m.weight.copy_(fake_quantize(m.weight, bits, symmetric, dim=0 if per_channel else None))
    return out


@contextlib.contextmanager
def fake_quantized_inputs(model: nn.Module, ranges: Mapping[str, tuple[float, float]],
                          bits: int = 8) -> Iterator[nn.Module]:
    """Within the block, every layer named in ``ranges`` sees its input rounded to ``bits`` bits,
    affine per tensor over its calibrated (min, max): what a static scheme does to activations."""
    layers = dict(model.named_modules())

    def hook(m: nn.Module, args: tuple[torch.Tensor, ...], lo: float,
             hi: float) -> tuple[torch.Tensor, ...]:
        return (fake_quantize(args[0], bits, symmetric=False, lo=lo, hi=hi),) + tuple(args[1:])

    handles = [layers[n].register_forward_pre_hook(lambda m, a, lo=lo, hi=hi: hook(m, a, lo, hi))
               for n, (lo, hi) in ranges.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def layer_sensitivity(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, bits: int,
                      per_channel: bool = True) -> dict[str, float]:
    """Accuracy of ``model`` with one layer at a time rounded to ``bits`` bits (the others in
    float): {layer name: accuracy}. The layers whose rounding costs most are the ones to keep in
    higher precision."""
    return {name: evaluate(fake_quantize_weights(model, bits, per_channel, layers=[name]),
                           images, labels)[0]
            for name in quantizable_layers(model)}
