"""Quantization: store and compute with small integers instead of 32-bit floats.

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
to float once per output. That is what the int8 kernels (VNNI, AMX) compute.

This module holds the arithmetic by hand, fake quantization of a whole model (the rounding
simulated in float), and thin wrappers over the library paths: torchao's ``quantize_``, PT2E
static quantization with the x86 Inductor quantizer, the legacy ``quantize_dynamic``, compiling
for the CPU, and saving and loading each result.
"""
import contextlib
import copy
import gzip
import io
import json
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError
from .files import atomic_write

# --- the arithmetic by hand --------------------------------------------------------------------


def int_range(bits: int, symmetric: bool = False):
    """(q_min, q_max) of a signed ``bits``-bit integer; symmetric drops the lowest value, so that
    the range is centred on 0 (int8: -127..127)."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    q_max = 2 ** (bits - 1) - 1
    return (-q_max if symmetric else -q_max - 1), q_max


def _reduce(x, fn, dim):
    """``fn`` ("amin"/"amax") over all of ``x``, or over every dimension except ``dim`` (kept
    for broadcasting)."""
    if dim is None:
        return getattr(x, fn)()
    dims = [d for d in range(x.ndim) if d != dim % x.ndim]
    return getattr(x, fn)(dim=dims, keepdim=True)


def quant_params(x: torch.Tensor, bits: int = 8, symmetric: bool = True, dim: int | None = None,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None):
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


def quantize(x, scale, zero_point, bits: int = 8, symmetric: bool = True):
    """Integers q = clamp(round(x / s) + z): int8 up to 8 bits, int16 above."""
    q_min, q_max = int_range(bits, symmetric)
    q = torch.clamp(torch.round(x.float() / scale) + zero_point, q_min, q_max)
    return q.to(torch.int8 if bits <= 8 else torch.int16)


def dequantize(q, scale, zero_point):
    """Back to float: x_hat = s * (q - z)."""
    return scale * (q.float() - zero_point)


def fake_quantize(x, bits: int = 8, symmetric: bool = True, dim: int | None = None, lo=None, hi=None):
    """``x`` after a quantize/dequantize round trip: float values that lie on the integer grid."""
    scale, zero_point = quant_params(x, bits, symmetric, dim, lo, hi)
    return dequantize(quantize(x, scale, zero_point, bits, symmetric), scale, zero_point).to(x.dtype)


def int8_linear(x, weight, bias=None, x_range=None):
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


# --- where a model's numbers live ------------------------------------------------------------

QUANTIZABLE = (nn.Linear, nn.Conv2d)


def quantizable_layers(model, tokenizer: bool = True):
    """{name: module} of the layers that hold weight matrices (Linear and Conv2d), in order.
    ``tokenizer=False`` leaves out the convolutions of the tokenizer (``patch_embed``)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and (tokenizer or not name.startswith("patch_embed"))}


@torch.no_grad()
def _see_inputs(model, images, names, see, batch_size):
    """Run ``model`` over ``images`` (uint8 or float in [0, 1]) and call ``see(name, input)`` with
    the input of every layer named in ``names``."""
    layers = dict(model.named_modules())
    missing = [n for n in names if n not in layers]
    if missing:
        raise KeyError(f"no layer named {missing} in the model; choose from quantizable_layers(model)")
    hooks = [layers[n].register_forward_pre_hook(lambda m, args, n=n: see(n, args[0].detach()))
             for n in names]
    try:
        model.eval()
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            model(x.float().div(255) if x.dtype == torch.uint8 else x.float())
    finally:
        for h in hooks:
            h.remove()


def capture_inputs(model, images, names, batch_size=500):
    """{name: the input tensor of that layer} over ``images``, caught with forward hooks; each is
    the concatenation over batches (keep ``images`` small)."""
    caught = {n: [] for n in names}
    _see_inputs(model, images, names, lambda n, x: caught[n].append(x.float()), batch_size)
    return {n: torch.cat(v) for n, v in caught.items()}


