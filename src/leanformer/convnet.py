"""A small convolutional network for CIFAR-10 in the style of Keller Jordan's airbench94 (2024):
the strong, quick teacher that lesson 06 distils into the Vision Transformer.

    whitening conv (k x k, fixed) -> GELU -> ConvGroup x 3 -> global max pool -> Linear -> x scale
    ConvGroup: conv3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU

Whitening. Cut the training images into k x k patches, flattened to vectors p of d = 3 k^2 numbers,
with mean mu and covariance

    Sigma = E[(p - mu)(p - mu)^T] = V diag(lambda) V^T      (eigenvectors V, eigenvalues lambda)

The d filters W = diag(1 / sqrt(lambda + eps)) V^T make y = W (p - mu) uncorrelated with unit
variance: Cov(y) = diag(lambda / (lambda + eps)), the identity wherever lambda >> eps. The stem
holds W and -W (2d channels), so that the GELU after it keeps both signs of every component, and
its bias -W mu (and +W mu) centres them. ``whiten_init_`` computes all this from
training images; the stem's weights then stay fixed and only its bias learns. The
convolutions after it thus start from decorrelated inputs instead of having to learn to
decorrelate them.

The rest follows airbench94 too: each 3x3 convolution starts as the identity on its first c_in
output channels (``nn.init.dirac_``, an implicit residual connection), BatchNorm keeps its gain
fixed at 1 and learns only its bias, and the logits are the head's output times a fixed
``logit_scale`` (1/9).

Input: float images in [0, 1], (N, 3, H, W), the same contract as ``VisionTransformer``; the
network subtracts CIFAR-10's mean and divides by its standard deviation itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .model import CIFAR10_MEAN, CIFAR10_STD, WeightsDigest, config_fields


@dataclass
class ConvNetConfig:
    """Everything needed to rebuild a ``ConvNet``; saved inside each checkpoint.

    The default widths (64, 256, 256) are airbench94's, published at 94% after 10 epochs (with
    test-time augmentation): 1.97 million parameters and 118 million multiply-adds per image
    forward, so that an epoch of CIFAR-10 takes minutes, not hours, on a 2-core CPU under bf16.
    airbench93's (64, 128, 128) needs 54 million multiply-adds, but 11 epochs for 93% (with the
    same test-time augmentation): about as much work for a lower ceiling. Recipe ``teacher-cnn``
    sizes the number of epochs to the CPU.
    """

    in_chans: int = 3
    num_classes: int = 10
    stem_kernel: int = 2  # side of the whitening patches; the stem has 2 * in_chans * k^2 channels
    widths: tuple[int, ...] = (64, 256, 256)  # output channels of the three ConvGroups
    bn_momentum: float = 0.4  # PyTorch's convention: the weight of the newest batch statistics
    logit_scale: float = 1 / 9  # the logits are the head's output times this
    # The stem holds fixed whitening filters (``whiten_init_``), not learned ones.
    whiten: bool = True
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD

    @property
    def stem_width(self) -> int:
        return 2 * self.in_chans * self.stem_kernel ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConvNetConfig:
        return cls(**config_fields(cls, d, tuples=("widths", "mean", "std")))


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 'same' convolution without bias (BatchNorm follows), initialised as the identity on
    its first ``c_in`` output channels and as PyTorch's default on the others."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


def batch_norm(channels: int, momentum: float) -> nn.BatchNorm2d:
    """BatchNorm whose gain stays 1: only the bias (the GELU's threshold) learns."""
    norm = nn.BatchNorm2d(channels, momentum=momentum)
    norm.weight.requires_grad_(False)
    return norm


class ConvGroup(nn.Module):
    """conv3x3 -> max-pool 2 -> BatchNorm -> GELU -> conv3x3 -> BatchNorm -> GELU: halves the
    image side and sets the width to ``c_out``. Pooling before the first norm makes the norm and
    the activation run on a quarter of the pixels."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float = 0.4) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = batch_norm(c_out, bn_momentum)
        self.conv2 = conv3x3(c_out, c_out)
        self.norm2 = batch_norm(c_out, bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class ConvNet(WeightsDigest, nn.Module):
    """The airbench-style network. Input: float images in [0, 1], (B, 3, H, W). Output: logits
    (B, num_classes). Call ``whiten_init_`` before training when ``cfg.whiten`` is
    set."""

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor

    def __init__(self, cfg: ConvNetConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = cfg or ConvNetConfig()
        if overrides:
            cfg = ConvNetConfig(**{**cfg.to_dict(), **overrides})
        if len(cfg.widths) != 3 or min(cfg.widths) < 1:
            raise ValueError(f"widths must be three positive channel counts, one per ConvGroup; "
                             f"got {cfg.widths!r}")
        if cfg.stem_kernel < 1:
            raise ValueError(f"stem_kernel must be at least 1, got {cfg.stem_kernel}")
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, -1, 1, 1), persistent=False)

        self.stem = nn.Conv2d(cfg.in_chans, cfg.stem_width, kernel_size=cfg.stem_kernel, bias=True)
        assert self.stem.bias is not None  # built with bias=True
        nn.init.zeros_(self.stem.bias)
        self.stem.weight.requires_grad_(not cfg.whiten)  # fixed whitening filters
        self.act = nn.GELU()
        c_in = cfg.stem_width
        groups: list[nn.Module] = []
        for c_out in cfg.widths:
            groups.append(ConvGroup(c_in, c_out, cfg.bn_momentum))
            c_in = c_out
        self.stages = nn.Sequential(*groups)
        self.head = nn.Linear(c_in, cfg.num_classes, bias=False)
        # channels_last lets oneDNN pick its fast convolution and pooling kernels on a CPU.
        self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, widths[-1])
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        x = self.stages(self.act(self.stem(x)))
        return x.amax(dim=(2, 3))  # global max pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)) * self.cfg.logit_scale


def patches(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """All kernel_size x kernel_size patches (stride 1, no padding) of float images (N, C, H, W),
    as rows (N * L, C * k * k), flattened in the order of a convolution's weight (C, k, k)."""
    cols = F.unfold(images, kernel_size)  # (N, C * k * k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def whiten_init_(model: ConvNet, train_images: torch.Tensor, eps: float = 5e-4,
                n_images: int = 5000, chunk: int = 500) -> ConvNet:
    """Set ``model.stem`` to whitening filters of the patches of ``train_images`` (see the
    module's docstring), in place, and return the model itself.

    train_images: uint8 images (N, 3, 32, 32), such as ``CIFAR10.train_images``. The first
                  ``n_images`` of them are used, as airbench uses 5,000: they hold 4.8 million
                  2x2 patches for a covariance of 12 x 12 numbers. Deterministic: the same
                  images (read ``chunk`` at a time) give the same filters.
    eps:          added to every eigenvalue, so that the faintest components (pixel noise) are
                  not blown up to unit variance.
    """
    if not isinstance(model, ConvNet):
        raise TypeError("whiten_init_ sets the stem of a ConvNet, "
                        f"got a {type(model).__name__}")
    c, k = model.cfg.in_chans, model.cfg.stem_kernel
    if (not isinstance(train_images, torch.Tensor) or train_images.dtype != torch.uint8
            or train_images.ndim != 4 or train_images.shape[1:] != (c, 32, 32) or len(train_images) == 0):
        what = (f"{train_images.dtype} tensor of shape {tuple(train_images.shape)}"
                if isinstance(train_images, torch.Tensor) else type(train_images).__name__)
        raise ValueError("whiten_init_ takes uint8 training images of shape "
                         f"(N, {c}, 32, 32), such as "
                         f"CIFAR10.train_images; got a {what}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")

    # Mean and covariance of the patches, summed chunk by chunk in float64 (5,000 images hold
    # 4.8 million 2x2 patches; one chunk at a time keeps the memory small).
    d = c * k * k
    count, total, outer = 0, torch.zeros(d, dtype=torch.float64), torch.zeros(d, d, dtype=torch.float64)
    device = model.mean.device
    for i in range(0, min(n_images, len(train_images)), chunk):
        x = train_images[i : min(i + chunk, n_images)].to(device).float().div(255)
        p = patches((x - model.mean) / model.std, k).double().cpu()
        count += len(p)
        total += p.sum(0)
        outer += p.T @ p
    mu = total / count
    sigma = outer / count - torch.outer(mu, mu)
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)  # largest first
    # Row i of W is eigenvector i scaled by 1 / sqrt(lambda_i + eps).
    W = eigenvectors.T / torch.sqrt(eigenvalues.clamp(min=0) + eps).unsqueeze(1)
    weight, bias = torch.cat([W, -W]), torch.cat([-W @ mu, W @ mu])
    model.stem.weight.copy_(weight.view(2 * d, c, k, k))
    assert model.stem.bias is not None  # ConvNet builds its stem with bias=True
    model.stem.bias.copy_(bias)
    return model
