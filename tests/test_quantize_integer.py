"""Integer-only inference of a Linear layer (leanformer.quantize.integer)."""
import pytest
import torch
import torch.nn.functional as F

from leanformer import quantize as Q


def layer_and_inputs(seed=0, n=64, d_in=128, d_out=96):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(n, d_in) * 2 + 0.3
    return layer, x, F.linear(x, layer.weight, layer.bias).detach()


@pytest.mark.parametrize("m", [1e-6, 3.1e-3, 0.2, 0.5, 0.999999999999, 1.0, 7.25])
def test_the_fixed_point_multiplier_keeps_31_bits(m):
    m0, n = Q.fixed_point_multiplier(torch.tensor([m], dtype=torch.float64))
    assert m0.dtype == n.dtype == torch.int32
    assert 2 ** 30 <= m0.item() < 2 ** 31 and 1 <= n.item() <= 62
    assert abs(m0.item() * 2.0 ** -n.item() - m) <= m * 2 ** -31


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf"), 1e-20, 2.0 ** 31])
def test_a_multiplier_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="multiplier"):
        Q.fixed_point_multiplier(torch.tensor([bad], dtype=torch.float64))


def test_requantize_rounds_as_exact_integer_arithmetic_does():
    acc = torch.tensor([-70001, -3, 0, 5, 123456, 2 ** 30], dtype=torch.int32)
    m0, n = Q.fixed_point_multiplier(torch.tensor(0.0123, dtype=torch.float64))
    got = Q.requantize(acc, m0, n, zero_point=-5)
    want = [max(-128, min(127, -5 + ((a * m0.item() + 2 ** (n.item() - 1)) >> n.item())))
            for a in acc.tolist()]  # Python integers: exact
    assert got.dtype == torch.int8 and got.tolist() == want
    with pytest.raises(ValueError, match="int32 sums"):
        Q.requantize(acc.long(), m0, n, 0)


def test_integer_only_linear_agrees_with_the_float_path_within_one_output_step():
    layer, x, y = layer_and_inputs()
    q_y, d = Q.int8_linear_integer(x, layer.weight, layer.bias, (x.min(), x.max()),
                                   (y.min(), y.max()))
    # exact integer dtypes at every step
    assert q_y.dtype == d["q_x"].dtype == d["q_w"].dtype == torch.int8
    assert d["acc"].dtype == d["q_b"].dtype == d["m0"].dtype == d["shift"].dtype == torch.int32
    # the float output, rounded to the same int8 grid
    q_float = Q.quantize(y, d["s_y"], d["z_y"], 8, symmetric=False)
    steps = (q_y.int() - q_float.int()).abs()
    assert (steps <= 1).float().mean() >= 0.99 and steps.max() <= 2
    y_hat = Q.dequantize(q_y, d["s_y"], d["z_y"])
    assert (y_hat - y).abs().max() <= 2.5 * d["s_y"]
    # the bias is held in int32 at the scale of the sums
    s_acc = (d["s_x"] * d["s_w"]).flatten()
    assert torch.allclose(d["q_b"].float() * s_acc, layer.bias, atol=s_acc.max().item())


def test_integer_only_linear_clips_outside_the_calibrated_output_range():
    layer, x, y = layer_and_inputs(seed=1)
    lo, hi = y.quantile(0.01).item(), y.quantile(0.99).item()
    q_y, d = Q.int8_linear_integer(x, layer.weight, None, (x.min(), x.max()), (lo, hi))
    assert q_y.min() == -128 and q_y.max() == 127  # the tails clip to the ends
    y_hat = Q.dequantize(q_y, d["s_y"], d["z_y"])
    assert y_hat.max() <= hi + d["s_y"] and y_hat.min() >= lo - d["s_y"]


def test_integer_only_linear_names_bad_shapes():
    layer, x, y = layer_and_inputs()
    with pytest.raises(ValueError, match=r"x of shape \(N, in\).*\(64, 127\)"):
        Q.int8_linear_integer(x[:, :127], layer.weight, layer.bias, (-1, 1), (-1, 1))
    with pytest.raises(ValueError, match="one value per output"):
        Q.int8_linear_integer(x, layer.weight, layer.bias[:5], (-1, 1), (-1, 1))
