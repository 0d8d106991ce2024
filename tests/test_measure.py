import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_vit as shared_tiny_vit
from torch import nn

import leanformer
from leanformer.measure import Cost, Spread, count_flops, count_parameters, size_on_disk
from leanformer.model import Block


def test_parameters_and_size():
    model = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 5))
    assert count_parameters(model) == 10 * 20 + 20 + 20 * 5 + 5
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 20 + 20 * 5 + 5
    n = count_parameters(model)
    assert 4 * n < size_on_disk(model) < 4 * n + 4096  # fp32 weights plus a little framing


def test_flops_of_a_linear_layer_and_of_a_block():
    total, _ = count_flops(nn.Linear(64, 32), torch.rand(8, 64))
    assert total == 2 * 8 * 64 * 32
    B, N, D, r = 2, 16, 32, 2
    block = Block(D, num_heads=4, mlp_ratio=r)
    total, _ = count_flops(block, torch.rand(B, N, D))
    by_hand = B * (2 * N * D * 3 * D + 2 * N * N * D + 2 * N * N * D + 2 * N * D * D
                   + 2 * 2 * N * D * r * D)
    assert total == by_hand
    with_backward, _ = count_flops(block, torch.rand(B, N, D, requires_grad=True), backward=True)
    assert 2.5 * total < with_backward < 3.5 * total  # backward costs about twice the forward


def tiny_vit(**widths):
    return shared_tiny_vit(depth=2, num_heads=4, **widths)


def test_components_add_up_and_follow_the_formula():
    from leanformer.measure import attention_flops, component_costs, mlp_flops

    model = tiny_vit(block_widths=((4, 64), (2, 37)))
    df = component_costs(model)
    assert list(df.component) == ["tokenizer", "block 0 attention", "block 0 MLP",
                                  "block 1 attention", "block 1 MLP", "head"]
    assert df.parameters.sum() == count_parameters(model)
    assert df.flops.sum() == count_flops(model, torch.zeros(1, 3, 32, 32))[0]
    flops = dict(zip(df.component, df.flops))
    assert flops["block 1 attention"] == attention_flops(64, 32, 2, 8)
    assert flops["block 1 MLP"] == mlp_flops(64, 32, 37)
    # Removing two of four heads halves every term of the attention's cost.
    assert 2 * flops["block 1 attention"] == flops["block 0 attention"]


def test_measure_costs_times_models_side_by_side(subset, monkeypatch):
    from leanformer.data import CIFAR10
    from leanformer.measure import Cost, cost_table, measure_costs

    data = CIFAR10(subset.train_images[:10], subset.train_labels[:10], subset.test_images[:200],
                   subset.test_labels[:200], subset.source)
    big, small = tiny_vit(), tiny_vit(block_widths=((1, 8), (1, 8)))
    monkeypatch.delenv("LEANFORMER_TIMING", raising=False)  # make test sets it
    costs = measure_costs({"big": big, "small": small}, data, batch_size=32, rounds=2,
                          latency_calls=3, throughput_calls=2, warmup=1,
                          test_acc={"small": 0.5})
    assert [c.name for c in costs] == ["big", "small"] and all(isinstance(c, Cost) for c in costs)
    b, s = costs
    assert b.parameters == count_parameters(big) and s.parameters < b.parameters
    assert b.flops == count_flops(big, torch.zeros(1, 3, 32, 32))[0] and s.flops < b.flops
    assert s.test_acc == 0.5 and 0.0 <= b.test_acc <= 1.0 and b.test_images == 200
    assert b.latency_ms.n == 6 and b.throughput.n == 4
    assert b.latency_ms.min <= b.latency_ms.q1 <= b.latency_ms.median <= b.latency_ms.q3 <= b.latency_ms.max
    assert b.file_format == "safetensors" and 4 * b.parameters < b.file_bytes < 4 * b.parameters + 8192
    assert b.machine and b.threads == torch.get_num_threads()
    table = cost_table(costs, baseline="big")
    assert list(table.index) == ["big", "small"] and table.loc["big", "throughput vs big"] == 1.0


