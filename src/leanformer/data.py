"""CIFAR-10 for the course: find it, decode it once, cache it, and serve it as tensors.
(Augmenting the batches is ``leanformer.augment``'s job.)

Where ``load_cifar10`` looks, in order:

1. an explicit path: the ``path`` argument, else the ``LEANFORMER_DATA`` environment variable.
   It may be a class-folder directory (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``),
   a ``.tar.gz`` of one, or torchvision's ``cifar-10-batches-py`` folder;
2. in full mode only: torchvision's official download, when the network allows it
   (``LEANFORMER_OFFLINE=1`` skips it);
3. the real CIFAR-10 subset that ships with the repository (``data/cifar10-subset.tar.gz``).

Quick mode (``LEANFORMER_MODE=quick``, the default) skips step 2, so that with no explicit path
it trains on the same 5,000 shipped images on every machine, Colab included.

Which test pixels? The shipped subset and ``cifar10-jpg.tar.gz`` hold a JPEG (quality 75) copy of
the official test images; ``cifar-10-batches-py`` holds the official pixels. ``CIFAR10.pixels``
says which a data set holds, so that every accuracy can say what it was measured on.

The decoded arrays are cached (``config.cache_dir()``: ``LEANFORMER_CACHE``, default
``~/.cache/leanformer``) under a key made from the source, so that a second load takes well under
a second. The whole data set is 184 MB as uint8, so it lives in memory and batches are cut from
tensors: no DataLoader.
"""
import gzip
import hashlib
import io
import os
import random
import socket
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import SUBSET_PATH, cache_dir, is_quick  # lessons import SUBSET_PATH from here too
from .files import atomic_write, sha256_file

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# sha256 of data/cifar10-subset.tar.gz, checked at every load (see data/README.md).
SUBSET_SHA256 = "aef91b055ee0da6488890adfe6307958fb3f142053f022d8f4f80c854ae30538"
CACHE_VERSION = 1


class DataError(RuntimeError):
    """CIFAR-10 could not be found or read. The message says where and how to fix it."""


@dataclass
class CIFAR10:
    """CIFAR-10 in memory: uint8 images (N, 3, 32, 32) and int64 labels in CIFAR-10's order."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    classes: tuple[str, ...] = CLASSES
    pixels: str = "unknown"  # "official", "jpeg-q75" (the shipped copies) or "files" (others)
    # A validation split (``splits.holdout``): training images kept out of training, to
    # choose settings on without looking at the test images. None when there is none.
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @property
    def test_set(self) -> str:
        """What the test images are, in words, for a caption or a table."""
        what = {"official": "the official CIFAR-10 test images (cifar-10-batches-py)",
                "jpeg-q75": "a JPEG (quality 75) copy of the official CIFAR-10 test images",
                "files": f"image files from {self.source}"}.get(self.pixels, "CIFAR-10 test images")
        return f"{len(self.test_labels):,} test images: {what}"

    def train_sample(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of ``n`` training images drawn at random with ``seed``,
        never test images: the batch that a function which reads images and labels is
        given to rank or calibrate on (``prune.prune_by_score``,
        ``quantize.pt2e_quantize``)."""
        total = len(self.train_labels)
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= total:
            raise ValueError("n must be a number of training images from 1 to "
                             f"{total:,}, got {n!r}")
        pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
        return self.train_images[pick[:n]], self.train_labels[pick[:n]]

    def __repr__(self) -> str:
        val = "" if self.val_labels is None else f", val={len(self.val_labels):,}"
        return (f"CIFAR10(train={len(self.train_labels):,}{val}, "
                f"test={len(self.test_labels):,}, pixels={self.pixels!r}, "
                f"source={self.source!r})")


def load_cifar10(path: str | os.PathLike | None = None, download: bool = True,
                 verbose: bool = True) -> CIFAR10:
    """Load CIFAR-10 from the first source that works (see the module docstring)."""
    data = _load(path, download)
    if verbose:
        print(f"CIFAR-10: {len(data.train_labels):,} train / {len(data.test_labels):,} test images "
              f"from {data.source} ({'official pixels' if data.pixels == 'official' else data.pixels})")
    return data