def activation_ranges(model, images, names=None, batch_size=500):
    """{name: (min, max)} of the inputs that each layer sees on ``images``: the calibration a
    static scheme needs. Kept as running extremes, so any number of images fits in memory."""
    names = list(quantizable_layers(model)) if names is None else list(names)
    ranges = {}

    def keep(n, x):
        lo, hi = x.min().item(), x.max().item()
        old = ranges.get(n, (lo, hi))
        ranges[n] = (min(old[0], lo), max(old[1], hi))

    _see_inputs(model, images, names, keep, batch_size)
    return ranges


def flops_by_kind(model, image_size=32):
    """Forward FLOPs per image of a ``VisionTransformer`` split by what the quantized paths do
    with them: the Linear layers (int8 in every path here), the tokenizer's convolutions (int8
    only where the path quantizes convolutions, as PT2E does) and the attention products Q K^T
    and A V (between two activations, so no path here has an int8 weight for them). Softmax,
    LayerNorm and GELU are not matrix products and count no FLOPs; they stay in float.
    Returns a pandas DataFrame (kind, flops, share); the kinds add up to the model's total."""
    import pandas as pd

    from .measure import _flop_counts

    x = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        total, per_module = _flop_counts(model.eval(), x)
    root = type(model).__name__
    layers = quantizable_layers(model)
    conv = sum(per_module.get(f"{root}.{n}", 0) for n, m in layers.items() if isinstance(m, nn.Conv2d))
    linear = sum(per_module.get(f"{root}.{n}", 0) for n, m in layers.items() if isinstance(m, nn.Linear))
    rows = [("Linear layers", linear), ("tokenizer convolutions", conv),
            ("attention products (Q K^T, A V)", total - linear - conv)]
    df = pd.DataFrame(rows, columns=["kind", "flops"])
    df["share"] = df.flops / total
    return df


# --- fake quantization of a whole model --------------------------------------------------------

