import pytest
import torch
from conftest import tiny_vit

from leanformer import load_model, save_model
from leanformer.measure import attention_flops, component_costs, mlp_flops, safetensors_bytes
from leanformer.prune import (correlation_gap, csr_tensors, drop_blocks, drop_blocks_by_loss,
                              drop_one_block_losses, drop_one_head_losses,
                              prune_tokenizer_by_score, prune_tokenizer_channels,
                              tokenizer_channel_scores,
                              from_csr_tensors, gzip_bytes, half_accuracies,
                              highest_within, importance, keep_top, kept_by,
                              kept_in_common, magnitude_prune, prunable_weights,
                              prune_by_score, prune_heads_, prune_linear, prune_mlp_,
                              prune_model, prune_with_torch_pruning, rank_correlation,
                              remove_masks_,
                              sparse_file_bytes, sparsity_sweep, sparsity_table,
                              tensors_bytes)
from leanformer.recipes import get_recipe


SHAPE = dict(depth=2, num_heads=4, mlp_ratio=2.0)  # two blocks of 4 heads and 64 units to cut


def tiny():
    return tiny_vit(**SHAPE)


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


@pytest.mark.parametrize("score", ["taylor", "taylor-per-example", "magnitude"])
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


def test_in_place_pruning_returns_what_it_changed_and_a_copy_leaves_the_model(subset):
    model = tiny().train()
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    assert prune_heads_(attn, [0, 3]) is attn and attn.num_heads == 2  # the same module
    assert prune_mlp_(mlp, range(10)) is mlp and mlp.fc1.out_features == 10
    model = tiny().train()
    held = torch.ones_like(model.head.weight)
    model.head.weight.grad = held  # a gradient the caller is keeping
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = subset.train_sample(64, seed=1)
    pruned, record = prune_by_score(model, 2, 16, "taylor", images, labels, seed=1)
    assert pruned is not model and pruned.cfg.widths() == [(2, 16), (2, 16)]
    taylor_heads = importance(model, "taylor", images, labels)[0]
    assert record["score_images"] == 64  # the images given rank the heads
    assert record["kept_heads"] == keep_top(taylor_heads, 2)
    assert model.training and model.head.weight.grad is held  # mode and gradient kept
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="needs images and labels"):
        prune_by_score(model, 2, 16, "taylor")


def test_unknown_score_is_refused():
    with pytest.raises(ValueError, match="score must be one of"):
        importance(tiny(), "gradient")
    for score in ("taylor", "taylor-per-example"):
        with pytest.raises(ValueError, match=f"the {score} score needs images"):
            importance(tiny(), score)


def _gate_gradients(model, x, y):
    """dL/dg for explicit gates g = 1 on every head's output and every MLP unit, for the
    mean loss of the images ``x``: the definition, by autograd without the hooks."""
    gates_h = [torch.ones(b.attn.num_heads, requires_grad=True) for b in model.blocks]
    gates_u = [torch.ones(b.mlp.fc1.out_features, requires_grad=True)
               for b in model.blocks]
    hooks = []
    for b, gh, gu in zip(model.blocks, gates_h, gates_u):
        d = b.attn.head_dim
        hooks.append(b.attn.proj.register_forward_pre_hook(
            lambda m, a, gh=gh, d=d: (a[0] * gh.repeat_interleave(d),)))
        hooks.append(b.mlp.fc2.register_forward_pre_hook(
            lambda m, a, gu=gu: (a[0] * gu,)))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, gates_h + gates_u)
    for h in hooks:
        h.remove()
    return grads[:len(gates_h)], grads[len(gates_h):]


def test_taylor_per_example_is_the_average_of_each_images_own_gradient():
    model = tiny()
    torch.manual_seed(1)
    x, y = torch.rand(10, 3, 32, 32), torch.randint(0, 10, (10,))
    heads, units = importance(model, "taylor-per-example", x, y, batch_size=4)
    each = [_gate_gradients(model, x[i:i + 1], y[i:i + 1]) for i in range(len(y))]
    for b in range(len(model.blocks)):  # against one backward pass per image
        for got, part in ((heads[b], 0), (units[b], 1)):
            want = torch.stack([g[part][b].abs() for g in each]).mean(0)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)


def test_taylor_is_the_batch_variant_summed_over_batches():
    """The shipped models were pruned by this score: its definition must not drift."""
    model = tiny()
    torch.manual_seed(2)
    x, y = torch.rand(10, 3, 32, 32), torch.randint(0, 10, (10,))
    heads, units = importance(model, "taylor", x, y, batch_size=4)
    batches = [_gate_gradients(model, x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)]
    for b in range(len(model.blocks)):
        for got, part in ((heads[b], 0), (units[b], 1)):
            want = sum(g[part][b].abs() for g in batches)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)
    per_example = importance(model, "taylor-per-example", x, y)[0]
    assert not torch.allclose(per_example[0], heads[0])  # two different scores


