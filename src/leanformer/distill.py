"""Knowledge distillation: a student learns from a teacher's outputs as well as from the labels.

Hinton, Vinyals and Dean (2015), soft targets: soften both distributions with a temperature T and
minimise

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * label loss

The gradient of the KL term with respect to a student logit is (p_s - p_t) / T, and for large T
that difference itself shrinks like 1 / T, so the T^2 keeps the soft term's gradients on the same
scale whatever T is.

Touvron et al. (2021, DeiT), hard targets: the teacher's top class is a label,

    loss = alpha * CE(z_s, argmax z_t) + (1 - alpha) * label loss

The teacher sees the very images the student sees, augmentation and mixing included, so on a
mixed image it gives its own answer for that mixture rather than a made-up label share.

As everywhere in the package's techniques, data for a whole run is a ``CIFAR10``
(``sweep``), and nothing here changes the models it is given: ``DistillationLoss`` asks
a frozen copy of its teacher, and ``sweep`` trains a fresh student per setting.
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .data import CIFAR10
from .evaluate import evaluate
from .files import atomic_write
from .machine import machine_info
from .recipes import Recipe
from .train import Batch, LossFn, fit, recipe_loss


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


def hard_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """DeiT's hard distillation: cross-entropy against the teacher's top class."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(-1))


KINDS = ("soft", "hard")


