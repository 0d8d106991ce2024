"""What an accuracy says and how sure it is: the confusion matrix, accuracy per class, and the
noise of a difference between two accuracies on the same test images."""
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
