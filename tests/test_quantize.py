import copy
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vit as shared_tiny_vit

from leanformer import quantize as Q
from leanformer.checkpoint import CheckpointError
from leanformer.measure import count_parameters


def tiny_vit():
    return shared_tiny_vit(conv_channels=(8, 32), depth=2, pool="attn")


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


def test_layer_sensitivity_is_the_accuracy_with_that_one_layer_rounded():
    model, images = tiny_vit(), torch.rand(64, 3, 32, 32)
    # An untrained ViT gives nearly the same features for every image; a random head over the
    # features' deviations from their mean spreads its answers over the classes.
    features = Q.capture_inputs(model, images, ["head"])["head"]
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=torch.Generator().manual_seed(0)))
        model.head.bias.copy_(-model.head.weight @ features.mean(0))
        labels = model(images).argmax(1)  # the float model's own answers: it scores 1.0
    assert len(labels.unique()) >= 5
    for per_channel in (True, False):
        acc = Q.layer_sensitivity(model, images, labels, bits=3, per_channel=per_channel)
        assert list(acc) == list(Q.quantizable_layers(model))
        for name in acc:  # by hand: round that one weight, count the answers that stay
            by_hand = copy.deepcopy(model)
            weight = by_hand.get_submodule(name).weight
            with torch.no_grad():
                weight.copy_(Q.fake_quantize(weight, 3, dim=0 if per_channel else None))
                kept = (by_hand(images).argmax(1) == labels).float().mean().item()
            assert acc[name] == pytest.approx(kept), (name, per_channel)
        assert min(acc.values()) < 0.9  # three bits cost some layer answers
    assert set(Q.layer_sensitivity(model, images, labels, bits=16).values()) == {1.0}


@pytest.mark.parametrize("flags, summary", [
    ([], "int8: no int8 dot-product instructions; bf16: no bf16 instructions"),
    (["avx2", "avx_vnni"], "int8: AVX-VNNI; bf16: no bf16 instructions"),
    (["avx512_vnni", "avx512_bf16"], "int8: AVX512-VNNI; bf16: AVX512-BF16"),
    (["avx512_vnni", "avx512_bf16", "amx_bf16"], "int8: AVX512-VNNI; bf16: AMX-BF16"),
    (["avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"], "int8: AMX-INT8 tiles; bf16: AMX-BF16"),
])
def test_machine_support_names_the_best_instructions_among_the_flags(flags, summary, monkeypatch):
    from leanformer.quantize import library

    monkeypatch.setattr(library, "cpu_flags", lambda: flags)
    info = Q.machine_int8_support()
    assert info["summary"] == summary
    assert info["vnni"] == any(f.endswith("vnni") for f in flags)
    assert info["amx_int8"] == ("amx_int8" in flags)


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
    # an exported program keeps no header: the float model's parameter count stays behind
    pt2 = ".pt2" in path.suffixes
    assert record == {k: v for k, v in q.quantization.items() if k != "parameters" or not pt2}
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


# --- intx models: the scheme travels with the file ----------------------------------------------

def read_header(path):
    return json.loads(torch.load(path, weights_only=True)["header"])


def rewrite_header(path, change):
    """Rewrite a .pt file's header through ``change(header)``, as another writer might have."""
    saved = torch.load(path, weights_only=True)
    header = json.loads(saved["header"])
    change(header)
    torch.save({"header": json.dumps(header), "state": saved["state"]}, path)


