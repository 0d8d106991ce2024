"""Lesson 09's measurements: a model from file to answered request, and what each step costs.

``python -m leanformer serving --data PATH`` runs them all on one machine in one run and writes
``checkpoints/serving.json``, which the lesson reads in quick mode:

``measure_formats``
    the served model exported to every ``export.FORMATS`` file, each loaded back and scored on
    every test image (accuracy, top-1 agreement with eager PyTorch, largest logit difference),
    its file size, its cold start in a fresh process, and batch-1 latency and batch-256
    throughput, timed side by side with the same thread count.
``rate_sweep``
    MLPerf LoadGen's server scenario at rising request rates for one batching setting: the
    99th-percentile latency at each rate, and the highest rate that keeps it under the bound.
``batching_ceiling``
    the time per image at batch 1 and at batch 32: the most batching can gain for a model.
``serving_process``
    ``python -m leanformer serve`` started on a free port (a context manager), so that the
    same sweeps run through HTTP.
``measure_serving``
    all of it: the formats; for eager PyTorch and the exported file the server runs, the three
    scenarios in process and the batching sweeps in process and through HTTP; the money; and
    the edge (the smallest model on one thread).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_model
from .config import CHECKPOINTS, SERVING_RECORD
from .data import CIFAR10
from .evaluate import predict
from .export import FORMATS, cold_start, export_model, file_bytes, load_runner
from .files import sha256_file
from .loadgen import LoadResult, http_predict, run_scenario
from .machine import machine_info
from .measure.timing import Spread, time_side_by_side
from .money import closest_instance, load_prices
from .record import test_set_sha256

FORMAT = "leanformer-serving/1"
SERVED = "stacks/vit-kd-1h128u.safetensors"  # the ledger's distilled ViT, pruned to 1h128u
EDGE = "stacks/vit-kd-1h128u-2b.safetensors"  # its two-block cut: the fewest FLOPs shipped
BOUND_MS = 100.0  # the server scenario's bound on the 99th-percentile latency
# Client threads of the HTTP runs. Each waits for its answer, so by Little's law they offer at
# most CLIENTS / latency requests a second: 64 at 20 ms is 3,200, above what two cores serve.
CLIENTS = 64
# (largest batch, longest wait in ms): one image at a time, then dynamic batching.
BATCHING = ((1, 0.0), (8, 2.0), (32, 5.0))
SERVING_FORMATS = ("aoti", "onnx", "onnx-int8-static")  # any batch size, no compiling at start


def _timing(latency: Spread, throughput: Spread) -> dict[str, Any]:
    return {"latency_ms": {"p50": latency.percentile(50),
                           "p90": latency.percentile(90), "n": latency.n,
                           "samples": list(latency.samples)},
            "images_per_s": {"median": throughput.median, "min": throughput.min,
                             "max": throughput.max, "samples": list(throughput.samples)}}


def _logits(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
            batch_size: int = 256) -> torch.Tensor:
    out = [run(images[i:i + batch_size].float().div(255)) for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def measure_formats(model: nn.Module, data: CIFAR10, folder: Path, calibration: torch.Tensor,
                    formats: Sequence[str] = FORMATS, rounds: int = 5,
                    cold_threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Export ``model`` to every format into ``folder`` and measure each against eager PyTorch
    (see the module's docstring). ``calibration``: float training images for the int8 formats.
    Returns {format: row}, with "eager" first (the model itself, its .safetensors size)."""
    from .quantize import pt2e_quantize

    threads = torch.get_num_threads()
    eager = predict(model, data.test_images)
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for fmt in ("eager", *formats):
        if fmt == "eager":
            row: dict[str, Any] = {"file_bytes": None, "export_s": 0.0}
            runners[fmt] = model
        else:
            path = folder / f"model-{fmt}{'.onnx' if fmt.startswith('onnx') else '.pt2'}"
            t0 = time.perf_counter()
            source = pt2e_quantize(model, calibration) if fmt == "pt2e-int8" else model
            export_model(source, path, fmt, calibration_images=calibration)
            export_s = time.perf_counter() - t0
            runner = load_runner(path, fmt)
            runners[fmt] = runner
            row = {"file": path.name, "file_bytes": file_bytes(path), "export_s": export_s,
                   "load_s": runner.load_s,
                   "cold_start": cold_start(path, cold_threads or threads, fmt)}
        with torch.inference_mode():
            logits = eager if fmt == "eager" else _logits(runners[fmt], data.test_images)
        classes = logits.argmax(1)
        row.update(format=fmt,
                   accuracy=(classes == data.test_labels).float().mean().item(),
                   agreement=(classes == eager.argmax(1)).float().mean().item(),
                   max_logit_diff=(logits - eager).abs().max().item(),
                   classes=classes.tolist())
        rows[fmt] = row
    one, many = torch.rand(1, 3, 32, 32), torch.rand(256, 3, 32, 32)
    runs = {fmt: ((lambda r=r: r(one)), (lambda r=r: r(many))) for fmt, r in runners.items()}
    with torch.inference_mode():
        timed = time_side_by_side(runs, batch_size=256, rounds=rounds, latency_calls=40,
                                  throughput_calls=2, warmup=5)
    for fmt, (latency, throughput) in timed.items():
        rows[fmt].update(_timing(latency, throughput), threads=threads)
    return rows


