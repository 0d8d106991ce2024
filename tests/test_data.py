import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from leanformer import data as D
from leanformer.data import CLASSES, DataError, load_cifar10
from leanformer.files import sha256_file


def jpeg_bytes(seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_folders(root, per_class=2):
    for split in ("train", "test"):
        for c, name in enumerate(CLASSES):
            folder = root / "cifar10-jpg" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i:04d}.jpg").write_bytes(jpeg_bytes(c * 100 + i))
    return root / "cifar10-jpg"


def make_tar(folder, dest):
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


def no_cache_written(cache):
    return not cache.exists() or not list(cache.glob("*.npz"))


def test_shipped_subset_is_real_stratified_and_checked(subset):
    assert len(subset.train_labels) == 5000 and len(subset.test_labels) == 10000
    assert torch.bincount(subset.train_labels).tolist() == [500] * 10
    assert torch.bincount(subset.test_labels).tolist() == [1000] * 10
    assert subset.train_images.shape == (5000, 3, 32, 32) and subset.train_images.dtype == torch.uint8
    assert "shipped subset" in subset.source
    # Real photographs, not noise: the channel means are CIFAR-10's (about 0.49, 0.48, 0.45).
    mean = subset.test_images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.494, 0.485, 0.450]), atol=0.01)
    assert sha256_file(D.SUBSET_PATH) == D.SUBSET_SHA256


def test_class_folders_and_tar_give_the_same_arrays(tmp_path, tmp_cache):
    folder = make_folders(tmp_path / "src")
    a = load_cifar10(folder, verbose=False)
    b = load_cifar10(make_tar(folder, tmp_path / "c.tar.gz"), verbose=False)
    assert len(a.train_labels) == 20 and len(a.test_labels) == 20
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert a.train_labels.tolist() == sorted(a.train_labels.tolist())  # deterministic order
    # The parent of the class-folder tree works as well.
    assert torch.equal(load_cifar10(tmp_path / "src", verbose=False).train_images, a.train_images)


def test_environment_variable_is_used(tmp_path, tmp_cache, monkeypatch, capsys):
    folder = make_folders(tmp_path / "src", per_class=1)
    monkeypatch.setenv("LEANFORMER_DATA", str(folder))
    data = load_cifar10()
    assert len(data.train_labels) == 10
    assert str(folder) in capsys.readouterr().out  # the loader says which source it used


def test_second_load_comes_from_the_cache(tmp_path, tmp_cache, monkeypatch):
    archive = make_tar(make_folders(tmp_path / "src"), tmp_path / "c.tar.gz")
    first = load_cifar10(archive, verbose=False)
    assert len(list(tmp_cache.glob("cifar10-*.npz"))) == 1

    def fail(*args):
        raise AssertionError("the source was decoded again")

    monkeypatch.setattr(D, "_read_tar", fail)
    second = load_cifar10(archive, verbose=False)
    assert torch.equal(first.train_images, second.train_images)


def test_a_damaged_cache_is_rebuilt(tmp_path, tmp_cache):
    archive = make_tar(make_folders(tmp_path / "src"), tmp_path / "c.tar.gz")
    first = load_cifar10(archive, verbose=False)
    (cache_file,) = tmp_cache.glob("cifar10-*.npz")
    cache_file.write_bytes(b"not an npz")
    assert torch.equal(load_cifar10(archive, verbose=False).train_images, first.train_images)


def test_missing_path_names_it_and_says_how_to_fix(tmp_path, tmp_cache):
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg and "class-folder" in msg


def test_nothing_found_lists_every_place_looked(tmp_path, tmp_cache, monkeypatch):
    monkeypatch.setattr(D, "SUBSET_PATH", tmp_path / "gone.tar.gz")
    with pytest.raises(DataError) as e:
        load_cifar10()
    msg = str(e.value)
    for place in ("LEANFORMER_DATA", "torchvision download", str(tmp_path / "gone.tar.gz")):
        assert place in msg
    assert "git checkout data/" in msg