def test_rank_correlation_is_spearmans_with_ties_and_nan_left_out():
    pd = pytest.importorskip("pandas")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (30,), generator=g).double()  # many ties
    b = torch.rand(30, generator=g).double()
    frame = pd.DataFrame({"a": a.numpy(), "b": b.numpy()})
    expected = frame.corr(method="spearman").loc["a", "b"]
    assert rank_correlation(a, b) == pytest.approx(expected, abs=1e-12)
    assert rank_correlation(b, -b) == pytest.approx(-1)
    with_nan = torch.cat([b, torch.tensor([float("nan")])])
    five = torch.cat([b, torch.tensor([5.0])])
    assert rank_correlation(with_nan, five) == pytest.approx(1)
    with pytest.raises(ValueError, match="same items, got 30 and 31 values"):
        rank_correlation(a, with_nan)


def test_correlation_gap_tells_a_perfect_score_from_noise_only_with_enough_items():
    g = torch.Generator().manual_seed(0)
    exact = torch.rand(200, generator=g)
    gap, low, high = correlation_gap(exact, torch.rand(200, generator=g), exact)
    assert gap > 0.8 and 0 < low <= gap <= high
    same = correlation_gap(exact, exact.clone(), exact)
    assert same == (0.0, 0.0, 0.0)
    six = torch.arange(6.0)  # two scores that each swap a pair of six items: no verdict
    gap, low, high = correlation_gap(six[[1, 0, 2, 3, 4, 5]], six[[0, 1, 2, 3, 5, 4]],
                                     six)
    assert gap == 0 and low < 0 < high
    with pytest.raises(ValueError, match="three scores of the same items"):
        correlation_gap(exact, exact[:5], exact)


def test_kept_in_common_counts_the_shared_share():
    assert kept_in_common([[0, 1], [2, 3]], [[1, 0], [2, 0]]) == 0.75
    with pytest.raises(ValueError, match="one list per block"):
        kept_in_common([[0]], [[0], [1]])


def test_half_accuracies_split_even_and_odd_and_the_highest_sparsity_within_a_point():
    correct = torch.tensor([True, False, True, True, False, False])
    assert half_accuracies(correct) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    with pytest.raises(ValueError, match="one boolean per test image"):
        half_accuracies(torch.ones(2, 3, dtype=torch.bool))
    tuned = {0.3: 0.87, 0.5: 0.865, 0.6: 0.85}
    assert highest_within(tuned, 0.873) == 0.5
    assert highest_within(tuned, 0.873, drop=0.03) == 0.6
    assert highest_within(tuned, 0.95) is None


def test_bad_pruning_arguments_say_what_is_wrong():
    model = tiny()
    with pytest.raises(ValueError, match="at least one of its 4 heads"):
        prune_model(model, [[], [0, 1]], [range(64)] * 2)
    with pytest.raises(ValueError, match=r"heads to keep must be in 0\.\.3, got \[1, 4\]"):
        prune_model(model, [[1, 4], [0]], [range(64)] * 2)
    with pytest.raises(ValueError, match=r"units to keep must be in 0\.\.63"):
        prune_model(model, [[0], [0]], [range(65), range(3)])
    with pytest.raises(ValueError, match="at least one of its 64 hidden units"):
        prune_model(model, [[0], [0]], [[], range(3)])
    with pytest.raises(ValueError, match="one list of heads and one of units per block"):
        prune_model(model, [[0]], [range(3)])


def test_drop_one_head_losses_are_exact_and_zero_for_a_silent_head(subset):
    model = tiny()
    with torch.no_grad():
        model.blocks[1].attn.proj.weight[:, 8:16] = 0  # head 1 of block 1 adds nothing
    x, y = subset.train_images[:200], subset.train_labels[:200]
    losses = drop_one_head_losses(model, x, y, batch_size=64)
    assert [len(row) for row in losses] == [4, 4]
    assert abs(losses[1][1].item()) < 1e-5
    # Block 0, head 3 by hand: the loss without it, minus the loss with it.
    full = torch.nn.functional.cross_entropy(model(x.float() / 255), y).item()
    without = prune_model(model, [[0, 1, 2], range(4)], [range(64)] * 2)
    by_hand = torch.nn.functional.cross_entropy(without(x.float() / 255), y).item() - full
    assert losses[0][3].item() == pytest.approx(by_hand, abs=1e-5)


def _without_block(model, i, x):
    """The model's logits with block ``i`` skipped, computed by hand from its own modules."""
    h = model.patch_embed((x - model.mean) / model.std) + model.pos_embed
    for j, block in enumerate(model.blocks):
        h = h if j == i else block(h)
    return model.head(model.pool(model.norm(h)))


