"""The file format of a quantized model: ``save_quantized`` writes a torchao, intx or legacy
model as tensors and a JSON header (``.pt``) and a PT2E model as an exported program (``.pt2``),
optionally gzipped; ``load_quantized`` rebuilds and checks it, running nothing from the file."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError
from ..files import atomic_write
from ..model import ViTConfig, VisionTransformer
from .compiled import _example
from .library import TORCHAO_CONFIGS, legacy_quantize_dynamic, torchao_quantize
from .qat import IntxScheme, intx_quantize, intx_scheme
from .safety import load_program


QFORMAT = "leanformer-quantized/1"


def save_quantized(model: nn.Module, path: str | os.PathLike, source: nn.Module | None = None) -> Path:
    """Write a quantized model (from ``torchao_quantize``, ``intx_quantize``,
    ``legacy_quantize_dynamic`` or ``pt2e_quantize``) to ``path``, atomically; a path ending in
    ``.gz`` is gzipped.

    torchao and legacy models (``.pt``): their state dict (int8 tensors and scales) in a
    ``torch.save`` file with a JSON header that names the path, the kind, the float model's
    config and, for ``intx_quantize``, the scheme (weight bits, group size, activations);
    loaded with ``weights_only=True`` into a skeleton rebuilt from that header.
    PT2E models (``.pt2``): the exported program (``torch.export.save``), which holds the graph
    and its int8 constants.
    """
    info = getattr(model, "quantization", None)
    if not info:
        raise ValueError("this model was not made by leanformer.quantize (no .quantization record)")
    if info["kind"].endswith("-intx") and "scheme" not in info:
        raise ValueError(f"this {info['kind']} model has no scheme in its .quantization record; "
                         "make it with intx_quantize(model, weight_bits, group_size, activations)")
    path = Path(path)
    buffer = io.BytesIO()  # written whole, then renamed into place
    if info["path"] == "pt2e":
        batch = torch.export.Dim("batch", max=1024)
        torch.export.save(torch.export.export(model, (_example(2),), dynamic_shapes=({0: batch},)), buffer)
    else:
        cfg = getattr(source, "cfg", None) or getattr(model, "cfg", None)
        if cfg is None:
            raise ValueError("pass source=the float model, so that the file records its config")
        header = json.dumps({"format": QFORMAT, **info, "config": cfg.to_dict()})
        torch.save({"header": header, "state": model.state_dict()}, buffer)
    blob = buffer.getvalue()
    if path.suffix == ".gz":
        blob = gzip.compress(blob, compresslevel=9, mtime=0)  # no time stamp: reproducible
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
    return path


def _archive(path: str | os.PathLike) -> bytes:
    """The bytes of a saved model file, gunzipped if its name ends in ``.gz``."""
    blob = Path(path).read_bytes()
    if Path(path).suffix == ".gz":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as e:
            raise CheckpointError(f"{path} is not a readable gzip file ({e}).") from None
    return blob


def tensor_bytes_in_file(path: str | os.PathLike) -> int:
    """Bytes of the tensors inside a quantized model file, before any gzip and without the
    file's structure (the pickled layout of a ``torch.save`` file, the graph and the example
    input of an exported program): both are zip archives whose tensors lie in entries under
    ``data/``."""
    with zipfile.ZipFile(io.BytesIO(_archive(path))) as z:
        return sum(i.file_size for i in z.infolist()
                   if "/data/" in f"/{i.filename}" and "sample_inputs" not in i.filename)


def load_quantized(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load a file written by ``save_quantized``: (model, record), the record as the saved
    model's ``quantization``. A PT2E file comes back as the exported program's module (compile
    it for speed). Nothing in the file runs as code: a ``.pt`` file is read with
    ``weights_only=True``, and a ``.pt2`` file that holds anything that could run code is
    refused before ``torch.export.load`` sees it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No quantized model at {path}; write one with save_quantized.")
    blob = _archive(path)
    if ".pt2" in path.suffixes:
        return _load_exported(path, blob)
    state, header = _read_saved(path, blob)
    model = _skeleton(path, header)
    _check_fits(path, model.state_dict(), state)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its tensors do not fit the model its header describes "
                              f"({e}); re-save it with save_quantized.") from None
    record: dict[str, Any] = {k: header[k] for k in ("path", "kind", "scheme", "parameters")
                              if k in header}
    # setattr: nn.Module.__setattr__ is annotated for tensors and modules only, though it keeps
    # any other value as a plain attribute.
    setattr(model, "quantization", record)
    return model.eval(), dict(record)


def _read_saved(path: Path, blob: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, header) of a ``.pt`` file, unpickled with ``weights_only=True``."""
    import torchao.quantization  # noqa: F401  (registers torchao's tensor types as safe to unpickle)

    try:
        saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), None)
        if refused is None:
            raise CheckpointError(f"{path} is not a leanformer quantized model file ({e}).") from None
        # The pickle names a Python callable or class other than tensors and plain data: the
        # weights_only unpickler stops there, since calling it could run any code.
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data ({refused}); "
                              "unpickling them could run code, so the file was not loaded. save_quantized "
                              "writes tensors and plain data only: re-save the model with it.") from None
    except Exception as e:  # torch raises several types for a file that is not its own
        raise CheckpointError(f"{path} is not a leanformer quantized model file "
                              f"({type(e).__name__}: {e}).") from None
    try:
        header, state = json.loads(saved["header"]), saved["state"]
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is not a leanformer quantized model file (no readable header and "
                              f"state: {type(e).__name__}: {e}); write it with save_quantized.") from None
    if not isinstance(header, dict) or header.get("format") != QFORMAT:
        found = header.get("format") if isinstance(header, dict) else header
        raise CheckpointError(f"{path}: format {found!r}, expected {QFORMAT!r}.")
    missing = [k for k in ("path", "kind", "config") if k not in header]
    if missing:
        raise CheckpointError(f"{path}: its header lacks {', '.join(missing)}; re-save the model with save_quantized.")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its state is a {type(state).__name__}, not a state dict; "
                              "re-save the model with save_quantized.")
    return state, header