def test_a_directory_without_images_is_refused(tmp_path, tmp_cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no CIFAR-10 images"):
        load_cifar10(tmp_path / "empty")


def test_truncated_archive_names_the_file_and_leaves_no_cache(tmp_path, tmp_cache):
    archive = make_tar(make_folders(tmp_path / "src"), tmp_path / "c.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError) as e:
        load_cifar10(cut)
    assert str(cut) in str(e.value) and "truncated or corrupt" in str(e.value)
    assert no_cache_written(tmp_cache)


def test_corrupt_image_names_the_member_and_leaves_no_cache(tmp_path, tmp_cache):
    folder = make_folders(tmp_path / "src")
    bad = folder / "test" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError) as e:
        load_cifar10(make_tar(folder, tmp_path / "c.tar.gz"))
    assert "test/cat/0001.jpg" in str(e.value)
    assert no_cache_written(tmp_cache)


def test_checksum_mismatch_names_the_file_and_leaves_no_cache(tmp_path, tmp_cache, monkeypatch):
    copy = tmp_path / "cifar10-subset.tar.gz"
    shutil.copy(D.SUBSET_PATH, copy)
    with open(copy, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(D, "SUBSET_PATH", copy)
    with pytest.raises(DataError) as e:
        load_cifar10()
    assert str(copy) in str(e.value) and "Checksum mismatch" in str(e.value)
    assert no_cache_written(tmp_cache)


def test_batches_cover_every_image_once(subset):
    seen = torch.cat([y for _, y in D.batches(subset.train_images, subset.train_labels, 512, True,
                                              torch.Generator().manual_seed(0))])
    assert torch.equal(seen.sort().values, subset.train_labels.sort().values)


def test_an_incomplete_batches_folder_is_refused(tmp_path, tmp_cache):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataError, match="not a complete cifar-10-batches-py folder"):
        load_cifar10(folder)
    assert no_cache_written(tmp_cache)


def test_a_file_that_is_not_an_archive_is_refused(tmp_path, tmp_cache):
    f = tmp_path / "images.zip"
    f.write_bytes(b"PK")
    with pytest.raises(DataError, match="not a .tar.gz archive"):
        load_cifar10(f)


def test_quick_mode_never_downloads_and_uses_the_shipped_subset(tmp_cache, monkeypatch):
    monkeypatch.setenv("LEANFORMER_MODE", "quick")
    monkeypatch.delenv("LEANFORMER_OFFLINE", raising=False)  # the network would be allowed
    monkeypatch.setattr(D, "_online", lambda *a, **k: pytest.fail("quick mode asked the network"))
    # Even a torchvision copy in the cache is passed over: quick mode means the same 5,000 images.
    (tmp_cache / "torchvision" / "cifar-10-batches-py").mkdir(parents=True)
    data = load_cifar10(verbose=False)
    assert "shipped subset" in data.source and len(data.train_labels) == 5000
    assert data.pixels == "jpeg-q75" and "JPEG (quality 75) copy" in data.test_set


def test_full_mode_looks_for_the_official_download(tmp_cache, monkeypatch):
    monkeypatch.setenv("LEANFORMER_MODE", "full")
    monkeypatch.delenv("LEANFORMER_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(D, "_online", lambda *a, **k: asked.append(1) or False)
    data = load_cifar10(verbose=False)
    assert asked == [1] and "shipped subset" in data.source  # offline: falls back to the subset


def test_make_subset_is_stratified_reproducible_and_loads(tmp_path, tmp_cache):
    source = make_tar(make_folders(tmp_path / "src", per_class=3), tmp_path / "full.tar.gz")
    a, b = tmp_path / "a" / "subset.tar.gz", tmp_path / "b" / "subset.tar.gz"
    sha = D.make_subset(source, a, per_class=2, seed=0)
    assert D.make_subset(source, b, per_class=2, seed=0) == sha == sha256_file(a)
    assert a.read_bytes() == b.read_bytes()  # byte for byte
    data = load_cifar10(a, verbose=False)
    assert torch.bincount(data.train_labels).tolist() == [2] * 10  # 2 of each class's 3
    assert torch.bincount(data.test_labels).tolist() == [3] * 10  # every test image
    assert [p.name for p in a.parent.iterdir()] == ["subset.tar.gz"]


def test_a_failed_make_subset_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    source = make_tar(make_folders(tmp_path / "src", per_class=2), tmp_path / "full.tar.gz")
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "subset.tar.gz"
    dest.write_bytes(b"the previous subset")

    with pytest.raises(DataError, match="no archive at"):  # a source that is not there
        D.make_subset(tmp_path / "nowhere.tar.gz", dest)
    with pytest.raises(DataError, match="fewer than --per-class 5"):
        D.make_subset(source, dest, per_class=5)

    def disk_full(self, *args, **kwargs):  # fails midway through writing the archive
        raise OSError("No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "addfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        D.make_subset(source, dest, per_class=1)
    assert [p.name for p in out.iterdir()] == ["subset.tar.gz"]
    assert dest.read_bytes() == b"the previous subset"


def test_train_sample_draws_training_images_with_their_labels_reproducibly():
    from leanformer.data import CIFAR10

    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 32, 32)
    data = CIFAR10(images, torch.arange(20), images[:5], torch.arange(5), source="here")
    x, y = data.train_sample(6, seed=3)
    assert x.shape == (6, 3, 32, 32)
    assert torch.equal(x[:, 0, 0, 0].long(), y)  # each image with its own label
    again, _ = data.train_sample(6, seed=3)
    other, _ = data.train_sample(6, seed=4)
    assert torch.equal(x, again) and not torch.equal(x, other)
    assert len(set(y.tolist())) == 6  # drawn without replacement
    # The draw the course has always made (the shipped pruned model's 2,048 images).
    pick = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:6]
    assert torch.equal(y, pick)
    for bad in (0, 21, 2.5):
        with pytest.raises(ValueError, match="from 1 to 20, got"):
            data.train_sample(bad)
