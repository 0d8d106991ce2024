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

from typing import Any

from torch import nn

from .data import CIFAR10, SUBSET_SHA256
from .files import tensors_sha256

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
    else:  # a model without a record (no ``.provenance``) has nothing to stand in
        provenance = getattr(model_or_provenance, "provenance", None) or {}
    if key not in provenance:
        return None
    recorded = recorded_test_set(provenance)
    if recorded is None or recorded != test_set_sha256(data):
        return None
    return float(provenance[key])
