import pytest
import torch
import torch.nn.functional as F

from leanformer import checkpoint
from leanformer.data import CIFAR10
from leanformer.distill import DistillationLoss, soft_target_loss
from leanformer.train import Batch, build_model, fit, get_recipe, mixed_cross_entropy, recipe_loss


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


def test_a_resumed_distillation_run_matches_an_uninterrupted_one(subset, tmp_path, monkeypatch):
    """A ConvNet teacher, a ViT student: killed after its first epoch and resumed from the state
    file, the student ends with the very weights of an uninterrupted run."""
    data = CIFAR10(subset.train_images[::20], subset.train_labels[::20],  # 250 images, all classes
                   subset.test_images[::100], subset.test_labels[::100], subset.source)
    teacher = build_model(get_recipe("teacher-cnn-quick"), data).eval()  # whitened, untrained
    recipe = get_recipe("quick", epochs=2, mix_prob=0.5)  # mixing draws random numbers too

    def distill():  # a fresh loss for each run, as a fresh process would build it
        return DistillationLoss(teacher, alpha=0.5, temperature=2.0, hard_loss=recipe_loss(recipe))

    uninterrupted, history = fit(recipe, data, progress=False, loss_fn=distill())

    state = tmp_path / "student.last.pt"
    real_save = checkpoint.save_state
    saves = []

    def save_then_die(path, st):
        real_save(path, st)
        saves.append(st["epoch"])
        raise KeyboardInterrupt  # killed right after the first epoch was saved

    monkeypatch.setattr(checkpoint, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, data, state_path=state, progress=False, loss_fn=distill())
    monkeypatch.setattr(checkpoint, "save_state", real_save)
    resumed, resumed_history = fit(recipe, data, state_path=state, resume=True, progress=False,
                                   loss_fn=distill())
    assert saves == [1] and len(resumed_history) == 2
    assert [h["train_loss"] for h in resumed_history] == [h["train_loss"] for h in history]
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
