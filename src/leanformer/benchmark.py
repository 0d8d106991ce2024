"""Training throughput of the reference model against a naive model of the same shape.

    python -m leanformer.benchmark [--rounds 5] [--steps 4] [--batch-size 128]
                                   [--out PATH]

The naive model has the same tokenizer, width, depth, heads, MLP width and pooling, so both do
the same arithmetic per image; it is assembled the obvious way, from ``nn.TransformerEncoder``
with default memory layout. The difference in images per second is therefore the price of
implementation choices alone: the course's attention kernel and channels-last convolutions.
The two train side by side, their steps interleaved
(``leanformer.measure.time_training``), and the speed-up is the median of the paired
rounds with its interval (``ratio_interval``).
This is a benchmark that prints figures, not a test; run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from .files import atomic_write
from .machine import machine_info
from .measure import count_flops, ratio_interval, time_training
from .model import ViTConfig, VisionTransformer
from .precision import NAMES, Precision
from .recipes import get_recipe
from .train import build_model


class NaiveTransformer(nn.Module):
    """The reference architecture, built from stock PyTorch layers."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        D = cfg.embed_dim
        layers: list[nn.Module] = []
        c_in = cfg.in_chans
        for c_out in cfg.conv_channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.ReLU(),
                       nn.MaxPool2d(3, 2, 1)]
            c_in = c_out
        self.tokenizer = nn.Sequential(*layers)
        n = (cfg.img_size // 2 ** len(cfg.conv_channels)) ** 2
        self.pos_embed = nn.Parameter(torch.zeros(1, n, D))
        layer = nn.TransformerEncoderLayer(D, cfg.num_heads, int(D * cfg.mlp_ratio), dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)
        self.attn_pool = nn.Linear(D, 1)
        self.head = nn.Linear(D, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.norm(self.encoder(x))
        w = torch.softmax(self.attn_pool(x), dim=1)
        return self.head((w * x).sum(1))


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """What this machine reaches on one large matrix multiply: a practical ceiling."""
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m leanformer.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds (default 5)")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed steps per model and round (default 4)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    recipe = get_recipe("reference")
    ours = build_model(recipe)
    assert isinstance(ours, VisionTransformer)  # the reference recipe builds a ViT
    naive = NaiveTransformer(ours.cfg)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_naive = sum(p.numel() for p in naive.parameters())
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    flops_per_image, _ = count_flops(ours, x, backward=True)

    print(f"machine: {machine_info()}")
    print(f"reference model: {n_ours:,} parameters; naive model: {n_naive:,} parameters")
    print(f"training FLOPs per image (forward + backward): {flops_per_image / 1e6:.1f} MFLOP")
    print(f"batch {args.batch_size}, {args.rounds} interleaved rounds of {args.steps} "
          "timed steps each, after one warm-up step\n")
    rows: list[dict[str, Any]] = []
    precisions: tuple[Precision, ...] = ("fp32", "bf16")
    ceilings = {p: matmul_gflops(NAMES[p]) for p in precisions}
    print("ceiling (2048x2048 matmul): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in ceilings.items()))
    print(f"{'model':<12}{'precision':<11}{'images/s':>10}{'GFLOP/s':>10}"
          f"{'of ceiling':>12}{'vs naive (95% interval)':>26}")
    for precision in precisions:
        speed = time_training({"naive": naive, "reference": ours}, precision,
                              batch_size=args.batch_size, rounds=args.rounds,
                              steps=args.steps)
        for name, spread in speed.items():
            gflops = spread.median * flops_per_image / 1e9
            vs_naive = ratio_interval(spread, speed["naive"])
            row = dict(model=name, precision=precision, images_per_s=spread.median,
                       images_per_s_spread=asdict(spread), gflops_per_s=gflops,
                       fraction_of_ceiling=gflops / ceilings[precision],
                       speedup_vs_naive=list(vs_naive))
            rows.append(row)
            print(f"{name:<12}{precision:<11}{spread.median:>10.0f}{gflops:>10.1f}"
                  f"{row['fraction_of_ceiling']:>11.0%} "
                  f"{vs_naive[0]:>10.2f}x ({vs_naive[1]:.2f}-{vs_naive[2]:.2f})")
    if args.out:
        result = dict(machine=machine_info(), flops_per_image=flops_per_image,
                      ceilings=ceilings, batch_size=args.batch_size, rounds=args.rounds,
                      steps=args.steps, rows=rows)
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
