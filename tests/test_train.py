import math

import pytest
import torch

from conftest import small
from leanformer import checkpoint
from leanformer.evaluate import evaluate
from leanformer.recipes import Recipe, get_recipe
from leanformer.train import (Batch, build_model, fit, lr_at, mixed_cross_entropy,
                              recipe_loss)


def losses(history):
    return [(h["train_loss"], h["test_loss"], h["test_acc"]) for h in history]


def test_quick_training_clears_chance_by_a_margin(subset):
    # All 5,000 training images; 2,000 test images (200 per class) keep the per-epoch evaluation
    # cheap. Lesson 03 makes the same check on all 10,000.
    data = small(subset, 5000, 2000)
    model, history = fit(get_recipe("quick", epochs=3), data, progress=False)
    acc, _ = evaluate(model, data.test_images, data.test_labels)
    assert acc > 0.25, f"3 quick epochs reached only {acc:.1%} (chance is 10%)"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(history[0]) >= {"train_loss", "train_acc", "test_acc", "lr", "images_per_s"}


def test_same_seed_same_history(subset):
    data = small(subset)
    recipe = get_recipe("quick", epochs=2)
    _, a = fit(recipe, data, progress=False)
    _, b = fit(recipe, data, progress=False)
    assert losses(a) == losses(b)
    _, c = fit(get_recipe("quick", epochs=2, seed=1), data, progress=False)
    assert losses(c) != losses(a)


def test_resume_after_a_kill_continues_exactly(subset, tmp_path, monkeypatch):
    data = small(subset)
    recipe = get_recipe("quick", epochs=3, mix_prob=0.5, auto_augment="cifar10")
    # mixing and AutoAugment draw random numbers too, and must resume exactly as well
    _, uninterrupted = fit(recipe, data, progress=False)

    state = tmp_path / "quick.last.pt"
    real_save = checkpoint.save_state
    saves = []

    def save_then_die(path, st):
        real_save(path, st)
        saves.append(st["epoch"])
        if st["epoch"] == 2:
            raise KeyboardInterrupt  # killed right after epoch 2 was saved

    monkeypatch.setattr(checkpoint, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, data, state_path=state, progress=False)
    monkeypatch.setattr(checkpoint, "save_state", real_save)
    _, resumed = fit(recipe, data, state_path=state, resume=True, progress=False)
    assert saves == [1, 2]
    assert losses(resumed) == losses(uninterrupted)


def test_resume_refuses_another_recipe(subset, tmp_path):
    data = small(subset, 256, 100)
    state = tmp_path / "last.pt"
    fit(get_recipe("quick", epochs=1), data, state_path=state, progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="different recipe"):
        fit(get_recipe("quick", epochs=1, lr=1e-4), data, state_path=state, resume=True, progress=False)


def test_a_state_saved_before_new_recipe_fields_still_resumes(subset, tmp_path):
    """A state written before ``arch``, ``optimizer`` and the rest existed lacks them: they mean
    their defaults, so the same recipe resumes; a changed field is still refused."""
    data = small(subset, 256, 100)
    state = tmp_path / "last.pt"
    fit(get_recipe("quick", epochs=1), data, state_path=state, progress=False)
    old = checkpoint.load_state(state)
    added = ("arch", "optimizer", "momentum", "nesterov", "batchnorm_lr_scale")
    old["recipe"] = {k: v for k, v in old["recipe"].items() if k not in added}
    checkpoint.save_state(state, old)
    _, history = fit(get_recipe("quick", epochs=1), data, state_path=state, resume=True, progress=False)
    assert history == old["history"]
    assert {k: Recipe.defaults()[k] for k in added} == {
        "arch": "vit", "optimizer": "adamw", "momentum": 0.9, "nesterov": True, "batchnorm_lr_scale": 1.0}
    with pytest.raises(checkpoint.CheckpointError, match="different recipe"):
        fit(get_recipe("quick", epochs=1, optimizer="sgd"), data, state_path=state, resume=True,
            progress=False)


