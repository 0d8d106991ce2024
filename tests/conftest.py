import os

import pytest

# Tests never reach for the network: with no explicit path, data come from the shipped subset.
os.environ.setdefault("LEANFORMER_OFFLINE", "1")


@pytest.fixture(scope="session")
def subset():
    """The shipped real subset (5,000 train / 10,000 test), decoded once per session."""
    from leanformer.data import load_cifar10

    return load_cifar10(verbose=False)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LEANFORMER_CACHE", str(cache))
    monkeypatch.delenv("LEANFORMER_DATA", raising=False)
    return cache


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A CIFAR-10 class-folder directory of random images, 8 training and 4 test images per
    class: enough for a command to run end to end in seconds."""
    import numpy as np
    from PIL import Image

    from leanformer.data import CLASSES

    root = tmp_path_factory.mktemp("tiny-cifar")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def _recorded_seconds(path):
    """Seconds a lesson's cells took when it was last executed (nbclient's timestamps in each
    cell's metadata); 0 when the notebook holds none."""
    import json
    from datetime import datetime

    total = 0.0
    for cell in json.loads(path.read_text()).get("cells", []):
        t = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in t and "shell.execute_reply" in t:
            start, end = (datetime.fromisoformat(t[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            total += (end - start).total_seconds()
    return total


def pytest_collection_modifyitems(config, items):
    """The longest lessons first, then everything else in its usual order. `make test` runs two
    xdist workers with --dist loadfile, which hand out whole files in collection order: a long
    lesson collected last would run alone at the end while the other worker idles."""
    seconds = {}
    for item in items:
        path = item.path
        if path.suffix == ".ipynb" and path not in seconds:
            seconds[path] = _recorded_seconds(path)
    order = {path: rank for rank, path in enumerate(sorted(seconds, key=seconds.get, reverse=True))}
    items.sort(key=lambda item: order.get(item.path, len(order)))  # stable: cells keep their order
