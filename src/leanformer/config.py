"""Where the course's files are and which mode it runs in: the settings every other module reads.

Quick or full
-------------
Quick mode (the default) trains small models on the shipped 5,000 images, so that every lesson
runs in minutes on a laptop CPU; tests and CI use it. Full mode runs each lesson as written, for
a reader with a GPU or time to spare. The environment variable ``LEANFORMER_MODE`` ("quick" or
"full") chooses; a lesson can also set ``QUICK = False`` in its setup cell.

Paths
-----
The repository's own files (the shipped data subset, the checkpoints) are found from this file's
place in the repository, so a lesson runs from any working folder. Decoded data and downloads
go to ``cache_dir()``: ``LEANFORMER_CACHE``, by default ``~/.cache/leanformer``.
"""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The real CIFAR-10 subset that ships with the course (see data/README.md).
SUBSET_PATH = REPO_ROOT / "data" / "cifar10-subset.tar.gz"
# The models the lessons train and ship, each with its provenance (see checkpoints/README.md).
CHECKPOINTS = REPO_ROOT / "checkpoints"
# The reference model that lesson 03 trains and every compression lesson starts from.
REFERENCE = CHECKPOINTS / "reference.safetensors"
SERVING_RECORD = CHECKPOINTS / "serving.json"  # lesson 09's measurements (leanformer.deploy)


def is_quick() -> bool:
    """True in quick mode (``LEANFORMER_MODE`` unset or "quick"), False in full mode."""
    mode = os.environ.get("LEANFORMER_MODE", "quick").strip().lower()
    if mode not in ("quick", "full"):
        raise ValueError(f"LEANFORMER_MODE must be 'quick' or 'full', got {mode!r}")
    return mode == "quick"


def cache_dir() -> Path:
    """The folder for decoded data sets and downloads (``LEANFORMER_CACHE``)."""
    return Path(os.environ.get("LEANFORMER_CACHE", Path.home() / ".cache" / "leanformer"))