def _holds(point: dict[str, Any], bound_ms: float) -> bool:
    """A rate is held when the 99th percentile stays within the bound and the system keeps up:
    it completes at least 95% of the rate LoadGen actually issued (the Poisson draws of a short
    run land a few percent off the target either way)."""
    return point["p99_ms"] <= bound_ms and point["completed_qps"] >= 0.95 * point["issued_qps"]


def rate_sweep(predict_indices: Callable[[Sequence[int]], object], n_samples: int, *,
               max_batch: int, max_wait_ms: float, start_qps: float = 50.0, step: float = 1.4,
               bound_ms: float = BOUND_MS, duration_ms: int = 3000, clients: int = 0,
               max_points: int = 14, warmup_ms: int = 1000) -> dict[str, Any]:
    """LoadGen's server scenario at ``start_qps``, then ``step`` times faster, until the 99th
    percentile latency passes ``bound_ms`` or the system no longer keeps up (``_holds``) twice
    at the same rate (``max_points`` rates at most). A first unrecorded run of ``warmup_ms`` at
    ``start_qps`` opens the connections and warms the model; a rate that fails is run once
    more, so that one stall on a shared machine does not end the sweep. Returns {"points":
    [{target_qps, issued_qps, completed_qps, p99_ms, p50_ms, valid, largest_batch, retry}],
    "best_qps": the highest completed rate within the bound (0 if none)}."""
    def run(rate: float, ms: int) -> LoadResult:
        return run_scenario(predict_indices, n_samples, "server", target_qps=rate,
                            latency_bound_ms=bound_ms, max_batch=max_batch,
                            max_wait_ms=max_wait_ms, min_duration_ms=ms,
                            min_query_count=int(rate * ms / 1000), clients=clients)

    if warmup_ms:
        run(start_qps, warmup_ms)
    points: list[dict[str, Any]] = []
    rate = start_qps
    for _ in range(max_points):
        for retry in (False, True):
            result = run(rate, duration_ms)
            point = {"target_qps": rate, "issued_qps": result.scheduled_per_s,
                     "completed_qps": result.samples_per_s,
                     "p99_ms": result.latency_ms["p99"], "p50_ms": result.latency_ms["p50"],
                     "valid": result.valid, "largest_batch": max(result.batches, default=0),
                     "retry": retry}
            points.append(point)
            if _holds(point, bound_ms):
                break
        else:
            break  # the rate failed twice
        rate *= step
    within = [p["completed_qps"] for p in points if _holds(p, bound_ms)]
    return {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "bound_ms": bound_ms,
            "duration_ms": duration_ms, "points": points, "best_qps": max(within, default=0.0)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving_process(model_file: str | Path, max_batch: int = 32, max_wait_ms: float = 2.0,
                    threads: int = 1, max_queue: int = 1024,
                    timeout_s: float = 120.0) -> Iterator[str]:
    """``python -m leanformer serve model_file`` on a free port, yielding its predict URL once
    its health endpoint answers; stopped (SIGTERM, then waited for) on leaving the block."""
    port = _free_port()
    command = [sys.executable, "-m", "leanformer", "serve", str(model_file), "--port", str(port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               "--max-queue", str(max_queue), "--threads", str(threads)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server stopped before it answered:\n"
                                   f"{proc.stderr.read()[-2000:] if proc.stderr else ''}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server on port {port} did not answer within "
                                       f"{timeout_s:.0f} s") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/predict"
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def post(url: str, body: bytes, content_type: str = "image/png",
         timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POST one request to ``url``: (HTTP status, the JSON reply)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:  # a 4xx or 5xx answer still carries its JSON
        return e.code, json.loads(e.read() or b"{}")


def health(url: str) -> dict[str, Any]:
    """What the server at ``url`` (its predict URL) says about itself: ``GET /health``."""
    with urllib.request.urlopen(url.rsplit("/", 1)[0] + "/health", timeout=10) as response:
        return dict(json.loads(response.read()))


def send_all(url: str, requests: Sequence[tuple[bytes, str]],
             concurrency: int = 32) -> list[tuple[int, dict[str, Any]]]:
    """Send every (body, content type) in ``requests`` from ``concurrency`` client threads at
    once; the answers in the order of ``requests``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda r: post(url, *r), requests))


def in_flight(rate_per_s: float, latency_ms: float) -> float:
    """Little's law: the requests in the system at once, on average, when they arrive at
    ``rate_per_s`` and each stays ``latency_ms``. Clients that each wait for their answer
    before sending again must number at least this many to offer that rate."""
    return rate_per_s * latency_ms / 1000


def png_bodies(images: torch.Tensor) -> list[bytes]:
    """Each uint8 image (3, 32, 32) as the bytes of a PNG file: the requests of the HTTP runs."""
    from PIL import Image

    bodies = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    return bodies


def _scenario(result: LoadResult) -> dict[str, Any]:
    return {**result.to_dict(), "summary": result.summary}


def batching_ceiling(run: Callable[[torch.Tensor], object], batch: int = 32,
                     calls: int = 30) -> dict[str, float]:
    """Milliseconds per image at batch 1 and at ``batch`` (medians over ``calls`` calls, taken
    in turns): their ratio is the most that batching can gain for this model on this thread
    count, whatever the server does around it."""
    one, many = torch.rand(1, 3, 32, 32), torch.rand(batch, 3, 32, 32)
    t1, tb = [], []
    with torch.inference_mode():
        for _ in range(3):
            run(one), run(many)
        for _ in range(calls):
            t0 = time.perf_counter()
            run(one)
            t1.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            run(many)
            tb.append((time.perf_counter() - t0) * 1000 / batch)
    ms1, msb = float(torch.tensor(t1).median()), float(torch.tensor(tb).median())
    return {"ms_per_image_batch_1": ms1, f"ms_per_image_batch_{batch}": msb,
            "ceiling": ms1 / msb, "batch": batch}


def _load_tests(name: str, run: Callable[[torch.Tensor], torch.Tensor], serve_file: Path,
                data: CIFAR10, bodies: list[bytes], batching: Sequence[tuple[int, float]],
                duration_ms: int, http: bool) -> dict[str, Any]:
    """The three scenarios in process, and the server scenario for every batching setting in
    process and through HTTP (``python -m leanformer serve serve_file``, ``CLIENTS`` client
    threads), on one thread."""
    images = data.test_images.float().div(255)
    n = len(images)

    def answer(indices: Sequence[int]) -> object:
        with torch.inference_mode():
            return run(images[list(indices)]).argmax(1)

    out: dict[str, Any] = {"name": name, "file": serve_file.name,
                           "ceiling": batching_ceiling(run)}
    # Offline lets the system choose its batch: the larger of two, whichever ran faster.
    offline = {b: _scenario(run_scenario(answer, n, "offline", max_batch=b, target_qps=5000,
                                         min_duration_ms=duration_ms, min_query_count=4 * 256))
               for b in (32, 256)}
    best = max(offline, key=lambda b: offline[b]["samples_per_s"])
    out["scenarios"] = {
        "single-stream": _scenario(run_scenario(answer, n, "single-stream",
                                                min_duration_ms=duration_ms, min_query_count=200)),
        "offline": {**offline[best], "max_batch": best,
                    "by_batch": {str(b): r["samples_per_s"] for b, r in offline.items()}},
    }
    out["in_process"] = [rate_sweep(answer, n, max_batch=b, max_wait_ms=w, duration_ms=duration_ms)
                         for b, w in batching]
    out["http"] = []
    for b, w in batching if http else ():
        with serving_process(serve_file, max_batch=b, max_wait_ms=w, threads=1) as url:
            before = health(url)
            sweep = rate_sweep(http_predict(url, bodies), n, max_batch=b, max_wait_ms=w,
                               duration_ms=duration_ms, clients=CLIENTS)
            said = health(url)
        sweep["server"] = {k: said[k] - before[k] for k in ("batches", "answered", "refused",
                                                             "cpu_s")}
        sweep["server"]["largest_batch"] = said["largest_batch"]
        # The server's CPU per answer: HTTP, decoding and the model, over the whole sweep
        sweep["server"]["cpu_ms_per_request"] = 1000 * sweep["server"]["cpu_s"] / max(
            1, sweep["server"]["answered"])
        out["http"].append(sweep)
    return out


def measure_serving(data: CIFAR10, served: str = SERVED, edge: str = EDGE,
                    root: Path = CHECKPOINTS, rounds: int = 5, duration_ms: int = 3000,
                    calibration_images: int = 512, seed: int = 0,
                    batching: Sequence[tuple[int, float]] = BATCHING,
                    formats: Sequence[str] = FORMATS, http: bool = True) -> dict[str, Any]:
    """Everything lesson 09 reports, measured in one run (see the module's docstring)."""
    start = time.perf_counter()
    threads = torch.get_num_threads()
    calibration = data.train_sample(calibration_images, seed)[0].float() / 255
    model = load_model(root / served)
    folder = Path(tempfile.mkdtemp(prefix="serving-"))
    rows = measure_formats(model, data, folder, calibration, formats, rounds)
    rows["eager"]["file_bytes"] = (root / served).stat().st_size
    # The exported file served: the fastest at batch 256 that takes any batch size without
    # compiling at start, among those within half a point of the eager model's accuracy (the
    # rule is fixed before the run; the timings above decide).
    candidates = [f for f in SERVING_FORMATS if f in rows
                  and rows[f]["accuracy"] >= rows["eager"]["accuracy"] - 0.005]
    serving_format = max(candidates, key=lambda f: rows[f]["images_per_s"]["median"])

    # Load tests on one thread for the model: through HTTP the second core runs the clients,
    # so the in-process runs get the same one thread. Eager PyTorch (the .safetensors file, as
    # lessons 03-08 ran it) and the exported file, each in process and behind the server.
    torch.set_num_threads(1)
    bodies = png_bodies(data.test_images)
    runner = load_runner(folder / rows[serving_format]["file"], serving_format)
    load = [_load_tests("eager PyTorch", model, root / served, data, bodies, batching,
                        duration_ms, http),
            _load_tests(serving_format, runner, runner.path, data, bodies, batching,
                        duration_ms, http)]

    edge_model = load_model(root / edge)
    edge_folder = Path(tempfile.mkdtemp(prefix="edge-"))
    edge_rows = measure_formats(edge_model, data, edge_folder, calibration,
                                ("onnx", "onnx-int8-static"), rounds, cold_threads=1)
    edge_rows["eager"]["file_bytes"] = (root / edge).stat().st_size
    torch.set_num_threads(threads)
    for done in (folder, edge_folder):  # the exported files were measured
        shutil.rmtree(done, ignore_errors=True)

    machine = machine_info()
    instance = closest_instance(machine, load_prices())
    return {"format": FORMAT, "machine": machine, "threads": threads, "load_threads": 1,
            "rounds": rounds, "test_set_sha256": test_set_sha256(data), "test_images": len(
                data.test_labels), "calibration_images": calibration_images,
            "bound_ms": BOUND_MS, "duration_ms": duration_ms, "clients": CLIENTS,
            "served": {"file": served, "sha256": sha256_file(root / served)},
            "edge": {"file": edge, "sha256": sha256_file(root / edge)},
            "formats": rows, "serving_format": serving_format, "load": load,
            "edge_formats": edge_rows,
            "instance": {"name": instance.instance, "usd_per_hour": instance.usd_per_hour,
                         "read_on": instance.read_on},
            "wall_time_s": time.perf_counter() - start}


def read_serving(path: str | Path = SERVING_RECORD) -> dict[str, Any]:
    """The record ``python -m leanformer serving`` wrote, checked to be one."""
    record = json.loads(Path(path).read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a serving record (format {record.get('format')!r}, "
                         f"expected {FORMAT!r}); write one with python -m leanformer serving")
    return record