def test_resume_refuses_other_data_other_starting_weights_or_another_teacher(subset, tmp_path):
    """The recipe alone does not make a run: a state resumes only with the data, the starting
    weights and the teacher it was written with, and the refusal names which one differs."""
    import copy

    from leanformer.distill import DistillationLoss
    from leanformer.train import recipe_loss

    data, other_data = small(subset, 256, 100), small(subset, 128, 100)
    recipe = get_recipe("quick", epochs=1)
    start = build_model(recipe)
    with torch.no_grad():
        start.head.bias.add_(0.5)  # weights the recipe's own initialisation would not give
    teacher = build_model(get_recipe("quick", seed=1)).eval()
    other_teacher = build_model(get_recipe("quick", seed=2)).eval()

    def loss(t, alpha=0.9):
        return DistillationLoss(t, alpha, 4.0, recipe_loss(recipe))

    state = tmp_path / "run.last.pt"
    fit(recipe, data, state_path=state, model=copy.deepcopy(start), loss_fn=loss(teacher), progress=False)

    def resume(**kw):
        args = dict(data=data, model=copy.deepcopy(start), loss_fn=loss(teacher)) | kw
        return fit(recipe, args.pop("data"), state_path=state, resume=True, progress=False, **args)

    with pytest.raises(checkpoint.CheckpointError, match="other data") as e:
        resume(data=other_data)
    assert str(state) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(checkpoint.CheckpointError, match="other weights"):
        resume(model=build_model(recipe))  # the recipe's fresh weights, not the given ones
    with pytest.raises(checkpoint.CheckpointError, match="other weights.*fresh initialisation"):
        resume(model=None)
    with pytest.raises(checkpoint.CheckpointError, match="another teacher"):
        resume(loss_fn=loss(other_teacher))
    with pytest.raises(checkpoint.CheckpointError, match="another teacher.*alpha 0.5"):
        resume(loss_fn=loss(teacher, alpha=0.5))
    with pytest.raises(checkpoint.CheckpointError, match="another teacher.*no teacher"):
        resume(loss_fn=None)
    _, history = resume()  # the same data, starting weights and teacher: it resumes
    assert history == checkpoint.load_state(state)["history"]


def test_a_state_from_before_the_run_was_recorded_resumes_with_a_warning(subset, tmp_path, capsys):
    """A state file written before data, starting weights and teacher were recorded in it still
    resumes (its recipe is checked), and says on stderr what it could not check."""
    data = small(subset, 256, 100)
    state = tmp_path / "last.pt"
    fit(get_recipe("quick", epochs=1), data, state_path=state, progress=False)
    old = checkpoint.load_state(state)
    assert set(old["run"]) == {"data", "init", "teacher"}
    del old["run"]
    checkpoint.save_state(state, old)
    capsys.readouterr()
    _, history = fit(get_recipe("quick", epochs=1), data, state_path=state, resume=True, progress=False)
    assert history == old["history"]
    assert "predates" in capsys.readouterr().err


