"""A validation split carved from the training images, so that a setting (a
temperature, a weight, a sparsity) is chosen on images the model never trained on, and
the test images judge only the choice that was made.

    tuning = holdout(data, train_images=5000, val_images=5000, seed=0)

``tuning`` trains on 5,000 of ``data``'s training images and carries 5,000 others as its
validation split (``val_images``, ``val_labels``); both are stratified by class, drawn
with ``seed``, and disjoint. Its test images are ``data``'s, untouched.
"""
from collections.abc import Sequence

import torch

from .data import CIFAR10, DataError


def stratified_split(labels: torch.Tensor, sizes: Sequence[int],
                     seed: int = 0) -> list[torch.Tensor]:
    """Disjoint sets of indices into ``labels``, one per entry of ``sizes``, each in
    ascending order and holding ``size / classes`` images of every class, drawn at
    random with ``seed`` (the same seed, labels and sizes give the same sets)."""
    classes = labels.unique().tolist()
    k = len(classes)
    if not sizes or [n for n in sizes if n <= 0 or n % k]:
        raise DataError(f"each split must hold a positive multiple of the {k} classes "
                        f"present, so that every class has the same share; got sizes "
                        f"{list(sizes)}")
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in sizes]
    need = sum(sizes) // k
    for c in classes:
        pool = torch.where(labels == c)[0]
        if len(pool) < need:
            raise DataError(f"class {c} has {len(pool)} images, fewer than the {need} "
                            f"that splits of {list(sizes)} images take from each class")
        pool = pool[torch.randperm(len(pool), generator=generator)]
        start = 0
        for part, n in zip(parts, sizes):
            part.append(pool[start : start + n // k])
            start += n // k
    return [torch.cat(part).sort().values for part in parts]


def holdout(data: CIFAR10, train_images: int, val_images: int,
            seed: int = 0) -> CIFAR10:
    """``data`` with ``train_images`` of its training images to train on and
    ``val_images`` others as a validation split (``stratified_split``); the test images
    stay as they are, and ``source`` says how the split was made."""
    train, val = stratified_split(data.train_labels, (train_images, val_images), seed)
    source = (f"{data.source}; a stratified split of its training images "
              f"(seed {seed}): {train_images:,} to train on, {val_images:,} to "
              "validate on")
    return CIFAR10(data.train_images[train], data.train_labels[train], data.test_images,
                   data.test_labels, source, data.classes, data.pixels,
                   data.train_images[val], data.train_labels[val])
