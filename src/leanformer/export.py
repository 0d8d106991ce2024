"""Files a server can load without the course's model code (lesson 09).

A ``.safetensors`` checkpoint needs leanformer to rebuild the network around its weights. A
server in production loads a file that holds the computation itself. ``export_model`` writes a
model in one of ``FORMATS``; ``load_runner`` reads any of them back as a ``Runner``, a function
from float images (B, 3, 32, 32) in [0, 1] to logits, so that every format is measured the same
way:

``exported``
    ``torch.export``'s program (``.pt2``): the graph of ATen operators and the weights, run
    by PyTorch without the model's Python class.
``aoti``
    an AOTInductor package (``.pt2``): the same program compiled ahead of time to C++ and a
    shared library, loaded with no compiler and no Python model code.
``onnx``
    ONNX (``torch.onnx.export(..., dynamo=True)``), run by ONNX Runtime on the CPU.
``onnx-int8-dynamic``, ``onnx-int8-static``
    ONNX Runtime's own int8 quantization of that file: weights only (activations quantized
    on the fly), or weights and activations with ranges calibrated on training images
    (QDQ format, per-channel weights).
``pt2e-int8``
    lesson 05's PT2E int8 program (``quantize.save_quantized``), compiled when loaded.

Loading never runs code from the file: an exported program is checked by
``quantize.safety`` before ``torch.export.load`` reads it, and an ONNX file is data that ONNX
Runtime interprets. An AOTInductor package is the exception by its nature: it *is* compiled
code, which runs when it is loaded. ``export_model`` writes its sha256 into a manifest beside it
(``<file>.json``) and ``load_runner`` refuses a package whose bytes do not match, so a damaged
or swapped package is refused; a package from anyone else should not be loaded at all.

``python -m leanformer.export cold-start FILE`` loads a file in a fresh process and answers one
image: the cold start a server pays at every (re)start, and its peak memory.
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import CheckpointError
from .files import atomic_write, sha256_file
from .machine import machine_info

FORMATS = ("exported", "aoti", "onnx", "onnx-int8-dynamic", "onnx-int8-static", "pt2e-int8")
MAX_BATCH = 1024  # the largest batch an exported file accepts


def _batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", max=MAX_BATCH)}


def _example(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _program(model: nn.Module) -> torch.export.ExportedProgram:
    if model.training:
        raise ValueError("export a model for serving in eval mode: call model.eval() first")
    return torch.export.export(model, (_example(),), dynamic_shapes=(_batch_dim(),))


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str,
                 calibration_images: torch.Tensor | None = None) -> Path:
    """Write ``model`` (a float model in eval mode; for ``pt2e-int8`` the model that
    ``quantize.pt2e_quantize`` returned) to ``path`` in format ``fmt`` (one of ``FORMATS``),
    atomically. ``onnx-int8-static`` calibrates on ``calibration_images`` (float in [0, 1] or
    uint8, a few hundred training images). Returns the path."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx-int8-static" and calibration_images is None:
        raise ValueError("onnx-int8-static calibrates its activation ranges: pass "
                         "calibration_images (a few hundred training images)")
    path = Path(path)
    if fmt == "pt2e-int8":
        from .quantize import save_quantized
        return save_quantized(model, path)
    if fmt == "exported":
        buffer = io.BytesIO()  # saved whole, then written under a temporary name and renamed
        torch.export.save(_program(model), buffer)
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    elif fmt == "aoti":
        program = _program(model)

        def compile_to(tmp: Path) -> None:  # the compiler wants a name ending in .pt2
            package = tmp.with_suffix(".pt2")
            torch._inductor.aoti_compile_and_package(program, package_path=str(package))
            package.replace(tmp)
        atomic_write(path, compile_to)
        manifest = {"format": "aoti", "sha256": sha256_file(path), "torch": torch.__version__,
                    "built_on": machine_info()}
        atomic_write(_manifest(path), lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))
    elif fmt == "onnx":
        atomic_write(path, lambda tmp: torch.onnx.export(
            model, (_example(),), str(tmp), dynamo=True, external_data=False,
            dynamic_shapes=(_batch_dim(),), verbose=False))
    else:
        _onnx_int8(model, path, fmt, calibration_images)
    return path


def _manifest(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _onnx_int8(model: nn.Module, path: Path, fmt: str,
               calibration_images: torch.Tensor | None) -> None:
    """The model's ONNX file, written to a temporary folder, quantized into ``path``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        plain = export_model(model, Path(tmp) / "float.onnx", "onnx")
        quantize_onnx(plain, path, fmt.removeprefix("onnx-int8-"), calibration_images)


def quantize_onnx(source: str | os.PathLike, path: str | os.PathLike, kind: str = "static",
                  calibration_images: torch.Tensor | None = None) -> Path:
    """ONNX Runtime's int8 quantization of the float ONNX file ``source`` into ``path``
    (atomically): ``kind`` "dynamic" (int8 weights, activations quantized on the fly) or
    "static" (activation ranges calibrated on ``calibration_images``; QDQ format, per-channel
    int8 weights, uint8 activations). The graph's shapes are inferred first, as ONNX Runtime
    advises (``quant_pre_process``)."""
    import tempfile

    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if kind not in ("dynamic", "static"):
        raise ValueError(f"kind must be 'dynamic' or 'static', got {kind!r}")
    if kind == "static" and calibration_images is None:
        raise ValueError("static quantization calibrates its activation ranges: pass "
                         "calibration_images (a few hundred training images)")
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="onnx-") as tmp:
        ready = Path(tmp) / "ready.onnx"
        quant_pre_process(str(source), str(ready))
        if kind == "dynamic":
            atomic_write(path, lambda out: quantize_dynamic(str(ready), str(out),
                                                            weight_type=QuantType.QInt8))
            return path
        assert calibration_images is not None
        images = _as_float(calibration_images).numpy()
        name = _onnx_input_name(ready)

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(images[i:i + 64] for i in range(0, len(images), 64))

            def get_next(self) -> dict[str, Any] | None:
                batch = next(self.batches, None)
                return None if batch is None else {name: batch}

        atomic_write(path, lambda out: quantize_static(
            str(ready), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8))
    return path


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images.float()


def _onnx_input_name(path: Path) -> str:
    import onnx
    return str(onnx.load(str(path), load_external_data=False).graph.input[0].name)


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file, with its external data (an ONNX file's ``.data``) if any;
    the manifest of an AOTInductor package is not counted (it is a few hundred bytes of text)."""
    path = Path(path)
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)