def _load(path, download):
    looked = []
    explicit = path if path is not None else os.environ.get("LEANFORMER_DATA") or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        how = "path argument" if path is not None else "$LEANFORMER_DATA"
        if not p.exists():
            raise DataError(_not_found([f"{how}: {p} (does not exist)"], explicit=True))
        return _cached(p, kind=_kind_of(p))
    looked.append("path argument and $LEANFORMER_DATA: not given")

    tv_root = cache_dir() / "torchvision"
    if is_quick():
        looked.append("torchvision download: skipped (quick mode trains on the shipped subset)")
    elif (tv_root / "cifar-10-batches-py").is_dir():
        return _cached(tv_root / "cifar-10-batches-py", kind="batches")
    elif download and os.environ.get("LEANFORMER_OFFLINE", "") not in ("1", "true", "yes"):
        if _online():
            import torchvision

            torchvision.datasets.CIFAR10(str(tv_root), train=True, download=True)
            return _cached(tv_root / "cifar-10-batches-py", kind="batches")
        looked.append("torchvision download: www.cs.toronto.edu is not reachable")
    else:
        looked.append("torchvision download: skipped (offline)")

    if SUBSET_PATH.is_file():
        return _cached(SUBSET_PATH, kind="subset")
    looked.append(f"shipped subset: {SUBSET_PATH} (missing)")
    raise DataError(_not_found(looked, explicit=False))


def _not_found(looked, explicit):
    lines = "\n".join(f"  - {item}" for item in looked)
    fix = ("Pass a path that exists: a class-folder directory, a .tar.gz of one, or torchvision's "
           "cifar-10-batches-py folder." if explicit else
           "Fix: pass load_cifar10(path=...) or set LEANFORMER_DATA to a class-folder directory, "
           "a .tar.gz of one, or a cifar-10-batches-py folder; or restore data/cifar10-subset.tar.gz "
           "with `git checkout data/`.")
    return f"CIFAR-10 not found. Looked in:\n{lines}\n{fix}"


def _kind_of(p):
    if p.is_dir():
        if (p / "data_batch_1").exists():
            return "batches"
        if (p / "cifar-10-batches-py").is_dir():
            return "batches-parent"
        return "folders"
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    raise DataError(f"{p} is a file but not a .tar.gz archive. Expected a class-folder directory, "
                    "a .tar.gz of one, or torchvision's cifar-10-batches-py folder.")


def _online(host="www.cs.toronto.edu", timeout=3.0):
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# --- the cache -------------------------------------------------------------------------------

def _cache_key(p, kind):
    st = p.stat()
    ident = f"v{CACHE_VERSION}|{kind}|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _cached(p, kind):
    if kind == "batches-parent":
        p, kind = p / "cifar-10-batches-py", "batches"
    if kind == "subset":
        _check_sha256(p, SUBSET_SHA256)
        source = f"shipped subset {p.name} (sha256 {SUBSET_SHA256[:12]}…)"
    else:
        source = str(p)
    cache = cache_dir() / f"cifar10-{_cache_key(p, kind)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
            return _to_dataset(arrays, source, _pixels(p, kind))
        except Exception:
            cache.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    if kind == "batches":
        arrays = _read_batches(p)
    elif kind == "folders":
        arrays = _read_folders(p)
    else:
        arrays = _read_tar(p)
    _write_atomic_npz(cache, arrays)
    return _to_dataset(arrays, source, _pixels(p, kind))


def _write_atomic_npz(path, arrays):
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: given a name, np.savez would append .npz
            np.savez(f, **arrays)

    atomic_write(path, write)  # a reader sees the old file or the whole new one