def _skeleton(path: Path, header: dict[str, Any]) -> nn.Module:
    """The quantized model that the header describes, with the float model's weights
    untrained: ``load_state_dict`` then puts the file's tensors in place."""
    try:
        float_model = VisionTransformer(ViTConfig.from_dict(header["config"])).eval()
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: its config cannot build a model ({type(e).__name__}: {e}).") from None
    kind = header["kind"]
    if header["path"] == "torchao" and str(kind).endswith("-intx"):
        return intx_quantize(float_model, **_saved_intx_scheme(path, header))
    if header["path"] == "torchao":
        if kind not in TORCHAO_CONFIGS:
            raise CheckpointError(f"{path}: torchao kind {kind!r} is not one this leanformer builds "
                                  f"({', '.join(TORCHAO_CONFIGS)}, or intx_quantize's intN-intx).")
        return torchao_quantize(float_model, kind)
    if header["path"] == "legacy":
        return legacy_quantize_dynamic(float_model)
    raise CheckpointError(f"{path}: unknown quantization path {header['path']!r} "
                          "(expected torchao, legacy, or a .pt2 file for pt2e).")


def _saved_intx_scheme(path: Path, header: dict[str, Any]) -> IntxScheme:
    """The ``intx_scheme`` that the header records for an ``intN-intx`` model, checked."""
    saved = header.get("scheme")
    saved = saved if isinstance(saved, dict) else {}
    missing = [k for k in ("weight_bits", "group_size", "activations") if k not in saved]
    if missing:
        raise CheckpointError(
            f"{path} holds a {header['kind']} model but its header does not record "
            f"{', '.join(missing)}: the file was written before save_quantized kept the scheme, and "
            "the model cannot be rebuilt without it. Re-save it: save_quantized(intx_quantize(float_model, "
            "weight_bits, group_size, activations), path, source=float_model).")
    try:
        scheme = intx_scheme(saved["weight_bits"], saved["group_size"], saved["activations"])
    except ValueError as e:
        raise CheckpointError(f"{path}: its header's scheme is not valid ({e}); re-save it with save_quantized.") from None
    if header["kind"] != f"int{scheme['weight_bits']}-intx":
        raise CheckpointError(f"{path}: its kind {header['kind']!r} disagrees with its scheme's "
                              f"{scheme['weight_bits']}-bit weights; re-save it with save_quantized.")
    return scheme


def _check_fits(path: Path, expected: dict[str, Any], saved: dict[str, Any]) -> None:
    """Refuse tensors of another kind than the rebuilt model's: ``load_state_dict`` with
    ``assign=True`` would put them in place silently, and the model would no longer be the one
    its header describes (another tensor type, or scales in other groups)."""
    for name, want in expected.items():
        got = saved.get(name)
        if got is None:
            continue  # load_state_dict names the missing tensors
        if type(got) is not type(want) or getattr(got, "block_size", None) != getattr(want, "block_size", None):
            raise CheckpointError(
                f"{path}: tensor {name} is a {type(got).__name__} with block size "
                f"{getattr(got, 'block_size', None)}, but the model its header describes holds a "
                f"{type(want).__name__} with block size {getattr(want, 'block_size', None)}; "
                "re-save the model with save_quantized.")


def _load_exported(path: Path, blob: bytes) -> tuple[nn.Module, dict[str, Any]]:
    """The module of an exported program (``.pt2``), read by ``safety.load_program``."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    module = load_program(path, blob).module()
    allow_exported_model_train_eval(module)
    record = {"path": "pt2e", "kind": "int8-static"}
    setattr(module, "quantization", record)
    return module, dict(record)