@dataclass
class Runner:
    """A loaded model file: ``runner(images)`` takes float images (B, 3, 32, 32) in [0, 1]
    and returns logits (B, 10) as a float tensor, whatever the format."""

    path: Path
    format: str
    run: Callable[[torch.Tensor], torch.Tensor]
    load_s: float  # seconds from reading the file to a runner ready to answer (compiling included)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file that ``export_model`` wrote, from its content."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No model file at {path}; write one with export_model.")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":  # a zip archive: a .pt2 program or package
        try:
            with zipfile.ZipFile(path) as z:
                if any("/aotinductor/" in n for n in z.namelist()):
                    return "aoti"
                graphs = [z.read(n) for n in z.namelist() if n.endswith("model.json")]
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path} is not a readable .pt2 archive ({e}).") from None
        # PT2E's int8 graph quantizes and dequantizes with these operators; a float one does not
        return "pt2e-int8" if any(b"quantized_decomposed" in g for g in graphs) else "exported"
    if path.suffix == ".onnx":
        return "onnx"
    raise CheckpointError(f"{path} is neither a .pt2 archive nor an .onnx file; export the model "
                          f"with export_model(model, path, fmt), fmt one of {', '.join(FORMATS)}.")


def load_runner(path: str | os.PathLike, fmt: str | None = None) -> Runner:
    """Load a file written by ``export_model`` (its format detected unless given) as a
    ``Runner``, with torch's current thread count (ONNX Runtime gets the same). Raises
    ``CheckpointError`` with what was wrong for a missing, damaged or foreign file."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not path.is_file():
        raise CheckpointError(f"No model file at {path}; write one with export_model.")
    t0 = time.perf_counter()
    run = {"exported": _load_program, "aoti": _load_aoti, "pt2e-int8": _load_pt2e}.get(
        fmt, _load_onnx)(path)
    run(_example(1))  # the first answer: lazy initialisation is part of loading
    return Runner(path, fmt, run, time.perf_counter() - t0)


def _torch_runner(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(images).float()
    return run


def _load_program(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    from .quantize.safety import load_program

    return _torch_runner(load_program(path, path.read_bytes()).module())


def _load_pt2e(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    from .quantize import compile_for_cpu, load_quantized

    module, _ = load_quantized(path)
    compiled, _ = compile_for_cpu(module, batch_sizes=(1, 256))
    return lambda images: compiled(images).float()


def _load_aoti(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    manifest = _manifest(path)
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is an AOTInductor package, compiled code that runs when it is loaded, and its "
            f"manifest {manifest.name} is missing or unreadable ({type(e).__name__}); only a "
            "package with the manifest export_model wrote beside it is loaded. Rebuild it with "
            "export_model(model, path, 'aoti').") from None
    found = sha256_file(path)
    if record.get("sha256") != found:
        raise CheckpointError(
            f"{path}: its sha256 {found[:12]}… is not the {str(record.get('sha256'))[:12]}… its "
            "manifest records; the package is damaged or is not the one built here, and "
            "compiled code is not loaded unchecked. Rebuild it with export_model(model, path, 'aoti').")
    if record.get("torch") != torch.__version__:
        raise CheckpointError(f"{path} was built with torch {record.get('torch')}, this is "
                              f"{torch.__version__}; rebuild it with export_model(model, path, 'aoti').")
    try:
        package = torch._inductor.aoti_load_package(str(path))
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable AOTInductor package "
                              f"({type(e).__name__}: {e}).") from None
    return _torch_runner(package)


def _load_onnx(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own types for a file it cannot read
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(e).__name__}: "
                              f"{str(e).strip()[:300]}).") from None
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().float().numpy())
        return torch.from_numpy(session.run(None, {name: x})[0])
    return run


def cold_start(path: str | os.PathLike, threads: int = 1, fmt: str | None = None) -> dict[str, float]:
    """Load ``path`` in a fresh Python process with ``threads`` threads and answer one image:
    {"process_s": from starting the process to the answer, imports included; "load_s": from
    reading the file to the first answer; "peak_mb": the process's peak resident memory}."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "leanformer.export", "cold-start", str(path),
               "--threads", str(threads)] + (["--format", fmt] if fmt else [])
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"the cold start of {path} failed:\n{done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"process_s": wall, **result}


def _cold_start_main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m leanformer.export cold-start")
    parser.add_argument("path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--format", choices=FORMATS, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runner = load_runner(args.path, args.format)
    print(json.dumps({"load_s": runner.load_s, "peak_mb": _peak_memory_mb()}))


def _peak_memory_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM, which a new program starts afresh
    (getrusage's ru_maxrss would keep the parent's peak across fork and exec); elsewhere
    ru_maxrss, in KiB on Linux and bytes on macOS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


if __name__ == "__main__":
    if sys.argv[1:2] != ["cold-start"]:
        sys.exit("usage: python -m leanformer.export cold-start FILE [--threads N] [--format F]")
    _cold_start_main(sys.argv[2:])
