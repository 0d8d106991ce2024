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
