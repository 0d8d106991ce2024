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


def test_every_shipped_model_names_its_test_set_but_the_sparse_one():
    """The shipped records either carry the test set's digest or an archive the course knows."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    unnamed = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.json"))
               if "test_acc" in json.loads(p.read_text()) and recorded_test_set(json.loads(p.read_text())) is None]
    assert unnamed == ["pruned/sparse-50.json"], unnamed


def test_the_digest_sees_labels_too(subset):
    labels = subset.test_labels.clone()
    labels[0] = (labels[0] + 1) % 10
    assert record.test_set_sha256(dataclasses.replace(subset, test_labels=labels)) != record.test_set_sha256(subset)
