import json

import pytest
import torch
import torch.nn.functional as F

import leanformer.train
from leanformer import checkpoint
from leanformer.data import CIFAR10
from leanformer import distill
from leanformer.distill import DistillationLoss, hard_target_loss, soft_target_loss
from leanformer.evaluate import accuracies_with_tta, tta_logits
from leanformer.recipes import get_recipe
from leanformer.train import Batch, Lookahead, build_model, fit, mixed_cross_entropy, recipe_loss


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
    assert all(p.grad is None for p in teacher.parameters())


def test_temperature_1_and_alpha_0_is_plain_cross_entropy():
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 2, 2), torch.randint(0, 10, (8,))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    logits = torch.randn(8, 10)
    recipe = get_recipe("quick", label_smoothing=0.0)
    loss = DistillationLoss(teacher, alpha=0.0, temperature=1.0, hard_loss=recipe_loss(recipe))
    by_hand = -F.log_softmax(logits, 1)[torch.arange(8), labels].mean()
    assert loss(logits, Batch(images, labels, labels)).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_hard_distillation_takes_the_teachers_top_class_as_the_label():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    top = teacher.argmax(1)
    by_hand = -F.log_softmax(student, 1)[torch.arange(6), top].mean()
    assert hard_target_loss(student, teacher).item() == pytest.approx(by_hand.item(), rel=1e-6)
    # Scaling the teacher's logits changes its soft targets, not its top class.
    assert hard_target_loss(student, 5 * teacher).item() == pytest.approx(by_hand.item(), rel=1e-6)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    images, labels = torch.randn(6, 3, 2, 2), torch.randint(0, 10, (6,))
    loss = DistillationLoss(net, alpha=1.0, kind="hard")(student, Batch(images, labels, labels))
    assert loss.item() == pytest.approx(hard_target_loss(student, net(images)).item(), rel=1e-6)


