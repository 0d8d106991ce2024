"""Which heads and MLP units to remove: an importance score, one number per head or unit, and
the pruning it drives.

Both Taylor scores put a gate g = 1 on the output of every head and MLP unit and
read the first-order estimate of the loss change if it were removed (g = 0) from
dL/dg. They differ in where the absolute value is taken:

``taylor-per-example`` averages |dL_i/dg| over the images i: the criterion of
Molchanov et al. 2017 for units and of Michel et al. 2019 for heads, in which a head
that helps some images and hurts others is credited with both.

``taylor`` is a batch variant: |dL_B/dg| for the mean loss L_B of each batch of 128
images, summed over the batches, so that opposite signs within a batch cancel. It made
the course's shipped pruned models and stays as it is, so that they can be reproduced.

``magnitude`` is the norm of the weights, ``random`` the baseline any score must beat.
``prune_by_score`` keeps the best of every block; ``drop_one_head_losses`` measures exactly what
removing each head costs, to check a score against. Whole blocks are few (four in the course's
ViT), so they are ranked by that exact measure, ``drop_one_block_losses``, and
``drop_blocks_by_loss`` keeps the ones whose removal costs most. The conv tokenizer's first
convolution has channels that can go too: ``tokenizer_channel_scores`` gives them the
``taylor`` score, and ``prune_tokenizer_by_score`` keeps the best.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model import VisionTransformer
from .structured import _blocks, drop_blocks, keep_top, prune_model, prune_tokenizer_channels

SCORES = ("taylor", "taylor-per-example", "magnitude", "random")
GRADIENT_SCORES = ("taylor", "taylor-per-example")  # the scores that need images


def _taylor_scores(model: VisionTransformer, images: torch.Tensor, labels: torch.Tensor,
                   batch_size: int, per_example: bool = False,
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """dL/dg for a gate g on every head output and every MLP hidden unit: the
    first-order estimate of how much the loss changes when that head or unit goes.

    ``per_example=False`` (the ``taylor`` score): |dL_B/dg| of each batch's mean loss,
    summed over the batches. ``per_example=True`` (``taylor-per-example``): |dL_i/dg| of
    each image's own loss, averaged over the images. Both take one backward pass per
    batch: in eval mode no image's output depends on another image, so the gradient of
    the batch's summed loss with respect to image i's activations is dL_i/d(activations
    of i), and the gate's gradient of image i sums over that image's tokens alone.
    The model is left as it was: its mode, and any gradients it held."""
    was_training = model.training
    held = [(p, p.grad) for p in model.parameters()]
    model.eval()
    blocks = _blocks(model)
    heads = [torch.zeros(b.attn.num_heads) for b in blocks]
    units = [torch.zeros(b.mlp.fc1.out_features) for b in blocks]
    handles = []

    def watch(store: torch.Tensor, group: int) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            if x.requires_grad:
                def on_grad(g: torch.Tensor, x: torch.Tensor = x) -> None:
                    # The gate's gradient: sum of activation x gradient over a group
                    prod = x.detach() * g
                    if per_example:  # (images, tokens, channels): each image's own sum
                        each = prod.flatten(1, -2).sum(1).view(len(prod), -1, group)
                        store.add_(each.sum(2).abs().sum(0).float().cpu())
                    else:
                        contrib = prod.flatten(0, -2).sum(0)
                        store.add_(contrib.view(-1, group).sum(1).abs().float().cpu())
                x.register_hook(on_grad)
        return hook

    for i, b in enumerate(blocks):
        handles.append(b.attn.proj.register_forward_pre_hook(watch(heads[i], b.attn.head_dim)))
        handles.append(b.mlp.fc2.register_forward_pre_hook(watch(units[i], 1)))
    reduction = "sum" if per_example else "mean"  # sum: each image's own gradient
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            x = x.float().div(255) if x.dtype == torch.uint8 else x
            model.zero_grad(set_to_none=True)
            y = labels[start:start + batch_size]
            F.cross_entropy(model(x), y, reduction=reduction).backward()
    finally:
        for h in handles:
            h.remove()
        for p, grad in held:
            p.grad = grad
        model.train(was_training)
    if per_example:  # the average over the images
        heads = [h / len(labels) for h in heads]
        units = [u / len(labels) for u in units]
    return heads, units


def _magnitude_scores(model: VisionTransformer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    heads, units = [], []
    for b in _blocks(model):
        a, d = b.attn, b.attn.head_dim
        qkv = a.qkv.weight.detach().view(3, a.num_heads, d, -1)
        proj = a.proj.weight.detach().view(-1, a.num_heads, d)
        heads.append((qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))).sqrt())
        units.append((b.mlp.fc1.weight.detach().pow(2).sum(1) + b.mlp.fc2.weight.detach().pow(2).sum(0)).sqrt())
    return heads, units


def importance(model: VisionTransformer, score: str = "taylor", images: torch.Tensor | None = None,
               labels: torch.Tensor | None = None, batch_size: int = 128,
               seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head scores, unit scores): one tensor per block each, larger = more important.
    ``taylor`` (the batch variant) and ``taylor-per-example`` need training ``images``
    (uint8 or float in [0, 1]) and ``labels``; the module's docstring says what each
    computes."""
    if score in GRADIENT_SCORES:
        if images is None or labels is None:
            raise ValueError(f"the {score} score needs images and labels "
                             "(a slice of the training set)")
        return _taylor_scores(model, images, labels, batch_size,
                              per_example=score == "taylor-per-example")
    if score == "magnitude":
        return _magnitude_scores(model)
    if score == "random":
        g = torch.Generator().manual_seed(seed)
        return ([torch.rand(b.attn.num_heads, generator=g) for b in _blocks(model)],
                [torch.rand(b.mlp.fc1.out_features, generator=g) for b in _blocks(model)])
    raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")


