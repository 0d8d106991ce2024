import json

import pytest
import torch

from conftest import small
from leanformer import checkpoint
from leanformer.checkpoint import load_model, save_model
from leanformer.convnet import ConvNet, ConvNetConfig, conv3x3, patches, whiten_init_
from leanformer.evaluate import evaluate
from leanformer.model import VisionTransformer
from leanformer.recipes import RecipeError, get_recipe
from leanformer.train import build_model, build_optimizer, fit


def tiny_convnet(**overrides):
    torch.manual_seed(0)
    return ConvNet(ConvNetConfig(widths=(8, 16, 16), **overrides))


def test_shapes_and_parameter_count_are_airbench94s():
    model = ConvNet()  # airbench94's widths (64, 256, 256) and 2x2 whitening patches
    x = torch.rand(3, 3, 32, 32)
    assert model(x).shape == (3, 10) and model.forward_features(x).shape == (3, 256)
    stem = 24 * 3 * 2 * 2 + 24  # 2 * 12 whitening filters over 3 x 2 x 2 patches, with bias

    def group(c_in, c_out):  # two 3x3 convolutions without bias, two BatchNorms (gain and bias)
        return c_in * c_out * 9 + c_out * c_out * 9 + 2 * 2 * c_out

    expected = stem + group(24, 64) + group(64, 256) + group(256, 256) + 256 * 10
    assert sum(p.numel() for p in model.parameters()) == expected == 1_972_792
    # Fixed: the whitening filters and BatchNorm's gains. Learned: everything else.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"stem.weight"} | {f"stages.{i}.norm{j}.weight" for i in range(3) for j in (1, 2)}
    assert ConvNet(ConvNetConfig(whiten=False)).stem.weight.requires_grad


def test_logits_are_the_head_times_the_fixed_scale():
    model = tiny_convnet(logit_scale=0.5).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), 0.5 * model.head(model.forward_features(x)))


def test_a_fresh_conv3x3_passes_its_input_through_on_its_first_channels():
    x = torch.randn(2, 5, 7, 7)
    with torch.no_grad():
        y = conv3x3(5, 12)(x)
    torch.testing.assert_close(y[:, :5], x)
    assert y[:, 5:].abs().sum() > 0  # the other channels are ordinary random filters


def test_the_config_round_trips_and_refuses_unknown_fields(subset):
    cfg = ConvNetConfig(widths=(8, 16, 32), stem_kernel=3)
    assert ConvNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # 3x3 patches: 2 * 27 channels
    model = whiten_init_(ConvNet(cfg), subset.train_images[:50])
    assert model.stem.weight.shape == (54, 3, 3, 3) and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown ConvNetConfig fields"):
        ConvNetConfig.from_dict({"embed_dim": 64})
    with pytest.raises(ValueError, match="three positive channel counts"):
        ConvNet(ConvNetConfig(widths=(8, 16)))


def stem_outputs(model, images):
    """The stem's outputs before the GELU, one row per patch position: (N * L, channels)."""
    x = (images.float() / 255 - model.mean) / model.std
    with torch.no_grad():
        return model.stem(x).permute(0, 2, 3, 1).reshape(-1, model.cfg.stem_width).double()