@torch.no_grad()
def fake_quantize_weights(model, bits: int, per_channel: bool = True, symmetric: bool = True,
                          layers=None):
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
def fake_quantized_inputs(model, ranges, bits: int = 8):
    """Within the block, every layer named in ``ranges`` sees its input rounded to ``bits`` bits,
    affine per tensor over its calibrated (min, max): what a static scheme does to activations."""
    layers = dict(model.named_modules())

    def hook(m, args, lo, hi):
        return (fake_quantize(args[0], bits, symmetric=False, lo=lo, hi=hi),) + tuple(args[1:])

    handles = [layers[n].register_forward_pre_hook(lambda m, a, lo=lo, hi=hi: hook(m, a, lo, hi))
               for n, (lo, hi) in ranges.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def layer_sensitivity(model, images, labels, bits: int, per_channel: bool = True):
    """Accuracy of ``model`` with one layer at a time rounded to ``bits`` bits (the others in
    float): {layer name: accuracy}. The layers whose rounding costs most are the ones to keep in
    higher precision."""
    from .train import evaluate

    return {name: evaluate(fake_quantize_weights(model, bits, per_channel, layers=[name]),
                           images, labels)[0]
            for name in quantizable_layers(model)}


# --- the library paths ------------------------------------------------------------------------

def machine_int8_support():
    """What this machine's processor offers for int8 and bf16 arithmetic, from its flags:
    a dict with 'vnni' (AVX512-VNNI or AVX-VNNI: int8 dot products), 'amx_int8', 'amx_bf16' and
    'avx512_bf16' as booleans, and a 'summary' sentence."""
    from .measure import cpu_flags

    flags = set(cpu_flags())
    info = {"avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "amx_int8": "amx_int8" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512_bf16": "avx512_bf16" in flags}
    int8 = ("AMX-INT8 tiles" if info["amx_int8"] else "AVX512-VNNI" if info["avx512_vnni"]
            else "AVX-VNNI" if info["avx_vnni"] else "no int8 dot-product instructions")
    bf16 = ("AMX-BF16" if info["amx_bf16"] else "AVX512-BF16" if info["avx512_bf16"]
            else "no bf16 instructions")
    info["vnni"] = info["avx512_vnni"] or info["avx_vnni"]
    info["summary"] = f"int8: {int8}; bf16: {bf16}"
    return info


def _linear_only(tokenizer: bool):
    def keep(module, fqn):
        return isinstance(module, nn.Linear) and (tokenizer or not fqn.startswith("patch_embed"))
    return keep


TORCHAO_CONFIGS = ("int8-dynamic", "int8-weight-only", "int4-weight-only")


def torchao_config(kind: str):
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


def torchao_quantize(model, kind: str = "int8-dynamic"):
    """A copy of ``model`` with its Linear layers quantized by torchao's ``quantize_``. torchao's
    configs quantize Linear layers only: the tokenizer's convolutions stay in float."""
    from torchao.quantization import quantize_

    out = copy.deepcopy(model).eval()
    quantize_(out, torchao_config(kind), filter_fn=_linear_only(True))
    out.quantization = {"path": "torchao", "kind": kind}
    return out


def has_legacy_quantize_dynamic():
    """Whether this PyTorch still has the eager-mode ``torch.ao.quantization.quantize_dynamic``
    (deprecated: its successor is torchao)."""
    try:
        from torch.ao.quantization import quantize_dynamic  # noqa: F401
    except ImportError:
        return False
    return torch.backends.quantized.engine != "none"


def legacy_quantize_dynamic(model):
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
    out.quantization = {"path": "legacy", "kind": "int8-dynamic"}
    return out


def _example(batch_size=256):
    return torch.rand(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def pt2e_quantize(model, calibration_images, batch_size=256, max_batch=1024):
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
    converted.provenance = getattr(model, "provenance", None)
    converted.quantization = {"path": "pt2e", "kind": "int8-static"}
    return converted


class CompiledForCPU(nn.Module):
    """A model compiled by ``compile_for_cpu`` for inference (it computes no gradients): one
    static graph per batch size it was compiled for. A batch of another size is cut into pieces
    of the largest compiled size and the last piece padded to the smallest size that holds it,
    so that any batch runs on the compiled graphs and nothing is compiled again."""

    def __init__(self, model, batch_sizes, freezing):
        super().__init__()
        self.model = model
        self._compiled = [torch.compile(model, dynamic=False)]  # in a list: not a submodule to train()
        self.batch_sizes = sorted(batch_sizes)
        self.freezing = freezing
        self.quantization = getattr(model, "quantization", {"path": "float", "kind": "fp32"})
        self.provenance = getattr(model, "provenance", None)  # the training record, for measure_costs
        super().train(False)

    def train(self, mode: bool = True):
        """Stays in eval mode: the graphs were compiled for inference, and switching the model
        (its dropout, say) to training would make them compile again."""
        return super().train(False)

    @property
    def uncompiled(self):
        """The model as it was before compiling (what ``measure_costs`` counts FLOPs on)."""
        return self.model

    def _run(self, x):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=self.freezing):
            return self._compiled[0](x)

    def forward(self, x):
        # The graphs were compiled without gradients for ordinary tensors. A tensor made under
        # torch.inference_mode carries other dispatch keys, and a call with gradients on is
        # another global state: either would make every graph compile again.
        with torch.inference_mode(False), torch.no_grad():
            if x.is_inference():
                x = x.clone()
            n = x.shape[0]
            if n in self.batch_sizes:
                return self._run(x)
            step, out = self.batch_sizes[-1], []
            for i in range(0, n, step):
                piece = x[i:i + step]
                size = next(b for b in self.batch_sizes if b >= len(piece))
                pad = piece.new_zeros((size - len(piece), *piece.shape[1:]))
                out.append(self._run(torch.cat([piece, pad]))[:len(piece)])
            return torch.cat(out)


def _drop_unused(graph_module):
    """Remove the parameters and buffers that no node of the graph reads. ``convert_pt2e``
    leaves the float weights attached beside their int8 copies; only the int8 ones are used."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name in [n for n, _ in graph_module.named_parameters()] + [n for n, _ in graph_module.named_buffers()]:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)
    return graph_module


def compile_for_cpu(model, batch_sizes=(1, 256), freezing=True):
    """``torch.compile`` ``model`` for inference, and compile it now, once per batch size in
    ``batch_sizes``. With ``freezing`` Inductor treats the weights as constants: it folds the
    dequantize steps into prepacked int8 weights and picks the int8 kernels
    (``torch._inductor.config.freezing``). Returns (``CompiledForCPU``, compile seconds)."""
    compiled = CompiledForCPU(model, batch_sizes, freezing)
    t0 = time.perf_counter()
    with torch.no_grad():
        for n in compiled.batch_sizes:
            compiled(_example(n))
    return compiled, time.perf_counter() - t0


# The int8 paths by name, each a function (float model, calibration images) -> quantized copy.
PATHS = {
    "torchao int8 dynamic": lambda model, images: torchao_quantize(model, "int8-dynamic"),
    "torchao int8 weight-only": lambda model, images: torchao_quantize(model, "int8-weight-only"),
    "PT2E static int8": lambda model, images: pt2e_quantize(model, images),
    "legacy quantize_dynamic": lambda model, images: legacy_quantize_dynamic(model),
}


def quantize_model(model, path: str, calibration_images=None, compile: bool = False):
    """A quantized copy of ``model`` by the int8 path named ``path`` (a key of ``PATHS``), and
    with ``compile`` compiled for this CPU. Returns (model, compile seconds or None)."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {', '.join(PATHS)}")
    if path.startswith("PT2E") and calibration_images is None:
        raise ValueError("PT2E static quantization needs calibration_images (uint8 or float in [0, 1])")
    quantized = PATHS[path](model, calibration_images)
    if not compile:
        return quantized, None
    return compile_for_cpu(quantized)


