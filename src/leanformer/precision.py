"""Number formats and mixed precision in one place: what each format can hold, which processor
instructions make bf16 fast, the autocast context, and loss scaling. ``fit``, ``measure_costs``,
the benchmark and lesson 07 all use these.

Two kinds of argument, one type each:

* a **precision**, how a model runs, is a ``Precision`` string: "auto" (bf16 where the
  hardware computes in it, else float32), "fp32" (plain float32), or "bf16" or "fp16"
  (autocast to that format). Every function of the package that runs a model takes one
  (``autocast``, ``grad_scaler``, ``evaluate``, ``measure_costs``, ``time_training``,
  ``Recipe.precision``), and ``autocast_dtype`` alone turns it into the ``torch.dtype``
  that ``torch.autocast`` wants;
* a **number format**, what a tensor is stored in, is a ``torch.dtype``
  (``format_facts``, ``flush_share``, ``overflow_share``).

Autocast runs the matrix products (``nn.Linear``, convolutions, attention) in a low-precision
format while the weights, the optimizer and the residual additions stay in float32 ("mixed"
precision). float16 gradients underflow, so float16 training scales the loss first
(``grad_scaler``); bfloat16 has float32's exponent range and needs no scaling.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

import torch

from .machine import cpu_flags

# (sign, exponent, mantissa) bits of each format.
LAYOUT = {torch.float32: (1, 8, 23), torch.float16: (1, 5, 10), torch.bfloat16: (1, 8, 7)}
NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# How a model runs: see the module's docstring.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


def format_facts(dtype: torch.dtype) -> dict[str, float]:
    """What ``dtype`` can hold, from ``torch.finfo`` and its bit layout: the largest value, the
    smallest normal and subnormal numbers, the machine epsilon (the gap after 1.0), and the
    largest integer up to which every integer is exact (2 to the power mantissa bits + 1)."""
    sign, exponent, mantissa = LAYOUT[dtype]
    fi = torch.finfo(dtype)
    return {"bits": fi.bits, "sign": sign, "exponent": exponent, "mantissa": mantissa,
            "max": fi.max, "smallest normal": fi.smallest_normal,
            "smallest subnormal": fi.smallest_normal * 2.0**-mantissa, "eps": fi.eps,
            "largest exact integer": 2 ** (mantissa + 1)}


def bf16_support(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes in bf16 natively, and the instructions that say so.

    On a CPU: AMX-BF16 (Intel Sapphire Rapids and later) multiplies bf16 tiles in dedicated
    matrix units; AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) has bf16 dot
    products in the vector units. Without either, PyTorch widens bf16 to float32 to compute, and
    bf16 can be slower than float32."""
    if torch.device(device).type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA GPU {torch.cuda.get_device_name()}: bf16 {'supported' if ok else 'not supported'}"
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True, "AMX-BF16: bf16 matrix tiles" + (" and AVX512-BF16" if "avx512_bf16" in flags else "")
    if "avx512_bf16" in flags:
        return True, "AVX512-BF16: bf16 dot products in the vector units (no AMX)"
    return False, "neither AVX512-BF16 nor AMX-BF16: bf16 is widened to float32 to compute"


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX): ``bf16_support``'s answer."""
    return bf16_support("cpu")[0]


def resolve_precision(precision: Precision, device: str | torch.device) -> Precision:
    """``precision`` with "auto" replaced by what it means on ``device``: "bf16" where
    the hardware computes in bf16 (a CUDA GPU without bf16 gets "fp16"), else "fp32".
    Any other value comes back as it is; one that is not a ``Precision`` raises
    ``ValueError``."""
    if precision not in PRECISIONS:
        choices = f"{', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}"
        raise ValueError(f"precision must be {choices}, got {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast_dtype(precision: Precision,
                   device: str | torch.device) -> torch.dtype | None:
    """The dtype that ``torch.autocast`` should use for ``precision`` on ``device``, or
    None for plain float32: the one place where a ``Precision`` becomes a dtype."""
    resolved = resolve_precision(precision, device)
    return None if resolved == "fp32" else NAMES[resolved]


