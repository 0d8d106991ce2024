import pytest
import torch

from leanformer.data import CIFAR10, DataError
from leanformer.splits import holdout, stratified_split


def test_a_stratified_split_is_disjoint_balanced_and_seeded(subset):
    labels = subset.train_labels
    train, val = stratified_split(labels, (3000, 1000), seed=0)
    assert len(train) == 3000 and len(val) == 1000
    assert not set(train.tolist()) & set(val.tolist())  # disjoint
    assert torch.bincount(labels[train], minlength=10).tolist() == [300] * 10
    assert torch.bincount(labels[val], minlength=10).tolist() == [100] * 10
    again = stratified_split(labels, (3000, 1000), seed=0)
    other = stratified_split(labels, (3000, 1000), seed=1)
    assert all(torch.equal(a, b) for a, b in zip((train, val), again))
    assert not torch.equal(val, other[1])


def test_a_split_that_cannot_be_stratified_is_refused_with_the_reason():
    labels = torch.arange(10).repeat(3)  # three images of each class
    with pytest.raises(DataError, match="positive multiple of the 10 classes"):
        stratified_split(labels, (15, 10))
    with pytest.raises(DataError, match="class 0 has 3 images, fewer than the 4"):
        stratified_split(labels, (20, 20))
    with pytest.raises(DataError, match="positive multiple"):
        stratified_split(labels, (0, 10))


def test_holdout_trains_on_one_part_validates_on_another_and_keeps_the_test_set(subset):
    tuning = holdout(subset, 400, 200, seed=3)
    assert isinstance(tuning, CIFAR10)
    assert len(tuning.train_labels) == 400 and len(tuning.val_labels) == 200
    assert torch.equal(tuning.test_images, subset.test_images)
    assert tuning.pixels == subset.pixels and "seed 3" in tuning.source
    train = {tuple(x.flatten()[:64].tolist()) for x in tuning.train_images}
    val = {tuple(x.flatten()[:64].tolist()) for x in tuning.val_images}
    assert len(train) == 400 and not train & val  # none both trained and validated on
    assert "val=200" in repr(tuning) and subset.val_labels is None