@pytest.mark.parametrize("bits, group_size, activations", [(3, None, True), (4, 16, False)])
def test_an_intx_model_saves_and_loads_with_its_scheme(bits, group_size, activations, tmp_path):
    model = tiny_vit()
    q = Q.intx_quantize(model, bits, group_size, activations)
    scheme = {"weight_bits": bits, "group_size": group_size, "activations": activations}
    assert q.quantization == {"path": "torchao", "kind": f"int{bits}-intx", "scheme": scheme,
                              "parameters": count_parameters(model)}
    path = Q.save_quantized(q, tmp_path / "m.pt", source=model)
    assert read_header(path)["scheme"] == scheme
    loaded, record = Q.load_quantized(path)
    assert record == q.quantization == loaded.quantization
    # the loaded model is rebuilt with the same scheme: same weight tensors, same logits
    fc1, fc1_loaded = q.blocks[0].mlp.fc1.weight, loaded.blocks[0].mlp.fc1.weight
    assert type(fc1_loaded) is type(fc1) and fc1_loaded.block_size == fc1.block_size
    assert list(fc1.block_size) == [1, group_size or 32]  # per row: one block of all 32 inputs
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected = q(x)
        assert torch.equal(loaded(x), expected)
        assert not torch.allclose(expected, model(x), atol=1e-3)  # quantized, not the float model


def test_an_intx_file_from_before_the_scheme_was_kept_is_refused_with_the_way_out(tmp_path):
    model = tiny_vit()
    path = Q.save_quantized(Q.intx_quantize(model, 3, None), tmp_path / "old-w3.pt", source=model)
    rewrite_header(path, lambda header: header.pop("scheme"))  # what an older save_quantized wrote
    with pytest.raises(CheckpointError) as caught:
        Q.load_quantized(path)
    message = str(caught.value)
    assert "old-w3.pt" in message and "int3-intx" in message
    assert "weight_bits, group_size, activations" in message and "Re-save" in message


def test_an_intx_file_whose_scheme_disagrees_with_its_tensors_is_refused(tmp_path):
    model = tiny_vit()
    path = Q.save_quantized(Q.intx_quantize(model, 4, 16), tmp_path / "m.pt", source=model)
    rewrite_header(path, lambda header: header["scheme"].update(group_size=None))
    with pytest.raises(CheckpointError, match=r"m.pt: tensor .* block size \(1, 16\).* block size \(1, 32\)"):
        Q.load_quantized(path)
    rewrite_header(path, lambda header: header["scheme"].update(group_size=16, weight_bits=3))
    with pytest.raises(CheckpointError, match="kind 'int4-intx' disagrees with its scheme's 3-bit weights"):
        Q.load_quantized(path)


@pytest.mark.parametrize("settings, problem", [
    ((0, 32, True), "weight_bits must be an integer from 1 to 8"),
    ((4, -8, True), "group_size must be a positive integer or None"),
    ((4, 32, "yes"), "activations must be True or False"),
])
def test_intx_scheme_names_a_bad_setting(settings, problem):
    with pytest.raises(ValueError, match=problem):
        Q.intx_scheme(*settings)
    assert Q.intx_scheme(4, 0, True)["group_size"] is None  # 0, from the command line: per row


def test_a_saved_model_loads_in_a_fresh_interpreter(tmp_path):
    """torchao's tensor types are unpickled with weights_only=True only once torchao registered
    them as safe: load_quantized must do that itself, not count on an earlier import."""
    model = tiny_vit()
    q = Q.torchao_quantize(model, "int8-dynamic")
    path = Q.save_quantized(q, tmp_path / "m.pt", source=model)
    x = torch.rand(3, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    script = ("import sys, torch; from leanformer.quantize import load_quantized; "
              "m, _ = load_quantized(sys.argv[1]); x = torch.load(sys.argv[2]); "
              "torch.save(m(x).detach(), sys.argv[3])")
    env = {**os.environ, "PYTHONPATH": str(Path(Q.__file__).parents[2])}  # src/, above leanformer/quantize/
    run = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), q(x), rtol=0, atol=1e-6)


# --- a file cannot run code when it is loaded ---------------------------------------------------

