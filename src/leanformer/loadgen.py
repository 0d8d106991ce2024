"""MLPerf's load scenarios, driven by MLPerf's own load generator (``mlperf_loadgen``, the
``mlcommons-loadgen`` package): lesson 09 measures a served model the way the benchmark does.

LoadGen plays the clients. It decides when each query arrives and which test image it asks
for, hands the queries to a *system under test* (SUT) through a callback, and times every answer
from the moment it issued the query. Three scenarios:

* **single-stream**: one query at a time, the next issued when the previous is answered; the
  measure is the 90th percentile of the latency (a phone's camera, one image after another);
* **server**: queries arrive at random (a Poisson process) at a target rate; the measure is the
  highest rate whose 99th percentile latency stays under a stated bound (a web service);
* **offline**: every query at once; the measure is throughput (a batch job).

``run_scenario`` builds the SUT around ``predict``, a function that answers a list of test-image
indices at once. A worker thread takes what is waiting, up to ``max_batch`` (waiting at most
``max_wait_ms`` for more), calls ``predict`` and reports the answers, so that LoadGen's issuing
thread never waits for the model. LoadGen writes its logs into a folder (a temporary one unless
given); ``run_scenario`` reads the summary back as a ``LoadResult``. A run shorter than the
scenario's minimum duration or query count, or one that misses the latency bound, LoadGen calls
INVALID; ``LoadResult.valid`` says which, and the lesson reports it rather than hiding it.
"""
from __future__ import annotations

import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = ("single-stream", "server", "offline")


@dataclass
class LoadResult:
    """What one LoadGen run measured, read from its ``mlperf_log_summary.txt``."""

    scenario: str
    valid: bool
    samples_per_s: float  # completed (server), measured (offline), 1 / latency (single-stream)
    latency_ms: dict[str, float]  # "min", "mean", "p50", "p90", "p95", "p99", "max"
    batches: list[int] = field(default_factory=list)  # the size of every batch the SUT ran
    summary: str = ""
    scheduled_per_s: float = 0.0  # server: the rate LoadGen actually issued (Poisson draws)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "valid": self.valid, "samples_per_s": self.samples_per_s,
                "scheduled_per_s": self.scheduled_per_s,
                "latency_ms": self.latency_ms, "batches": len(self.batches),
                "largest_batch": max(self.batches, default=0)}


_LATENCY = {"Min latency (ns)": "min", "Mean latency (ns)": "mean", "Max latency (ns)": "max",
            "50.00 percentile latency (ns)": "p50", "90.00 percentile latency (ns)": "p90",
            "95.00 percentile latency (ns)": "p95", "99.00 percentile latency (ns)": "p99"}