def test_brief_timing_takes_one_round_of_few_calls(monkeypatch):
    from leanformer.measure import measure_cost

    monkeypatch.setenv("LEANFORMER_TIMING", "brief")
    cost = measure_cost(tiny_vit(), batch_size=4, rounds=4, latency_calls=5, throughput_calls=2, warmup=1)
    assert cost.latency_ms.n == 3 and cost.throughput.n == 1
    monkeypatch.setenv("LEANFORMER_TIMING", "")
    cost = measure_cost(tiny_vit(), batch_size=4, rounds=2, latency_calls=2, throughput_calls=2, warmup=1)
    assert cost.latency_ms.n == 4 and cost.throughput.n == 4


def test_a_quantized_model_shows_why_its_flops_are_missing():
    from leanformer.measure import measure_cost

    quantize = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantize is None or not hasattr(quantize, "quantize_dynamic"):
        pytest.skip("this PyTorch has no legacy quantize_dynamic")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize.quantize_dynamic(tiny_vit(), {nn.Linear}, dtype=torch.qint8)
    cost = measure_cost(q, name="int8", precision="int8", batch_size=8, rounds=1,
                        latency_calls=1, throughput_calls=1, warmup=1)
    assert cost.flops is None and "quantized" in cost.notes["flops"]
    assert cost.precision == "int8" and cost.file_bytes > 0


def test_training_cost_comes_from_the_provenance():
    from leanformer.checkpoint import REFERENCE
    from leanformer import load_model
    from leanformer.measure import training_cost

    prov = load_model(REFERENCE).provenance
    seconds, epochs, seen = training_cost(prov)
    assert seconds == prov["train_wall_time_s"] and epochs == prov["epochs"] == 120
    assert seen == 120 * prov["train_images"] == 6_000_000
    assert training_cost({}) == (None, None, None)
    # a run another job slowed down: its undisturbed time, where the record holds one
    slowed = {**prov, "train_wall_time_undisturbed_s": prov["train_wall_time_s"] - 100}
    assert training_cost(slowed)[0] == prov["train_wall_time_s"] - 100


def test_a_model_with_its_own_inputs_is_measured_per_input_and_says_so():
    from leanformer.measure import measure_costs
    from leanformer.model import TextTransformer

    torch.manual_seed(0)
    text = TextTransformer(vocab_size=10, embed_dim=16, depth=1, num_heads=2, max_len=8).eval()
    costs = measure_costs({"vit": tiny_vit(), "text": text},
                          inputs={"text": lambda n: torch.randint(0, 10, (n, 8))},
                          batch_size=4, rounds=1, latency_calls=1, throughput_calls=1, warmup=1)
    vit_cost, text_cost = costs
    assert text_cost.flops == count_flops(text, torch.zeros(1, 8, dtype=torch.long))[0]
    assert "input" in text_cost.notes and "input" not in vit_cost.notes


def test_fused_attention_on_a_cpu_counts_its_attention_flops():
    # torch.utils.flop_counter knows only the GPU kernels of F.scaled_dot_product_attention;
    # the package adds the CPU one, so fused and unfused attention count the same work.
    from leanformer.measure import attention_flops
    from leanformer.model import Attention

    torch.manual_seed(0)
    attn = Attention(32, num_heads=2)
    x = torch.randn(1, 24, 32)
    plain = count_flops(attn, x)[0]
    attn.fused = True
    assert count_flops(attn, x)[0] == plain == attention_flops(24, 32, 2, 16)


def test_show_costs_prints_a_shared_note_once(capsys):
    from leanformer.measure import Cost, Spread, show_costs

    spread = Spread.of([1.0, 2.0])
    costs = [Cost(name, latency_ms=spread, throughput=spread, notes={"input": "sequences"})
             for name in ("a", "b")]
    costs[1].notes["file"] = "only b"
    show_costs(costs)
    out = capsys.readouterr().out
    assert out.count("sequences") == 1 and "every model, input: sequences" in out
    assert "b, file: only b" in out


