"""Where a model's numbers live: the layers that hold weight matrices, the inputs they see on
some images (caught with forward hooks) and the ranges of those inputs, and how a vision
transformer's FLOPs split between the kinds of layers that the quantized paths treat apart."""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..measure.flops import _flop_counts

if TYPE_CHECKING:
    import pandas as pd

QUANTIZABLE = (nn.Linear, nn.Conv2d)


def quantizable_layers(model: nn.Module, tokenizer: bool = True) -> dict[str, nn.Linear | nn.Conv2d]:
    """{name: module} of the layers that hold weight matrices (Linear and Conv2d), in order.
    ``tokenizer=False`` leaves out the convolutions of the tokenizer (``patch_embed``)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, QUANTIZABLE) and (tokenizer or not name.startswith("patch_embed"))}


@torch.no_grad()
def _see_inputs(model: nn.Module, images: torch.Tensor, names: Collection[str],
                see: Callable[[str, torch.Tensor], None], batch_size: int) -> None:
    """Run ``model`` over ``images`` (uint8 or float in [0, 1]) in eval mode and call
    ``see(name, input)`` with the input of every layer named in ``names``. The model is
    left in the mode it was in."""
    layers = dict(model.named_modules())
    missing = [n for n in names if n not in layers]
    if missing:
        raise KeyError(f"no layer named {missing} in the model; choose from quantizable_layers(model)")
    hooks = [layers[n].register_forward_pre_hook(lambda m, args, n=n: see(n, args[0].detach()))
             for n in names]
    was_training = model.training
    try:
        model.eval()
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            model(x.float().div(255) if x.dtype == torch.uint8 else x.float())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def capture_inputs(model: nn.Module, images: torch.Tensor, names: Collection[str],
                   batch_size: int = 500) -> dict[str, torch.Tensor]:
    """{name: the input tensor of that layer} over ``images``, caught with forward hooks; each is
    the concatenation over batches (keep ``images`` small)."""
    caught: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    _see_inputs(model, images, names, lambda n, x: caught[n].append(x.float()), batch_size)
    return {n: torch.cat(v) for n, v in caught.items()}


def activation_ranges(model: nn.Module, images: torch.Tensor, names: Iterable[str] | None = None,
                      batch_size: int = 500) -> dict[str, tuple[float, float]]:
    """{name: (min, max)} of the inputs that each layer sees on ``images``: the calibration a
    static scheme needs. Kept as running extremes, so any number of images fits in memory."""
    names = list(quantizable_layers(model)) if names is None else list(names)
    ranges: dict[str, tuple[float, float]] = {}

    def keep(n: str, x: torch.Tensor) -> None:
        lo, hi = x.min().item(), x.max().item()
        old = ranges.get(n, (lo, hi))
        ranges[n] = (min(old[0], lo), max(old[1], hi))

    _see_inputs(model, images, names, keep, batch_size)
    return ranges


def flops_by_kind(model: nn.Module, image_size: int = 32) -> pd.DataFrame:
    """Forward FLOPs per image of a ``VisionTransformer`` split by what the quantized paths do
    with them: the Linear layers (int8 in every path here), the tokenizer's convolutions (int8
    only where the path quantizes convolutions, as PT2E does) and the attention products Q K^T
    and A V (between two activations, so no path here has an int8 weight for them). Softmax,
    LayerNorm and GELU are not matrix products and count no FLOPs; they stay in float.
    Returns a pandas DataFrame (kind, flops, share); the kinds add up to the model's total."""
    import pandas as pd

    x = torch.zeros(1, 3, image_size, image_size)
    was_training = model.training
    with torch.no_grad():
        total, per_module = _flop_counts(model.eval(), x)
    model.train(was_training)
    root = type(model).__name__
    layers = quantizable_layers(model)
    conv = sum(per_module.get(f"{root}.{n}", 0) for n, m in layers.items() if isinstance(m, nn.Conv2d))
    linear = sum(per_module.get(f"{root}.{n}", 0) for n, m in layers.items() if isinstance(m, nn.Linear))
    rows = [("Linear layers", linear), ("tokenizer convolutions", conv),
            ("attention products (Q K^T, A V)", total - linear - conv)]
    df = pd.DataFrame(rows, columns=["kind", "flops"])
    df["share"] = df.flops / total
    return df


def _linear_only(tokenizer: bool) -> Callable[[nn.Module, str], bool]:
    def keep(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and (tokenizer or not fqn.startswith("patch_embed"))
    return keep
