import torch
from torch import nn

from leanformer.measure import (Timing, count_flops, count_parameters, inference_latency,
                                measure_latency, size_on_disk)
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


def test_latency_reports_median_of_repeats():
    calls = []
    timing = measure_latency(lambda: calls.append(1), batch_size=4, warmup=2, repeats=5)
    assert len(calls) == 7
    assert isinstance(timing, Timing) and timing.min_ms <= timing.median_ms
    assert timing.throughput == 4 / (timing.median_ms / 1000)
    t = inference_latency(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), batch_size=2,
                          repeats=3)
    assert t.batch_size == 2 and t.median_ms > 0
