"""Serving: requests decoded or refused with the right status, dynamic batching that answers every
request with its own image's row, a full queue refused at once, and the HTTP server itself,
started as `python -m leanformer serve` on a free port and hit by concurrent clients."""
import asyncio
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from PIL import Image

from leanformer import save_model
from leanformer.serve import (MAX_BYTES, RAW_BYTES, Batcher, Overloaded, RequestError, classifier,
                              decode_image)

RNG = np.random.default_rng(0)


def encoded(pixels, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def test_png_jpeg_and_raw_bytes_decode_to_one_32x32_rgb_image():
    a = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = torch.from_numpy(a).permute(2, 0, 1)
    assert torch.equal(decode_image(encoded(a), "image/png"), want)
    assert torch.equal(decode_image(a.tobytes(), "application/octet-stream"), want)
    jpeg_bytes = encoded(a, "JPEG")
    jpeg = decode_image(jpeg_bytes, "image/jpeg; charset=binary")
    pil = np.asarray(Image.open(io.BytesIO(jpeg_bytes)).convert("RGB"))
    assert torch.equal(jpeg, torch.from_numpy(pil.copy()).permute(2, 0, 1))
    big = decode_image(encoded(RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)), "image/png")
    grey = decode_image(encoded(np.full((32, 32), 7, dtype=np.uint8)), "image/png")
    assert big.shape == grey.shape == (3, 32, 32) and big.dtype == torch.uint8
    assert torch.equal(grey, torch.full((3, 32, 32), 7, dtype=torch.uint8))


@pytest.mark.parametrize("body, kind, status, words", [
    (b"x" * RAW_BYTES, "text/plain", 415, "is not served"),
    (b"", "", 415, r"'\(none\)'"),
    (b"not an image at all", "image/png", 400, "not a readable PNG or JPEG"),
    (b"\x00" * 100, "application/octet-stream", 400, "got 100 bytes"),
    (b"\x00" * (MAX_BYTES + 1), "image/png", 413, "at most"),
])
def test_bad_requests_say_what_is_wrong(body, kind, status, words):
    with pytest.raises(RequestError, match=words) as e:
        decode_image(body, kind)
    assert e.value.status == status


def test_a_foreign_format_and_a_huge_image_are_refused():
    gif = io.BytesIO()
    Image.new("RGB", (32, 32)).save(gif, format="GIF")
    with pytest.raises(RequestError, match="GIF image; send PNG or JPEG"):
        decode_image(gif.getvalue(), "image/png")
    huge = io.BytesIO()
    Image.new("1", (5000, 4000)).save(huge, format="PNG")  # a few kB for 20 million pixels
    with pytest.raises(RequestError, match="5000x4000 pixels") as e:
        decode_image(huge.getvalue(), "image/png")
    assert e.value.status == 413


def _by_value(sizes, delay=0.0):
    """A stand-in model: each image's row says which image it was (its first pixel)."""
    def predict(images):
        sizes.append(len(images))
        time.sleep(delay)
        return images[:, 0, 0, 0].float()[:, None].repeat(1, 10)
    return predict


def test_the_batcher_answers_every_request_with_its_own_row_in_batches():
    sizes = []

    async def main():
        batcher = Batcher(_by_value(sizes), max_batch=4, max_wait_ms=20, max_queue=64)
        await batcher.start()
        images = [torch.full((3, 32, 32), i, dtype=torch.uint8) for i in range(10)]
        answers = await asyncio.gather(*(batcher.submit(im) for im in images))
        await batcher.stop()
        return answers, batcher.stats

    answers, stats = asyncio.run(main())
    assert [int(a[0]) for a in answers] == list(range(10))
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) < 10  # batched, none too big
    assert stats.answered == 10 and stats.largest == max(sizes)