def test_compare_accuracy_calls_a_difference_only_beyond_its_noise():
    from leanformer.measure import compare_accuracy

    # 2,000 images at about 30%: twice the standard error of a difference is about 2.9 points.
    close = compare_accuracy("a", 0.31, "b", 0.30, 2000)
    assert "cannot tell the two apart" in close and "+1.0 points" in close
    far = compare_accuracy("a", 0.30, "b", 0.36, 2000)
    assert far.split(". ")[1].startswith("B is ahead by 6.0 points") and "another seed" in far
    # The same difference on many more images is beyond the noise.
    assert "ahead" in compare_accuracy("a", 0.31, "b", 0.30, 100_000)


def test_a_cost_goes_to_json_and_back_unchanged():
    cost = Cost("pruned", test_acc=0.8123, test_images=10_000, parameters=123_456, file_bytes=494_000,
                file_format="safetensors", flops=12_345_678, latency_ms=Spread.of([1.5, 1.25, 2.0]),
                throughput=Spread.of([900.0, 1000.5]), precision="bf16", threads=2, machine="a CPU",
                train_time_s=61.5, train_epochs=3, train_images_seen=15_000,
                notes={"flops": "counted on the eager module"})
    text = json.dumps(cost.to_dict())
    back = Cost.from_dict(json.loads(text))
    assert back == cost and isinstance(back.latency_ms, Spread) and isinstance(back.throughput, Spread)
    assert Cost.from_dict(json.loads(json.dumps(Cost("unmeasured").to_dict()))) == Cost("unmeasured")
    with pytest.raises(ValueError, match="no fields"):
        Cost.from_dict({**cost.to_dict(), "colour": "blue"})


# Each module below imports only modules of a lower rank, at the top of the file or inside a
# function: no import runs back up, so none needs hiding inside a function.
RANKS = {"machine": 0, "precision": 1, "evaluate": 2, "measure.size": 3, "measure.stats": 3,
         "measure.flops": 4, "measure.timing": 4, "measure.cost": 5,
         "measure.training_speed": 5, "measure.table": 6}


def package_imports(name):
    """The leanformer modules that the module ``name`` (relative to the package) imports."""
    path = Path(leanformer.__file__).parent / (name.replace(".", "/") + ".py")
    package = ["leanformer", *name.split(".")[:-1]]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            targets = [node.module] if node.module else [a.name for a in node.names]
            found |= {".".join(base[1:] + [t]) for t in targets}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found |= {n.removeprefix("leanformer.") for n in names if n.startswith("leanformer.")}
    return found


def test_the_cost_modules_import_downward_only():
    for name, rank in RANKS.items():
        for target in package_imports(name):
            assert RANKS.get(target, rank) < rank, f"{name} imports {target}, which is not below it"


def test_ratio_interval_pairs_the_rounds_and_the_verdict_reads_the_interval():
    from leanformer.measure.timing import Spread, ratio_interval, verdict

    base = [100.0, 60.0, 120.0, 90.0, 110.0, 70.0, 130.0, 95.0]  # a shared machine: rounds differ
    fast = Spread.of([2 * v * (1 + 0.01 * (-1) ** i) for i, v in enumerate(base)])
    slow = Spread.of(base)
    assert fast.samples[:2] == (200.0 * 1.01, 120.0 * 0.99)  # kept in the order measured
    median, low, high = ratio_interval(fast, slow)
    assert 1.98 <= low <= median <= high <= 2.02  # round by round the ratio is steady...
    assert fast.max / slow.min > 3 and fast.min / slow.max < 1  # ...though the ranges say little
    assert verdict((median, low, high), 1.5) == "met"
    assert verdict((median, low, high), 2.5) == "missed"
    assert verdict((2.0, 1.9, 2.1), 2.0) == "at the margin"
    with pytest.raises(ValueError, match="pairs the samples"):
        ratio_interval(fast, Spread.of(base[:4]))