def prune_by_score(model: VisionTransformer, heads: int, units: int, score: str = "taylor",
                   images: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None,
                   seed: int = 0) -> tuple[VisionTransformer, dict[str, Any]]:
    """Keep the ``heads`` most important heads and ``units`` most important MLP units of every
    block by ``score``; the Taylor scores rank on ``images`` and ``labels``, training
    images (``CIFAR10.train_sample``), never test images; the random score draws with
    ``seed``. Returns the pruned copy and a record of what was kept and why (what the
    ``prune`` command saves as provenance). ``model`` is left as it was."""
    for b in _blocks(model):
        if not 1 <= heads <= b.attn.num_heads:
            raise ValueError(f"heads: keep between 1 and {b.attn.num_heads} per block, got {heads}")
        if not 1 <= units <= b.mlp.fc1.out_features:
            raise ValueError(f"units: keep between 1 and {b.mlp.fc1.out_features} per block, got {units}")
    if score not in GRADIENT_SCORES:
        images = labels = None  # the other scores read no images
    head_scores, unit_scores = importance(model, score, images, labels, seed=seed)
    keep_heads, keep_units = keep_top(head_scores, heads), keep_top(unit_scores, units)
    pruned = prune_model(model, keep_heads, keep_units)
    n_images = len(labels) if labels is not None else 0
    record = {"score": score, "score_images": n_images, "seed": seed,
              "kept_heads": keep_heads, "kept_units": keep_units,
              "head_scores": [h.tolist() for h in head_scores],
              "widths": [list(w) for w in pruned.cfg.widths()]}
    return pruned, record