def test_a_full_queue_refuses_at_once_and_stop_answers_what_was_accepted():
    sizes = []

    async def main():
        batcher = Batcher(_by_value(sizes, delay=0.05), max_batch=1, max_wait_ms=0, max_queue=3)
        await batcher.start()
        images = [torch.full((3, 32, 32), i, dtype=torch.uint8) for i in range(12)]
        tasks = [asyncio.create_task(batcher.submit(im)) for im in images]
        await asyncio.sleep(0)  # every task has tried to enter the queue
        await batcher.stop()  # refuses new ones, finishes the accepted ones
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.submit(images[0])
        return results

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, Overloaded)]
    answered = {i: int(r[0]) for i, r in enumerate(results) if not isinstance(r, Exception)}
    assert len(refused) + len(answered) == 12 and refused and answered
    assert all(i == v for i, v in answered.items())  # each its own image's row
    assert len(answered) <= 1 + 3  # one running, three waiting


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port, body, kind="image/png", timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": kind})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m leanformer serve` on a tiny model, batches of up to 8, 16 waiting at most."""
    folder = tmp_path_factory.mktemp("serve")
    model = tiny_vit()
    save_model(model, folder / "tiny.safetensors")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "leanformer", "serve", str(folder / "tiny.safetensors"),
                             "--port", str(port), "--max-batch", "8", "--max-wait-ms", "5",
                             "--max-queue", "16", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.2)
    yield proc, port, classifier(model)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _health(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/health")
    return json.loads(conn.getresponse().read())


def _good_requests(n):
    pixels = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return pixels, [encoded(p) for p in pixels]


def _expected(predict, pixels):
    return predict(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())


def test_concurrent_clients_each_get_their_own_images_answer(server):
    _, port, predict = server
    pixels, bodies = _good_requests(64)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda b: _post(port, b), bodies))
    want = _expected(predict, pixels)
    for (status, reply), p in zip(replies, want):
        assert status == 200, reply
        assert reply["index"] == int(p.argmax())
        got = torch.tensor(list(reply["probabilities"].values()))
        torch.testing.assert_close(got, p, atol=2e-6, rtol=0)
    health = _health(port)
    assert health["status"] == "ok" and health["answered"] >= 64 and health["largest_batch"] > 1


def test_a_thousand_bad_requests_and_an_overload_burst_leave_it_serving(server):
    _, port, predict = server
    cpu_before = _health(port)["cpu_s"]
    bad = [(b"junk", "image/png", 400), (b"\x00" * 10, "application/octet-stream", 400),
           (encoded(np.zeros((32, 32, 3), dtype=np.uint8)), "text/plain", 415)]
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: (_post(port, *bad[i % 3][:2])[0], bad[i % 3][2]),
                                 range(1000)))
    assert all(got == want for got, want in statuses)
    pixels, bodies = _good_requests(300)
    with ThreadPoolExecutor(64) as pool:  # 64 at once against a queue of 16
        replies = list(pool.map(lambda b: _post(port, b), bodies))
    want = _expected(predict, pixels)
    assert len(replies) == 300 and {s for s, _ in replies} <= {200, 503}
    for (status, reply), p in zip(replies, want):
        assert (status == 200 and reply["index"] == int(p.argmax())) or \
            (status == 503 and "overloaded" in reply["error"])
    after_pixels, after = _good_requests(8)
    for (status, reply), p in zip((_post(port, b) for b in after), _expected(predict, after_pixels)):
        assert status == 200 and reply["index"] == int(p.argmax())
    assert _health(port)["cpu_s"] > cpu_before  # the CPU time a load test divides by answers


def test_loadgen_drives_the_server_over_http_and_every_answer_is_right(server):
    """MLPerf's server scenario through HTTP: 16 client threads send each query as it arrives,
    the server batches them; every answer is the class the model gives that image."""
    from leanformer.loadgen import http_predict, run_scenario

    _, port, predict = server
    pixels, bodies = _good_requests(50)
    want = _expected(predict, pixels).argmax(1).tolist()
    send = http_predict(f"http://127.0.0.1:{port}/predict", bodies)
    got = {}

    def checked(indices):
        for i, answer in zip(indices, send(indices)):
            got.setdefault(i, set()).add(answer)

    r = run_scenario(checked, 50, "server", target_qps=200, clients=16, min_duration_ms=500,
                     min_query_count=100)
    assert r.samples_per_s > 100 and set(r.batches) == {1}
    assert got and all(answers == {want[i]} for i, answers in got.items())
    with pytest.raises(ValueError, match="http://host:port/predict"):
        http_predict("localhost:8000", bodies)


def test_on_shutdown_every_accepted_request_is_answered(server):
    """SIGTERM while clients are sending: every request the server received is answered and
    read by its client; a connection still waiting in the kernel's queue when the server stops
    listening is reset or refused without reaching it (a client can safely send it again)."""
    proc, port, predict = server
    pixels, bodies = _good_requests(300)
    want = _expected(predict, pixels)
    before = _health(port)["received"]

    def send(b):
        try:
            return _post(port, b)
        except ConnectionError:  # refused, reset, or the pipe closed before the body was sent
            return "not received", None

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(send, b) for b in bodies]
        time.sleep(0.02)  # some answered, some in flight, some not sent yet
        proc.send_signal(signal.SIGTERM)
        replies = [f.result() for f in futures]
    # uvicorn finishes its graceful shutdown, then raises the signal again: exit status -SIGTERM
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    out, err = proc.communicate()
    assert "Traceback" not in err
    received = int(out.split("stopped: received ")[1].split(",")[0]) - before
    answered = [(r, p) for (s, r), p in zip(replies, want) if s == 200]
    assert answered, "the server stopped before answering any request"
    assert all(r["index"] == int(p.argmax()) for r, p in answered)
    assert received == sum(s in (200, 503) for s, _ in replies)  # each one received was answered

