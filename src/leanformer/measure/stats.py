"""What an accuracy says and how sure it is: the confusion matrix, accuracy per class, and the
noise of a difference between two accuracies on the same test images, and two models compared
image by image (a paired test), in numbers and in a sentence."""
import math
from dataclasses import dataclass

import torch


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """(true class, predicted class) counts as a (num_classes, num_classes) int64 tensor."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes**2).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class: the diagonal over the row sums."""
    return confusion.diag().double() / confusion.sum(1).clamp(min=1).double()


def accuracy_noise(acc_a: float, acc_b: float, n: int) -> float:
    """Twice the standard error of the difference of two accuracies, each over ``n`` images,
    treated as independent samples: a cautious yardstick for "could this be chance?"."""
    return 2 * (acc_a * (1 - acc_a) / n + acc_b * (1 - acc_b) / n) ** 0.5


def compare_accuracy(name_a: str, acc_a: float, name_b: str, acc_b: float, n: int) -> str:
    """One sentence comparing two accuracies measured on the same ``n`` test images, which
    calls a difference only when it is larger than twice its standard error. The error treats
    the two as independent samples of ``n`` images, which overstates the noise of a comparison
    on the same images: a cautious yardstick. It knows nothing of the seed, so a difference it
    calls is still one run each, and the sentence says so."""
    diff = acc_a - acc_b
    noise = accuracy_noise(acc_a, acc_b, n)
    head = f"{name_a}: {acc_a:.1%}, {name_b}: {acc_b:.1%} on {n:,} test images"
    if abs(diff) <= noise:
        return (f"{head}. The difference ({100 * diff:+.1f} points) is within twice its standard "
                f"error (±{100 * noise:.1f} points): these runs cannot tell the two apart.")
    ahead = name_a if diff > 0 else name_b
    return (f"{head}. {ahead[0].upper() + ahead[1:]} is ahead by {100 * abs(diff):.1f} points, more than "
            f"twice the standard error (±{100 * noise:.1f} points); but it is one run each, so "
            "train both with another seed before crediting the recipe.")


@dataclass
class PairedComparison:
    """Two models judged on the same test images: how many images only each gets right, the
    difference in accuracy with a bootstrap interval over the images, and McNemar's exact test
    of whether the two make different mistakes by more than chance."""

    n: int
    only_a: int
    only_b: int
    diff: float  # accuracy of a minus accuracy of b
    low: float
    high: float
    p_value: float
    level: float = 0.95  # of the interval (low, high)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value: under the hypothesis that the two models are equally
    good, each image that only one of them gets right is a fair coin toss between them."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_comparison(correct_a: torch.Tensor, correct_b: torch.Tensor, level: float = 0.95,
                      n_boot: int = 2000, seed: int = 0) -> PairedComparison:
    """Compare two models image by image: ``correct_a`` and ``correct_b`` are booleans, one per
    test image, in the same order. The interval resamples the images, keeping each pair."""
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1:
        raise ValueError(f"paired_comparison takes one boolean per test image for each model, in "
                         f"the same order; got shapes {tuple(correct_a.shape)} and {tuple(correct_b.shape)}")
    a, b = correct_a.bool(), correct_b.bool()
    delta = a.double() - b.double()  # +1 where only a is right, -1 where only b is
    generator = torch.Generator().manual_seed(seed)
    boots = torch.cat([delta[torch.randint(len(delta), (min(200, n_boot - i), len(delta)),
                                           generator=generator)].mean(dim=1)
                       for i in range(0, n_boot, 200)])  # 200 resamples at a time: bounded memory
    tail = (1 - level) / 2
    low, high = torch.quantile(boots, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    return PairedComparison(len(delta), only_a, only_b, float(delta.mean()), low, high,
                            mcnemar_p(only_a, only_b), level)


def paired_sentence(c: PairedComparison, name_a: str, name_b: str,
                    alpha: float = 0.05) -> str:
    """``c`` (``paired_comparison`` of a against b) in one sentence: the difference in
    points with its interval, the images only each gets right, McNemar's p, and whether
    that is more than chance (p below ``alpha``) or within it."""
    chance = ("more than chance would give" if c.p_value < alpha
              else "within what chance could give")
    return (f"{name_a} is {100 * c.diff:+.2f} points from {name_b} "
            f"({c.level:.0%} interval {100 * c.low:+.2f} to {100 * c.high:+.2f}); "
            f"{c.only_a:,} test images only {name_a} gets right and {c.only_b:,} only "
            f"{name_b} does (McNemar's p = {c.p_value:.2g}): {chance}.")