def _mean_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               batch_size: int = 256) -> float:
    """The model's mean cross-entropy on ``images`` (uint8 or float in [0, 1]), in eval mode."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            x = x.float().div(255) if x.dtype == torch.uint8 else x
            total += F.cross_entropy(model(x), labels[start:start + batch_size], reduction="sum").item()
    return total / len(labels)


def drop_one_block_losses(model: VisionTransformer, images: torch.Tensor, labels: torch.Tensor,
                          batch_size: int = 256) -> torch.Tensor:
    """The exact effect of every block: the loss on ``images`` (training images) without that
    one block, minus the loss of the whole model; larger = more important. One pass over
    ``images`` per block. ``model`` is left as it was."""
    was_training = model.training
    n = len(model.blocks)
    base = _mean_loss(model, images, labels, batch_size)
    losses = [_mean_loss(drop_blocks(model, [j for j in range(n) if j != i]), images, labels,
                         batch_size) - base for i in range(n)]
    model.train(was_training)
    return torch.tensor(losses)


def drop_blocks_by_loss(model: VisionTransformer, blocks: int, images: torch.Tensor,
                        labels: torch.Tensor) -> tuple[VisionTransformer, dict[str, Any]]:
    """Keep the ``blocks`` blocks whose removal alone costs most on ``images`` and ``labels``
    (training images, never test images), in their order; returns the copy and a record of
    the losses and the blocks kept. ``model`` is left as it was."""
    n = len(model.blocks)
    if not 1 <= blocks <= n:
        raise ValueError(f"blocks: keep between 1 and {n}, got {blocks}")
    losses = drop_one_block_losses(model, images, labels)
    keep = sorted(losses.topk(blocks).indices.tolist())
    record = {"block_scores": "loss without the block minus the whole model's, on the score images",
              "block_losses": [round(v, 6) for v in losses.tolist()], "kept_blocks": keep}
    return drop_blocks(model, keep), record


def tokenizer_channel_scores(model: VisionTransformer, images: torch.Tensor, labels: torch.Tensor,
                             batch_size: int = 128) -> torch.Tensor:
    """The ``taylor`` score (the batch variant) of each output channel of the conv tokenizer's
    first convolution: |dL_B/dg| for a gate g on that channel where the next convolution reads
    it, summed over the batches of ``images`` (training images). The model is left as it was."""
    convs = [m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < 2:
        raise ValueError("the model's tokenizer has no convolution whose channels can go")
    was_training = model.training
    held = [(p, p.grad) for p in model.parameters()]
    model.eval()
    scores = torch.zeros(convs[0].out_channels)

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]
        if x.requires_grad:
            def on_grad(g: torch.Tensor, x: torch.Tensor = x) -> None:  # returns None: g unchanged
                scores.add_((x.detach() * g).sum((0, 2, 3)).abs().float().cpu())
            x.register_hook(on_grad)

    handle = convs[1].register_forward_pre_hook(hook)
    try:
        for start in range(0, len(labels), batch_size):
            x = images[start:start + batch_size]
            x = (x.float().div(255) if x.dtype == torch.uint8 else x).requires_grad_(True)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels[start:start + batch_size]).backward()
    finally:
        handle.remove()
        for p, grad in held:
            p.grad = grad
        model.train(was_training)
    return scores


def prune_tokenizer_by_score(model: VisionTransformer, channels: int, images: torch.Tensor,
                             labels: torch.Tensor) -> tuple[VisionTransformer, dict[str, Any]]:
    """Keep the ``channels`` best-scored channels of the tokenizer's first convolution
    (``tokenizer_channel_scores`` on training ``images``); returns the copy and a record."""
    scores = tokenizer_channel_scores(model, images, labels)
    if not 1 <= channels <= len(scores):
        raise ValueError(f"tokenizer-channels: keep between 1 and {len(scores)}, got {channels}")
    keep = sorted(scores.topk(channels).indices.tolist())
    record = {"tokenizer_channel_scores": [round(v, 6) for v in scores.tolist()],
              "kept_tokenizer_channels": keep}
    return prune_tokenizer_channels(model, keep), record


def drop_one_head_losses(model: VisionTransformer, images: torch.Tensor, labels: torch.Tensor,
                         batch_size: int = 256) -> list[torch.Tensor]:
    """The exact effect of every head: the loss on ``images`` with that one head removed, minus the
    loss of the whole model. One tensor per block; larger = more important (NaN for the only head
    of a block, which cannot go). Costs one pass over ``images`` per head, so it suits a model
    with few heads."""
    was_training = model.training
    base = _mean_loss(model, images, labels, batch_size)
    blocks = _blocks(model)
    all_heads = [list(range(b.attn.num_heads)) for b in blocks]
    all_units = [list(range(b.mlp.fc1.out_features)) for b in blocks]
    losses = []
    for i, block in enumerate(blocks):
        row: list[float] = []
        for h in range(block.attn.num_heads):
            if block.attn.num_heads == 1:  # a block's last head cannot be removed
                row.append(float("nan"))
                continue
            keep = [hs if j != i else [k for k in hs if k != h] for j, hs in enumerate(all_heads)]
            row.append(_mean_loss(prune_model(model, keep, all_units), images, labels,
                                  batch_size) - base)
        losses.append(torch.tensor(row))
    model.train(was_training)
    return losses
