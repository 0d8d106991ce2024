import hashlib
from pathlib import Path

import pytest

from leanformer.files import atomic_write, sha256_file


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    path.write_text("old")

    def crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left


def test_atomic_write_forces_the_file_then_its_folder_to_the_disk(tmp_path, monkeypatch):
    """The new bytes reach the disk before the rename (else a power cut can leave an empty file
    under the name), and the folder after it (else the rename itself can be lost)."""
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "out" / "m.json"
    atomic_write(path, lambda tmp: tmp.write_text("new"))
    assert path.read_text() == "new"
    assert [e[:2] for e in events] == [("fsync", "file"), ("replace", "m.json"), ("fsync", "folder")]
    assert events[0][2] == path.stat().st_ino  # the file synced is the one now under the name
    assert events[2][2] == path.parent.stat().st_ino
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_atomic_write_that_fails_on_a_new_name_leaves_nothing(tmp_path):
    def crash(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "new.safetensors", crash)
    assert list(tmp_path.iterdir()) == []


def test_sha256_file_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "blob.bin"
    blob = bytes(range(256)) * 5000  # over 1 MiB: read in more than one piece
    path.write_bytes(blob)
    assert sha256_file(path) == hashlib.sha256(blob).hexdigest()
