"""Saving and loading models and training state, safely.

* A finished model is one ``.safetensors`` file. Its metadata carry the architecture (a name in
  ``families.ARCHS``; files without it are Vision Transformers), the model config, the
  provenance, and a sha256 of the weights that ``load_model`` checks. Loading runs no code.
* Training state (model, optimizer, history) for ``--resume`` is a ``torch.save`` file read back
  with ``weights_only=True``, so it cannot execute code either.
* Both are written with ``files.atomic_write``, so a kill or a power cut mid-write leaves the
  previous file intact.
"""
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import REFERENCE  # noqa: F401 (lessons import the reference's path from here)
from .families import ARCHS, Model, arch_of, create_model
from .files import atomic_write, tensors_sha256

# The file format's name predates the ConvNet; the metadata key "arch" tells the families apart.
FORMAT = "leanformer-vit/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or of the wrong kind."""


def save_model(model: nn.Module, path: str | os.PathLike,
               provenance: dict[str, Any] | None = None) -> str:
    """Write ``model`` (a VisionTransformer or a ConvNet) and its provenance to a .safetensors
    file. Returns the sha256 of the weights."""
    from safetensors.torch import save_file

    arch = arch_of(model)
    if arch is None:
        raise CheckpointError(f"save_model writes a {' or a '.join(c.__name__ for _, c in ARCHS.values())}, "
                              f"not a {type(model).__name__}")
    config_cls, _ = ARCHS[arch]
    cfg = model.cfg
    if not isinstance(cfg, config_cls):
        raise CheckpointError(f"{type(model).__name__}.cfg is a {type(cfg).__name__}, not the "
                              f"{config_cls.__name__} that rebuilds it")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "arch": arch,
        "config": json.dumps(cfg.to_dict()),
        "sha256": tensors_sha256(state),
        "provenance": json.dumps(provenance or {}),
    }
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return metadata["sha256"]


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Return (state_dict, metadata) of a model file after checking its sha256."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No model file at {path}. Train one with "
                              "`python -m leanformer train --recipe reference`, or check the path.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable .safetensors file ({e}).") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a leanformer model (format {metadata.get('format')!r}, "
                              f"expected {FORMAT!r}).")
    actual = tensors_sha256(state)
    if actual != metadata.get("sha256"):
        raise CheckpointError(f"{path}: weights sha256 {actual} does not match the recorded "
                              f"{metadata.get('sha256')}. The file is damaged; restore or retrain it.")
    return state, metadata


def first_mismatch(error: Exception) -> str:
    """The first line of a ``load_state_dict`` error that names a tensor: PyTorch lists every
    mismatch on a line of its own, and the first one says enough."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return (lines[0] if lines else str(error)).rstrip(".")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> Model:
    """Load a model file: returns a VisionTransformer or a ConvNet (as the file's "arch" says) in
    eval mode that takes float images in [0, 1] of shape (N, 3, 32, 32) and returns logits over
    CIFAR-10's 10 classes."""
    state, metadata = read_model_file(path)
    arch = metadata.get("arch", "vit")  # files written before the ConvNet hold a ViT
    if arch not in ARCHS:
        raise CheckpointError(f"{path} holds a model of architecture {arch!r}, which this leanformer "
                              f"does not know (it knows {', '.join(ARCHS)}); update leanformer.")
    try:
        model = create_model(arch, json.loads(metadata["config"]))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its config cannot build a model ({e}).") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes "
                              f"({first_mismatch(e)}). The file was not written by save_model from "
                              "this model; re-save it or retrain.") from None
    model.provenance = json.loads(metadata.get("provenance", "{}"))
    return model.to(device).eval()


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Training state: a dict of tensors, numbers, strings, lists and dicts only."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Training state written by ``save_state``, read with ``weights_only=True``: a file that
    holds anything but tensors and plain data is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"Cannot resume from {path}: {e}. Delete it to start afresh.") from None
