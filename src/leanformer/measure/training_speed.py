"""How fast a model trains, timed as ``timing`` times serving: several models (or one model in
several precisions) side by side, their training steps interleaved, each timing a ``Spread``
of images per second, so that ``ratio_interval`` gives a speed-up with its interval.

    speed = time_training({"fp32": model, "bf16": model}, precision={"bf16": "bf16"})
    ratio_interval(speed["bf16"], speed["fp32"])  # bf16's training speed-up

A step is a full one: forward, cross-entropy, backward and an AdamW update, on a fixed batch
of random images and labels (the speed does not depend on the pixels). Each entry trains its
own copy of its model, so the models given are left as they were.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import Precision, autocast
from .timing import Spread, _device_of, _random_images, brief_timing, rate_side_by_side


def training_step(model: nn.Module, precision: Precision = "fp32", batch_size: int = 128,
                  image_size: int = 32, num_classes: int = 10) -> Callable[[], None]:
    """A no-argument function that makes one full training step (forward, cross-entropy,
    backward, AdamW) of a copy of ``model`` under autocast to ``precision``, on a fixed batch
    of ``batch_size`` random images and labels. ``model`` itself is not changed."""
    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5)
    device = _device_of(trained)
    images = _random_images(trained, batch_size, image_size)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)

    def step() -> None:
        with autocast(precision, device):
            loss = F.cross_entropy(trained(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_training(models: Mapping[str, nn.Module],
                  precision: Precision | Mapping[str, Precision] = "fp32", *,
                  batch_size: int = 128, rounds: int = 3, steps: int = 2,
                  warmup: int = 1) -> dict[str, Spread]:
    """Images per second of training steps (``training_step``) of every model of ``models``
    (a dict name -> model; one model may appear under several names), timed side by side
    (``rate_side_by_side``): after ``warmup`` untimed steps each, ``rounds`` rounds in which
    every entry in turn makes ``steps`` timed steps, each step one sample.

    precision:  one ``Precision`` for all entries, or a dict by name ("fp32" for a name it
                leaves out), as ``measure_costs`` takes it.

    ``LEANFORMER_TIMING=brief`` (``make test``) cuts it to one round of one step after one
    warm-up step, as it cuts ``measure_costs``.
    """
    if brief_timing():
        rounds, steps, warmup = 1, 1, min(warmup, 1)
    runs = {name: training_step(model, precision.get(name, "fp32") if isinstance(precision, Mapping)
                                else precision, batch_size)
            for name, model in models.items()}
    return rate_side_by_side(runs, batch_size, rounds, steps, warmup)