class LeavesMarker:
    """Unpickling this object calls open(marker, "w"): a stand-in for any code a crafted file
    could run (os.system, say)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pt_file_with_a_pickled_callable_is_refused_and_runs_nothing(tmp_path):
    model = tiny_vit()
    good = Q.save_quantized(Q.torchao_quantize(model, "int8-weight-only"), tmp_path / "good.pt", source=model)
    marker = tmp_path / "code-ran"
    saved = torch.load(good, weights_only=True)
    saved["state"]["head.bias"] = LeavesMarker(marker)
    crafted = tmp_path / "crafted.pt"
    torch.save(saved, crafted)
    with pytest.raises(CheckpointError) as caught:
        Q.load_quantized(crafted)
    assert not marker.exists()
    message = str(caught.value)
    assert "crafted.pt" in message and "could run code" in message and "re-save" in message
    assert "io.open" in message  # what was refused


@pytest.fixture(scope="module")
def pt2e_file(tmp_path_factory):
    """The file that save_quantized writes for a PT2E model of the tiny ViT."""
    model = tiny_vit()
    q = Q.pt2e_quantize(model, torch.rand(16, 3, 32, 32), batch_size=8)
    return Q.save_quantized(q, tmp_path_factory.mktemp("pt2e") / "m.pt2", source=model)


def rewritten(source, target, change):
    """A copy of the zip archive ``source`` at ``target``, each entry's bytes passed through
    ``change(name, data)``; entries are stored uncompressed, as torch.export.save does."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            zout.writestr(name, change(name, zin.read(name)))
    return target


