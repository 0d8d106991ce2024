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