def test_rate_side_by_side_interleaves_the_entries_and_counts_items_per_second():
    import time

    from leanformer.measure import rate_side_by_side

    order = []

    def run(name, seconds=0.0):
        def call():
            order.append(name)
            time.sleep(seconds)
        return call

    rates = rate_side_by_side({"a": run("a", 0.01), "b": run("b")}, items=10, rounds=2,
                              calls=2, warmup=1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2  # warm-up, then the rounds
    assert rates["a"].n == rates["b"].n == 4  # a sample per timed call, paired by round
    assert 0 < rates["a"].max <= 10 / 0.01  # each call of a sleeps 10 ms, for 10 items
    with pytest.raises(ValueError, match="at least one round and one call"):
        rate_side_by_side({"a": run("a")}, items=1, rounds=0, calls=1, warmup=0)


def test_time_training_times_precisions_side_by_side_and_leaves_the_model(monkeypatch):
    from leanformer.measure import ratio_interval, time_training

    monkeypatch.delenv("LEANFORMER_TIMING", raising=False)
    model = shared_tiny_vit(0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    speed = time_training({"fp32": model, "bf16": model}, precision={"bf16": "bf16"},
                          batch_size=4, rounds=2, steps=2, warmup=1)
    assert list(speed) == ["fp32", "bf16"]
    assert all(s.n == 4 and s.min > 0 for s in speed.values())
    median, low, high = ratio_interval(speed["bf16"], speed["fp32"])
    assert 0 < low <= median <= high
    assert not model.training and all(p.grad is None for p in model.parameters())
    # A copy trained: the model's weights are as they were.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    monkeypatch.setenv("LEANFORMER_TIMING", "brief")  # make test: one round of one step
    assert time_training({"m": model}, batch_size=2, rounds=5, steps=3)["m"].n == 1
    with pytest.raises(ValueError, match="precision must be"):
        time_training({"m": model}, precision="bfloat16", batch_size=2)


def test_a_cost_with_samples_goes_to_json_and_back():
    import json

    from leanformer.measure import Cost
    from leanformer.measure.timing import Spread

    cost = Cost("m", throughput=Spread.of([3.0, 1.0, 2.0]))
    back = Cost.from_dict(json.loads(json.dumps(cost.to_dict())))
    assert back.throughput is not None and tuple(back.throughput.samples) == (3.0, 1.0, 2.0)


def test_paired_comparison_counts_the_images_only_one_model_gets_right():
    from leanformer.measure.stats import mcnemar_p, paired_comparison

    assert mcnemar_p(10, 0) == pytest.approx(2 / 2 ** 10)  # ten tosses, all one way
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0
    a = torch.zeros(1000, dtype=torch.bool)
    b = a.clone()
    a[:600], b[:600] = True, True  # both right on 600 images
    a[600:660] = True              # only a on 60 more, only b on 20
    b[660:680] = True
    result = paired_comparison(a, b)
    assert (result.n, result.only_a, result.only_b) == (1000, 60, 20)
    assert result.diff == pytest.approx(0.04) and result.low < 0.04 < result.high
    assert result.low > 0 and result.p_value < 0.001  # 60 against 20 is no coin toss
    same = paired_comparison(a, a)
    assert (same.diff, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="one boolean per test image"):
        paired_comparison(a, b[:10])


def test_paired_sentence_says_the_difference_its_interval_and_whether_it_is_chance():
    from leanformer.measure import paired_comparison, paired_sentence

    a = torch.zeros(1000, dtype=torch.bool)
    b = a.clone()
    a[:660], b[:600], b[660:680] = True, True, True  # only a on 60, only b on 20
    result = paired_comparison(a, b, level=0.9)
    said = paired_sentence(result, "the student", "the control")
    assert said.startswith("the student is +4.00 points from the control (90% interval")
    assert "60 test images only the student gets right and 20 only the control" in said
    assert said.endswith("more than chance would give.")
    keep = torch.cat([torch.arange(640), torch.arange(660, 680)])
    close = paired_comparison(a[keep], b[keep])  # 40 against 20: p about 0.013
    assert (close.only_a, close.only_b) == (40, 20)
    said = paired_sentence(close, "a", "b", alpha=0.01)
    assert said.endswith("within what chance could give.")


def test_a_spread_percentile_interpolates_as_numpy_does():
    import numpy as np

    values = [5.0, 1.0, 4.0, 2.5, 3.0, 9.0, 7.5]
    spread = Spread.of(values)
    for q in (0, 10, 50, 90, 99, 100):
        assert spread.percentile(q) == pytest.approx(float(np.percentile(values, q)))
    assert spread.percentile(50) == spread.median
