"""What a training run is, besides its recipe, so that a resume continues only the run its state
was written by: the data set, the starting weights and the teacher, each by digest. ``fit``
records ``run_identity`` in its state file and calls ``check_same_run`` before it resumes.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import CheckpointError
from .data import CIFAR10
from .files import tensors_sha256


def data_sha256(data: CIFAR10) -> str:
    """A digest of a data set's images and labels, whatever file or folder they came from: two
    loads of the same images agree, a data set with one pixel changed does not."""
    return tensors_sha256({"train_images": data.train_images, "train_labels": data.train_labels,
                           "test_images": data.test_images, "test_labels": data.test_labels})


def run_identity(data: CIFAR10, model: nn.Module | None = None,
                 loss_fn: Callable[..., torch.Tensor] | None = None) -> dict[str, Any]:
    """What a run trains on and from, besides its recipe, as ``fit`` records it in the training
    state and checks it on resume:

    data:    the data set's digest (``data_sha256``) and, to name it in a message, its source;
    init:    None when the recipe builds the model afresh, else the starting weights' sha256 and
             the QAT scheme the model carries (``quantize.prepare_qat_`` leaves the
             weights, and so their digest, as they were: the bits tell two schemes
             apart);
    teacher: None without one, else the teacher's weights' sha256 and the loss's settings
             (``DistillationLoss.describe``: kind, alpha, temperature).
    """
    init = None
    if model is not None:
        init = {"weights_sha256": tensors_sha256(model.state_dict()),
                "qat": getattr(model, "qat", None)}
    teacher = getattr(loss_fn, "teacher", None)
    describe = getattr(loss_fn, "describe", None)
    if isinstance(teacher, nn.Module):
        teacher = {"weights_sha256": tensors_sha256(teacher.state_dict()),
                   **(describe() if describe is not None else {})}
    else:
        teacher = None
    return {"data": {"sha256": data_sha256(data), "source": data.source},
            "init": init, "teacher": teacher}


def _describe_init(init: dict[str, Any] | None) -> str:
    if init is None:
        return "the recipe's fresh initialisation"
    qat = init.get("qat")
    return (f"weights sha256 {init['weights_sha256'][:12]}…"
            + (f" with {qat['weight_bits']}-bit QAT, groups of {qat['group_size']}" if qat else ""))


def _describe_teacher(teacher: dict[str, Any] | None) -> str:
    if teacher is None:
        return "no teacher"
    settings = ", ".join(f"{k} {v}" for k, v in teacher.items() if k != "weights_sha256")
    return f"teacher weights sha256 {teacher['weights_sha256'][:12]}…" + (f" ({settings})" if settings else "")


def check_same_run(state_path: str | Path, recorded: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """Refuse to resume a state written with other data, other starting weights or another
    teacher than this run's (``run_identity``), naming the first that differs: the recipe alone
    does not make a run, and a resumed run that mixes two would be neither.

    A state written before the identity was recorded (``recorded`` None) resumes with a warning
    on stderr rather than being refused: its run may be half done, its recipe is still checked,
    and refusing it would throw that work away."""
    if recorded is None:
        print(f"warning: {state_path} predates the record of a run's data, starting weights and "
              "teacher: resuming with the recipe checked, the rest unchecked", file=sys.stderr)
        return
    fix = "resume with the same ones, or start afresh (--force, or another --out)"
    if recorded["data"]["sha256"] != now["data"]["sha256"]:
        raise CheckpointError(
            f"{state_path} was written on other data (sha256 {recorded['data']['sha256'][:12]}… from "
            f"{recorded['data']['source']}) than this run's (sha256 {now['data']['sha256'][:12]}… "
            f"from {now['data']['source']}); {fix}.")
    if recorded["init"] != now["init"]:
        raise CheckpointError(
            f"{state_path} was written starting from other weights ({_describe_init(recorded['init'])}) "
            f"than this run's ({_describe_init(now['init'])}); {fix}.")
    if recorded["teacher"] != now["teacher"]:
        raise CheckpointError(
            f"{state_path} was written with another teacher ({_describe_teacher(recorded['teacher'])}) "
            f"than this run's ({_describe_teacher(now['teacher'])}); {fix}.")