def test_whitening_decorrelates_the_patches(subset):
    model = tiny_convnet()
    train, held_out = subset.train_images[::5], subset.test_images[::10]  # 1,000 images each
    # Before: neighbouring pixels and colour channels are strongly correlated.
    raw = patches((held_out.float() / 255 - model.mean) / model.std, 2).double()
    raw_corr = torch.corrcoef(raw.T)
    assert (raw_corr - torch.eye(12)).abs().max() > 0.5

    # With eps = 0 the filters whiten the very patches they were computed from exactly: zero
    # mean, identity covariance, and the second half of the channels is the first negated.
    whiten_init_(model, train, eps=0.0)
    y = stem_outputs(model, train)
    torch.testing.assert_close(y[:, 12:], -y[:, :12])
    torch.testing.assert_close(y[:, :12].mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(y[:, :12].T), torch.eye(12, dtype=torch.float64),
                               atol=2e-3, rtol=0)

    # With the default eps the variances are lambda / (lambda + eps): 1 for the strong components,
    # less for the faintest (pixel noise), which eps keeps from being blown up.
    whiten_init_(model, train)
    train_patches = patches((train.float() / 255 - model.mean) / model.std, 2).double()
    lam = torch.linalg.eigvalsh(torch.cov(train_patches.T))
    expected = torch.diag((lam / (lam + 5e-4)).flip(0))  # largest first, as the stem's channels are
    torch.testing.assert_close(torch.cov(stem_outputs(model, train)[:, :12].T), expected, atol=2e-3, rtol=0)
    assert expected[0, 0] > 0.99 and expected[-1, -1] < 0.5
    # On images it never saw, nearly so.
    torch.testing.assert_close(torch.cov(stem_outputs(model, held_out)[:, :12].T), expected,
                               atol=0.1, rtol=0)


def test_whiten_init_is_deterministic_and_uses_the_first_images(subset):
    a, b = tiny_convnet(), tiny_convnet()
    torch.manual_seed(123)  # the global seed plays no part
    whiten_init_(a, subset.train_images, n_images=300)
    whiten_init_(b, subset.train_images[:300])
    assert torch.equal(a.stem.weight, b.stem.weight) and torch.equal(a.stem.bias, b.stem.bias)
    whiten_init_(b, subset.train_images[300:600])
    assert not torch.equal(a.stem.weight, b.stem.weight)


def test_whiten_init_refuses_images_it_cannot_use(subset):
    model = tiny_convnet()
    with pytest.raises(ValueError, match=r"uint8 training images of shape \(N, 3, 32, 32\).*float32"):
        whiten_init_(model, subset.train_images[:10].float() / 255)
    with pytest.raises(ValueError, match=r"got a torch.uint8 tensor of shape \(10, 32, 32, 3\)"):
        whiten_init_(model, subset.train_images[:10].permute(0, 2, 3, 1))
    with pytest.raises(TypeError, match="stem of a ConvNet, got a VisionTransformer"):
        whiten_init_(VisionTransformer(embed_dim=32, depth=1, num_heads=2),
                     subset.train_images[:10])


