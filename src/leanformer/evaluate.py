"""How well a trained model answers: logits for a set of images (``predict``), accuracy and loss
on a labelled set (``evaluate``), and test-time augmentation (``tta_logits``,
``accuracies_with_tta``). ``fit`` evaluates after every epoch with these, ``measure_costs`` fills
a cost record's accuracy with them, and the lessons and the command line report them.
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .precision import Precision, autocast

TTA_MODES = ("", "flip", "flip-shift")


class LabelledTestSet(Protocol):
    """What ``accuracies_with_tta`` reads of a data set, such as a ``data.CIFAR10``."""

    test_images: torch.Tensor
    test_labels: torch.Tensor


def default_device() -> str:
    """The GPU where there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def tta_logits(model: nn.Module, x: torch.Tensor, mode: str = "flip") -> torch.Tensor:
    """Test-time augmentation: the logits of ``x`` averaged over simple variants of it.

    "flip":       the image and its mirror image, half each.
    "flip-shift": airbench's level 2: half the "flip" answer, and half the "flip" answers for the
                  image shifted one pixel up-left and one pixel down-right (reflect-padded),
                  six forward passes in all.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")
    if not mode:
        return model(x).float()

    def mirrored(z: torch.Tensor) -> torch.Tensor:
        return (model(z).float() + model(z.flip(3)).float()) / 2

    logits = mirrored(x)
    if mode == "flip-shift":
        H, W = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        shifted = (mirrored(padded[..., :H, :W]) + mirrored(padded[..., 2:, 2:])) / 2
        logits = (logits + shifted) / 2
    return logits


def mode_is_fixed(model: nn.Module) -> bool:
    """Whether ``model`` is an exported graph (a PT2E model, say), whose training or eval mode was
    fixed when it was exported: ``eval()`` changes nothing it computes, and on a PT2E graph
    torchao's ``eval()`` exports its dropout patterns again, which resets ``torch.compile``'s
    caches and makes every compiled model in the process compile again. Callers skip it."""
    return isinstance(model, torch.fx.GraphModule)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500,
            precision: Precision = "fp32",
            device: str | torch.device | None = None, flip_tta: bool = False,
            tta: str = "") -> torch.Tensor:
    """Logits (fp32, on the CPU) for uint8 or float images (N, 3, 32, 32).

    ``tta`` ("flip" or "flip-shift", see ``tta_logits``) averages the logits over variants of
    each image (test-time augmentation); ``flip_tta=True`` means ``tta="flip"``. Report it beside
    the plain figure, never instead of it: it costs 2 or 6 forward passes per image.
    """
    tta = tta or ("flip" if flip_tta else "")
    device = device or next(model.parameters()).device
    was_training, toggle = model.training, not mode_is_fixed(model)
    if toggle:
        model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        x = x.to(device)
        with autocast(precision, device):
            out.append(tta_logits(model, x, tta).cpu())
    if toggle:
        model.train(was_training)
    return torch.cat(out)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             precision: Precision = "fp32",
             device: str | torch.device | None = None, flip_tta: bool = False,
             tta: str = "") -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy) on a labelled set."""
    logits = predict(model, images, precision=precision, device=device, flip_tta=flip_tta, tta=tta)
    loss = F.cross_entropy(logits, labels).item()
    return (logits.argmax(1) == labels).float().mean().item(), loss


def accuracies_with_tta(model: nn.Module, data: LabelledTestSet,
                        modes: tuple[str, ...] = TTA_MODES) -> dict[str, float]:
    """Accuracy on ``data``'s test images for each test-time augmentation mode in ``modes``
    ("" for none), keyed as a checkpoint's record keys them: ``test_acc``, ``test_acc_flip_tta``,
    ``test_acc_flip_shift_tta``."""
    return {"test_acc" + (f"_{mode.replace('-', '_')}_tta" if mode else ""):
            evaluate(model, data.test_images, data.test_labels, tta=mode)[0] for mode in modes}
