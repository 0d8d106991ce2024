"""Knowledge distillation: a student learns from a teacher's outputs as well as from the labels.

Hinton, Vinyals and Dean (2015): soften both distributions with a temperature T and minimise

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * hard loss

The T^2 keeps the soft term's gradients on the same scale whatever T is. The teacher sees the very
images the student sees, augmentation and mixing included, so on a mixed image it gives the soft
answer for that mixture rather than a made-up label share.
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * t * t


class DistillationLoss:
    """A ``loss_fn(logits, batch)`` for ``leanformer.train.fit`` that asks ``teacher`` about
    ``batch.images``.

    alpha:       weight of the soft (teacher) term; ``1 - alpha`` goes to ``hard_loss``.
    temperature: softening of both distributions (1 keeps them as they are).
    hard_loss:   the label loss, ``hard_loss(logits, batch)``; needed when ``alpha < 1``.
    """

    def __init__(self, teacher: nn.Module, alpha: float = 1.0, temperature: float = 1.0,
                 hard_loss: Callable | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if alpha < 1.0 and hard_loss is None:
            raise ValueError("alpha < 1 gives part of the loss to the labels: pass hard_loss")
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha, self.temperature, self.hard_loss = float(alpha), float(temperature), hard_loss

    def __call__(self, logits: torch.Tensor, batch) -> torch.Tensor:
        self.teacher.to(batch.images.device)  # fit moves the student; the teacher follows (once)
        # The teacher runs in fp32 whatever the student's autocast: on a CPU without bf16 matrix
        # units (no AMX) bf16 is the slower format, and fp32 answers are the exact teacher.
        with torch.no_grad(), torch.autocast(batch.images.device.type, enabled=False):
            teacher_logits = self.teacher(batch.images.float())
        loss = self.alpha * soft_target_loss(logits, teacher_logits, self.temperature)
        if self.alpha < 1.0:
            loss = loss + (1 - self.alpha) * self.hard_loss(logits, batch)
        return loss
