import dataclasses

from leanformer import record
from leanformer.record import JPEG_Q75_TEST_SET, KNOWN_ARCHIVES, recorded_accuracy, recorded_test_set



def test_the_shipped_subset_holds_the_jpeg_test_set_its_archive_is_known_for(subset):
    from leanformer.data import SUBSET_PATH, sha256_file

    assert record.test_set_sha256(subset) == JPEG_Q75_TEST_SET
    assert KNOWN_ARCHIVES[sha256_file(SUBSET_PATH)] == JPEG_Q75_TEST_SET


def test_a_record_is_reused_only_on_the_very_test_images(subset):
    rec = {"test_acc": 0.8721, "data_sha256": next(iter(KNOWN_ARCHIVES))}
    assert recorded_accuracy(rec, subset) == 0.8721
    # the same number of images, one pixel changed (the official pixels differ from the JPEG copy)
    images = subset.test_images.clone()
    images[0, 0, 0, 0] ^= 1
    other = dataclasses.replace(subset, test_images=images)
    assert recorded_accuracy(rec, other) is None
    # a record that names no known test set is not trusted either
    assert recorded_accuracy({"test_acc": 0.8721, "data_sha256": "0" * 64}, subset) is None
    assert recorded_accuracy({"test_acc": 0.8721}, subset) is None
    assert recorded_accuracy({"data_sha256": next(iter(KNOWN_ARCHIVES))}, subset) is None


def test_a_recorded_test_set_digest_wins_over_the_archive(subset):
    rec = {"test_acc": 0.5, "test_set_sha256": "f" * 64, "data_sha256": next(iter(KNOWN_ARCHIVES))}
    assert recorded_test_set(rec) == "f" * 64
    assert recorded_accuracy(rec, subset) is None
    rec["test_set_sha256"] = record.test_set_sha256(subset)
    assert recorded_accuracy(rec, subset) == 0.5


def test_every_shipped_model_names_its_test_set():
    """The shipped records either carry the test set's digest or an archive the course knows."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    unnamed = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.json"))
               if "test_acc" in json.loads(p.read_text()) and recorded_test_set(json.loads(p.read_text())) is None]
    assert unnamed == [], unnamed


def test_the_digest_sees_labels_too(subset):
    labels = subset.test_labels.clone()
    labels[0] = (labels[0] + 1) % 10
    assert record.test_set_sha256(dataclasses.replace(subset, test_labels=labels)) != record.test_set_sha256(subset)


def small(subset, n=64, flip=False):
    """The subset with its first ``n`` test images (one pixel changed with ``flip``)."""
    images = subset.test_images[:n].clone()
    if flip:
        images[0, 0, 0, 0] ^= 1
    return dataclasses.replace(subset, test_images=images, test_labels=subset.test_labels[:n])


def test_recorded_predictions_stand_in_only_for_the_same_weights_and_test_set(
        subset, make_tiny_vit, tmp_path):
    import pytest
    import torch

    from leanformer.evaluate import predict
    from leanformer.record import predicted_classes, record_predictions, recorded_predictions

    path, data, model = tmp_path / "p.safetensors", small(subset), make_tiny_vit(0)
    assert recorded_predictions(model, data, path) is None  # no record yet
    classes = record_predictions(model, data, name="tiny", path=path)
    assert torch.equal(classes, predict(model, data.test_images).argmax(1))
    assert torch.equal(recorded_predictions(model, data, path), classes)
    assert recorded_predictions(model, small(subset, flip=True), path) is None
    other = make_tiny_vit(1)  # other weights: computed, not read
    assert recorded_predictions(other, data, path) is None
    assert torch.equal(predicted_classes(other, data, path),
                       predict(other, data.test_images).argmax(1))
    record_predictions(other, data, path=path)  # a second model joins the first
    assert torch.equal(recorded_predictions(model, data, path), classes)
    with pytest.raises(ValueError, match="another test set"):
        record_predictions(model, small(subset, flip=True), path=path)
    assert torch.equal(recorded_predictions(model, data, path), classes)  # file untouched


def test_a_form_is_recorded_apart_from_the_float_model(subset, make_tiny_vit, tmp_path):
    """A model in a form (a quantized copy built by a named recipe) is keyed by the weights and
    the form's name: its answers never stand in for the float model's, nor for another form's."""
    import torch

    from leanformer import quantize as Q
    from leanformer.evaluate import predict
    from leanformer.record import predicted_classes, record_predictions, recorded_predictions

    path, data, model = tmp_path / "p.safetensors", small(subset), make_tiny_vit(0)
    w2, w8 = Q.intx_form(2, None), Q.intx_form(8, None)
    assert w2[0] == "intx-w2-per-row-a8" and Q.intx_form(4, 32, False)[0] == "intx-w4-g32"
    floats = record_predictions(model, data, name="tiny", path=path)
    assert recorded_predictions(model, data, path, w2) is None  # the float answers are not its
    two_bit = record_predictions(model, data, name="tiny", path=path, form=w2)
    assert torch.equal(two_bit, predict(Q.intx_quantize(model, 2, None), data.test_images)
                       .argmax(1))
    assert not torch.equal(two_bit, floats)  # 2-bit weights change some answers: a real form
    assert torch.equal(recorded_predictions(model, data, path, w2), two_bit)
    assert torch.equal(recorded_predictions(model, data, path), floats)  # both kept
    assert recorded_predictions(model, data, path, w8) is None
    assert torch.equal(predicted_classes(model, data, path, w8),
                       predict(Q.intx_quantize(model, 8, None), data.test_images).argmax(1))
    assert recorded_predictions(make_tiny_vit(1), data, path, w2) is None  # other weights


def test_the_shipped_predictions_are_the_models_own(subset):
    """The shipped record holds the reference's predictions on the JPEG test set, and they are
    what a forward pass gives today (on a sample of 500 images: a near tie may flip between
    processors, so at most one of them differs)."""
    from leanformer.config import REFERENCE
    from leanformer.evaluate import predict
    from leanformer.record import recorded_predictions
    from leanformer import load_model

    reference = load_model(REFERENCE)
    recorded = recorded_predictions(reference, subset)
    assert recorded is not None and len(recorded) == 10_000
    fresh = predict(reference, subset.test_images[:500]).argmax(1)
    assert (fresh != recorded[:500]).sum() <= 1


def test_a_quantized_model_does_not_borrow_its_float_sources_accuracy(subset, make_tiny_vit):
    model = make_tiny_vit(0)
    model.provenance = {"test_acc": 0.8625, "test_set_sha256": record.test_set_sha256(subset)}
    assert recorded_accuracy(model, subset) == 0.8625
    model.quantization = {"path": "pt2e", "kind": "int8-static"}  # what quantize_model sets
    assert recorded_accuracy(model, subset) is None
