"""The training loop of the course: AdamW (or SGD with Nesterov momentum), warm-up then cosine,
label smoothing, tensor augmentation, mixed precision, per-epoch evaluation, atomic checkpoints
and exact resume. One loop trains both model families: the Vision Transformer (``arch="vit"``)
and the airbench-style ConvNet (``arch="convnet"``) that lesson 06 uses as a teacher. The runs
it trains are the ``Recipe``s of ``leanformer.recipes``.

``fit`` takes its loss from outside (``loss_fn(logits, batch)``, as timm's ``train_one_epoch``
does), so distillation plugs a teacher into the same loop, and it starts from given weights
(``model=``), so a pruned or quantization-aware model is fine-tuned by the same loop.

``training_throughput`` times a few of those steps on this machine, so that a run
recorded on another machine can be priced here (images seen / images per second).

Reproducibility: every random draw of epoch ``e`` comes from generators seeded with
``(seed, e)``, so a run resumed at epoch ``e`` continues exactly as an uninterrupted one would.

Under ``torchrun`` the same loop trains in several processes (``leanformer.distributed``): the
recipe's batch stays the global batch, each process takes its share, and the gradients are
averaged by ``DistributedDataParallel``; in one process nothing of that runs.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint, distributed
from .augment import augment, auto_augment, check_auto_augment_policy, mix
from .convnet import ConvNet, ConvNetConfig, whiten_init_
from .data import CIFAR10, batches
from .evaluate import default_device, evaluate
from .families import ARCHS, arch_of, create_model
from .machine import machine_info
from .measure import Spread, count_parameters
from .measure.timing import brief_timing, rate_side_by_side
from .model import ViTConfig
from .precision import Precision, autocast, grad_scaler, resolve_precision
from .recipes import Recipe, RecipeError
from .record import test_set_sha256
from .resume import check_same_run, run_identity


def build_model(recipe: Recipe, data: CIFAR10 | None = None) -> nn.Module:
    """The recipe's model, freshly initialised from its seed: ``recipe.model`` overrides the
    config of ``recipe.arch``. A ConvNet with a whitening stem takes its filters from
    ``data.train_images`` (``whiten_init_``); without ``data`` its stem keeps random
    weights, which is fine for a model whose weights are loaded next, not for
    training."""
    if recipe.arch not in ARCHS:
        raise RecipeError(f"arch must be one of {', '.join(ARCHS)}, got {recipe.arch!r}")
    config_cls: type[ViTConfig] | type[ConvNetConfig] = ARCHS[recipe.arch][0]
    try:
        cfg = config_cls.from_dict(recipe.model)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"recipe {recipe.name!r}: its model settings do not fit arch "
                          f"{recipe.arch!r} ({e})") from None
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.arch, cfg)
    if isinstance(model, ConvNet) and model.cfg.whiten and data is not None:
        whiten_init_(model, data.train_images)
    return model


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s parameters, in groups: weight decay on weight
    matrices and convolution kernels only (decaying LayerNorm gains, biases and the position
    embedding only hurts), and BatchNorm's parameters, if any, in a group of their own whose
    learning rate is ``recipe.batchnorm_lr_scale`` times the schedule's (airbench trains its
    BatchNorm biases 64 times faster than its weights)."""
    batchnorm = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
                 for p in m.parameters(recurse=False)}
    decay, no_decay, norm = [], [], []
    for n, p in model.named_parameters():
        if id(p) in batchnorm:
            norm.append(p)
        elif p.ndim >= 2 and "pos_embed" not in n:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if norm:  # a model without BatchNorm keeps two groups (and resumes from older states)
        groups.append({"params": norm, "weight_decay": 0.0, "lr_scale": recipe.batchnorm_lr_scale})
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    if recipe.optimizer == "sgd":
        if recipe.nesterov and recipe.momentum <= 0:
            raise RecipeError(f"nesterov=True needs momentum > 0 (got {recipe.momentum}); "
                              "set nesterov=False for plain SGD")
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov)
    raise RecipeError(f"optimizer must be 'adamw' or 'sgd', got {recipe.optimizer!r}")


# --- losses ----------------------------------------------------------------------------------

@dataclass
class Batch:
    """One training batch as the loss sees it: the augmented images the model saw, their labels,
    and for a mixed batch (mixup or CutMix) the partner labels and the share ``lam`` of the first
    image. ``lam == 1`` means the batch was not mixed."""

    images: torch.Tensor
    labels: torch.Tensor
    other_labels: torch.Tensor
    lam: float = 1.0


# What ``fit`` trains with: ``loss_fn(logits, batch) -> loss``.
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]


