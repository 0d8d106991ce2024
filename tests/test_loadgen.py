"""MLPerf's load generator drives a stand-in model in each scenario (half-second runs): single-stream
one query at a time, server with dynamic batching held to its largest batch, offline all at once;
and LoadGen's summary is read back, or refused when it is not one."""
import time

import pytest

from leanformer.loadgen import SCENARIOS, read_summary, run_scenario

SERVER_SUMMARY = """
Scenario : Server
Completed samples per second    : 180.70
Result is : INVALID
Scheduled samples per second : 180.74
Min latency (ns)                : 14544
Mean latency (ns)               : 139669
50.00 percentile latency (ns)   : 147403
90.00 percentile latency (ns)   : 167574
99.00 percentile latency (ns)   : 211483
"""


def test_a_summary_is_read_back_in_milliseconds():
    r = read_summary(SERVER_SUMMARY, "server")
    assert not r.valid and r.samples_per_s == 180.70
    assert r.latency_ms["p50"] == pytest.approx(0.147403) and r.latency_ms["p99"] == pytest.approx(0.211483)
    with pytest.raises(ValueError, match="not a LoadGen summary"):
        read_summary("Scenario : Server\nsomething else : 1\n", "server")


def _sleeper(seconds, calls):
    def predict(indices):
        calls.append(list(indices))
        time.sleep(seconds)
    return predict


def test_single_stream_issues_one_query_at_a_time_and_times_it():
    calls = []
    r = run_scenario(_sleeper(0.002, calls), 100, "single-stream", min_duration_ms=300,
                     min_query_count=40)
    assert set(r.batches) == {1} and len(calls) >= 40
    assert all(0 <= i < 100 for c in calls for i in c)
    assert 2.0 <= r.latency_ms["p50"] < 50 and r.latency_ms["p90"] >= r.latency_ms["p50"]
    assert r.samples_per_s == pytest.approx(1000 / r.latency_ms["mean"], rel=0.2)


def test_server_batches_queries_that_arrive_together_up_to_the_largest_batch():
    calls = []
    r = run_scenario(_sleeper(0.004, calls), 100, "server", target_qps=400, max_batch=6,
                     max_wait_ms=2, min_duration_ms=500, min_query_count=100)
    assert max(r.batches) <= 6 and max(r.batches) > 1  # 400 a second against 4 ms a batch
    assert sum(r.batches) == sum(len(c) for c in calls) >= 100
    assert r.samples_per_s > 0.5 * 400 and r.latency_ms["p99"] < 100


def test_offline_hands_over_everything_at_once_in_batches():
    calls = []
    r = run_scenario(_sleeper(0.001, calls), 100, "offline", target_qps=200, max_batch=32,
                     min_duration_ms=300, min_query_count=100)
    assert max(r.batches) == 32 and sum(r.batches) >= 100


def test_bad_arguments_and_a_failing_model_are_reported():
    with pytest.raises(ValueError, match="scenario must be one of"):
        run_scenario(lambda i: None, 10, "multi-stream")
    assert "multi-stream" not in SCENARIOS

    def broken(indices):
        raise KeyError("no such image")

    with pytest.raises(RuntimeError, match="predict failed during the offline run"):
        run_scenario(broken, 10, "offline", min_duration_ms=10, min_query_count=10)
