import pytest
import torch

from leanformer.machine import cpu_flags
from leanformer.model import ViTConfig, VisionTransformer
from leanformer.precision import (PRECISIONS, autocast, autocast_dtype, bf16_support,
                                  cpu_supports_bf16, flush_share, format_facts,
                                  grad_scaler, output_dtypes, overflow_share,
                                  resolve_precision, saved_activation_bytes,
                                  time_by_kind)


def test_precision_choices():
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") == torch.bfloat16
    assert autocast_dtype("fp16", "cpu") == torch.float16  # CPU autocast runs float16 too
    native = cpu_supports_bf16()
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    # A precision is a name; a dtype is a number format, and not taken for one.
    for bad in ("int4", torch.bfloat16, None):
        with pytest.raises(ValueError, match="must be auto, fp32, bf16 or fp16, got"):
            autocast_dtype(bad, "cpu")


def test_autocast_takes_a_precision_and_runs_the_matrix_products_in_its_format():
    x, w = torch.rand(4, 8), torch.rand(8, 8)
    with autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be"):
        autocast("float16", "cpu")


def test_format_facts_agree_with_arithmetic_in_each_format():
    f16, b16 = format_facts(torch.float16), format_facts(torch.bfloat16)
    assert (f16["exponent"], f16["mantissa"], b16["exponent"], b16["mantissa"]) == (5, 10, 8, 7)
    assert f16["largest exact integer"] == 2048 and b16["largest exact integer"] == 256
    assert torch.tensor(2048.0, dtype=torch.float16) + 1 == 2048  # 2049 is not a float16
    assert torch.tensor(256.0, dtype=torch.bfloat16) + 1 == 256
    assert torch.tensor(255.0, dtype=torch.bfloat16) + 1 == 256  # below it, integers are exact
    assert torch.tensor(70000.0).to(torch.float16).isinf()  # past float16's max (65504)
    assert torch.tensor(70000.0).to(torch.bfloat16).isfinite()
    assert torch.tensor(1e-8).to(torch.float16) == 0  # below half the smallest subnormal
    tiny = torch.tensor(f16["smallest subnormal"]).to(torch.float16)
    assert tiny > 0 and tiny / 2 == 0
    assert f16["smallest subnormal"] == 2.0**-24 and format_facts(torch.float32)["eps"] == 2.0**-23


def test_bf16_support_gives_a_clear_answer_on_this_machine():
    ok, why = bf16_support()
    assert isinstance(ok, bool) and why
    if not torch.cuda.is_available():
        assert ok == any(f in cpu_flags() for f in ("avx512_bf16", "amx_bf16"))
        assert why.startswith(("AMX-BF16", "AVX512-BF16")) if ok else why.startswith("neither")


def test_the_scaler_skips_a_step_with_inf_gradients_halves_its_scale_and_grows_it_back():
    assert grad_scaler("fp32", "cpu") is None and grad_scaler("bf16", "cpu") is None
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    assert isinstance(grad_scaler("fp16", "cpu"), torch.amp.GradScaler)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=2)
    scales = []
    for bad in (True, False, False):
        opt.zero_grad()
        loss = (w * (float("inf") if bad else 1.0)).sum()
        scaler.scale(loss).backward()
        before = w.detach().clone()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
        if bad:
            assert torch.equal(w.detach(), before)  # the step was skipped
        else:
            torch.testing.assert_close(w.detach(), before - 0.1)  # unscaled gradient of 1
    assert scales == [2.0**15, 2.0**15, 2.0**16]  # halved, then doubled after 2 good steps


def test_flush_share_counts_what_underflow_takes():
    g = torch.tensor([1e-9, 1e-8, 1e-3, 0.0])
    assert flush_share(g, torch.float16) == pytest.approx(2 / 3)  # the zero does not count
    assert flush_share(g, torch.float16, scale=2.0**16) == 0.0
    assert flush_share(g, torch.bfloat16) == 0.0  # float32's exponent range
    assert overflow_share(torch.tensor([1.0, 1e-3]), torch.float16, scale=2.0**16) == 0.5  # 65536 > 65504


def test_autocast_output_dtypes_on_the_cpu():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=2, conv_channels=(8, 16))).eval()
    rows = output_dtypes(model, torch.rand(2, 3, 32, 32), "bf16")
    by_class = {}
    for r in rows:
        by_class.setdefault(r["class"], set()).add(r["output"])
    assert by_class["Linear"] == {"bfloat16"}  # matrix products run in bf16
    assert by_class["Conv2d"] == {"bfloat16"}
    assert by_class["Block"] == {"float32"}  # the residual stream stays float32: fp32 + bf16 -> fp32
    plain = output_dtypes(model, torch.rand(2, 3, 32, 32), "fp32")
    assert {r["output"] for r in plain if r["output"]} == {"float32"}


def test_bf16_keeps_smaller_activations_and_the_time_shares_add_up():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=2, conv_channels=(8, 16)))
    x = torch.rand(4, 3, 32, 32)
    model.eval()
    fp32 = saved_activation_bytes(model, x, "fp32")
    bf16 = saved_activation_bytes(model, x, "bf16")
    assert 0.3 * fp32 < bf16 < 0.9 * fp32  # matrix-product outputs halve; the residual stream does not
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradients behind
    assert not model.training  # and the model in its mode
    shares = time_by_kind(lambda: model(x).sum().backward(), repeats=1)
    assert set(shares) == {"matrix products", "softmax and LayerNorm", "GELU, ReLU, pooling", "format casts", "other"}
    assert sum(shares.values()) == pytest.approx(1.0) and shares["matrix products"] > 0
