import pytest
import torch
from torch import nn

from leanformer.model import (Attention, Block, TextTransformer, ViTConfig, VisionTransformer,
                              attention_maps)
from leanformer.recipes import get_recipe
from leanformer.train import build_model


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


def test_attention_maps_are_read_by_hooks_and_left_behind():
    torch.manual_seed(0)
    model = VisionTransformer(ViTConfig(embed_dim=32, depth=2, num_heads=4, pool="mean")).eval()
    x = torch.rand(3, 3, 32, 32)
    with attention_maps(model) as maps:
        out = model(x)
    assert list(maps) == ["blocks.0.attn", "blocks.1.attn"]
    assert maps["blocks.0.attn"].shape == (3, 4, 64, 64)
    torch.testing.assert_close(maps["blocks.1.attn"].sum(-1), torch.ones(3, 4, 64))
    # The hooks are gone afterwards, and the model computes the same with or without them.
    assert not any(m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(x), out, atol=0, rtol=0)


def test_attention_maps_of_a_bare_attention_module():
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2)
    with attention_maps(attn) as maps:
        attn(torch.randn(1, 5, 8))
    assert list(maps) == ["attn"] and maps["attn"].shape == (1, 2, 5, 5)
    torch.testing.assert_close(maps["attn"].sum(-1), torch.ones(1, 2, 5))
    assert not attn.attn_map._forward_hooks


def test_attention_width_is_not_tied_to_model_width():
    torch.manual_seed(0)
    attn = Attention(48, num_heads=2, head_dim=16)  # 32 attention units in a 48-wide model
    assert attn.qkv.weight.shape == (96, 48) and attn.proj.weight.shape == (48, 32)
    assert attn(torch.randn(2, 5, 48)).shape == (2, 5, 48)
    with pytest.raises(ValueError, match="divisible"):
        Attention(48, num_heads=5)


def test_uneven_blocks_run_and_export():
    cfg = ViTConfig(tokenizer="conv", conv_channels=(16, 32), embed_dim=32, depth=3, num_heads=4,
                    block_widths=((4, 64), (2, 37), (1, 0)))
    model = VisionTransformer(cfg).eval()
    assert [(b.attn.num_heads, b.mlp.fc1.out_features) for b in model.blocks] == [(4, 64), (2, 37), (1, 0)]
    assert model.blocks[1].attn.qkv.weight.shape == (3 * 2 * 8, 32)
    assert all(isinstance(m, nn.Linear) for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1))
    x = torch.rand(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="block_widths"):
        VisionTransformer(ViTConfig(depth=2, block_widths=((4, 64),)))


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
