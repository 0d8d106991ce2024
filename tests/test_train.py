import math

import pytest
import torch

from leanformer import checkpoint
from leanformer.data import CIFAR10
from leanformer.train import autocast_dtype, evaluate, fit, get_recipe, lr_at


def small(data, n_train=1024, n_test=1000):
    """A class-balanced slice of the subset, so that a test trains in seconds."""
    return CIFAR10(data.train_images[:: len(data.train_labels) // n_train][:n_train],
                   data.train_labels[:: len(data.train_labels) // n_train][:n_train],
                   data.test_images[:: len(data.test_labels) // n_test],
                   data.test_labels[:: len(data.test_labels) // n_test], data.source)


def losses(history):
    return [(h["train_loss"], h["test_loss"], h["test_acc"]) for h in history]


def test_quick_training_clears_chance_by_a_margin(subset):
    model, history = fit(get_recipe("quick", epochs=3), subset, progress=False)
    acc, _ = evaluate(model, subset.test_images, subset.test_labels)
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


def test_schedule_warms_up_then_decays_to_zero():
    peak, total, warm = 1e-3, 1000, 100
    assert lr_at(0, total, warm, peak) == pytest.approx(peak / warm)
    assert lr_at(warm - 1, total, warm, peak) == pytest.approx(peak)
    assert lr_at(warm, total, warm, peak) == pytest.approx(peak)
    assert lr_at(total, total, warm, peak) == pytest.approx(0.0, abs=1e-12)
    mid = lr_at(warm + (total - warm) // 2, total, warm, peak)
    assert mid == pytest.approx(peak / 2)
    assert math.isclose(lr_at(550, total, warm, peak), mid)


def test_precision_choices():
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 autocast is for CUDA"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be"):
        autocast_dtype("int4", "cpu")


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(KeyError, match="reference"):
        get_recipe("nope")


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


@pytest.mark.parametrize("path", sorted((checkpoint.REPO_ROOT / "checkpoints").rglob("*.json")),
                         ids=lambda p: p.stem)
def test_shipped_provenance_matches_the_recipe_of_its_name(path):
    """A checkpoint's recorded recipe is what ``get_recipe(file name)`` holds today; fields added
    to ``Recipe`` after the checkpoint was made are missing from its record and must be off."""
    import json
    from dataclasses import fields
    from leanformer.train import Recipe

    recorded = json.loads(path.read_text())["recipe"]
    expected = json.loads(json.dumps(get_recipe(path.stem).to_dict()))  # tuples become lists
    defaults = {f.name: f.default for f in fields(Recipe) if f.name not in ("name", "model")}
    for key, value in expected.items():
        if key == "name":
            continue
        if key in recorded:
            assert recorded[key] == value, (path.name, key)
        else:
            assert value == defaults[key], f"{path.name} predates {key!r}, which must be off"