# --- quantization-aware training --------------------------------------------------------------

def qat_configs(weight_bits: int = 4, group_size: int | None = 32, activations: bool = True):
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


def prepare_qat(model, weight_bits: int = 4, group_size: int | None = 32, activations: bool = True):
    """Put fake quantizers on every Linear layer of ``model``, in place (torchao's
    ``QATConfig(step="prepare")``): the forward pass rounds as the quantized model will, and the
    backward pass lets gradients through the rounding unchanged (the straight-through estimator).
    Without training this is post-training quantization, simulated."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    act, weight = qat_configs(weight_bits, group_size, activations)
    quantize_(model, QATConfig(activation_config=act, weight_config=weight, step="prepare"),
              filter_fn=_linear_only(True))
    model.qat = {"weight_bits": weight_bits, "group_size": group_size, "activations": activations}
    return model


def convert_qat(model):
    """Take the fake quantizers off again (``QATConfig(step="convert")``): plain float layers
    whose weights were trained to survive the rounding. Save them as any float model; the
    quantized model is rebuilt from them in seconds (``intx_quantize``)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(step="convert"), filter_fn=_linear_only(True))
    return model


def intx_quantize(model, weight_bits: int = 4, group_size: int | None = 32, activations: bool = True):
    """The real quantized model for a QAT scheme: torchao's ``Int8DynamicActivationIntxWeightConfig``
    (or ``IntxWeightOnlyConfig`` without activations) on a copy of ``model``'s Linear layers. On
    an x86 CPU torchao keeps each low-bit value in a byte of its own (``unpacked_to_int8``)."""
    from torchao.quantization import (Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig,
                                      quantize_)
    from torchao.quantization.granularity import PerAxis, PerGroup

    granularity = PerGroup(group_size) if group_size else PerAxis(0)
    dtype = getattr(torch, f"int{weight_bits}")
    config = (Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity)
              if activations else IntxWeightOnlyConfig(weight_dtype=dtype, granularity=granularity))
    out = copy.deepcopy(model).eval()
    quantize_(out, config, filter_fn=_linear_only(True))
    out.quantization = {"path": "torchao", "kind": f"int{weight_bits}-intx"}
    return out


# --- saving and loading -----------------------------------------------------------------------

QFORMAT = "leanformer-quantized/1"


