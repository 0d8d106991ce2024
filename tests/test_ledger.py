import json

import pytest
import torch

from conftest import small, tiny_vit
from leanformer import checkpoint, ledger
from leanformer.evaluate import predict
from leanformer.measure import ratio_interval


def test_lineage_counts_each_run_once_start_and_teacher_included():
    record = json.loads((ledger.CHECKPOINTS / "pruned" / "pruned-2h128u-taylor-kd.json").read_text())
    runs = ledger.lineage(record)
    reference = json.loads((ledger.CHECKPOINTS / "reference.json").read_text())
    # its own fine-tune, then the reference: its start (through the pruning) and its teacher
    assert [r["weights_sha256"] for r in runs] == [record["weights_sha256"],
                                                    reference["weights_sha256"]]
    assert runs[0]["seconds"] == record["train_wall_time_undisturbed_s"]


def test_lineage_follows_a_teacher_of_another_family():
    record = json.loads((ledger.CHECKPOINTS / "distill" / "vit-kd-scratch.json").read_text())
    teacher = json.loads((ledger.CHECKPOINTS / "distill" / "teacher-cnn.json").read_text())
    runs = ledger.lineage(record)
    assert [r["weights_sha256"] for r in runs] == [record["weights_sha256"], teacher["weights_sha256"]]


@pytest.fixture(scope="module")
def measured(subset, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    entries = (ledger.Entry("a", "a.safetensors", "test"),
               ledger.Entry("b", "b.safetensors", "test"))
    for seed, e in enumerate(entries):
        checkpoint.save_model(tiny_vit(seed), root / e.file)
    data = small(subset, n_train=512, n_test=500)
    record, predictions = ledger.measure_ledger(data, entries, forms=("fp32", "bf16", "int8"),
                                                rounds=2, calibration_images=64, root=root)
    return data, root, record, predictions


def test_the_ledger_scores_and_times_every_form_side_by_side(measured):
    data, root, record, predictions = measured
    rows = record["rows"]
    assert list(rows) == [ledger.row_name(m, f) for m in "ab" for f in ledger.FORMS]
    assert record["baseline"] == "reference, float32"
    model = checkpoint.load_model(root / "a.safetensors")
    assert torch.equal(predictions["a, float32"], predict(model, data.test_images).argmax(1))
    for name, row in rows.items():
        cost = row["cost"]
        assert cost["test_acc"] == pytest.approx(
            (predictions[name] == data.test_labels).float().mean().item())
        assert cost["test_images"] == len(data.test_labels) == len(predictions[name])
        assert len(cost["throughput"]["samples"]) == len(rows["a, float32"]["cost"]["throughput"]["samples"])
    # raw bytes, like with like: bf16 about halves float32 (a few buffers stay); int8 keeps biases, norms and scales in float
    fp32, bf16, int8 = (rows[f"a, {ledger.FORM_NAMES[f]}"]["tensor_bytes"] for f in ledger.FORMS)
    assert 0.45 * fp32 < bf16 < 0.55 * fp32 and int8 < 0.7 * fp32
    # int8 and bf16 stay close to float32 on most images of an untrained model
    agree = (predictions["a, PT2E int8, compiled"] == predictions["a, float32"]).float().mean()
    assert agree > 0.9
    from leanformer.measure import Cost
    speed = {n: Cost.from_dict(rows[n]["cost"]).throughput for n in ("a, float32", "b, float32")}
    assert ratio_interval(speed["b, float32"], speed["a, float32"])[0] > 0


def test_a_written_ledger_reads_back_and_a_mismatched_one_is_refused(measured, tmp_path):
    _, _, record, predictions = measured
    path = ledger.write_ledger(record, predictions, tmp_path / "ledger.json")
    back, preds = ledger.read_ledger(path)
    assert back == json.loads(json.dumps(record))
    assert all(torch.equal(preds[n], predictions[n].long()) for n in predictions)
    ledger.write_ledger(record, {"x": predictions["a, float32"]}, tmp_path / "odd.json")
    (tmp_path / "odd.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not hold the predictions"):
        ledger.read_ledger(tmp_path / "odd.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="python -m leanformer ledger"):
        ledger.read_ledger(tmp_path / "other.json")


def test_missing_models_are_named_with_the_way_to_make_them(subset, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints/README.md"):
        ledger.measure_ledger(subset, (ledger.Entry("x", "nope.safetensors", ""),), root=tmp_path)


def test_the_shipped_ledger_holds_every_entry_in_every_form_on_the_shipped_weights(subset):
    from leanformer.files import sha256_file
    from leanformer.record import predicted_classes, test_set_sha256

    record, predictions = ledger.read_ledger()
    assert list(record["rows"]) == [ledger.row_name(e.name, f) for e in ledger.ENTRIES
                                    for f in ledger.FORMS]
    assert record["test_set_sha256"] == test_set_sha256(subset)  # the subset's test images
    assert record["command"].startswith("python -m leanformer ledger")
    for entry in ledger.ENTRIES:
        row = record["rows"][ledger.row_name(entry.name, "fp32")]
        assert row["weights_sha256"] == sha256_file(ledger.CHECKPOINTS / entry.file), entry.file
        assert row["training"] and row["training"][0]["seconds"] > 0
    # the float32 predictions are the model's own (from the record of test predictions, or
    # a forward pass), and every row is well above chance
    reference = checkpoint.load_model(ledger.CHECKPOINTS / ledger.ENTRIES[0].file)
    assert torch.equal(predictions[record["baseline"]], predicted_classes(reference, subset))
    for name, p in predictions.items():
        assert (p == subset.test_labels).float().mean() > 0.5, name
