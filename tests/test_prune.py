import pytest
import torch

from leanformer import load_model, save_model
from leanformer.measure import attention_flops, component_costs, mlp_flops
from leanformer.model import ViTConfig, VisionTransformer
from leanformer.prune import importance, keep_top, prune_linear, prune_model


def tiny():
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(tokenizer="conv", conv_channels=(16, 32), embed_dim=32,
                                       depth=2, num_heads=4, mlp_ratio=2.0)).eval()


def test_prune_linear_keeps_rows_with_their_bias_and_columns_without():
    layer = torch.nn.Linear(5, 4)
    rows, cols = prune_linear(layer, [0, 2], dim=0), prune_linear(layer, [1, 3, 4], dim=1)
    assert torch.equal(rows.weight, layer.weight[[0, 2]]) and torch.equal(rows.bias, layer.bias[[0, 2]])
    assert torch.equal(cols.weight, layer.weight[:, [1, 3, 4]]) and torch.equal(cols.bias, layer.bias)


def test_removing_a_head_or_unit_equals_silencing_it():
    model = tiny()
    x = torch.rand(3, 3, 32, 32)
    silenced = tiny()
    with torch.no_grad():  # zero what head 1 of block 0 and unit 5 of block 1 add to the output
        silenced.blocks[0].attn.proj.weight[:, 8:16] = 0
        silenced.blocks[1].mlp.fc2.weight[:, 5] = 0
    pruned = prune_model(model, [[0, 2, 3], [0, 1, 2, 3]], [list(range(64)), [u for u in range(64) if u != 5]])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), silenced(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(prune_model(model, [range(4)] * 2, [range(64)] * 2)(x), model(x))
    assert pruned.cfg.widths() == [(3, 64), (4, 63)]
    assert pruned.blocks[0].attn.qkv.weight.shape == (3 * 3 * 8, 32)


def test_flops_and_parameters_fall_by_exactly_the_removed_amount(tmp_path):
    model = tiny()
    pruned = prune_model(model, [[1, 3], [0]], [list(range(0, 64, 2)), list(range(37))])
    before, after = component_costs(model).set_index("component"), component_costs(pruned).set_index("component")
    assert after.flops["block 0 attention"] == attention_flops(64, 32, 2, 8)
    assert after.flops["block 1 MLP"] == mlp_flops(64, 32, 37)
    removed_params = (2 * (3 * 8 * 32 + 3 * 8 + 32 * 8)  # two heads of block 0
                      + 3 * (3 * 8 * 32 + 3 * 8 + 32 * 8)  # three heads of block 1
                      + 32 * (32 + 1 + 32)  # 32 units of block 0
                      + 27 * (32 + 1 + 32))  # 27 units of block 1
    assert before.parameters.sum() - after.parameters.sum() == removed_params
    path = tmp_path / "pruned.safetensors"
    save_model(pruned, path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(x), pruned(x), atol=0, rtol=0)


@pytest.mark.parametrize("score", ["taylor", "magnitude"])
def test_a_silenced_head_and_unit_score_lowest(score, subset):
    model = tiny()
    with torch.no_grad():
        model.blocks[0].attn.proj.weight[:, 16:24] = 0  # head 2 of block 0 contributes nothing
        model.blocks[0].mlp.fc2.weight[:, 7] = 0  # nor does unit 7
        if score == "magnitude":
            model.blocks[0].attn.qkv.weight.view(3, 4, 8, 32)[:, 2] = 0
            model.blocks[0].mlp.fc1.weight[7] = 0
    heads, units = importance(model, score, subset.train_images[:256], subset.train_labels[:256])
    assert [len(h) for h in heads] == [4, 4] and [len(u) for u in units] == [64, 64]
    assert heads[0].argmin() == 2 and units[0].argmin() == 7 and heads[0][2] == 0
    assert keep_top(heads, 3)[0] == [0, 1, 3]


def test_unknown_score_is_refused():
    with pytest.raises(ValueError, match="score must be one of"):
        importance(tiny(), "gradient")
    with pytest.raises(ValueError, match="needs images"):
        importance(tiny(), "taylor")