def read_summary(text: str, scenario: str) -> LoadResult:
    """A ``LoadResult`` from the text of LoadGen's ``mlperf_log_summary.txt``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            key, _, value = line.partition(":")
            values.setdefault(key.strip(), value.strip())
    # Server: "Completed samples per second"; offline: "Samples per second"; single-stream:
    # "QPS w/o loadgen overhead" (one sample a query).
    rate_key = next((k for k in values if re.fullmatch(
        r"(Completed samples|Samples) per second|QPS w/o loadgen overhead", k)), None)
    if rate_key is None or "Result is" not in values:
        raise ValueError("not a LoadGen summary: no samples-per-second or 'Result is' line")
    latency = {name: float(values[k]) / 1e6 for k, name in _LATENCY.items() if k in values}
    return LoadResult(scenario, values["Result is"] == "VALID", float(values[rate_key]), latency,
                      summary=text,
                      scheduled_per_s=float(values.get("Scheduled samples per second", 0)))


def run_scenario(predict: Callable[[Sequence[int]], object], n_samples: int, scenario: str, *,
                 target_qps: float = 100.0, latency_bound_ms: float = 100.0,
                 max_batch: int = 1, max_wait_ms: float = 0.0, min_duration_ms: int = 1000,
                 min_query_count: int = 100, seed: int = 0, clients: int = 0,
                 folder: str | Path | None = None) -> LoadResult:
    """Drive ``predict`` (answers a list of test-image indices) with LoadGen in ``scenario``:
    ``server`` at ``target_qps`` queries a second, with ``latency_bound_ms`` as the bound its
    99th percentile is held to; ``single-stream`` and ``offline`` as MLPerf defines them.
    Runs last at least ``min_duration_ms`` and ``min_query_count`` queries (MLPerf's own
    minimums are 10 minutes and more; a shorter run is reported INVALID for that reason alone
    only where LoadGen's early-stopping rule cannot vouch for it).

    ``clients`` > 0 replaces the batching worker by that many threads, each sending one query
    at a time as soon as it is issued (``predict`` gets one index): the SUT of a server that
    batches for itself, such as ``python -m leanformer serve`` behind ``http_predict``."""
    import mlperf_loadgen as lg

    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, got {scenario!r}")
    if max_batch < 1 or max_wait_ms < 0:
        raise ValueError(f"max_batch must be at least 1 and max_wait_ms at least 0; got "
                         f"{max_batch}, {max_wait_ms}")
    waiting: queue.Queue[Any] = queue.Queue()
    batches: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            first = waiting.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + max_wait_ms / 1000
            while len(batch) < max_batch:
                try:
                    item = waiting.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    waiting.put(None)  # let the loop end after this batch
                    break
                batch.append(item)
            try:
                predict([q.index for q in batch])
            except BaseException as e:  # noqa: BLE001 - reported after the run
                errors.append(e)
            batches.append(len(batch))
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in batch])

    def issue(samples: list[Any]) -> None:
        for q in samples:
            waiting.put(q)

    def one_by_one() -> None:
        while (q := waiting.get()) is not None:
            try:
                predict([q.index])
            except BaseException as e:  # noqa: BLE001 - reported after the run
                errors.append(e)
            batches.append(1)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0)])
        waiting.put(None)  # the next thread stops too

    threads = [threading.Thread(target=one_by_one if clients else worker, name=f"sut-{i}",
                                daemon=True) for i in range(max(1, clients))]
    for thread in threads:
        thread.start()
    settings = lg.TestSettings()
    settings.scenario = {"single-stream": lg.TestScenario.SingleStream,
                         "server": lg.TestScenario.Server,
                         "offline": lg.TestScenario.Offline}[scenario]
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = min_duration_ms
    settings.min_query_count = min_query_count
    settings.server_target_qps = target_qps
    settings.server_target_latency_ns = int(latency_bound_ms * 1e6)
    settings.offline_expected_qps = target_qps
    settings.qsl_rng_seed = settings.sample_index_rng_seed = settings.schedule_rng_seed = seed
    log_settings = lg.LogSettings()
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        out = Path(folder or tmp)
        out.mkdir(parents=True, exist_ok=True)
        log_settings.log_output.outdir = str(out)
        log_settings.log_output.copy_summary_to_stdout = False
        sut = lg.ConstructSUT(issue, lambda: None)
        qsl = lg.ConstructQSL(n_samples, n_samples, lambda s: None, lambda s: None)
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        finally:
            waiting.put(None)
            for thread in threads:
                thread.join()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        if errors:
            raise RuntimeError(f"predict failed during the {scenario} run") from errors[0]
        result = read_summary((out / "mlperf_log_summary.txt").read_text(), scenario)
    result.batches = batches
    return result


def http_predict(url: str, bodies: Sequence[bytes], content_type: str = "image/png",
                 timeout: float = 60.0) -> Callable[[Sequence[int]], list[int]]:
    """A ``predict`` for ``run_scenario(..., clients=N)`` that POSTs test image ``i`` (``bodies[i]``)
    to ``url`` (``http://host:port/predict``) for each index and returns the answers' classes.
    A refusal (503) or any other status raises, so that the run reports it."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"give the server's address as http://host:port/predict, got {url!r}")
    host, port, path = parts.hostname, parts.port, parts.path or "/predict"
    local = threading.local()  # one kept-alive connection per client thread

    def predict(indices: Sequence[int]) -> list[int]:
        answers = []
        for i in indices:
            if getattr(local, "conn", None) is None:
                local.conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                local.conn.request("POST", path, body=bodies[i],
                                   headers={"Content-Type": content_type})
                response = local.conn.getresponse()
                reply = response.read()
            except (OSError, http.client.HTTPException):
                local.conn.close()
                local.conn = None
                raise
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}: {reply[:200]!r}")
            answers.append(int(json.loads(reply)["index"]))
        return answers
    return predict
