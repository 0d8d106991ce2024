import pytest
import torch
import torch.nn.functional as F

from leanformer.attention import causal_mask, padding_mask, scaled_dot_product_attention


@pytest.mark.parametrize("shape", [(5, 8), (2, 5, 8), (2, 3, 5, 8)])
def test_matches_pytorch_with_any_leading_dims(shape):
    torch.manual_seed(0)
    q, k, v = (torch.randn(*shape) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)
    assert weights.shape == (*shape[:-1], shape[-2])
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))


def test_keys_and_values_may_differ_in_length_and_width():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 5)
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 4, 3, 5) and weights.shape == (2, 4, 3, 7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=0)


def test_causal_mask_matches_pytorch_and_hides_the_future():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    mask = causal_mask(6)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               atol=1e-5, rtol=0)
    assert torch.all(weights.triu(1) == 0)


def test_padding_mask_matches_pytorch_and_ignores_padded_keys():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    mask = padding_mask(torch.tensor([5, 3]), 5)
    assert mask.shape == (2, 1, 1, 5)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               atol=1e-5, rtol=0)
    assert torch.all(weights[1, :, :, 3:] == 0)
    # Changing what sits in the padding changes nothing.
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 3:], v2[1, :, 3:] = 100.0, -100.0
    torch.testing.assert_close(scaled_dot_product_attention(q, k2, v2, mask)[0][1], out[1])


def test_float_mask_is_added_to_scores_like_pytorch():
    torch.manual_seed(4)
    q, k, v = (torch.randn(3, 4, 8) for _ in range(3))
    bias = torch.randn(4, 4)
    out, _ = scaled_dot_product_attention(q, k, v, bias)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                               atol=1e-5, rtol=0)