def mixed_cross_entropy(logits: torch.Tensor, batch: Batch,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against the labels, mixed in proportion ``lam`` with the partner labels."""
    loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=label_smoothing)
    if batch.lam < 1.0:
        loss = batch.lam * loss + (1 - batch.lam) * F.cross_entropy(
            logits.float(), batch.other_labels, label_smoothing=label_smoothing)
    return loss


def recipe_loss(recipe: Recipe) -> LossFn:
    """The loss a recipe trains with: cross-entropy with its label smoothing, mixed by mixup or
    CutMix when the batch was mixed."""
    return lambda logits, batch: mixed_cross_entropy(logits, batch, recipe.label_smoothing)


# --- the schedule ----------------------------------------------------------------------------

def lr_at(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warm-up to ``peak_lr``, then a cosine decay to zero."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- weight averaging ------------------------------------------------------------------------

class Lookahead:
    """airbench's Lookahead (Zhang et al., 2019, as Jordan uses it): every ``every`` steps

        slow <- d * slow + (1 - d) * fast,    fast <- slow

    over all parameters and BatchNorm statistics, with ``d = final * (step / total) ** 3``: no
    pull early in training, where the weights still move far, and a growing pull towards the
    running average near the end, where averaging removes the noise of the last steps. ``finish``
    copies the average into the model. The average is part of the training state, so a resumed
    run continues it exactly.
    """

    def __init__(self, model: nn.Module, final: float, total_steps: int, every: int = 5) -> None:
        self.final, self.total_steps, self.every = float(final), total_steps, every
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if v.is_floating_point()}

    def step(self, model: nn.Module, step: int) -> None:
        if (step + 1) % self.every == 0:
            self._pull(model, self.final * ((step + 1) / self.total_steps) ** 3)

    def finish(self, model: nn.Module) -> None:
        self._pull(model, 1.0)

    @torch.no_grad()
    def _pull(self, model: nn.Module, decay: float) -> None:
        for k, fast in model.state_dict().items():
            if k in self.slow:
                self.slow[k].lerp_(fast, 1 - decay)
                fast.copy_(self.slow[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.slow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.slow[k].copy_(v)


# --- the loop --------------------------------------------------------------------------------

def _copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``. ``torch.nn.utils.prune`` keeps each pruned layer's ``weight``
    as a plain attribute that a hook recomputes from ``weight_orig * weight_mask`` before every
    forward pass; after a pass with gradients it is not a leaf tensor, which ``deepcopy``
    refuses. Detaching it changes no value (the next pass recomputes it)."""
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                setattr(module, name, value.detach())
    return copy.deepcopy(model)


def fit(recipe: Recipe, data: CIFAR10, state_path: str | Path | None = None, resume: bool = False,
        device: str | torch.device | None = None, progress: bool = True, model: nn.Module | None = None,
        loss_fn: LossFn | None = None) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train ``recipe`` on ``data`` (a ``leanformer.data.CIFAR10``) and return (model, history).

    model:    start from this model and its weights (a fine-tune) instead of building
              ``recipe.model`` from scratch (``build_model(recipe, data)``). A copy of it
              is trained and returned; the model given is left as it was.
    loss_fn:  ``loss_fn(logits, batch) -> loss`` with ``batch`` a ``Batch``; default
              ``recipe_loss(recipe)``. A distillation loss reads ``batch.images`` to ask its
              teacher.
    With ``state_path``, the training state is written there after every epoch, and
    ``resume=True`` continues from it, losing at most the epoch that was running. The state
    records the recipe and ``run_identity`` (the data, the starting weights, the teacher); a
    resume with another of any of them is refused (``check_same_run``).

    The model comes back in eval mode with ``model.provenance`` holding the training record
    (recipe, data, epochs, images, wall time, history), which ``measure_costs`` reads.
    """
    # Plain tqdm draws a text bar in a terminal and in a notebook alike, and needs no widgets.
    from tqdm import tqdm

    world = distributed.world()  # one process alone unless torchrun started a group
    if world.size > 1 and 0 < len(data.train_labels) % recipe.batch_size < world.size:
        raise RecipeError(f"the last batch of an epoch ({len(data.train_labels) % recipe.batch_size} "
                          f"images) has fewer images than the {world.size} processes; change the "
                          "batch size or the number of processes")
    progress = progress and world.is_main

    if recipe.auto_augment:  # fail before building anything, not at the first batch
        check_auto_augment_policy(recipe.auto_augment)
    device = torch.device(device or default_device())
    given_model, given_loss = model is not None, loss_fn is not None
    model = (_copy_model(model) if model is not None else build_model(recipe, data)).to(device)
    loss_fn = loss_fn or recipe_loss(recipe)
    optimizer = build_optimizer(recipe, model)
    n_train = len(data.train_labels)
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = int(recipe.warmup_epochs * steps_per_epoch)
    lookahead = Lookahead(model, recipe.lookahead, total_steps) if recipe.lookahead else None
    precision = resolve_precision(recipe.precision, device)  # "auto" decided once
    scaler = grad_scaler(precision, device)

    history: list[dict[str, float]] = []
    start_epoch = 0
    # Taken before training moves the weights, and only where a state is written or read: the
    # data's digest reads every image once (a fraction of a second on all of CIFAR-10).
    identity = None
    if state_path:
        identity = run_identity(data, model if given_model else None, loss_fn if given_loss else None)
    if resume and state_path and Path(state_path).exists():
        state = checkpoint.load_state(state_path)
        # A state saved before a Recipe field existed means that field's default.
        if {**Recipe.defaults(), **state["recipe"]} != recipe.to_dict():
            raise checkpoint.CheckpointError(
                f"{state_path} was written by a different recipe; resume with the same one, or "
                "start afresh (--force, or another --out).")
        assert identity is not None  # taken above, since there is a state_path
        check_same_run(state_path, state.get("run"), identity)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise checkpoint.CheckpointError(
                f"{state_path} holds weights of another shape than this model "
                f"({checkpoint.first_mismatch(e)}); start afresh (--force, or another --out).") from None
        optimizer.load_state_dict(state["optimizer"])
        if lookahead:
            lookahead.load_state_dict(state["lookahead"])
        history, start_epoch = state["history"], state["epoch"]
        if progress:
            print(f"Resumed from {state_path} after epoch {start_epoch}")

    # Wrapped after a resume has loaded the weights; it starts by sending rank 0's to the others.
    trained = model if world.size == 1 else nn.parallel.DistributedDataParallel(model)
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        torch.manual_seed((recipe.seed * 100_003 + epoch) * world.size + world.rank)  # dropout, drop-path
        gen = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)  # order, augmentation
        # In a group the order stays shared (gen) and each process augments with its own draws.
        own = gen if world.size == 1 else torch.Generator().manual_seed(
            (recipe.seed * 100_003 + epoch) * world.size + world.rank + 1)
        seen, loss_sum, correct = 0, 0.0, 0
        t0 = time.perf_counter()
        bar = tqdm(batches(data.train_images, data.train_labels, recipe.batch_size, True, gen),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   disable=not progress, leave=False)
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, warmup_steps, recipe.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            weight = 1.0
            if world.size > 1:  # this process's share of the global batch
                part = distributed.shard(len(y), world)
                weight = distributed.loss_weight(part.stop - part.start, len(y), world)
                x, y = x[part], y[part]
            loss, logits, batch = _train_step(recipe, trained, optimizer, scaler, loss_fn,
                                              x, y, own, precision, device, weight)
            y, y_other, lam = batch.labels, batch.other_labels, batch.lam
            if lookahead:
                lookahead.step(model, step)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            # On a mixed batch, the label with the larger share counts as the right answer.
            correct += int((logits.argmax(1) == (y if lam >= 0.5 else y_other)).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        if lookahead and epoch + 1 == recipe.epochs:
            lookahead.finish(model)  # the model becomes the average
        train_time = time.perf_counter() - t0
        if world.size > 1:  # the whole epoch's counts, and the test images split like a batch
            totals = distributed.all_sum([seen, loss_sum, correct], world)
            seen, correct, loss_sum = int(totals[0]), int(totals[2]), totals[1]
            part = distributed.shard(len(data.test_labels), world)
            n = part.stop - part.start
            acc, test_loss = evaluate(model, data.test_images[part], data.test_labels[part],
                                      precision=precision, device=device)
            right, loss_total = distributed.all_sum([acc * n, test_loss * n], world)
            test_acc, test_loss = right / len(data.test_labels), loss_total / len(data.test_labels)
        else:
            test_acc, test_loss = evaluate(model, data.test_images, data.test_labels,
                                           precision=precision, device=device)
        history.append(dict(epoch=epoch + 1, train_loss=loss_sum / seen, train_acc=correct / seen,
                            test_loss=test_loss, test_acc=test_acc, lr=lr,
                            images_per_s=seen / train_time, epoch_time_s=time.perf_counter() - t0))
        if progress:
            h = history[-1]
            print(f"epoch {h['epoch']:3d}  train loss {h['train_loss']:.3f} acc {h['train_acc']:.3f}  "
                  f"test loss {h['test_loss']:.3f} acc {h['test_acc']:.4f}  "
                  f"{h['images_per_s']:.0f} img/s  {h['epoch_time_s']:.0f} s", flush=True)
        if state_path and world.is_main:
            checkpoint.save_state(state_path, dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(), history=history,
                epoch=epoch + 1, recipe=recipe.to_dict(), run=identity,
                **({"lookahead": lookahead.state_dict()} if lookahead else {})))
    model.eval()
    # A plain attribute: torch types nn.Module.__setattr__ for tensors and modules only.
    setattr(model, "provenance", training_record(recipe, data, history, model))
    return model, history


def _train_step(recipe: Recipe, model: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: Any, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                gen: torch.Generator, precision: Precision,
                device: torch.device, weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, Batch]:
    """One step of ``fit``: augment and mix the batch, run the model and the loss, step
    the optimizer. Returns (loss, logits, the batch as the loss saw it). ``weight``
    multiplies the loss that is differentiated (``distributed.loss_weight``), not the one
    returned."""
    x = augment(x, gen, recipe.crop_padding, recipe.flip, recipe.cutout)
    if recipe.auto_augment:
        x = auto_augment(x, recipe.auto_augment)
    y_other, lam = y, 1.0
    if recipe.mix_prob:
        x, y, y_other, lam = mix(x, y, gen, recipe.mix_prob, recipe.mixup_alpha,
                                 recipe.cutmix_alpha)
    batch = Batch(x.to(device), y.to(device), y_other.to(device), lam)
    with autocast(precision, device):
        logits = model(batch.images)
        loss = loss_fn(logits, batch)
    optimizer.zero_grad(set_to_none=True)
    weighted = loss if weight == 1.0 else loss * weight
    if scaler:
        scaler.scale(weighted).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        weighted.backward()
        optimizer.step()
    return loss, logits, batch


def training_throughput(recipe: Recipe, data: CIFAR10, model: nn.Module | None = None,
                        loss_fn: LossFn | None = None, steps: int = 3, warmup: int = 1,
                        device: str | torch.device | None = None) -> Spread:
    """Images per second of ``recipe``'s training steps on this machine, each step as
    ``fit`` runs it (augmentation, mixing, forward, ``loss_fn`` with its teacher if it
    has one, backward, optimizer step), over ``steps`` timed steps after ``warmup``
    untimed ones. ``model`` (a fine-tune's start) is copied, never trained in place;
    without it the recipe's model is built. The per-epoch test pass of ``fit`` is not
    counted. ``LEANFORMER_TIMING=brief`` (which ``make test`` sets, as ``measure_costs``
    reads it) cuts this to one step after one."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be at least 1 and warmup at least 0, got {steps} "
                         f"and {warmup}")
    if brief_timing():
        steps, warmup = 1, min(warmup, 1)
    device = torch.device(device or default_device())
    model = copy.deepcopy(model) if model is not None else build_model(recipe, data)
    model = model.to(device)
    model.train().requires_grad_(True)  # a copy of a frozen teacher would not learn
    optimizer, loss_fn = build_optimizer(recipe, model), loss_fn or recipe_loss(recipe)
    precision = resolve_precision(recipe.precision, device)
    scaler, gen = grad_scaler(precision, device), torch.Generator().manual_seed(recipe.seed)

    def step() -> None:
        x, y = next(batches(data.train_images, data.train_labels, recipe.batch_size,
                            True, gen))
        _train_step(recipe, model, optimizer, scaler, loss_fn, x, y, gen, precision, device)

    # measure's timing path, as every other speed of the course is timed
    return rate_side_by_side({"train": step}, recipe.batch_size, 1, steps, warmup)["train"]


def training_record(recipe: Recipe, data: CIFAR10, history: list[dict[str, float]],
                    model: nn.Module) -> dict[str, Any]:
    """What a training run was and cost: the provenance saved with a checkpoint."""
    cfg = getattr(model, "cfg", None)  # a VisionTransformer's or ConvNet's config
    record = {
        "recipe": recipe.to_dict(),
        "data_source": data.source,
        "train_images": len(data.train_labels),
        "test_images": len(data.test_labels),
        "test_set_sha256": test_set_sha256(data),  # which test images its accuracies are on (record)
        "epochs": len(history),
        "train_images_seen": len(history) * len(data.train_labels),
        "train_wall_time_s": sum(h["epoch_time_s"] for h in history),
        "machine": machine_info(),
        "world_size": distributed.world().size,  # processes that trained it (torchrun)
        "history": history,
        "parameters": count_parameters(model),
        "arch": arch_of(model),
        "model": cfg.to_dict() if cfg is not None else None,
    }
    return record
