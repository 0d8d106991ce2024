"""Saving and loading models and training state, safely.

* A finished model is one ``.safetensors`` file. Its metadata carry the architecture ("vit" or
  "convnet"; files without it are Vision Transformers), the model config, the provenance, and a
  sha256 of the weights that ``load_model`` checks. Loading runs no code.
* Training state (model, optimizer, history) for ``--resume`` is a ``torch.save`` file read back
  with ``weights_only=True``, so it cannot execute code either.
* Every file the package writes goes through ``atomic_write``: written to a temporary name,
  forced to the disk and renamed into place, so that a kill or a power cut mid-write leaves the
  previous file intact.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .convnet import ConvNet, ConvNetConfig
from .data import REPO_ROOT
from .model import ViTConfig, VisionTransformer

# The file format's name predates the ConvNet; the metadata key "arch" tells the families apart.
FORMAT = "leanformer-vit/1"
# The model families a file can hold: arch name -> (config class, model class).
ARCHS = {"vit": (ViTConfig, VisionTransformer), "convnet": (ConvNetConfig, ConvNet)}
# The reference model that lesson 03 trains and every compression lesson starts from.
REFERENCE = REPO_ROOT / "checkpoints" / "reference.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged or of the wrong kind."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Write a file so that a crash or a power cut leaves either the old file or the whole new
    one at ``path``, never a part of either.

    ``write(tmp)`` writes the content to ``tmp``, a temporary file in the same folder (a rename
    is atomic only within one file system). The file's bytes are then forced to the disk
    (``os.fsync``) before it is renamed onto ``path``: without that, a power cut soon after the
    rename can leave ``path`` naming an empty file. The folder is fsynced after the rename, so
    that the new name itself survives. If ``write`` fails, the temporary file is removed and the
    old file at ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder: two writers of one path never share a temporary file.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        # The writer has closed its file; reopen it to force its bytes to the disk.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp and some writers (safetensors among them) create owner-only files; give the
        # result the permissions any new file would get, so that a shared checkpoint stays
        # readable.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Force a folder's entries (a rename into it) to the disk, where the system allows it:
    Windows cannot open a folder, and some network file systems refuse to sync one. The file
    itself is already on the disk then, so a refusal here is no reason to fail the write."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def weights_sha256(state_dict):
    """A digest of names, dtypes, shapes and values, independent of the file format."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) has bytes too
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def arch_of(model) -> str | None:
    """The name in ``ARCHS`` of ``model``'s family ("vit", "convnet"), or None for another model."""
    for name, (_, cls) in ARCHS.items():
        if isinstance(model, cls):
            return name
    return None


def save_model(model, path, provenance=None):
    """Write ``model`` (a VisionTransformer or a ConvNet) and its provenance to a .safetensors
    file. Returns the sha256 of the weights."""
    from safetensors.torch import save_file

    arch = arch_of(model)
    if arch is None:
        raise CheckpointError(f"save_model writes a {' or a '.join(c.__name__ for _, c in ARCHS.values())}, "
                              f"not a {type(model).__name__}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "arch": arch,
        "config": json.dumps(model.cfg.to_dict()),
        "sha256": weights_sha256(state),
        "provenance": json.dumps(provenance or {}),
    }
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return metadata["sha256"]


def read_model_file(path):
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
    actual = weights_sha256(state)
    if actual != metadata.get("sha256"):
        raise CheckpointError(f"{path}: weights sha256 {actual} does not match the recorded "
                              f"{metadata.get('sha256')}. The file is damaged; restore or retrain it.")
    return state, metadata


def first_mismatch(error):
    """The first line of a ``load_state_dict`` error that names a tensor: PyTorch lists every
    mismatch on a line of its own, and the first one says enough."""
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return (lines[0] if lines else str(error)).rstrip(".")


def load_model(path, device="cpu"):
    """Load a model file: returns a VisionTransformer or a ConvNet (as the file's "arch" says) in
    eval mode that takes float images in [0, 1] of shape (N, 3, 32, 32) and returns logits over
    CIFAR-10's 10 classes."""
    state, metadata = read_model_file(path)
    arch = metadata.get("arch", "vit")  # files written before the ConvNet hold a ViT
    if arch not in ARCHS:
        raise CheckpointError(f"{path} holds a model of architecture {arch!r}, which this leanformer "
                              f"does not know (it knows {', '.join(ARCHS)}); update leanformer.")
    config_cls, model_cls = ARCHS[arch]
    try:
        model = model_cls(config_cls.from_dict(json.loads(metadata["config"])))
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its config cannot build a model ({e}).") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the weights do not match the model its config describes "
                              f"({first_mismatch(e)}). The file was not written by save_model from "
                              "this model; re-save it or retrain.") from None
    model.provenance = json.loads(metadata.get("provenance", "{}"))
    model.weights_sha256 = metadata["sha256"]
    return model.to(device).eval()


def save_state(path, state):
    """Training state: a dict of tensors, numbers, strings, lists and dicts only."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise CheckpointError(f"Cannot resume from {path}: {e}. Delete it to start afresh.") from None
