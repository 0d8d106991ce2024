"""A model behind HTTP: ``python -m leanformer serve MODEL`` (lesson 09).

Three parts, each usable alone:

``decode_image``
    the bytes of one request to a (3, 32, 32) uint8 image: PNG or JPEG of any size (converted
    to RGB and resized to 32 x 32, the size of CIFAR-10's images), or 3,072 raw bytes (32 x 32
    RGB, row by row). Anything else is a ``RequestError`` with the HTTP status it deserves and
    a sentence that says what was wrong.
``Batcher``
    dynamic batching: requests wait in a bounded queue; a worker takes the first one, waits at
    most ``max_wait_ms`` for more, up to ``max_batch``, runs them through the model as one
    batch (in a thread, so that the server keeps accepting), and hands every request its own
    row of the answer. ``max_batch=1`` serves one image at a time, the baseline. A request that
    finds the queue full is refused at once (``Overloaded``, HTTP 503) rather than left to
    wait; ``stop`` refuses new requests and finishes every accepted one.
``create_app``
    the FastAPI application: ``POST /predict`` (the image as the request's body, its
    ``Content-Type`` image/png, image/jpeg or application/octet-stream) answers the class and
    the probabilities of all ten; ``GET /health`` says the server is up, how it batches, what it
    has done, and the CPU seconds its process has used (so that a load test can divide them by
    the requests answered).

FastAPI reads the annotations of the handlers at run time to know what a parameter is (a
``Request`` is the request itself); this module therefore keeps Python's own evaluation of
annotations, without ``from __future__ import annotations``.
"""

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import CLASSES
from .evaluate import mode_is_fixed

IMAGE_TYPES = ("image/png", "image/jpeg")
RAW_TYPE = "application/octet-stream"
RAW_BYTES = 32 * 32 * 3
MAX_BYTES = 4 * 1024 * 1024  # the largest request body accepted
MAX_PIXELS = 4096 * 4096  # the largest image decoded (a small file can hold a huge image)


