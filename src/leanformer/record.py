"""When a model's record may stand in for a measurement: the test set it was scored on.

A checkpoint's provenance holds the accuracy its training command measured. A lesson may show
that figure instead of measuring it again only when the test images are the very ones it was
measured on: the same pixels, not merely the same count (the official CIFAR-10 test set and the
course's JPEG copy both hold 10,000 images). The test set is named by a digest of its pixels and
labels, ``test_set_sha256``, which the training commands record. Records written before that
field existed name the archive they were trained and tested on (``data_sha256``); the archives the
course knows map to their test set's digest below.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import CHECKPOINTS
from .data import CIFAR10, SUBSET_SHA256
from .evaluate import predict
from .files import atomic_write, tensors_sha256

# The 10,000 test images of the course's JPEG (quality 75) copy of CIFAR-10, as decoded by
# leanformer.data: the same pixels whether they come from the full JPEG archive or from the
# shipped subset (tests/test_record.py checks the subset).
JPEG_Q75_TEST_SET = "67f781a5d1c8baeeac7f2c0c89d31b6285fe9809cb4a877cd6dfaf8078e4a3ec"

# sha256 of an archive file -> the digest of the test set it holds.
KNOWN_ARCHIVES = {
    # cifar10-jpg.tar.gz: all 60,000 images as JPEG (q75) class folders
    "d81d7c1e5a399d340a75ff344a0f27772ef3e9388961f0041a5f713adf0a7b1b": JPEG_Q75_TEST_SET,
    # data/cifar10-subset.tar.gz: 5,000 training images and the same 10,000 test images
    SUBSET_SHA256: JPEG_Q75_TEST_SET,
}


def test_set_sha256(data: CIFAR10) -> str:
    """A digest of a data set's test images and labels (``files.tensors_sha256``): two loads of
    the same images agree, whatever file they came from; one changed pixel or label does not."""
    return tensors_sha256({"test_images": data.test_images, "test_labels": data.test_labels})


def recorded_test_set(provenance: dict[str, Any]) -> str | None:
    """The digest of the test set a record's accuracies were measured on, or None when the
    record does not say (an archive the course does not know, or no archive at all)."""
    if provenance.get("test_set_sha256"):
        return provenance["test_set_sha256"]
    return KNOWN_ARCHIVES.get(provenance.get("data_sha256") or "")


def recorded_accuracy(model_or_provenance: nn.Module | dict[str, Any], data: CIFAR10,
                      key: str = "test_acc") -> float | None:
    """The accuracy a record holds under ``key`` when it was measured on ``data``'s test set;
    None when it was not, or when the record cannot tell, so that the caller measures it."""
    provenance: dict[str, Any]
    if isinstance(model_or_provenance, dict):
        provenance = model_or_provenance
    elif getattr(model_or_provenance, "quantization", None):
        # A quantized model carries its float source's record (for its training cost); the
        # accuracy in it is the source's, not its own.
        return None
    else:  # a model without a record (no ``.provenance``) has nothing to stand in
        provenance = getattr(model_or_provenance, "provenance", None) or {}
    if key not in provenance:
        return None
    recorded = recorded_test_set(provenance)
    if recorded is None or recorded != test_set_sha256(data):
        return None
    return float(provenance[key])


# --- the classes a model predicted for every test image ----------------------------------------
# A paired test between two models needs each model's answer on every test image, not only its
# accuracy. A record of those answers stands in for the forward passes on the same terms as a
# recorded accuracy: only for the very weights (their sha256) and the very test set (its digest)
# it was made with. ``python -m leanformer evaluate MODEL --data PATH --record-predictions`` writes
# it; each model is one uint8 tensor named by its weights' sha256 in one safetensors file.
# A model may also be recorded in a *form* built from those weights by a fixed recipe (lesson
# 05's 3-bit intx model, say: ``quantize.intx_form``): a ``Form`` is the recipe's name and the
# function that builds it, and the record keys its answers by ``sha256:name``. The name must
# say everything the function depends on.

PREDICTIONS = CHECKPOINTS / "test-predictions.safetensors"

# A form of a model: a name, and the function that builds the model in that form from the float
# model (a quantized copy). The name keys the record, so it names every setting of the function.
Form = tuple[str, Callable[[nn.Module], nn.Module]]


def _record_key(model: nn.Module, form: Form | None) -> str | None:
    digest = getattr(model, "weights_sha256", None)
    if not isinstance(digest, str):  # a model without a weights digest (a quantized one)
        return None
    return digest if form is None else f"{digest}:{form[0]}"


def _read_predictions(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.exists():
        return {}, {}
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def recorded_predictions(model: nn.Module, data: CIFAR10,
                         path: str | os.PathLike = PREDICTIONS,
                         form: Form | None = None) -> torch.Tensor | None:
    """The class a record says ``model`` (in ``form``, if given) predicts for each of ``data``'s
    test images (int64, one per image), when the record was made with these weights, in this
    form, on this test set; else None."""
    key = _record_key(model, form)
    if key is None:
        return None
    tensors, meta = _read_predictions(Path(path))
    if key not in tensors or meta.get("test_set_sha256") != test_set_sha256(data):
        return None
    return tensors[key].long()


def _predict_classes(model: nn.Module, data: CIFAR10, form: Form | None) -> torch.Tensor:
    built = model if form is None else form[1](model)
    return predict(built, data.test_images).argmax(1)


def record_predictions(model: nn.Module, data: CIFAR10, name: str = "",
                       path: str | os.PathLike = PREDICTIONS,
                       form: Form | None = None) -> torch.Tensor:
    """Predict every test image of ``data`` with ``model`` (float32, or built in ``form``) and
    add the classes to the record at ``path`` under the weights' sha256 (and the form's name),
    atomically; returns them. A record made on another test set is refused rather than mixed
    with this one."""
    from safetensors.torch import save_file

    key = _record_key(model, form)
    if key is None:
        raise ValueError("only a model with a weights digest (leanformer.load_model) can be "
                         "recorded; a quantized model is recorded as its float model and a "
                         "form (record_predictions(model, data, form=quantize.intx_form(3)))")
    path = Path(path)
    tensors, meta = _read_predictions(path)
    test_set = test_set_sha256(data)
    if meta.get("test_set_sha256", test_set) != test_set:
        raise ValueError(f"{path} records predictions on another test set "
                         f"({meta['test_set_sha256'][:12]}…, this one is {test_set[:12]}…); "
                         "give another file")
    classes = _predict_classes(model, data, form)
    tensors[key] = classes.to(torch.uint8).contiguous()
    label = name or key[:12]
    meta.update({"test_set_sha256": test_set, key: label if form is None
                 else f"{label}, {form[0]}"})
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return classes


def predicted_classes(model: nn.Module, data: CIFAR10,
                      path: str | os.PathLike = PREDICTIONS,
                      form: Form | None = None) -> torch.Tensor:
    """Each test image's predicted class by ``model`` (in ``form``, if given): from the record
    when it holds these weights in this form on this test set (``recorded_predictions``), else
    computed here."""
    recorded = recorded_predictions(model, data, path, form)
    return recorded if recorded is not None else _predict_classes(model, data, form)
