import pytest
import torch
import torch.nn.functional as F

from leanformer.distill import DistillationLoss, soft_target_loss
from leanformer.train import Batch, mixed_cross_entropy


def test_soft_target_loss_is_the_scaled_kl_divergence():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    T = 3.0
    p = F.softmax(teacher / T, 1)
    by_hand = (p * (p.log() - F.log_softmax(student / T, 1))).sum(1).mean() * T * T
    assert soft_target_loss(student, teacher, T).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert soft_target_loss(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_asks_the_teacher_about_the_batch_and_mixes_in_the_labels():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    images, labels = torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 4])
    batch = Batch(images, labels, labels, 1.0)
    logits = torch.randn(5, 10, requires_grad=True)
    hard = lambda z, b: mixed_cross_entropy(z, b)  # noqa: E731
    loss = DistillationLoss(teacher, alpha=0.25, temperature=2.0, hard_loss=hard)(logits, batch)
    expected = (0.25 * soft_target_loss(logits, teacher(images), 2.0)
                + 0.75 * F.cross_entropy(logits, labels))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert logits.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_distillation_loss_refuses_bad_settings():
    teacher = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        DistillationLoss(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        DistillationLoss(teacher, temperature=0)
    with pytest.raises(ValueError, match="pass hard_loss"):
        DistillationLoss(teacher, alpha=0.5)