def autocast(precision: Precision,
             device: str | torch.device) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` to ``precision``'s format on ``device``'s type, or a context
    that does nothing for "fp32"."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(precision: Precision,
                device: str | torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler where the gradients are float16 (whose range is too narrow for small
    gradients), else None: bf16 and float32 have float32's range."""
    if autocast_dtype(precision, device) != torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def flush_share(values: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> float:
    """The share of the non-zero entries of ``values`` (float32) that become exactly zero when
    multiplied by ``scale`` and stored in ``dtype``: what underflow takes."""
    nonzero = _nonzero(values) * scale
    return ((nonzero.to(dtype) == 0).float().mean().item()) if nonzero.numel() else 0.0


def overflow_share(values: torch.Tensor, dtype: torch.dtype, scale: float = 1.0) -> float:
    """The share of the non-zero entries of ``values`` that become infinite when multiplied by
    ``scale`` and stored in ``dtype``: what too large a loss scale does."""
    nonzero = _nonzero(values) * scale
    return ((nonzero.to(dtype).isinf()).float().mean().item()) if nonzero.numel() else 0.0


def _nonzero(values: torch.Tensor) -> torch.Tensor:
    values = values.detach().float().flatten()
    return values[values != 0]


def output_dtypes(model: torch.nn.Module, images: torch.Tensor, precision: Precision,
                  device: str | torch.device = "cpu") -> list[dict[str, str]]:
    """Run ``model`` on ``images`` under autocast to ``precision`` and return, for every
    module in call order, its name, class and the dtype of its input and output: which
    layers run in low precision and which stay in float32."""
    rows: list[dict[str, str]] = []
    handles = []

    def first_tensor(obj: object) -> torch.Tensor | None:
        if isinstance(obj, torch.Tensor):
            return obj
        if isinstance(obj, (tuple, list)):
            return next((t for t in map(first_tensor, obj) if t is not None), None)
        return None

    def hook(name: str) -> Callable[[torch.nn.Module, tuple[Any, ...], Any], None]:
        def record(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            t_in, t_out = first_tensor(args), first_tensor(output)
            rows.append({"module": name or "(model)", "class": type(module).__name__,
                         "input": str(t_in.dtype).replace("torch.", "") if t_in is not None else "",
                         "output": str(t_out.dtype).replace("torch.", "") if t_out is not None else ""})
        return record

    for name, module in model.named_modules():
        handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), autocast(precision, device):
            model(images)
    finally:
        for h in handles:
            h.remove()
    return rows


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor,
                           precision: Precision,
                           device: str | torch.device = "cpu") -> int:
    """Bytes of the tensors that one forward pass on ``images`` under autocast to
    ``precision`` keeps for the backward pass: the activation memory of a training step,
    which grows with the batch (the weights, gradients and optimizer state stay float32
    under autocast). The model is left as it was: in its mode, its gradients untouched
    (no backward pass runs)."""
    total = 0
    seen: set[tuple[int, torch.dtype, tuple[int, ...]]] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        if key not in seen and not isinstance(t, torch.nn.Parameter):
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    was_training = model.training
    model.train()
    try:
        with (torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
              autocast(precision, device)):
            model(images)  # the graph, and what it saved, goes when the output does
    finally:
        model.train(was_training)
    return total


# Which aten operations make up each kind of work, for ``time_by_kind``. A ``copy_`` counts as a
# format cast only when a conversion (``_to_copy``) called it; otherwise it is a layout copy
# (``contiguous``, ``reshape``) and counts as "other".
KINDS = {
    "matrix products": ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution",
                        "_convolution", "mkldnn_convolution", "convolution_backward",
                        "_scaled_dot_product_flash_attention_for_cpu",
                        "_scaled_dot_product_flash_attention_for_cpu_backward"),
    "softmax and LayerNorm": ("_softmax", "_softmax_backward_data", "native_layer_norm",
                              "native_layer_norm_backward"),
    "GELU, ReLU, pooling": ("gelu", "gelu_backward", "relu", "threshold_backward",
                            "max_pool2d_with_indices", "max_pool2d_with_indices_backward"),
    "format casts": ("_to_copy",),
}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence what C++ code writes to the process's stderr (the profiler's start and stop
    lines), which Python's ``sys.stderr`` cannot catch."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def time_by_kind(step: Callable[[], object], repeats: int = 3) -> dict[str, float]:
    """Run ``step()`` (a training or inference step) ``repeats`` times under the PyTorch profiler
    and share its CPU time among the kinds of work in ``KINDS``, plus "other": element-wise
    arithmetic (the optimizer's included), reshapes, the loss and the framework's own work.
    Self time only, so nothing is counted twice."""
    from torch.profiler import ProfilerActivity, profile

    step()  # warm-up: kernel selection and caches
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    kind_of = {f"aten::{op}": kind for kind, ops in KINDS.items() for op in ops}
    shares = {kind: 0.0 for kind in (*KINDS, "other")}
    for event in prof.events():
        kind = kind_of.get(event.name, "other")
        parent = event.cpu_parent
        if event.name == "aten::copy_" and parent is not None and parent.name == "aten::_to_copy":
            kind = "format casts"
        shares[kind] += event.self_cpu_time_total
    total = sum(shares.values())
    return {kind: t / total for kind, t in shares.items()}