def test_schedule_warms_up_then_decays_to_zero():
    peak, total, warm = 1e-3, 1000, 100
    assert lr_at(0, total, warm, peak) == pytest.approx(peak / warm)
    assert lr_at(warm - 1, total, warm, peak) == pytest.approx(peak)
    assert lr_at(warm, total, warm, peak) == pytest.approx(peak)
    assert lr_at(total, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    mid = lr_at(warm + (total - warm) // 2, total, warm, peak)
    assert mid == pytest.approx(peak / 2)
    assert math.isclose(lr_at(550, total, warm, peak), mid)


def test_a_distillation_loss_trains_through_fit(subset):
    """fit takes its loss from outside: a student learns from a teacher's soft targets alone."""
    from leanformer.distill import DistillationLoss

    data = small(subset, 512, 500)
    teacher, _ = fit(get_recipe("quick", epochs=2), data, progress=False)
    distill = DistillationLoss(teacher, alpha=1.0, temperature=2.0)  # no labels: the teacher only
    asked = []

    def soft_targets_only(logits, batch):
        asked.append(len(batch.images))
        return distill(logits, batch)

    recipe = get_recipe("quick", epochs=2, seed=1)
    student, history = fit(recipe, data, progress=False, loss_fn=soft_targets_only)
    assert sum(asked) == 2 * 512  # the loss saw every augmented image of both epochs
    t_pred = teacher(data.test_images[:500].float() / 255).argmax(1)
    s_pred = student(data.test_images[:500].float() / 255).argmax(1)
    untrained = build_model(recipe).eval()(data.test_images[:500].float() / 255).argmax(1)
    # The student agrees with its teacher far more than an untrained model of its shape does.
    agree = (s_pred == t_pred).float().mean().item()
    assert agree > 0.4 and agree > (untrained == t_pred).float().mean().item() + 0.2
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_fit_starts_from_given_weights_and_records_what_it_cost(subset):
    data = small(subset, 256, 200)
    model, _ = fit(get_recipe("quick", epochs=1), data, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc_before, _ = evaluate(model, data.test_images, data.test_labels)
    tuned, history = fit(get_recipe("quick", epochs=1, lr=1e-5, warmup_epochs=0), data,
                         progress=False, model=model)
    assert tuned is not model  # a copy trained; the model given is kept (test below)
    # A tiny learning rate moves the given weights a little; they are not re-initialised.
    drift = max((tuned.state_dict()[k] - v).abs().max().item() for k, v in before.items())
    assert 0 < drift < 1e-3
    assert abs(evaluate(tuned, data.test_images, data.test_labels)[0] - acc_before) < 0.05
    record = tuned.provenance
    assert record["epochs"] == 1 and record["train_images_seen"] == 256
    assert record["arch"] == "vit" and record["recipe"]["arch"] == "vit"
    assert record["train_wall_time_s"] == pytest.approx(history[0]["epoch_time_s"])


def test_mixed_cross_entropy_weighs_the_two_labels():
    logits = torch.randn(4, 10)
    y, other = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    ce = torch.nn.functional.cross_entropy
    assert mixed_cross_entropy(logits, Batch(logits, y, y, 1.0)) == pytest.approx(ce(logits, y).item())
    mixed = mixed_cross_entropy(logits, Batch(logits, y, other, 0.3))
    assert mixed.item() == pytest.approx(0.3 * ce(logits, y).item() + 0.7 * ce(logits, other).item(),
                                         rel=1e-5)


def test_fit_applies_auto_augment_and_refuses_an_unknown_policy(subset, monkeypatch):
    import leanformer.train as train
    data = small(subset, 256, 100)
    calls = []
    real = train.auto_augment
    monkeypatch.setattr(train, "auto_augment", lambda x, policy: calls.append(policy) or real(x, policy))
    fit(get_recipe("quick", epochs=1, auto_augment="cifar10"), data, progress=False)
    assert calls == ["cifar10"] * 2  # 256 images: two batches of 128
    calls.clear()
    fit(get_recipe("quick", epochs=1), data, progress=False)
    assert calls == []
    with pytest.raises(ValueError, match="auto_augment must be"):
        fit(get_recipe("quick", epochs=1, auto_augment="CIFAR10"), data, progress=False)


def test_training_throughput_times_fits_steps_and_leaves_the_start_alone(subset,
                                                                          monkeypatch):
    import leanformer.train as T
    from leanformer.distill import DistillationLoss

    recipe = get_recipe("quick", mix_prob=0.5)
    start = build_model(recipe).eval()
    before = {k: v.clone() for k, v in start.state_dict().items()}
    teacher = build_model(recipe).eval()
    loss = DistillationLoss(teacher, alpha=0.5, temperature=2.0,
                            hard_loss=recipe_loss(recipe))
    real_step, calls = T._train_step, []

    def counting_step(*args):
        calls.append(args[4] is loss)  # the loss given is the loss used
        return real_step(*args)

    monkeypatch.setattr(T, "_train_step", counting_step)
    monkeypatch.delenv("LEANFORMER_TIMING", raising=False)  # make test sets it to brief
    speed = T.training_throughput(recipe, subset, model=start, loss_fn=loss, steps=3,
                                  warmup=2)
    assert calls == [True] * 5 and speed.n == 3 and speed.min > 0
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())
    assert not start.training  # the copy trained, not the start
    with pytest.raises(ValueError, match="steps must be at least 1"):
        T.training_throughput(recipe, subset, steps=0)
    monkeypatch.setenv("LEANFORMER_TIMING", "brief")  # the test suite's: one step
    assert T.training_throughput(recipe, subset, steps=3).n == 1


def test_fit_trains_a_copy_and_leaves_the_model_given_alone(subset):
    """fit's name has no trailing underscore: the model it is given comes back unchanged."""
    recipe = get_recipe("quick", epochs=1)
    start = build_model(recipe).eval()
    before = {k: v.clone() for k, v in start.state_dict().items()}
    tuned, _ = fit(recipe, small(subset, 256, 64), model=start, progress=False)
    assert tuned is not start
    assert all(torch.equal(v, before[k]) for k, v in start.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
