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



def small(data, n_train=1024, n_test=1000):
    """A class-balanced slice of a CIFAR10 (the subset's images are in class order), so that a
    test trains in seconds. Test modules import it (``from conftest import small``)."""
    from leanformer.data import CIFAR10

    return CIFAR10(data.train_images[:: len(data.train_labels) // n_train][:n_train],
                   data.train_labels[:: len(data.train_labels) // n_train][:n_train],
                   data.test_images[:: len(data.test_labels) // n_test],
                   data.test_labels[:: len(data.test_labels) // n_test], data.source)


def tiny_vit(seed: int = 0, **cfg):
    """A small Vision Transformer in eval mode, its weights drawn from ``seed``: by default one
    block (conv tokenizer with 16 and 32 channels, 32 wide, 2 heads, 64 MLP units); ``cfg``
    overrides any ``ViTConfig`` field. A model file in milliseconds. Test modules import it
    (``from conftest import tiny_vit``) or take the ``make_tiny_vit`` fixture."""
    import torch

    from leanformer.model import ViTConfig, VisionTransformer

    torch.manual_seed(seed)
    fields = {"tokenizer": "conv", "conv_channels": (16, 32), "embed_dim": 32, "depth": 1, "num_heads": 2,
              **cfg}
    return VisionTransformer(ViTConfig(**fields)).eval()


@pytest.fixture(scope="session")
def make_tiny_vit():
    """``make_tiny_vit(seed, **cfg)``: ``tiny_vit`` as a fixture."""
    return tiny_vit


@pytest.fixture
def misfit_model_file(tmp_path, make_tiny_vit):
    """A model file whose weights do not fit the config it records (blocks.0.mlp.fc1 cut to 10
    units), with a sha256 that matches them: a consistent file of the wrong shape."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from leanformer import checkpoint
    from leanformer.files import tensors_sha256

    path = tmp_path / "m.safetensors"
    checkpoint.save_model(make_tiny_vit(), path)
    with safe_open(str(path), framework="pt") as f:  # keep the metadata, cut one tensor
        metadata = f.metadata()
    state = load_file(str(path))
    state["blocks.0.mlp.fc1.weight"] = state["blocks.0.mlp.fc1.weight"][:10].contiguous()
    state["blocks.0.mlp.fc1.bias"] = state["blocks.0.mlp.fc1.bias"][:10].contiguous()
    metadata["sha256"] = tensors_sha256(state)
    save_file(state, str(path), metadata=metadata)
    return path


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
