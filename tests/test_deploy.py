"""Lesson 09's measurements: the rate sweep finds the rate a system of known speed can hold,
every format is scored against eager PyTorch on the same images, and the served record is read
back only if it is one."""
import json
import time

import pytest
import torch
from conftest import small, tiny_vit

from leanformer.config import CHECKPOINTS, SERVING_RECORD
from leanformer.deploy import SERVING_FORMATS, measure_formats, rate_sweep, read_serving
from leanformer.export import FORMATS
from leanformer.files import sha256_file
from leanformer import record as records


def test_the_sweep_stops_where_a_one_at_a_time_system_saturates():
    # 4 ms an answer, one at a time: at most 250 requests a second, whatever arrives.
    def slow(indices):
        time.sleep(0.004 * len(indices))

    sweep = rate_sweep(slow, 100, max_batch=1, max_wait_ms=0, start_qps=60, step=1.6,
                       bound_ms=50, duration_ms=600, warmup_ms=0)
    rates = [p["target_qps"] for p in sweep["points"]]
    assert rates[:2] == [60, 96] and len(rates) >= 3
    failed = sweep["points"][-2:]  # the last rate, failed twice: too slow or too late
    assert [p["retry"] for p in failed] == [False, True] and failed[0]["target_qps"] == \
        failed[1]["target_qps"]
    assert all(p["p99_ms"] > 50 or p["completed_qps"] < 0.95 * p["issued_qps"] for p in failed)
    assert 60 <= sweep["best_qps"] <= 250
    # Batching lets the same 4 ms call answer many requests: a much higher rate holds.
    def batched(indices):
        time.sleep(0.004)

    faster = rate_sweep(batched, 100, max_batch=32, max_wait_ms=2, start_qps=60, step=1.6,
                        bound_ms=50, duration_ms=600, max_points=6, warmup_ms=0)
    assert faster["best_qps"] > 1.5 * sweep["best_qps"]
    assert max(p["largest_batch"] for p in faster["points"]) > 1


def test_every_format_is_scored_on_the_same_images_as_eager_pytorch(tmp_path, subset,
                                                                     monkeypatch):
    # A fresh process per file is test_export's; here the scores and timings are under test.
    monkeypatch.setattr("leanformer.deploy.cold_start", lambda *a: {"load_s": 0.0})
    data = small(subset, n_train=64, n_test=200)
    model = tiny_vit(seed=2)
    rows = measure_formats(model, data, tmp_path, data.train_sample(64)[0].float() / 255,
                           formats=("exported", "onnx"), rounds=1)
    assert list(rows) == ["eager", "exported", "onnx"]
    for fmt, row in rows.items():
        assert len(row["classes"]) == 200
        assert row["agreement"] >= 0.99 and row["max_logit_diff"] < 1e-4, fmt
        assert row["latency_ms"]["p90"] >= row["latency_ms"]["p50"] > 0
        assert row["images_per_s"]["median"] > 0
    assert rows["eager"]["agreement"] == 1.0 and rows["eager"]["max_logit_diff"] == 0
    assert rows["onnx"]["file_bytes"] > 0 and "cold_start" in rows["onnx"]


def test_a_record_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"format": "leanformer-ledger/1"}))
    with pytest.raises(ValueError, match="not a serving record"):
        read_serving(path)


def test_the_shipped_serving_record_is_whole_and_of_the_shipped_models(subset):
    record = read_serving(SERVING_RECORD)
    assert record["test_set_sha256"] == records.test_set_sha256(subset)  # the same images
    for key in ("served", "edge"):
        assert sha256_file(CHECKPOINTS / record[key]["file"]) == record[key]["sha256"], key
    assert set(record["formats"]) == {"eager", *FORMATS}
    labels = subset.test_labels  # the shipped subset holds the same 10,000 test images
    for fmt, row in {**record["formats"], **record["edge_formats"]}.items():
        classes = torch.tensor(row["classes"])
        assert len(classes) == record["test_images"] == len(labels), fmt
        assert (classes == labels).float().mean().item() == pytest.approx(row["accuracy"]), fmt
    assert record["serving_format"] in SERVING_FORMATS
    names = [t["name"] for t in record["load"]]
    assert names == ["eager PyTorch", record["serving_format"]]
    for t in record["load"]:
        for sweep in t["in_process"] + t["http"]:
            held = [p["completed_qps"] for p in sweep["points"]
                    if p["p99_ms"] <= sweep["bound_ms"]
                    and p["completed_qps"] >= 0.95 * p["issued_qps"]]
            assert sweep["best_qps"] == max(held, default=0.0)