def _pixels(p, kind):
    """What the pixels of a source are: the official ones, the shipped JPEG copies, or files."""
    if kind == "batches":
        return "official"
    if kind == "subset" or p.name.startswith("cifar10-jpg"):
        return "jpeg-q75"
    return "files"


def _to_dataset(a, source, pixels="unknown"):
    def images(x):  # (N, 32, 32, 3) uint8 -> (N, 3, 32, 32)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    return CIFAR10(images(a["train_x"]), torch.from_numpy(a["train_y"]).long(),
                   images(a["test_x"]), torch.from_numpy(a["test_y"]).long(), source, pixels=pixels)


def _check_sha256(p, expected):
    actual = sha256_file(p)
    if actual != expected:
        raise DataError(f"Checksum mismatch for {p}: expected sha256 {expected}, got {actual}. "
                        "The file is damaged or was replaced; restore it with `git checkout data/` "
                        "or rebuild it as data/README.md describes.")


# --- the readers: each returns {"train_x", "train_y", "test_x", "test_y"} as numpy arrays -----

def _split_and_label(parts):
    """From a member path like 'cifar10-jpg/train/cat/0001.jpg', return ('train', 3) or None."""
    for i, part in enumerate(parts[:-2]):
        if part in ("train", "test") and parts[i + 1] in CLASSES:
            return part, CLASSES.index(parts[i + 1])
    return None


def _decode(raw, where):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"Corrupt image {where}: {e}. Replace the file or re-create the archive; "
                        "no cache was written.") from None
    if arr.shape != (32, 32, 3):
        raise DataError(f"Image {where} has shape {arr.shape}; CIFAR-10 images are 32x32 RGB.")
    return arr


def _collect(items, origin):
    """items: iterable of (sort_key, split, label, raw_bytes_or_callable, where)."""
    out = {"train": [], "test": []}
    for key, split, label, raw, where in sorted(items, key=lambda t: t[0]):
        out[split].append((_decode(raw() if callable(raw) else raw, where), label))
    for split in ("train", "test"):
        if not out[split]:
            raise DataError(f"{origin} has no {split}/<class>/ images. Expected "
                            f"{split}/<class>/NNNN.jpg with classes {', '.join(CLASSES)}.")
    return {
        "train_x": np.stack([x for x, _ in out["train"]]),
        "train_y": np.array([y for _, y in out["train"]], dtype=np.int64),
        "test_x": np.stack([x for x, _ in out["test"]]),
        "test_y": np.array([y for _, y in out["test"]], dtype=np.int64),
    }


