"""The tokenizers of the Vision Transformer: how an image becomes a sequence of tokens.

``PatchEmbed`` cuts it into non-overlapping patches (the original ViT); ``ConvTokenizer`` runs
small convolutions and poolings over it (CCT), and ``input_window`` says which input pixels one
token of such a stack sees.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patch_size x patch_size patches and project each
    one to embed_dim. A strided convolution does both steps in one call."""

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                 embed_dim: int = 128) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class ConvTokenizer(nn.Module):
    """A small convolutional tokenizer, as in the Compact Convolutional Transformer (CCT).

    Each stage is a 3x3 convolution, a ReLU and a stride-2 max-pool, so two stages turn a
    32x32 image into 8x8 = 64 tokens. Overlapping 3x3 kernels give the tokens the local
    structure that a patch cut misses, which is what lets a small Transformer learn CIFAR-10
    from 50,000 images instead of millions.
    """

    def __init__(self, img_size: int = 32, in_chans: int = 3,
                 channels: Sequence[int] = (64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for c_out in channels:
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            ]
            c_in = c_out
        # channels_last lets oneDNN pick its fast convolution and pooling kernels on a CPU;
        # `python -m leanformer.benchmark` measures the whole model against a naive build.
        self.stages = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        self.num_patches = (img_size // 2 ** len(channels)) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, N, D)
        x = self.stages(x.contiguous(memory_format=torch.channels_last))
        return x.flatten(2).transpose(1, 2)

    def token_window(self, row: int) -> tuple[int, int]:
        """The input rows (first, last) that the tokens in grid row ``row`` see (the same holds for
        columns): their receptive field, not clipped to the image, so it may start above it."""
        return input_window([m for m in self.stages if isinstance(m, (nn.Conv2d, nn.MaxPool2d))], row)


def input_window(layers: Sequence[nn.Conv2d | nn.MaxPool2d], r: int) -> tuple[int, int]:
    """Which input rows does output row ``r`` of a stack of convolutions and poolings depend on?
    Walk back through the layers: one with kernel k, stride s and padding p maps output rows
    [a, b] to input rows [a*s - p, b*s - p + k - 1]. Returns (a, b) in input rows."""
    a, b = r, r
    for layer in reversed(layers):
        if isinstance(layer.padding, str):  # nn.Conv2d's "same" or "valid"
            raise ValueError(f"input_window needs a layer's padding in pixels, not {layer.padding!r}")
        k, s, p = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
        a, b = a * s - p, b * s - p + k - 1
    return a, b