class DistillationLoss:
    """A ``loss_fn(logits, batch)`` for ``leanformer.train.fit`` that asks ``teacher`` about
    ``batch.images``.

    alpha:       weight of the teacher's term; ``1 - alpha`` goes to ``hard_loss``.
    temperature: softening of both distributions (1 keeps them as they are); soft targets only.
    hard_loss:   the label loss, ``hard_loss(logits, batch)``; needed when ``alpha < 1``.
    kind:        "soft" (Hinton: KL between softened distributions) or "hard" (DeiT:
                 cross-entropy against the teacher's top class).

    The teacher runs in eval mode (BatchNorm uses its running statistics, dropout is off) without
    gradients, inside the student's autocast: under bf16 it answers in bf16, which on a CPU with
    bf16 instructions halves its share of a training step. The loss keeps its own frozen
    copy of ``teacher`` (``self.teacher``), so the model passed in is left as it was,
    free to be trained itself (a student that starts from its teacher's weights, say).
    """

    def __init__(self, teacher: nn.Module, alpha: float = 1.0, temperature: float = 1.0,
                 hard_loss: LossFn | None = None, kind: str = "soft") -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if alpha < 1.0 and hard_loss is None:
            raise ValueError("alpha < 1 gives part of the loss to the labels: pass hard_loss")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "hard" and temperature != 1.0:
            raise ValueError("hard distillation uses the teacher's top class; the temperature "
                             f"does not apply (got {temperature}): leave it at 1")
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.alpha, self.temperature, self.hard_loss = float(alpha), float(temperature), hard_loss
        self.kind = kind

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.teacher.to(images.device)  # fit moves the student; the teacher follows (once)
        self.teacher.eval()
        with torch.no_grad():
            return self.teacher(images).float()

    def __call__(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        teacher_logits = self.teacher_logits(batch.images)
        if self.kind == "soft":
            loss = self.alpha * soft_target_loss(logits, teacher_logits, self.temperature)
        else:
            loss = self.alpha * hard_target_loss(logits, teacher_logits)
        if self.alpha < 1.0:
            assert self.hard_loss is not None  # __init__ refuses alpha < 1 without one
            loss = loss + (1 - self.alpha) * self.hard_loss(logits, batch)
        return loss

    def describe(self) -> dict[str, str | float]:
        """The settings, for a checkpoint's provenance."""
        return dict(kind=self.kind, alpha=self.alpha, temperature=self.temperature)


# --- the sweep -------------------------------------------------------------------------------

class Setting(TypedDict, total=False):
    """One setting of ``sweep``: ``alpha`` is required; ``kind`` defaults to "soft" and
    ``temperature`` to 1."""

    kind: str
    alpha: float
    temperature: float


def setting_name(kind: str, alpha: float, temperature: float) -> str:
    """A short label: "labels" for alpha = 0, else e.g. "soft T=4 a=0.5" or "hard a=0.5"."""
    if alpha == 0:
        return "labels"
    return f"hard a={alpha:g}" if kind == "hard" else f"soft T={temperature:g} a={alpha:g}"


def sweep_settings(temperatures: Sequence[float] = (1, 2, 4), alphas: Sequence[float] = (0.5, 0.9),
                   hard_alphas: Sequence[float] = (0.5,)) -> list[Setting]:
    """The labels alone, soft targets at every (T, alpha) pair, and hard targets at each alpha."""
    return ([Setting(kind="soft", alpha=0.0, temperature=1.0)]
            + [Setting(kind="soft", alpha=a, temperature=t) for t in temperatures for a in alphas]
            + [Setting(kind="hard", alpha=a, temperature=1.0) for a in hard_alphas])


def sweep(teacher: nn.Module, recipe: Recipe, data: CIFAR10, settings: Iterable[Setting],
          out: str | os.PathLike[str] | None = None, progress: bool = True,
          about: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train ``recipe``'s model on ``data`` once per setting, from the same seed, and return one
    record per setting: its kind, alpha, temperature, test accuracy, history and wall time.

    data:     with a validation split (``splits.holdout``), each record also holds
              ``val_acc``, the accuracy on those held-out training images: the figure
              to choose a setting by, so that the test images judge the choice and do
              not make it.
    settings: dicts with ``kind`` ("soft" or "hard"), ``alpha`` and ``temperature``;
              ``alpha == 0`` trains from the labels alone (no teacher in the loop).
    out:      a .json file, rewritten atomically after each setting. A setting already in it
              (for the same recipe, data and teacher) is not trained again, so a stopped sweep
              resumes.
    about:    more to write into the file (the command, say); its "teacher" entry, if any, is
              part of what must match for a resume.
    """
    out = Path(out) if out else None
    about = dict(about or {})
    val = None
    if data.val_images is not None and data.val_labels is not None:
        val = (data.val_images, data.val_labels)
    head = json.loads(json.dumps({  # as the file holds it: tuples become lists
        "recipe": recipe.to_dict(), "data_source": data.source,
        "train_images": len(data.train_labels), "test_images": len(data.test_labels),
        **({"val_images": len(val[1])} if val is not None else {}),
        **({"teacher": about.pop("teacher")} if "teacher" in about else {})}))
    done = {}
    if out and out.exists():
        try:
            old = json.loads(out.read_text())
        except (OSError, ValueError) as e:
            raise checkpoint.CheckpointError(f"{out} is not a sweep file ({e}); delete it or "
                                             "choose another --out") from None
        if {k: old.get(k) for k in head} == head:
            done = {r["name"]: r for r in old.get("results", [])}
        elif progress:
            print(f"{out} holds another recipe or data: starting afresh")
    results = []
    for s in settings:
        kind, alpha, temperature = s.get("kind", "soft"), float(s["alpha"]), float(s.get("temperature", 1.0))
        name = setting_name(kind, alpha, temperature)
        if name in done:
            results.append(done[name])
            continue
        loss_fn = None if alpha == 0 else DistillationLoss(
            teacher, alpha, temperature, recipe_loss(recipe), kind=kind)
        t0 = time.perf_counter()
        model, history = fit(recipe, data, progress=False, loss_fn=loss_fn)
        scores = {"test_acc": history[-1]["test_acc"]}
        if val is not None:  # at the precision fit tests in
            scores["val_acc"] = evaluate(model, *val, precision=recipe.precision)[0]
        results.append(dict(name=name, kind=kind, alpha=alpha, temperature=temperature,
                            **scores, history=history,
                            wall_time_s=time.perf_counter() - t0, machine=machine_info()))
        if progress:
            print(f"{name:>18}: " + ", ".join(f"{k} {v:.2%}" for k, v in scores.items())
                  + f" after {len(history)} epochs, {results[-1]['wall_time_s']:.0f} s",
                  flush=True)
        if out:
            record = {**head, **about, "results": results}
            atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))
    return results