def _read_tar(p):
    items = []
    try:
        # Members are read into memory, never extracted, so no path in the archive can
        # write outside it.
        with tarfile.open(p, "r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                parts = Path(m.name).parts
                hit = _split_and_label(parts)
                if hit is None:
                    continue
                raw = tar.extractfile(m).read()
                items.append((m.name, hit[0], hit[1], raw, f"{p}:{m.name}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"Cannot read {p}: the archive is truncated or corrupt ({e}). "
                        "Copy or download it again; no cache was written.") from None
    return _collect(items, p)


def _read_folders(root):
    items = []
    for f in sorted(root.rglob("*")):
        if f.is_file():
            hit = _split_and_label(f.relative_to(root).parts)
            if hit is not None:
                items.append((str(f), hit[0], hit[1], f.read_bytes, str(f)))
    if not items:
        raise DataError(f"{root} holds no CIFAR-10 images. Expected train/<class>/*.jpg and "
                        f"test/<class>/*.jpg with classes {', '.join(CLASSES)}, or torchvision's "
                        "cifar-10-batches-py folder.")
    return _collect(items, root)


def _read_batches(p):
    import torchvision

    try:
        train = torchvision.datasets.CIFAR10(str(p.parent), train=True, download=False)
        test = torchvision.datasets.CIFAR10(str(p.parent), train=False, download=False)
    except RuntimeError as e:
        raise DataError(f"{p} is not a complete cifar-10-batches-py folder ({e}). "
                        "Download it again or pass another path.") from None
    return {"train_x": train.data, "train_y": np.array(train.targets, dtype=np.int64),
            "test_x": test.data, "test_y": np.array(test.targets, dtype=np.int64)}


# --- batches, on tensors ---------------------------------------------------------------------

def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
            generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float images in [0, 1], labels) mini-batches from uint8 tensors."""
    n = len(labels)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield images[idx].float().div_(255), labels[idx]


def write_folders(data: CIFAR10, root: str | os.PathLike, train_images: int,
                  test_images: int) -> Path:
    """Write ``train_images`` training and ``test_images`` test images of ``data``, spread evenly
    over each set, as PNG files in class folders (``root/train/<class>/<i>.png``, and
    ``root/test/...``): a small CIFAR-10 that any ``--data`` option reads, for a command that
    must run in seconds. Returns ``root``."""
    from PIL import Image

    root = Path(root)
    for split, images, labels, n in (("train", data.train_images, data.train_labels, train_images),
                                     ("test", data.test_images, data.test_labels, test_images)):
        if not 0 < n <= len(labels):
            raise ValueError(f"{split}_images must be between 1 and {len(labels)}, got {n}")
        for i in range(0, len(labels), len(labels) // n)[:n]:
            folder = root / split / CLASSES[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    return root


# --- the shipped subset ----------------------------------------------------------------------

def make_subset(source: str | os.PathLike, dest: str | os.PathLike, per_class: int = 500,
                seed: int = 0) -> str:
    """Write a stratified real subset of a class-folder CIFAR-10 .tar.gz: ``per_class`` training
    images per class, chosen at random with ``seed``, and every test image. JPEG bytes are
    copied unchanged, and the archive is byte-for-byte reproducible. Returns its sha256.

    The archive is written with ``files.atomic_write``: a failure at any point leaves
    ``dest`` as it was and no temporary file beside it."""
    source = Path(source)
    if not source.is_file():
        raise DataError(f"make-subset: no archive at {source}. Pass a class-folder CIFAR-10 "
                        ".tar.gz (train/<class>/*.jpg and test/<class>/*.jpg).")
    chosen: dict[str, tarfile.TarInfo] = {}
    try:
        with tarfile.open(source, "r:*") as tar:
            members = [m for m in tar if m.isfile() and _split_and_label(Path(m.name).parts)]
            by_class: dict[int, list[tarfile.TarInfo]] = {}
            for m in members:
                split, label = _split_and_label(Path(m.name).parts)
                if split == "test":
                    chosen[m.name] = m
                else:
                    by_class.setdefault(label, []).append(m)
            rng = random.Random(seed)
            for label in sorted(by_class):
                group = sorted(by_class[label], key=lambda m: m.name)
                if len(group) < per_class:
                    raise DataError(f"make-subset: {source} has {len(group)} training images of "
                                    f"class {CLASSES[label]!r}, fewer than --per-class {per_class}.")
                for m in rng.sample(group, per_class):
                    chosen[m.name] = m
            blobs: dict[str, bytes] = {}
            for name in sorted(chosen):
                split, label = _split_and_label(Path(name).parts)
                new = f"cifar10-subset/{split}/{CLASSES[label]}/{Path(name).name}"
                member = tar.extractfile(chosen[name])
                assert member is not None  # a regular file (m.isfile() above), never a link
                blobs[new] = member.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"make-subset: cannot read {source}: the archive is truncated or corrupt "
                        f"({e}). Copy or download it again.") from None
    if not blobs:
        raise DataError(f"make-subset: {source} holds no train/<class>/ or test/<class>/ images.")

    def write(tmp):
        # mtime 0, no file name and sorted members: the same input gives the same bytes.
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as out:
                for name in sorted(blobs):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(blobs[name]), 0, 0o644
                    out.addfile(info, io.BytesIO(blobs[name]))

    atomic_write(dest, write)
    return sha256_file(dest)
