import pytest
import torch
import torch.nn.functional as F

from leanformer import quantize as Q
from leanformer.checkpoint import CheckpointError
from leanformer.model import VisionTransformer


def tiny_vit():
    torch.manual_seed(0)
    return VisionTransformer(tokenizer="conv", conv_channels=(8, 32), embed_dim=32, depth=2,
                             num_heads=2, pool="attn").eval()


def test_int_range():
    assert Q.int_range(8) == (-128, 127)
    assert Q.int_range(8, symmetric=True) == (-127, 127)
    assert Q.int_range(4, symmetric=True) == (-7, 7)
    with pytest.raises(ValueError, match="bits must be between 2 and 16"):
        Q.int_range(1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_round_trip_error_is_at_most_half_a_step_and_zero_is_exact(symmetric):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(1000) * 3 + 1, torch.zeros(1)])
    scale, zp = Q.quant_params(x, 8, symmetric)
    q = Q.quantize(x, scale, zp, 8, symmetric)
    assert q.dtype == torch.int8
    lo, hi = Q.int_range(8, symmetric)
    assert q.min() >= lo and q.max() <= hi
    err = (Q.dequantize(q, scale, zp) - x).abs()
    assert err.max() <= scale / 2 + 1e-6
    assert Q.dequantize(Q.quantize(torch.zeros(1), scale, zp, 8, symmetric), scale, zp).item() == 0.0
    # the range is used: the extremes land on (or next to) the ends of the integer range
    assert q.max() >= hi - 1 and (q.min() <= lo + 1 or symmetric)


def test_a_value_outside_the_calibrated_range_is_clipped():
    x = torch.tensor([-1.0, 0.0, 0.5, 4.0])
    out = Q.fake_quantize(x, 8, symmetric=False, lo=-1.0, hi=1.0)
    assert out[-1] == pytest.approx(1.0, abs=0.01)
    assert out[2] == pytest.approx(0.5, abs=0.01)


def test_per_channel_scales_beat_one_scale_when_one_row_has_an_outlier():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * 0.02
    w[3, 5] = 2.0  # one outlier
    per_tensor = (Q.fake_quantize(w, 8, dim=None) - w).pow(2).mean()
    per_channel = (Q.fake_quantize(w, 8, dim=0) - w).pow(2).mean()
    assert per_channel < per_tensor / 10
    scale, _ = Q.quant_params(w, 8, dim=0)
    assert scale.shape == (16, 1)
    assert scale[3].item() == pytest.approx(2.0 / 127)


def test_fewer_bits_give_fewer_levels_and_larger_errors():
    torch.manual_seed(0)
    w = torch.randn(8, 256)
    errors = []
    for bits in (8, 6, 4, 3):
        wq = Q.fake_quantize(w, bits, dim=0)
        assert max(len(row.unique()) for row in wq) <= 2 ** bits - 1
        errors.append((wq - w).abs().mean().item())
    assert errors == sorted(errors)


def test_int8_linear_accumulates_in_int32_and_matches_the_dequantized_product():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64)
    y, d = Q.int8_linear(x, layer.weight, layer.bias)
    assert d["q_x"].dtype == d["q_w"].dtype == torch.int8 and d["acc"].dtype == torch.int32
    # the integer sum is exactly the product of the integer tensors
    by_hand = ((d["q_x"].long() - d["z_x"]) @ d["q_w"].long().T)
    assert torch.equal(d["acc"].long(), by_hand)
    # and rescaling it gives the float product of the dequantized tensors
    x_hat = Q.dequantize(d["q_x"], d["s_x"], d["z_x"])
    w_hat = Q.dequantize(d["q_w"], d["s_w"], 0)
    assert torch.allclose(y, F.linear(x_hat, w_hat, layer.bias), atol=1e-4)
    # close to the float result, far from a wrong one
    exact = layer(x)
    err = (y - exact).abs().max().item()
    assert err < 0.02 * exact.abs().max().item()


def test_fake_quantize_weights_touches_only_the_named_layers_and_keeps_the_original():
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = Q.fake_quantize_weights(model, 4, layers=["blocks.0.mlp.fc1"])
    for k, v in q.state_dict().items():
        assert torch.equal(model.state_dict()[k], before[k])
        changed = not torch.equal(v, before[k])
        assert changed == (k == "blocks.0.mlp.fc1.weight"), k
    with pytest.raises(KeyError, match="not quantizable layers"):
        Q.fake_quantize_weights(model, 4, layers=["blocks.0.norm1"])


