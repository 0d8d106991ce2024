"""The library paths to an int8 model: torchao's ``quantize_``, the legacy eager
``quantize_dynamic``, and PT2E static quantization with the x86 Inductor quantizer; ``PATHS``
names each, and ``quantize_model`` runs one (and compiles the result on request). Also what this
machine's processor offers for int8 arithmetic."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..machine import cpu_flags
from ..measure.size import count_parameters
from .compiled import _example, compile_for_cpu
from .layers import _linear_only

if TYPE_CHECKING:
    from torchao.core.config import AOBaseConfig


def machine_int8_support() -> dict[str, bool | str]:
    """What this machine's processor offers for int8 and bf16 arithmetic, from its flags:
    a dict with 'vnni' (AVX512-VNNI or AVX-VNNI: int8 dot products), 'amx_int8', 'amx_bf16' and
    'avx512_bf16' as booleans, and a 'summary' sentence."""
    flags = set(cpu_flags())
    info: dict[str, bool | str] = {"avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "amx_int8": "amx_int8" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags}
    int8 = ("AMX-INT8 tiles" if info["amx_int8"] else "AVX512-VNNI" if info["avx512_vnni"]
            else "AVX-VNNI" if info["avx_vnni"] else "no int8 dot-product instructions")
    bf16 = ("AMX-BF16" if info["amx_bf16"] else "AVX512-BF16" if info["avx512_bf16"]
            else "no bf16 instructions")
    info["vnni"] = info["avx512_vnni"] or info["avx_vnni"]
    info["summary"] = f"int8: {int8}; bf16: {bf16}"
    return info


TORCHAO_CONFIGS = ("int8-dynamic", "int8-weight-only", "int4-weight-only")


def torchao_config(kind: str) -> AOBaseConfig:
    """The torchao config object for ``kind``: "int8-dynamic" (int8 weights per channel, int8
    activations quantized per token at run time), "int8-weight-only" (int8 weights, float
    activations), "int4-weight-only" (4-bit weights in groups of 32)."""
    from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                      Int8WeightOnlyConfig)

    # set_inductor_config=False: by default these configs change Inductor's global settings when
    # applied; leaving them alone compiles every model of a lesson under the same settings.
    if kind == "int8-dynamic":
        return Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    if kind == "int8-weight-only":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if kind == "int4-weight-only":
        return Int4WeightOnlyConfig(group_size=32)
    raise ValueError(f"unknown torchao kind {kind!r}; choose one of {', '.join(TORCHAO_CONFIGS)}")


def torchao_quantize(model: nn.Module, kind: str = "int8-dynamic") -> nn.Module:
    """A copy of ``model`` with its Linear layers quantized by torchao's ``quantize_``. torchao's
    configs quantize Linear layers only: the tokenizer's convolutions stay in float."""
    from torchao.quantization import quantize_

    out = copy.deepcopy(model).eval()
    quantize_(out, torchao_config(kind), filter_fn=_linear_only(True))
    # setattr: nn.Module.__setattr__ is annotated for tensors and modules only, though it keeps
    # any other value as a plain attribute.
    setattr(out, "quantization", {"path": "torchao", "kind": kind, "parameters": count_parameters(model)})
    return out


def has_legacy_quantize_dynamic() -> bool:
    """Whether this PyTorch still has the eager-mode ``torch.ao.quantization.quantize_dynamic``
    (deprecated: its successor is torchao)."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return torch.backends.quantized.engine != "none"


def legacy_quantize_dynamic(model: nn.Module) -> nn.Module:
    """The legacy eager path: Linear layers become ``torch.ao.nn.quantized.dynamic.Linear``
    (int8 weights per tensor, activations quantized at run time by fbgemm/oneDNN kernels)."""
    if not has_legacy_quantize_dynamic():
        raise RuntimeError("this PyTorch has no torch.ao.quantization.quantize_dynamic; use "
                           "torchao_quantize(model, 'int8-dynamic') instead")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the lesson says it in words
        out = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear},
                                                     dtype=torch.qint8)
    setattr(out, "quantization", {"path": "legacy", "kind": "int8-dynamic",
                                  "parameters": count_parameters(model)})
    return out


def pt2e_quantize(model: nn.Module, calibration_images: torch.Tensor, batch_size: int = 256,
                  max_batch: int = 1024) -> torch.fx.GraphModule:
    """PT2E static int8: ``torch.export`` the model, let ``X86InductorQuantizer`` annotate it
    (convolutions and Linear layers: int8 weights per channel, int8 activations per tensor with
    ranges fixed by calibration), observe ``calibration_images`` (uint8 or float in [0, 1]) and
    convert. Returns the converted ``torch.fx.GraphModule``; compile it (``compile_for_cpu``) to
    get the int8 kernels, since the eager graph runs quantize and dequantize steps around float
    operations. Its batch dimension is dynamic, up to ``max_batch``."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    model = copy.deepcopy(model).eval()
    batch = torch.export.Dim("batch", max=max_batch)
    exported = torch.export.export(model, (_example(batch_size),), dynamic_shapes=({0: batch},)).module()
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration_images), batch_size):
            x = calibration_images[i:i + batch_size]
            prepared(x.float().div(255) if x.dtype == torch.uint8 else x.float())
    converted = _drop_unused(convert_pt2e(prepared))
    allow_exported_model_train_eval(converted)  # .eval() is then a no-op, as for any served model
    setattr(converted, "provenance", getattr(model, "provenance", None))
    setattr(converted, "quantization", {"path": "pt2e", "kind": "int8-static",
                                        "parameters": count_parameters(model)})
    return converted


def _drop_unused(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Remove the parameters and buffers that no node of the graph reads. ``convert_pt2e``
    leaves the float weights attached beside their int8 copies; only the int8 ones are used."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph_module.named_parameters()] + [n for n, _ in graph_module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)
    return graph_module


def _calibrated_pt2e(model: nn.Module, calibration_images: torch.Tensor | None) -> nn.Module:
    """``pt2e_quantize``, refusing to run without the calibration images it needs."""
    if calibration_images is None:
        raise ValueError("PT2E static quantization needs calibration_images (uint8 or float in [0, 1])")
    return pt2e_quantize(model, calibration_images)


# The int8 paths by name, each a function (float model, calibration images) -> quantized copy;
# only PT2E uses the images, the others take None.
PATHS: dict[str, Callable[[nn.Module, torch.Tensor | None], nn.Module]] = {
    "torchao int8 dynamic": lambda model, images: torchao_quantize(model, "int8-dynamic"),
    "torchao int8 weight-only": lambda model, images: torchao_quantize(model, "int8-weight-only"),
    "PT2E static int8": _calibrated_pt2e,
    "legacy quantize_dynamic": lambda model, images: legacy_quantize_dynamic(model),
}


def quantize_model(model: nn.Module, path: str, calibration_images: torch.Tensor | None = None,
                   compile: bool = False) -> tuple[nn.Module, float | None]:
    """A quantized copy of ``model`` by the int8 path named ``path`` (a key of ``PATHS``), and
    with ``compile`` compiled for this CPU. Returns (model, compile seconds or None)."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {', '.join(PATHS)}")
    quantized = PATHS[path](model, calibration_images)
    if not compile:
        return quantized, None
    return compile_for_cpu(quantized)