def test_dropping_a_block_skips_it_and_the_copy_saves_and_loads(tmp_path):
    model = tiny_vit(depth=3, num_heads=2, drop_path_rate=0.2)
    x = torch.rand(4, 3, 32, 32)
    short = drop_blocks(model, [0, 2])
    assert short.cfg.depth == 2 and short.cfg.widths() == [(2, 64), (2, 64)] and len(model.blocks) == 3
    assert [b.drop_path.p for b in short.blocks] == pytest.approx([0.0, 0.2])  # spread again
    with torch.no_grad():
        torch.testing.assert_close(short(x), _without_block(model, 1, x), atol=1e-6, rtol=0)
        save_model(short, tmp_path / "short.safetensors")
        torch.testing.assert_close(load_model(tmp_path / "short.safetensors")(x), short(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"at least one block index in 0\.\.2, got \[3\]"):
        drop_blocks(model, [3])


def test_block_losses_are_exact_and_the_costliest_blocks_stay(subset):
    model = tiny_vit(depth=3, num_heads=2)
    with torch.no_grad():  # block 2 adds nothing to the residual stream
        model.blocks[2].attn.proj.weight.zero_(), model.blocks[2].attn.proj.bias.zero_()
        model.blocks[2].mlp.fc2.weight.zero_(), model.blocks[2].mlp.fc2.bias.zero_()
    x, y = subset.train_images[:128], subset.train_labels[:128]
    losses = drop_one_block_losses(model, x, y)
    assert abs(losses[2].item()) < 1e-6
    full = torch.nn.functional.cross_entropy(model(x.float() / 255), y).item()
    with torch.no_grad():
        by_hand = torch.nn.functional.cross_entropy(_without_block(model, 0, x.float() / 255), y).item()
    assert losses[0].item() == pytest.approx(by_hand - full, abs=1e-5)
    kept, record = drop_blocks_by_loss(model, 2, x, y)
    assert set(range(3)) - set(record["kept_blocks"]) == {losses.argmin().item()}
    assert kept.cfg.depth == 2 and record["block_losses"] == pytest.approx(losses.tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="blocks: keep between 1 and 3, got 0"):
        drop_blocks_by_loss(model, 0, x, y)


def test_removing_a_tokenizer_channel_equals_silencing_it(tmp_path, subset):
    model = tiny_vit()  # conv tokenizer with 16 then 32 channels
    with torch.no_grad():
        model.patch_embed.stages[0].weight[5] = 0  # channel 5 is zero after the ReLU
    x = torch.rand(3, 3, 32, 32)
    pruned = prune_tokenizer_channels(model, [c for c in range(16) if c != 5])
    assert pruned.cfg.conv_channels == (15, 32) and model.cfg.conv_channels == (16, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=0)
        save_model(pruned, tmp_path / "t.safetensors")
        torch.testing.assert_close(load_model(tmp_path / "t.safetensors")(x), pruned(x), atol=0, rtol=0)
    images, labels = subset.train_images[:128], subset.train_labels[:128]
    scores = tokenizer_channel_scores(model, images, labels)
    assert scores.shape == (16,) and scores[5] == 0 and (scores > 0).sum() >= 8
    smaller, record = prune_tokenizer_by_score(model, 8, images, labels)
    assert smaller.cfg.conv_channels == (8, 32) and 5 not in record["kept_tokenizer_channels"]
    with pytest.raises(ValueError, match="tokenizer-channels: keep between 1 and 16, got 17"):
        prune_tokenizer_by_score(model, 17, images, labels)
    with pytest.raises(ValueError, match="conv tokenizer with two or more convolutions"):
        prune_tokenizer_channels(tiny_vit(tokenizer="patch"), [0])


def test_torch_pruning_removes_the_same_rows_and_columns():
    model = tiny()
    theirs = prune_with_torch_pruning(model, heads=2, units=40)
    keep_heads, keep_units = kept_by(model, theirs)
    assert [len(h) for h in keep_heads] == [2, 2] and [len(u) for u in keep_units] == [40, 40]
    ours = prune_model(model, keep_heads, keep_units)
    assert theirs.cfg.widths() == ours.cfg.widths() == [(2, 40), (2, 40)]
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=0, rtol=0)
    # Its ranking is a group L2 norm, like the course's magnitude score: it keeps the units with
    # the largest weights.
    _, units = importance(model, "magnitude")
    assert keep_units == keep_top(units, 40)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_zeroes_the_smallest_share(scope):
    model = tiny()
    pruned = magnitude_prune(model, 0.6, scope)
    table = sparsity_table(pruned)
    total = table.zeros.sum() / table.weights.sum()
    assert total == pytest.approx(0.6, abs=1e-3)
    if scope == "layer":
        assert ((table.sparsity - 0.6).abs() < 0.01).all()
    else:  # one threshold for all: every kept weight is at least as large as every zeroed one
        kept = torch.cat([m.weight[m.weight != 0].abs() for _, m in prunable_weights(pruned)])
        gone = torch.cat([m.weight_orig[m.weight_mask == 0].abs() for _, m in prunable_weights(pruned)])
        assert kept.min() >= gone.max()
    assert all(hasattr(m, "weight_mask") for _, m in prunable_weights(pruned))
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_weights(model))  # a copy
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        magnitude_prune(model, 1.0)
    with pytest.raises(ValueError, match="scope must be"):
        magnitude_prune(model, 0.5, "block")


