"""Files on disk: every file the package writes, and the digest of a file it reads.

``atomic_write`` writes a file to a temporary name, forces it to the disk and renames it into
place, so that a kill or a power cut mid-write leaves the previous file intact: checkpoints,
training state, data caches, records and notebooks all go through it. ``sha256_file`` is the
digest that names a data file in a record and checks the shipped subset.
"""
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch


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


def sha256_file(p: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces so that a large archive never sits
    in memory whole."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A digest of named tensors (a model's weights, a data set's arrays): names, dtypes, shapes
    and values, independent of the file format they are stored in."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) has bytes too
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
