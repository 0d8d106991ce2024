import pytest
import torch
from torch import nn

from leanformer.model import Attention, Block, TextTransformer, ViTConfig, VisionTransformer
from leanformer.train import build_model, get_recipe


def torch_layer(dim=64, heads=4, ff=128):
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="gelu",
                                      batch_first=True, norm_first=True).eval()


def test_block_matches_torch_encoder_layer():
    layer = torch_layer()
    block = Block.from_torch(layer).eval()
    x = torch.randn(3, 10, 64)
    torch.testing.assert_close(block(x), layer(x), atol=1e-5, rtol=0)


def test_block_matches_torch_encoder_layer_with_causal_mask():
    layer = torch_layer()
    block = Block.from_torch(layer).eval()
    x = torch.randn(2, 7, 64)
    may_attend = torch.ones(7, 7, dtype=torch.bool).tril()
    # PyTorch's boolean src_mask marks the pairs that may NOT attend: the opposite convention.
    torch.testing.assert_close(block(x, may_attend), layer(x, src_mask=~may_attend), atol=1e-5, rtol=0)


def test_fused_and_formula_attention_agree():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4)
    x = torch.randn(2, 9, 32)
    plain = attn(x)
    attn.fused = True
    torch.testing.assert_close(attn(x), plain, atol=1e-5, rtol=0)
    attn.keep_weights = True
    attn(x)
    assert attn.weights.shape == (2, 4, 9, 9)


@pytest.mark.parametrize("tokenizer,pool,tokens", [("patch", "cls", 65), ("patch", "mean", 64),
                                                   ("conv", "attn", 64)])
def test_vit_shapes(tokenizer, pool, tokens):
    model = VisionTransformer(ViTConfig(tokenizer=tokenizer, pool=pool, embed_dim=64,
                                        conv_channels=(32, 64), depth=2, num_heads=2))
    assert model.pos_embed.shape == (1, tokens, 64)
    assert model(torch.rand(5, 3, 32, 32)).shape == (5, 10)


def test_vit_rejects_unknown_options():
    with pytest.raises(ValueError, match="tokenizer"):
        VisionTransformer(ViTConfig(tokenizer="pixels"))
    with pytest.raises(ValueError, match="pool"):
        VisionTransformer(ViTConfig(pool="max"))
    with pytest.raises(ValueError, match="embed_dim"):
        VisionTransformer(ViTConfig(tokenizer="conv", conv_channels=(64, 96), embed_dim=128))


def test_normalization_lives_in_the_model():
    import copy

    model = VisionTransformer(ViTConfig(depth=1)).eval()
    raw = copy.deepcopy(model)
    raw.mean.zero_()
    raw.std.fill_(1.0)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    # The model fed images in [0, 1] equals a model without normalization fed normalized images.
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw((x - mean) / std), atol=1e-5, rtol=0)


def test_reference_model_is_a_small_transformer():
    model = build_model(get_recipe("reference"))
    n = sum(p.numel() for p in model.parameters())
    in_blocks = sum(p.numel() for p in model.blocks.parameters())
    assert 400_000 < n < 1_000_000
    assert in_blocks > 0.6 * n  # the attention blocks hold most of the model


def test_text_transformer_shapes_and_causality():
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=20, embed_dim=32, depth=2, num_heads=4, max_len=16).eval()
    tokens = torch.randint(0, 20, (3, 12))
    assert model(tokens).shape == (3, 12, 20)
    mask = torch.ones(12, 12, dtype=torch.bool).tril()
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 20
    # With a causal mask, changing later tokens never changes earlier outputs.
    torch.testing.assert_close(model(tokens, mask)[:, :8], model(changed, mask)[:, :8])