def pickled(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def as_pickled_weight(name, data, marker):
    """The first weight stored as a pickle (``use_pickle``) that leaves the marker."""
    if name.endswith("model_weights_config.json"):
        config = json.loads(data)
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        return json.dumps(config).encode()
    return pickled(LeavesMarker(marker)) if name.endswith("/data/weights/weight_0") else data


CRAFTED = {
    # torch.export.load retries a failed weights_only read of the example inputs without it
    "example inputs": lambda name, data, marker: (pickled((LeavesMarker(marker),))
                                                  if "/sample_inputs/" in name else data),
    # a weight marked use_pickle is unpickled with weights_only=False
    "pickled weight": as_pickled_weight,
    # symbolic shapes go to sympy.sympify, which evaluates them as Python
    "shape expression": lambda name, data, marker: (
        re.sub(rb"Symbol\('[a-z]+[0-9]+'[^)]*\)", f"open('{marker}', 'w')".encode(), data)
        if name.endswith("models/model.json") else data),
}


@pytest.mark.parametrize("how", CRAFTED)
def test_a_pt2_file_that_would_run_code_is_refused_and_runs_nothing(how, pt2e_file, tmp_path):
    marker = tmp_path / "code-ran"
    crafted = rewritten(pt2e_file, tmp_path / "crafted.pt2", lambda n, d: CRAFTED[how](n, d, marker))
    with pytest.raises(CheckpointError) as caught:
        Q.load_quantized(crafted)
    assert not marker.exists()
    message = str(caught.value)
    assert "crafted.pt2" in message and "could run code" in message and "was not loaded" in message


def test_a_pt2_graph_that_calls_something_other_than_an_operator_is_refused(pt2e_file, tmp_path):
    crafted = rewritten(pt2e_file, tmp_path / "crafted.pt2", lambda name, data: data.replace(
        b'"torch.ops.aten.gelu.default"', b'"torch.serialization.os.system"'))
    with pytest.raises(CheckpointError, match="calls 'torch.serialization.os.system'"):
        Q.load_quantized(crafted)
    # and the archive as save_quantized wrote it, rewritten unchanged, still loads
    same = rewritten(pt2e_file, tmp_path / "same.pt2", lambda name, data: data)
    assert Q.load_quantized(same)[1] == {"path": "pt2e", "kind": "int8-static"}


# --- compiling for the CPU: cutting and padding batches -----------------------------------------

class CountsBatches(torch.nn.Module):
    """The model, recording the size of every batch it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("n, calls", [(4, [4]), (2, [2]), (1, [2]), (3, [4]), (5, [4, 2]),
                                      (7, [4, 4]), (9, [4, 4, 2]), (10, [4, 4, 2])])
def test_compiled_for_cpu_cuts_and_pads_batches_row_for_row(n, calls, monkeypatch):
    """CompiledForCPU's cutting and padding, with torch.compile replaced by the eager model:
    compiling even the tiny ViT takes over 30 s on one thread, too long for a unit test; the
    cutting and padding are the wrapper's own code and do not depend on the compiler."""
    monkeypatch.setattr(torch, "compile", lambda model, **options: model)
    model = tiny_vit()
    wrapped = Q.CompiledForCPU(CountsBatches(model), batch_sizes=(4, 2), freezing=True)
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    out = wrapped(x)
    assert wrapped.model.sizes == calls  # only the compiled sizes run: nothing compiles again
    assert out.shape == (n, 10)  # no padding row comes back
    assert torch.allclose(out, expected, rtol=0, atol=1e-5)  # each row is its own image's
    with torch.no_grad():
        padding = model(torch.zeros(1, 3, 32, 32))
    assert not any(torch.allclose(row, padding[0], atol=1e-4) for row in out)
    with torch.inference_mode():
        assert torch.allclose(wrapped(x.clone()), expected, rtol=0, atol=1e-5)
    assert not wrapped.train().training  # stays in eval mode


def test_compile_for_cpu_holds_the_model_and_refuses_one_in_training_mode(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **options: model)  # see above
    model = tiny_vit().train()
    with pytest.raises(ValueError, match=r"for inference.*call model\.eval\(\) first"):
        Q.compile_for_cpu(model)
    assert model.training  # refused, not switched behind the caller's back
    compiled, seconds = Q.compile_for_cpu(model.eval(), batch_sizes=(2,))
    assert compiled.uncompiled is model and seconds >= 0


# --- quantization-aware training: the fake quantizers on and off --------------------------------

def on_a_grid(values, bits):
    """Whether the values lie on one evenly spaced grid of at most 2**bits levels."""
    levels = values.unique()
    if len(levels) == 1:
        return True
    step = levels.diff().min()
    position = (levels - levels[0]) / step
    return (bool(torch.allclose(position, position.round(), atol=1e-3))
            and position.max().round().item() <= 2 ** bits - 1)


@pytest.mark.parametrize("bits, group_size, activations", [(3, None, True), (4, 32, False)])
def test_prepare_qat_puts_fake_quantizers_on_every_linear_layer(bits, group_size, activations):
    model = tiny_vit()
    start = copy.deepcopy(model)
    qat = Q.prepare_qat_(start, bits, group_size, activations)
    assert qat is start  # in place, and the same model returned, as the underscore says
    assert qat.qat == {"weight_bits": bits, "group_size": group_size, "activations": activations}
    linears = {n: m for n, m in qat.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears and all(hasattr(m, "weight_fake_quantizer") for m in linears.values())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(qat(x), model(x), atol=1e-4)  # the forward pass rounds
        fc2 = qat.blocks[0].mlp.fc2  # 64 inputs: two groups of 32 per row, or one row
        seen = fc2.weight_fake_quantizer(fc2.weight)
        h = torch.randn(5, 64)
        act = fc2.activation_fake_quantizer
        assert (act is not None) == activations
        # the layer's forward uses exactly these weights
        assert torch.equal(fc2(h), F.linear(act(h) if act else h, seen, fc2.bias))
    groups = seen.reshape(-1, group_size or seen.shape[1])
    assert all(on_a_grid(g, bits) for g in groups)
    assert not any(on_a_grid(g, bits) for g in fc2.weight.detach().reshape(groups.shape))  # float is not
    if group_size:  # each group has a scale of its own: a row as a whole is not on one grid
        assert not all(on_a_grid(row, bits) for row in seen)


def test_convert_qat_leaves_a_plain_float_model():
    model = tiny_vit()
    prepared = Q.prepare_qat_(copy.deepcopy(model), 3, None)
    qat = Q.convert_qat_(prepared)
    assert qat is prepared
    assert {type(m) for m in qat.modules()} == {type(m) for m in model.modules()}
    assert not any("fake_quantizer" in name for name, _ in qat.named_modules())
    state = qat.state_dict()
    assert list(state) == list(model.state_dict())
    assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in state.values())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(qat(x), model(x))  # no training in between: the float model again


def test_a_quantized_model_is_costed_with_its_float_models_parameters(tmp_path):
    """An int8 weight is still a parameter: every path records the float model's count, and
    measure_costs reports it where the packing hides the weights from counting."""
    from leanformer.measure import count_parameters, measure_costs

    model = tiny_vit()
    n = count_parameters(model)
    legacy = Q.legacy_quantize_dynamic(model) if Q.has_legacy_quantize_dynamic() else None
    made = {"torchao": Q.torchao_quantize(model, "int8-dynamic"), "intx": Q.intx_quantize(model, 4, 32)}
    if legacy is not None:
        assert count_parameters(legacy) < n  # packed: plain counting misses the Linear weights
        made["legacy"] = legacy
    assert all(m.quantization["parameters"] == n for m in made.values())
    path = Q.save_quantized(made["torchao"], tmp_path / "m.pt", source=model)
    assert Q.load_quantized(path)[1]["parameters"] == n
    costs = measure_costs(made, rounds=1, latency_calls=1, throughput_calls=1, warmup=0, batch_size=4)
    assert [c.parameters for c in costs] == [n] * len(made) and not any("parameters" in c.notes for c in costs)


def test_flops_by_kind_splits_the_total_as_the_formulas_do():
    """The three kinds against formulas worked out by hand: 2 * in * out per token for a Linear
    layer, 2 * C_in * C_out * k * k per output pixel for a convolution, and the two attention
    products, 2 * heads * tokens^2 * head_width each, per block."""
    model = tiny_vit()
    table = Q.flops_by_kind(model).set_index("kind")
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.shape))
             for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    conv = linear = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            c_in, k = m.in_channels // m.groups, m.kernel_size[0] * m.kernel_size[1]
            conv += 2 * c_in * m.out_channels * k * outputs[name][-1] * outputs[name][-2]
        elif isinstance(m, torch.nn.Linear):
            linear += 2 * m.in_features * m.out_features * (outputs[name].numel() // m.out_features)
    tokens, head_width = model.patch_embed.num_patches, model.cfg.head_width
    attention = sum(2 * 2 * b.attn.num_heads * tokens ** 2 * head_width for b in model.blocks)
    assert table.loc["tokenizer convolutions", "flops"] == conv
    assert table.loc["Linear layers", "flops"] == linear
    assert table.loc["attention products (Q K^T, A V)", "flops"] == attention
    assert abs(table["share"].sum() - 1) < 1e-12


def test_a_pt2e_model_put_in_eval_mode_leaves_the_compiler_caches_alone(monkeypatch):
    """torchao's ``eval()`` on a PT2E graph exports its dropout patterns again, and that export
    resets torch.compile's caches: every model compiled in the process would compile again on
    its next call (in lesson 05, about ten seconds each). ``CompiledForCPU.train`` and
    ``evaluate`` skip it, since an exported graph's mode was fixed when it was exported."""
    import torch._dynamo

    from leanformer.evaluate import evaluate

    model = shared_tiny_vit(seed=0).eval()
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    pt2e = Q.pt2e_quantize(model, images)
    compiled, _ = Q.compile_for_cpu(pt2e, batch_sizes=(8,))
    resets: list[int] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda *a, **k: resets.append(1))
    compiled.eval()
    compiled.train()
    assert not compiled.training
    evaluate(compiled, images, labels)
    evaluate(pt2e, images, labels)
    assert resets == []
    pt2e.eval()  # torchao's own eval(), which the two above skip, does reset
    assert resets