def test_masks_double_the_file_until_removed_and_csr_shrinks_it_when_sparse():
    model = tiny()
    masked = magnitude_prune(model, 0.9)
    dense = safetensors_bytes(model)
    assert tensors_bytes(masked.state_dict()) > 1.5 * dense
    removed = remove_masks_(masked)
    assert sorted(removed.state_dict()) == sorted(model.state_dict())
    assert tensors_bytes(removed.state_dict()) == dense  # zeros take as many bytes as any number
    csr32, csr64 = csr_tensors(removed, torch.int32), csr_tensors(removed, torch.int64)
    assert tensors_bytes(csr32) < tensors_bytes(csr64) < dense
    assert tensors_bytes(csr_tensors(model, torch.int32)) > dense  # no zeros: CSR only adds indices
    assert gzip_bytes(removed.state_dict()) < 0.5 * dense
    back = from_csr_tensors(csr32)
    assert sorted(back) == sorted(removed.state_dict())
    for key, value in removed.state_dict().items():
        assert torch.equal(back[key], value), key


def test_each_sparse_file_format_gives_back_the_same_weights():
    import gzip

    from safetensors.torch import load

    model = remove_masks_(magnitude_prune(tiny(), 0.8))
    state = model.state_dict()
    files = {fmt: sparse_file_bytes(model, fmt) for fmt in ("dense", "gzip", "csr64", "csr32")}
    assert len(files["dense"]) == safetensors_bytes(model)
    assert len(files["csr32"]) < len(files["csr64"]) < len(files["dense"])
    for fmt, blob in files.items():
        tensors = load(gzip.decompress(blob) if fmt == "gzip" else blob)
        back = from_csr_tensors(tensors) if fmt.startswith("csr") else tensors
        assert sorted(back) == sorted(state), fmt
        for key, value in state.items():
            assert torch.equal(back[key], value), (fmt, key)
    with pytest.raises(ValueError, match="format must be one of dense, gzip, csr64, csr32, got 'zip'"):
        sparse_file_bytes(model, "zip")


def test_csr_refuses_a_model_with_masks_and_indices_too_narrow():
    with pytest.raises(ValueError, match="call remove_masks_"):
        csr_tensors(magnitude_prune(tiny(), 0.5))
    wide = torch.nn.Sequential(torch.nn.Linear(300, 2))
    with pytest.raises(ValueError, match="more rows or columns than torch.int8"):
        csr_tensors(wide, torch.int8)


def test_a_file_with_broken_csr_indices_is_refused():
    tensors = csr_tensors(remove_masks_(magnitude_prune(tiny(), 0.5)))
    key = next(k for k in tensors if k.endswith(".col_indices"))
    tensors[key] = tensors[key] + 10_000  # column indices beyond the matrix
    with pytest.raises(RuntimeError, match=r"weight: not a valid CSR matrix .*col_indices"):
        from_csr_tensors(tensors)


def test_a_sparsity_sweep_fine_tunes_through_the_masks(subset):
    from test_train import small

    data = small(subset, 256, 200)
    rows, models = sparsity_sweep(tiny(), data, [0.5], get_recipe("finetune-brief"))
    (row,) = rows
    assert set(row) >= {"global", "layer", "fine-tuned", "dense", "csr32", "csr64", "gzip"}
    halves = (row["fine-tuned (even)"] + row["fine-tuned (odd)"]) / 2  # 100 images each
    assert halves == pytest.approx(row["fine-tuned"], abs=0.011)
    tuned, untuned = models[0.5], remove_masks_(magnitude_prune(tiny(), 0.5))
    table = sparsity_table(tuned)
    assert table.zeros.sum() / table.weights.sum() == pytest.approx(0.5, abs=1e-3)  # still 50% zeros
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_weights(tuned))
    w, w0 = tuned.blocks[0].mlp.fc1.weight, untuned.blocks[0].mlp.fc1.weight
    assert torch.equal(w == 0, w0 == 0)  # the same weights are zero ...
    assert not torch.equal(w, w0)  # ... and the others were trained
    assert row["dense"] == safetensors_bytes(tuned)