def test_the_teacher_stays_in_eval_mode_and_unchanged_while_the_student_learns():
    """BatchNorm's running statistics and dropout are the teacher's own, fixed answers;
    the model passed in as the teacher is left as it was (the loss asks a copy)."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                                  torch.nn.Dropout(0.5), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss_fn = DistillationLoss(teacher.train(), alpha=1.0, temperature=2.0)
    assert teacher.training  # untouched: the loss froze a copy
    assert all(p.requires_grad for p in teacher.parameters())
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    images, labels = torch.randn(8, 3, 2, 2), torch.randint(0, 10, (8,))
    first = loss_fn(student(images), Batch(images, labels, labels))
    loss_fn.teacher.train()  # even if something switches it back, it answers in eval
    second = loss_fn(student(images), Batch(images, labels, labels))
    second.backward()
    assert first.item() == second.item()  # no dropout noise, no batch statistics
    assert not loss_fn.teacher.training
    frozen = loss_fn.teacher.parameters()
    assert all(p.grad is None and not p.requires_grad for p in frozen)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert torch.equal(loss_fn.teacher.state_dict()[k], before[k]), k
    assert student[1].weight.grad is not None


def test_distillation_loss_refuses_bad_settings():
    teacher = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        DistillationLoss(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        DistillationLoss(teacher, temperature=0)
    with pytest.raises(ValueError, match="pass hard_loss"):
        DistillationLoss(teacher, alpha=0.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        DistillationLoss(teacher, kind="medium")
    with pytest.raises(ValueError, match="temperature does not apply"):
        DistillationLoss(teacher, kind="hard", temperature=4.0)


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


def test_the_sweep_trains_each_setting_once_and_resumes_from_its_file(subset, tmp_path, monkeypatch):
    data = CIFAR10(subset.train_images[::50], subset.train_labels[::50],
                   subset.test_images[::100], subset.test_labels[::100], subset.source)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    import leanformer.train

    real_fit, calls = leanformer.distill.fit, []

    def counting_fit(recipe, data, **kw):
        calls.append(type(kw.get("loss_fn")).__name__)
        return real_fit(recipe, data, **kw)

    monkeypatch.setattr(leanformer.distill, "fit", counting_fit)  # where the sweep looks it up
    recipe = get_recipe("quick", epochs=1)
    settings = distill.sweep_settings(temperatures=(2,), alphas=(0.5,), hard_alphas=(0.5,))
    assert [distill.setting_name(**s) for s in settings] == ["labels", "soft T=2 a=0.5", "hard a=0.5"]
    out = tmp_path / "sweep.json"
    first = distill.sweep(teacher, recipe, data, settings[:2], out=out, progress=False)
    assert calls == ["NoneType", "DistillationLoss"]  # the labels alone: no teacher in the loop
    both = distill.sweep(teacher, recipe, data, settings, out=out, progress=False)
    assert len(calls) == 3  # only the new setting trained
    assert [r["name"] for r in both] == ["labels", "soft T=2 a=0.5", "hard a=0.5"]
    assert both[:2] == first and all(0 <= r["test_acc"] <= 1 for r in both)
    distill.sweep(teacher, get_recipe("quick", epochs=1, seed=1), data, settings[:1], out=out,
                  progress=False)
    assert len(calls) == 4  # another recipe: trained afresh
    distill.sweep(teacher, recipe, data, settings[:1], out=out, progress=False,
                  about={"teacher": {"weights_sha256": "another"}, "command": "python -m leanformer ..."})
    assert len(calls) == 5  # another teacher: trained afresh
    assert json.loads(out.read_text())["command"] == "python -m leanformer ..."
    out.write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="is not a sweep file"):
        distill.sweep(teacher, recipe, data, settings[:1], out=out, progress=False)


def test_a_sweep_with_a_validation_split_records_both_accuracies(subset, tmp_path):
    from leanformer.evaluate import evaluate
    from leanformer.splits import holdout

    small = CIFAR10(subset.train_images, subset.train_labels, subset.test_images[::100],
                    subset.test_labels[::100], subset.source)
    tuning = holdout(small, 100, 100, seed=0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    recipe = get_recipe("quick", epochs=1, precision="fp32")
    out = tmp_path / "sweep-val.json"
    settings = distill.sweep_settings(temperatures=(2,), alphas=(0.5,), hard_alphas=())
    results = distill.sweep(teacher, recipe, tuning, settings, out=out, progress=False)
    record = json.loads(out.read_text())
    assert record["val_images"] == 100 and record["train_images"] == 100
    assert record["test_images"] == 100
    assert "100 to validate on" in record["data_source"]
    for r in results:
        assert r["test_acc"] == r["history"][-1]["test_acc"]  # recorded, not chosen by
        assert 0 <= r["val_acc"] <= 1
    # the labels-alone run again by hand: its held-out accuracy is the one recorded
    model, _ = leanformer.train.fit(recipe, tuning, progress=False)
    val_acc = evaluate(model, tuning.val_images, tuning.val_labels, precision="fp32")[0]
    assert results[0]["val_acc"] == pytest.approx(val_acc)


def test_lookahead_pulls_towards_the_average_late_and_ends_on_it():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    la = Lookahead(model, final=0.5, total_steps=10, every=5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    la.step(model, 3)  # not a 5th step: nothing happens
    assert model.weight.item() == 1.0
    la.step(model, 4)  # step 5 of 10: d = 0.5 * 0.5^3
    d = 0.5 * 0.5 ** 3
    assert model.weight.item() == pytest.approx(d * 0.0 + (1 - d) * 1.0)
    slow = model.weight.item()
    with torch.no_grad():
        model.weight.fill_(3.0)
    la.finish(model)  # the model becomes the average; the last fast weights are dropped
    assert model.weight.item() == la.state_dict()["weight"].item() == slow


def test_test_time_augmentation_averages_the_views_it_names():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 10))
    x = torch.rand(2, 3, 4, 4)
    plain, flip = model(x), model(x.flip(3))
    assert torch.allclose(tta_logits(model, x, ""), plain)
    assert torch.allclose(tta_logits(model, x, "flip"), (plain + flip) / 2)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :4, :4], padded[..., 2:, 2:]]
    mirrored = [(model(v) + model(v.flip(3))) / 2 for v in views]
    expected = mirrored[0] / 2 + (mirrored[1] + mirrored[2]) / 4
    assert torch.allclose(tta_logits(model, x, "flip-shift"), expected, atol=1e-6)
    with pytest.raises(ValueError, match="tta must be one of"):
        tta_logits(model, x, "rotate")


def test_accuracies_with_tta_names_each_mode_as_a_record_does():
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    data = SimpleNamespace(test_images=torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8),
                           test_labels=torch.randint(0, 10, (64,)))
    x = data.test_images.float() / 255
    with torch.no_grad():
        expected = {key: (tta_logits(model, x, mode).argmax(1) == data.test_labels).float().mean().item()
                    for key, mode in (("test_acc", ""), ("test_acc_flip_tta", "flip"),
                                      ("test_acc_flip_shift_tta", "flip-shift"))}
    assert len(set(expected.values())) > 1  # the modes answer differently here
    assert accuracies_with_tta(model, data) == pytest.approx(expected)
    assert accuracies_with_tta(model, data, modes=("flip",)) == pytest.approx(
        {"test_acc_flip_tta": expected["test_acc_flip_tta"]})
