"""How well an importance score ranks the heads: Spearman's rank correlation with the
exact effect of removing each head, whether one score comes closer to it than another
by more than a few heads can tell (a bootstrap over the heads), and how much two
rankings keep alike."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a 1-D tensor; tied values share the average of their ranks."""
    ranks = torch.empty_like(x)
    ranks[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=x.dtype).index_add_(0, inverse, ranks)
    return (sums / counts)[inverse]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two scores of the same items (any shape,
    flattened): the correlation of their ranks, 1 when both order the items alike, -1
    when in reverse. Items that are NaN in either (a block's only head) are left out."""
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation takes two scores of the same items, got "
                         f"{len(a)} and {len(b)} values")
    keep = ~(a.isnan() | b.isnan())
    ra, rb = _ranks(a[keep]), _ranks(b[keep])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def correlation_gap(score_a: torch.Tensor, score_b: torch.Tensor, exact: torch.Tensor,
                    level: float = 0.95, n_boot: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """(gap, low, high): how much closer ``score_a`` ranks the items to ``exact`` than
    ``score_b`` does, ``rank_correlation(score_a, exact) - rank_correlation(score_b,
    exact)``, with a bootstrap interval that draws the items again with replacement,
    each with its three values. An interval that holds 0 says these items cannot tell
    the two scores apart."""
    a, b, e = (torch.as_tensor(t).double().flatten() for t in (score_a, score_b, exact))
    if not len(a) == len(b) == len(e):
        raise ValueError(f"correlation_gap takes three scores of the same items, got "
                         f"{len(a)}, {len(b)} and {len(e)} values")
    keep = ~(a.isnan() | b.isnan() | e.isnan())
    a, b, e = a[keep], b[keep], e[keep]
    gap = rank_correlation(a, e) - rank_correlation(b, e)
    generator = torch.Generator().manual_seed(seed)
    boots = []
    for _ in range(n_boot):
        i = torch.randint(len(e), (len(e),), generator=generator)
        boots.append(rank_correlation(a[i], e[i]) - rank_correlation(b[i], e[i]))
    tail = (1 - level) / 2  # a draw of one value repeated gives NaN: left out
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    low, high = torch.tensor(boots, dtype=torch.float64).nanquantile(q).tolist()
    return gap, low, high


def kept_in_common(keep_a: Sequence[Sequence[int]],
                   keep_b: Sequence[Sequence[int]]) -> float:
    """The share of the kept heads (or units) that two selections, one list per block as
    ``keep_top`` gives them, have in common."""
    if len(keep_a) != len(keep_b):
        raise ValueError(f"one list per block in each selection, got {len(keep_a)} and "
                         f"{len(keep_b)} blocks")
    common = sum(len(set(a) & set(b)) for a, b in zip(keep_a, keep_b))
    return common / max(1, sum(len(a) for a in keep_a))
