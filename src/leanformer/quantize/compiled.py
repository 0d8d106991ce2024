"""Compiling a (quantized) model for the CPU with ``torch.compile``: one static graph per batch
size, compiled up front, and a wrapper that runs any batch on those graphs."""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..measure.size import count_parameters

if TYPE_CHECKING:
    from typing_extensions import Self


def _example(batch_size: int = 256) -> torch.Tensor:
    return torch.rand(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))


class CompiledForCPU(nn.Module):
    """A model compiled by ``compile_for_cpu`` for inference (it computes no gradients): one
    static graph per batch size it was compiled for. A batch of another size is cut into pieces
    of the largest compiled size and the last piece padded to the smallest size that holds it,
    so that any batch runs on the compiled graphs and nothing is compiled again."""

    def __init__(self, model: nn.Module, batch_sizes: Iterable[int], freezing: bool) -> None:
        super().__init__()
        self.model = model
        self._compiled = [torch.compile(model, dynamic=False)]  # in a list: not a submodule to train()
        self.batch_sizes = sorted(batch_sizes)
        self.freezing = freezing
        self.quantization: dict[str, Any] = getattr(model, "quantization", None) or {
            "path": "float", "kind": "fp32", "parameters": count_parameters(model)}
        self.provenance = getattr(model, "provenance", None)  # the training record, for measure_costs
        self.training = False

    def train(self, mode: bool = True) -> Self:
        """Stays in eval mode, and leaves the wrapped model alone: the graphs were compiled for
        inference from a model already in eval mode. Passing the call on would cost more than
        nothing: on a PT2E graph, torchao's ``eval()`` re-exports its dropout patterns, and
        ``torch.export`` resets the compiler's caches, so that every compiled model in the
        process compiles again on its next call."""
        self.training = False
        return self

    @property
    def uncompiled(self) -> nn.Module:
        """The model as it was before compiling (what ``measure_costs`` counts FLOPs on)."""
        return self.model

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=self.freezing):
            return self._compiled[0](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def compile_for_cpu(model: nn.Module, batch_sizes: Iterable[int] = (1, 256),
                    freezing: bool = True) -> tuple[CompiledForCPU, float]:
    """``torch.compile`` ``model`` for inference, and compile it now, once per batch size in
    ``batch_sizes``. With ``freezing`` Inductor treats the weights as constants: it folds the
    dequantize steps into prepacked int8 weights and picks the int8 kernels
    (``torch._inductor.config.freezing``). Returns (``CompiledForCPU``, compile
    seconds).

    As ``torch.compile``'s wrapper does, the one returned holds ``model`` itself rather
    than a copy (``.uncompiled``), and it changes nothing in it: ``model`` must already
    be in eval mode (an exported PT2E graph, whose mode is fixed when it is exported,
    counts as that)."""
    if model.training and not isinstance(model, torch.fx.GraphModule):
        raise ValueError("compile_for_cpu compiles a model for inference, and leaves "
                         "the model it is given as it is: call model.eval() first")
    compiled = CompiledForCPU(model, batch_sizes, freezing)
    t0 = time.perf_counter()
    with torch.no_grad():
        for n in compiled.batch_sizes:
            compiled(_example(n))
    return compiled, time.perf_counter() - t0