def save_quantized(model, path, source=None):
    """Write a quantized model (from ``torchao_quantize``, ``legacy_quantize_dynamic`` or
    ``pt2e_quantize``) to ``path``, atomically; a path ending in ``.gz`` is gzipped.

    torchao and legacy models (``.pt``): their state dict (int8 tensors and scales) in a
    ``torch.save`` file with a JSON header that names the path, the kind and the float model's
    config; loaded with ``weights_only=True`` into a skeleton rebuilt from that config.
    PT2E models (``.pt2``): the exported program (``torch.export.save``), which holds the graph
    and its int8 constants and is loaded without running code from the file.
    """
    info = getattr(model, "quantization", None)
    if not info:
        raise ValueError("this model was not made by leanformer.quantize (no .quantization record)")
    path = Path(path)
    buffer = io.BytesIO()  # written whole, then renamed into place
    if info["path"] == "pt2e":
        batch = torch.export.Dim("batch", max=1024)
        torch.export.save(torch.export.export(model, (_example(2),), dynamic_shapes=({0: batch},)), buffer)
    else:
        cfg = getattr(source, "cfg", None) or getattr(model, "cfg", None)
        if cfg is None:
            raise ValueError("pass source=the float model, so that the file records its config")
        header = json.dumps({"format": QFORMAT, **info, "config": cfg.to_dict()})
        torch.save({"header": header, "state": model.state_dict()}, buffer)
    blob = buffer.getvalue()
    if path.suffix == ".gz":
        blob = gzip.compress(blob, compresslevel=9, mtime=0)  # no time stamp: reproducible
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
    return path


def _archive(path):
    """The bytes of a saved model file, gunzipped if its name ends in ``.gz``."""
    blob = Path(path).read_bytes()
    if Path(path).suffix == ".gz":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as e:
            raise CheckpointError(f"{path} is not a readable gzip file ({e}).") from None
    return blob


def tensor_bytes_in_file(path):
    """Bytes of the tensors inside a quantized model file, before any gzip and without the
    file's structure (the pickled layout of a ``torch.save`` file, the graph and the example
    input of an exported program): both are zip archives whose tensors lie in entries under
    ``data/``."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(_archive(path))) as z:
        return sum(i.file_size for i in z.infolist()
                   if "/data/" in f"/{i.filename}" and "sample_inputs" not in i.filename)


def load_quantized(path):
    """Load a file written by ``save_quantized``: (model, record). A PT2E file comes back as the
    exported program's module (compile it for speed)."""
    from .model import ViTConfig, VisionTransformer

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No quantized model at {path}; write one with save_quantized.")
    blob = io.BytesIO(_archive(path))
    if ".pt2" in path.suffixes:
        try:
            program = torch.export.load(blob)
        except Exception as e:
            raise CheckpointError(f"{path} is not a readable exported program ({type(e).__name__}: {e}).") from None
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        module = program.module()
        allow_exported_model_train_eval(module)
        module.quantization = {"path": "pt2e", "kind": "int8-static"}
        return module, dict(module.quantization)
    try:
        saved = torch.load(blob, map_location="cpu", weights_only=True)
        header = json.loads(saved["header"])
    except Exception as e:
        raise CheckpointError(f"{path} is not a leanformer quantized model file "
                              f"({type(e).__name__}: {e}).") from None
    if header.get("format") != QFORMAT:
        raise CheckpointError(f"{path}: format {header.get('format')!r}, expected {QFORMAT!r}.")
    skeleton = VisionTransformer(ViTConfig.from_dict(header["config"])).eval()
    if header["path"] == "torchao":
        model = torchao_quantize(skeleton, header["kind"])
    elif header["path"] == "legacy":
        model = legacy_quantize_dynamic(skeleton)
    else:
        raise CheckpointError(f"{path}: unknown quantization path {header['path']!r}.")
    try:
        model.load_state_dict(saved["state"], assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its tensors do not fit the model its header describes ({e}).") from None
    return model.eval(), {k: header[k] for k in ("path", "kind")}
