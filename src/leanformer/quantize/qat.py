"""Quantization-aware training with torchao's fake quantizers, put on and taken off a
model in place (``prepare_qat_``, ``convert_qat_``, as torchao's ``quantize_``), and the
low-bit (intx) quantized model built as a copy from its weights (``intx_quantize``)."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, TypedDict, TypeVar

import torch
from torch import nn

from ..measure.size import count_parameters
from .layers import _linear_only

if TYPE_CHECKING:
    from torchao.quantization.qat import IntxFakeQuantizeConfig

_M = TypeVar("_M", bound=nn.Module)


class IntxScheme(TypedDict):
    """What ``intx_scheme`` returns: the settings of an intx model, as a saved file records them."""

    weight_bits: int
    group_size: int | None
    activations: bool


def qat_configs(weight_bits: int = 4, group_size: int | None = 32, activations: bool = True,
                ) -> tuple[IntxFakeQuantizeConfig | None, IntxFakeQuantizeConfig]:
    """torchao fake-quantization configs (activation, weight) for quantization-aware training:
    weights symmetric at ``weight_bits`` in groups of ``group_size`` along each row (None: one
    scale per row), and, with ``activations``, every Linear input quantized to int8 per token
    (affine) at run time, as ``Int8DynamicActivationIntxWeightConfig`` computes it."""
    from torchao.quantization.granularity import PerAxis
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    dtype = getattr(torch, f"int{weight_bits}")
    granularity = dict(group_size=group_size) if group_size else dict(granularity=PerAxis(0))
    weight = IntxFakeQuantizeConfig(dtype, is_symmetric=True, **granularity)
    act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False) if activations else None
    return act, weight


def prepare_qat_(model: _M, weight_bits: int = 4, group_size: int | None = 32,
                activations: bool = True) -> _M:
    """Put fake quantizers on every Linear layer of ``model``, in place (torchao's
    ``QATConfig(step="prepare")``): the forward pass rounds as the quantized model will, and the
    backward pass lets gradients through the rounding unchanged (the straight-through estimator).
    Without training this is post-training quantization, simulated. Returns ``model``
    itself, so that ``evaluate(prepare_qat_(copy.deepcopy(m), 4), ...)`` reads in one
    line."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    act, weight = qat_configs(weight_bits, group_size, activations)
    quantize_(model, QATConfig(activation_config=act, weight_config=weight, step="prepare"),
              filter_fn=_linear_only(True))
    # setattr: nn.Module.__setattr__ is annotated for tensors and modules only, though it keeps
    # any other value as a plain attribute.
    setattr(model, "qat", {"weight_bits": weight_bits, "group_size": group_size,
                           "activations": activations})
    return model


def convert_qat_(model: _M) -> _M:
    """Take the fake quantizers off again, in place (``QATConfig(step="convert")``):
    plain float layers whose weights were trained to survive the rounding. Save them as
    any float model; the quantized model is rebuilt from them in seconds
    (``intx_quantize``). Returns ``model`` itself."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(step="convert"), filter_fn=_linear_only(True))
    return model


def intx_scheme(weight_bits: int = 4, group_size: int | None = 32,
                activations: bool = True) -> IntxScheme:
    """The settings that ``intx_quantize`` builds a model from, checked, as a plain dict (what a
    saved file's header records): ``weight_bits`` from 1 to 8, ``group_size`` a positive number
    of weights per scale along a row or None (or 0) for one scale per row, ``activations``
    whether each Linear input is quantized to int8 at run time."""
    if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) or not 1 <= weight_bits <= 8:
        raise ValueError(f"weight_bits must be an integer from 1 to 8 (torch.int1..int8), got {weight_bits!r}")
    group_size = group_size or None  # 0, as the command line gives it, means one scale per row
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size must be a positive integer or None (one scale per row), got {group_size!r}")
    if not isinstance(activations, bool):
        raise ValueError(f"activations must be True or False, got {activations!r}")
    return {"weight_bits": weight_bits, "group_size": group_size, "activations": activations}


def intx_form(weight_bits: int = 4, group_size: int | None = 32, activations: bool = True
              ) -> tuple[str, Callable[[nn.Module], nn.Module]]:
    """``intx_quantize`` with these settings as a *form* of a model (``record.Form``): a name
    that says every setting (``intx-w3-per-row-a8``) and the function that builds the quantized
    copy. ``record.predicted_classes(model, data, form=intx_form(3, None))`` reads its answers
    from the record of test predictions when it holds them."""
    scheme = intx_scheme(weight_bits, group_size, activations)
    group = f"g{scheme['group_size']}" if scheme["group_size"] else "per-row"
    name = f"intx-w{weight_bits}-{group}" + ("-a8" if activations else "")

    def build(model: nn.Module) -> nn.Module:
        return intx_quantize(model, scheme["weight_bits"], scheme["group_size"],
                             scheme["activations"])

    return name, build


def intx_quantize(model: nn.Module, weight_bits: int = 4, group_size: int | None = 32,
                  activations: bool = True) -> nn.Module:
    """The real quantized model for a QAT scheme: torchao's ``Int8DynamicActivationIntxWeightConfig``
    (or ``IntxWeightOnlyConfig`` without activations) on a copy of ``model``'s Linear layers. On
    an x86 CPU torchao keeps each low-bit value in a byte of its own (``unpacked_to_int8``).
    The copy's ``quantization`` record holds the scheme, so that ``save_quantized`` can write it
    and ``load_quantized`` rebuild the same model."""
    from torchao.quantization import (Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig,
                                      quantize_)
    from torchao.quantization.granularity import PerAxis, PerGroup

    scheme = intx_scheme(weight_bits, group_size, activations)
    granularity = PerGroup(scheme["group_size"]) if scheme["group_size"] else PerAxis(0)
    dtype = getattr(torch, f"int{weight_bits}")
    config = (Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)
              if activations else IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity))
    out = copy.deepcopy(model).eval()
    quantize_(out, config, filter_fn=_linear_only(True))
    setattr(out, "quantization", {"path": "torchao", "kind": f"int{weight_bits}-intx",
                                  "scheme": scheme, "parameters": count_parameters(model)})
    return out
