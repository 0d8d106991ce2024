"""Training-time augmentation of CIFAR-10 batches, on whole float tensors in [0, 1]: random crops
and flips, cutout, AutoAugment, and the mixing of two images (mixup, CutMix).

Each function takes the batch and its source of randomness (a ``torch.Generator``, or torch's
global generator for AutoAugment), which ``train.fit`` seeds from the run's seed and the epoch,
so that a resumed run augments exactly as an uninterrupted one.
"""
import random

import torch


def augment(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4,
            flip: bool = True, cutout: int = 0) -> torch.Tensor:
    """Random crop (after zero padding), horizontal flip and optional cutout on a float batch.

    Done on whole tensors with index arithmetic, so it costs a fraction of a training step.
    """
    B, C, H, W = x.shape
    if padding:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (B, 1, 1), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (B, 1, 1), generator=generator)
        rows = (torch.arange(H).view(1, H, 1) + dy).expand(B, H, W)
        cols = (torch.arange(W).view(1, 1, W) + dx).expand(B, H, W)
        b = torch.arange(B).view(B, 1, 1).expand(B, H, W)
        x = padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)
    if flip:
        flip_mask = torch.rand(B, generator=generator) < 0.5
        x = torch.where(flip_mask.view(B, 1, 1, 1), x.flip(3), x)
    if cutout:
        cy = torch.randint(0, H, (B, 1, 1), generator=generator)
        cx = torch.randint(0, W, (B, 1, 1), generator=generator)
        ys, xs = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
        hole = ((ys - cy).abs() <= cutout // 2) & ((xs - cx).abs() <= cutout // 2)
        x = x * (~hole).unsqueeze(1).to(x.dtype)
    return x.contiguous()


AUTO_AUGMENT_POLICIES = ("cifar10", "imagenet", "svhn")


def check_auto_augment_policy(policy: str) -> None:
    """Raise a clear error for a policy name torchvision does not ship."""
    if policy not in AUTO_AUGMENT_POLICIES:
        raise ValueError(f"auto_augment must be one of {', '.join(AUTO_AUGMENT_POLICIES)} "
                         f"('' in a recipe turns it off), got {policy!r}")


def auto_augment(x: torch.Tensor, policy: str = "cifar10", group: int = 8) -> torch.Tensor:
    """AutoAugment (Cubuk et al., 2019) on a float batch in [0, 1], with a learned policy.

    A policy is a list of 25 sub-policies, each two image operations (rotate, shear, posterize,
    colour, contrast, ...) with a probability and a strength apiece, found by search on a proxy
    task; torchvision ships the CIFAR-10 one. Each call applies one random sub-policy to the whole
    tensor, so calling it once per batch would give every image the same edit. A call per image
    would mean one Python call per image; each group of ``group`` images draws its own instead, at
    the price of less variety within a group. The draws come from torch's global generator, which
    ``fit`` seeds every epoch.
    """
    from torchvision.transforms import v2

    check_auto_augment_policy(policy)
    transform = v2.AutoAugment(v2.AutoAugmentPolicy(policy))
    return torch.cat([transform(chunk) for chunk in x.split(group)])


def mixup(x: torch.Tensor, x_other: torch.Tensor, lam: float) -> torch.Tensor:
    """Blend two batches pixel by pixel: ``lam * x + (1 - lam) * x_other``."""
    return lam * x + (1 - lam) * x_other


def cutmix(x: torch.Tensor, x_other: torch.Tensor, lam: float,
           rng: random.Random) -> tuple[torch.Tensor, float]:
    """Paste a random box from ``x_other`` into ``x``, covering about ``1 - lam`` of the image.

    Returns the images and the exact share of pixels still from ``x`` (the box is rounded to
    whole pixels). ``rng`` is a ``random.Random``.
    """
    H, W = x.shape[-2:]
    h, w = round(H * (1 - lam) ** 0.5), round(W * (1 - lam) ** 0.5)
    top, left = rng.randint(0, H - h), rng.randint(0, W - w)
    x = x.clone()
    x[..., top : top + h, left : left + w] = x_other[..., top : top + h, left : left + w]
    return x, 1 - h * w / (H * W)


def mix(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, prob: float = 0.5,
        mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup or CutMix on a batch: returns ``(x, y, y_other, lam)``.

    With probability ``prob`` the batch is mixed with itself in reverse order, half of the time
    by ``mixup`` and half by ``cutmix``, with ``lam`` drawn from a Beta distribution. ``lam`` is
    the share of the loss that belongs to ``y``: train with
    ``lam * CE(logits, y) + (1 - lam) * CE(logits, y_other)``. An unmixed batch comes back with
    ``lam = 1.0``. As in DeiT and timm, one ``lam`` serves the whole batch.
    """
    # The Beta draws need a seeded source too; derive one from the caller's generator so that a
    # resumed run mixes exactly as an uninterrupted one.
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    if rng.random() >= prob:
        return x, y, y, 1.0
    x_other, y_other = x.flip(0), y.flip(0)
    if rng.random() < 0.5:
        lam = rng.betavariate(mixup_alpha, mixup_alpha)
        return mixup(x, x_other, lam), y, y_other, lam
    x, lam = cutmix(x, x_other, rng.betavariate(cutmix_alpha, cutmix_alpha), rng)
    return x, y, y_other, lam