class RequestError(ValueError):
    """A request the server cannot answer, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Overloaded(RuntimeError):
    """The queue is full, or the server is shutting down: refuse now (HTTP 503)."""


def decode_image(body: bytes, content_type: str) -> torch.Tensor:
    """The (3, 32, 32) uint8 image in a request's ``body``. Raises ``RequestError``: 415 for a
    content type other than image/png, image/jpeg or application/octet-stream, 413 for a body
    or an image that is too large, 400 for bytes that are not such an image."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    kind = content_type.split(";")[0].strip().lower()
    if kind not in (*IMAGE_TYPES, RAW_TYPE):
        raise RequestError(415, f"Content-Type {content_type or '(none)'!r} is not served: send "
                                f"the image as {', '.join(IMAGE_TYPES)} or {RAW_TYPE} "
                                f"({RAW_BYTES} bytes, 32x32 RGB)")
    if len(body) > MAX_BYTES:
        raise RequestError(413, f"the body has {len(body):,} bytes; at most {MAX_BYTES:,}")
    if kind == RAW_TYPE:
        if len(body) != RAW_BYTES:
            raise RequestError(400, f"{RAW_TYPE} means 32x32 RGB, {RAW_BYTES} bytes row by row; "
                                    f"got {len(body):,} bytes")
        pixels = np.frombuffer(body, dtype=np.uint8).reshape(32, 32, 3)
    else:
        try:
            with Image.open(io.BytesIO(body)) as opened:
                if opened.format not in ("PNG", "JPEG"):
                    raise RequestError(400, f"the body is a {opened.format} image; send PNG or JPEG")
                if opened.width * opened.height > MAX_PIXELS:
                    raise RequestError(413, f"the image is {opened.width}x{opened.height} pixels; "
                                            f"at most {MAX_PIXELS:,} pixels")
                rgb = opened.convert("RGB")  # decodes the pixels, checked above for their number
                if rgb.size != (32, 32):
                    rgb = rgb.resize((32, 32), Image.Resampling.BILINEAR)
                pixels = np.asarray(rgb, dtype=np.uint8)
        except RequestError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise RequestError(400, f"the body is not a readable PNG or JPEG image ({e})") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def classifier(model: nn.Module | Callable[[torch.Tensor], torch.Tensor]
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from a uint8 batch (B, 3, 32, 32) to class probabilities (B, 10) by ``model``:
    a module, or any function from float images in [0, 1] to logits (``export.Runner``)."""
    if isinstance(model, nn.Module) and not mode_is_fixed(model):
        model.eval()

    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images.float().div_(255)).float().softmax(-1)
    return predict


@dataclass
class BatchStats:
    """What the batcher has done: batches run, requests answered and refused."""

    batches: int = 0
    answered: int = 0
    refused: int = 0
    largest: int = 0
    received: int = 0  # requests that reached /predict (counted by the app)


class Batcher:
    """Dynamic batching of single-image requests (see the module's docstring)."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 32,
                 max_wait_ms: float = 2.0, max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch and max_queue must be at least 1 and max_wait_ms at "
                             f"least 0; got {max_batch}, {max_queue}, {max_wait_ms}")
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        # One thread runs the model: batches run one after another, as on a real accelerator.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._closing = False
        self._worker = asyncio.create_task(self._run())

    async def submit(self, image: torch.Tensor) -> torch.Tensor:
        """The probabilities for one (3, 32, 32) uint8 image; raises ``Overloaded`` at once if
        the queue is full or the batcher is stopping."""
        if self._queue is None or self._closing:
            self.stats.refused += 1
            raise Overloaded("the server is shutting down")
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((image, future))
        except asyncio.QueueFull:
            self.stats.refused += 1
            raise Overloaded(f"{self.max_queue} requests are already waiting") from None
        return await future

    async def stop(self) -> None:
        """Refuse new requests, answer every accepted one, then stop the worker."""
        self._closing = True
        if self._queue is not None:
            await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def _collect(self) -> list[tuple[torch.Tensor, asyncio.Future[torch.Tensor]]]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:  # whatever is waiting already, then whatever arrives before the deadline
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            try:
                images = torch.stack([image for image, _ in batch])
                probs = await loop.run_in_executor(self._executor, self.predict, images)
                for (_, future), p in zip(batch, probs):
                    if not future.done():  # a client that went away leaves a cancelled future
                        future.set_result(p)
                self.stats.batches += 1
                self.stats.answered += len(batch)
                self.stats.largest = max(self.stats.largest, len(batch))
            except Exception as e:  # noqa: BLE001 - every waiting request hears of it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
            finally:
                for _ in batch:
                    self._queue.task_done()


def create_app(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], name: str = "model", classes: Sequence[str] = CLASSES,
               max_batch: int = 32, max_wait_ms: float = 2.0, max_queue: int = 256) -> Any:
    """The FastAPI application serving ``model`` (see the module's docstring)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    batcher = Batcher(classifier(model), max_batch, max_wait_ms, max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()
        s = batcher.stats
        print(f"stopped: received {s.received}, answered {s.answered} in {s.batches} batches "
              f"(largest {s.largest}), refused {s.refused}", flush=True)

    app = FastAPI(title=f"leanformer: {name}", lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": name, "max_batch": max_batch,
                "max_wait_ms": max_wait_ms, "max_queue": max_queue,
                "batches": batcher.stats.batches, "answered": batcher.stats.answered,
                "refused": batcher.stats.refused, "largest_batch": batcher.stats.largest,
                "received": batcher.stats.received,
                "cpu_s": time.process_time()}  # the server's CPU time, all its threads

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        batcher.stats.received += 1
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BYTES:
            return JSONResponse({"error": f"the body has {int(length):,} bytes; at most "
                                          f"{MAX_BYTES:,}"}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BYTES:
                return JSONResponse({"error": f"the body has more than {MAX_BYTES:,} bytes"},
                                    status_code=413)
        try:
            image = decode_image(bytes(body), request.headers.get("content-type", ""))
            probs = await batcher.submit(image)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except Overloaded as e:
            return JSONResponse({"error": f"overloaded: {e}; try again shortly"},
                                status_code=503, headers={"Retry-After": "1"})
        index = int(probs.argmax())
        return {"class": classes[index], "index": index,
                "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}}

    return app