def test_quantizable_layers_with_and_without_the_tokenizer():
    model = tiny_vit()
    names = list(Q.quantizable_layers(model))
    assert names[:2] == ["patch_embed.stages.0", "patch_embed.stages.3"]
    assert "head" in names and "blocks.1.attn.qkv" in names
    assert not any(n.startswith("patch_embed") for n in Q.quantizable_layers(model, tokenizer=False))


def test_activation_ranges_and_fake_quantized_inputs():
    model = tiny_vit()
    images = torch.rand(20, 3, 32, 32)
    ranges = Q.activation_ranges(model, images, batch_size=8)
    caught = Q.capture_inputs(model, images, ["blocks.0.mlp.fc2"])["blocks.0.mlp.fc2"]
    assert ranges["blocks.0.mlp.fc2"] == pytest.approx((caught.min().item(), caught.max().item()))
    normalized = (images - model.mean) / model.std  # what the first convolution sees
    assert ranges["patch_embed.stages.0"] == pytest.approx((normalized.min().item(), normalized.max().item()))
    clean = model(images)
    with Q.fake_quantized_inputs(model, ranges, bits=4):
        rough = model(images)
    assert not torch.allclose(clean, rough)
    assert torch.equal(model(images), clean)  # the hooks are gone
    with pytest.raises(KeyError, match="no layer named"):
        Q.capture_inputs(model, images, ["blocks.9"])


def test_layer_sensitivity_names_every_layer():
    model = tiny_vit()
    images, labels = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    acc = Q.layer_sensitivity(model, images, labels, bits=3)
    assert list(acc) == list(Q.quantizable_layers(model))
    assert all(0.0 <= a <= 1.0 for a in acc.values())


def test_machine_support_reads_the_flags():
    info = Q.machine_int8_support()
    assert info["summary"].startswith("int8: ")
    assert info["vnni"] == (info["avx512_vnni"] or info["avx_vnni"])


KINDS = ["int8-dynamic", "int8-weight-only", "legacy", "pt2e"]


def quantized(model, kind):
    if kind == "legacy":
        if not Q.has_legacy_quantize_dynamic():
            pytest.skip("this PyTorch has no quantize_dynamic")
        return Q.legacy_quantize_dynamic(model)
    if kind == "pt2e":
        return Q.pt2e_quantize(model, torch.rand(16, 3, 32, 32), batch_size=8)
    return Q.torchao_quantize(model, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gz", ["", ".gz"])
def test_each_quantized_model_saves_and_loads_with_outputs_unchanged(kind, gz, tmp_path):
    model = tiny_vit()
    q = quantized(model, kind)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected = q(x)
        # quantized, but still the same model: close to the float outputs
        assert (expected - model(x)).abs().max() < 0.1 * model(x).abs().max()
    path = Q.save_quantized(q, tmp_path / (("m.pt2" if kind == "pt2e" else "m.pt") + gz), source=model)
    loaded, record = Q.load_quantized(path)
    assert record == q.quantization
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind
    # the tensors in the file: int8 weight matrices, so well under the float32 bytes
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert Q.tensor_bytes_in_file(path) < 0.7 * float_bytes


def test_pt2e_keeps_only_the_int8_weights():
    q = quantized(tiny_vit(), "pt2e")
    state = q.state_dict()
    int8 = [t for t in state.values() if t.dtype == torch.int8]
    assert len(int8) == len(Q.quantizable_layers(tiny_vit()))  # one int8 weight per layer
    # what stays float: biases, LayerNorm, the position embedding; no float copy of a weight
    floats = sum(t.numel() for t in state.values() if t.is_floating_point())
    assert floats < 0.25 * sum(t.numel() for t in int8)


def test_load_quantized_refuses_what_it_cannot_read(tmp_path):
    with pytest.raises(CheckpointError, match="No quantized model"):
        Q.load_quantized(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a leanformer quantized model file"):
        Q.load_quantized(junk)
    (tmp_path / "junk.pt.gz").write_bytes(b"not gzip")
    with pytest.raises(CheckpointError, match="not a readable gzip file"):
        Q.load_quantized(tmp_path / "junk.pt.gz")
    other = tmp_path / "other.pt"
    torch.save({"header": '{"format": "something-else/9"}', "state": {}}, other)
    with pytest.raises(CheckpointError, match="expected 'leanformer-quantized/1'"):
        Q.load_quantized(other)
    with pytest.raises(ValueError, match="not made by leanformer.quantize"):
        Q.save_quantized(tiny_vit(), tmp_path / "float.pt")


def test_an_unknown_torchao_kind_is_named():
    with pytest.raises(ValueError, match="unknown torchao kind 'int3'"):
        Q.torchao_config("int3")