def test_save_and_load_round_trip_records_the_arch(subset, tmp_path):
    model = whiten_init_(tiny_convnet(), subset.train_images[:200])
    model.train()
    with torch.no_grad():
        model(subset.train_images[:64].float() / 255)  # move BatchNorm's running statistics
    model.eval()
    path = tmp_path / "cnn.safetensors"
    sha = save_model(model, path, provenance={"note": "a ConvNet"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["arch"] == "convnet"
    loaded = load_model(path)
    assert isinstance(loaded, ConvNet) and not loaded.training
    assert loaded.cfg == model.cfg and loaded.weights_sha256 == sha
    assert loaded.provenance == {"note": "a ConvNet"} and not loaded.stem.weight.requires_grad
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    # A Vision Transformer shipped before the ConvNet existed (no "arch" in its file) still loads.
    assert isinstance(load_model(checkpoint.REFERENCE), VisionTransformer)


def test_fit_trains_the_quick_convnet_and_records_its_arch(subset):
    data = small(subset, 2048, 1000)
    model, history = fit(get_recipe("teacher-cnn-quick"), data, progress=False)
    acc, _ = evaluate(model, data.test_images, data.test_labels)
    assert isinstance(model, ConvNet)
    assert acc > 0.22, f"2 quick epochs reached only {acc:.1%} (chance is 10%)"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert model.provenance["arch"] == "convnet" and model.provenance["recipe"]["arch"] == "convnet"
    assert model.provenance["model"]["widths"] == (16, 32, 32)
    # fit whitened the stem from the training images before the first step, and left it fixed.
    expected = whiten_init_(build_model(get_recipe("teacher-cnn-quick")),
                            data.train_images)
    assert torch.equal(model.stem.weight, expected.stem.weight)


def test_build_model_whitens_only_with_data_and_is_deterministic(subset):
    recipe = get_recipe("teacher-cnn-quick")
    a, b = build_model(recipe, subset), build_model(recipe, subset)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    bare = build_model(recipe)
    assert not torch.equal(bare.stem.weight, a.stem.weight)
    assert torch.equal(bare.stages[0].conv1.weight, a.stages[0].conv1.weight)  # same seed


def test_sgd_groups_decay_weights_only_and_speed_up_batchnorm():
    recipe = get_recipe("teacher-cnn-quick")
    model = build_model(recipe)
    optimizer = build_optimizer(recipe, model)
    assert isinstance(optimizer, torch.optim.SGD)
    decay, no_decay, norm = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == (
        {"stem.weight", "head.weight"}
        | {f"stages.{i}.conv{j}.weight" for i in range(3) for j in (1, 2)})
    assert [names[id(p)] for p in no_decay["params"]] == ["stem.bias"]
    assert all(".norm" in names[id(p)] for p in norm["params"]) and len(norm["params"]) == 12
    assert decay["weight_decay"] == recipe.weight_decay > 0
    assert no_decay["weight_decay"] == norm["weight_decay"] == 0
    assert norm["lr_scale"] == 64
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.85
    # A Vision Transformer keeps AdamW and its two groups.
    vit = get_recipe("quick")
    assert len(build_optimizer(vit, build_model(vit)).param_groups) == 2


def test_resumed_convnet_run_continues_exactly(subset, tmp_path, monkeypatch):
    """SGD's momentum, the BatchNorm group's rate and BatchNorm's running statistics all come back."""
    data = small(subset, 512, 200)
    recipe = get_recipe("teacher-cnn-quick", epochs=3)
    uninterrupted, history = fit(recipe, data, progress=False)

    state = tmp_path / "cnn.last.pt"
    real_save = checkpoint.save_state

    def save_then_die(path, st):
        real_save(path, st)
        if st["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, data, state_path=state, progress=False)
    saved = checkpoint.load_state(state)
    lrs = [g["lr"] for g in saved["optimizer"]["param_groups"]]
    assert lrs[2] == pytest.approx(64 * lrs[0]) and lrs[0] == lrs[1] > 0
    monkeypatch.setattr(checkpoint, "save_state", real_save)
    resumed, resumed_history = fit(recipe, data, state_path=state, resume=True, progress=False)
    def measured(hs):  # what the run computed, without its timings
        return [{k: v for k, v in h.items() if "time" not in k and "per_s" not in k} for h in hs]

    assert measured(resumed_history) == measured(history)
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_recipe_mistakes_are_named_before_training(subset):
    data = small(subset, 128, 100)
    with pytest.raises(RecipeError, match="arch must be one of vit, convnet, got 'resnet'"):
        fit(get_recipe("teacher-cnn-quick", arch="resnet"), data, progress=False)
    with pytest.raises(RecipeError, match="optimizer must be 'adamw' or 'sgd', got 'adam'"):
        fit(get_recipe("teacher-cnn-quick", optimizer="adam"), data, progress=False)
    with pytest.raises(RecipeError, match="do not fit arch 'convnet'.*embed_dim"):
        fit(get_recipe("teacher-cnn-quick", model=dict(embed_dim=64)), data, progress=False)
    with pytest.raises(RecipeError, match="nesterov=True needs momentum > 0"):
        fit(get_recipe("teacher-cnn-quick", momentum=0.0), data, progress=False)


def test_flops_of_the_default_convnet():
    """118 million multiply-adds per image forward, as ConvNetConfig's docstring says."""
    from leanformer.measure import count_flops

    flops, _ = count_flops(ConvNet().eval(), torch.rand(1, 3, 32, 32))
    assert 2 * 115e6 < flops < 2 * 121e6
