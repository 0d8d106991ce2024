import pytest
import torch

from leanformer.augment import augment, auto_augment, mix


def test_augment_crops_and_flips_without_inventing_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = augment(x, g, padding=4, flip=True)
    assert y.shape == x.shape
    # No padding and no flip is the identity; a crop only moves pixels or adds zero padding.
    assert torch.equal(augment(x, g, padding=0, flip=False), x)
    values = set(x[0].flatten().tolist()) | {0.0}
    assert set(y[0].flatten().tolist()) <= values
    flipped = augment(x, g, padding=0, flip=True)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(3)).flatten(1).all(1)
    assert torch.all(same | mirrored) and same.any() and mirrored.any()


def test_mix_blends_or_pastes_and_reports_the_share():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32), torch.arange(16) % 10
    assert mix(x, y, g, prob=0.0) == (x, y, y, 1.0)
    kinds = set()
    for _ in range(40):
        xm, ya, yb, lam = mix(x, y, g, prob=1.0)
        assert torch.equal(ya, y) and torch.equal(yb, y.flip(0)) and 0.0 <= lam <= 1.0
        from_x = (xm == x).flatten(1).float().mean(1)
        from_other = (xm == x.flip(0)).flatten(1).float().mean(1)
        if torch.allclose(xm, lam * x + (1 - lam) * x.flip(0)) and 0 < lam < 1:
            kinds.add("mixup")
        else:  # CutMix: every pixel comes from one of the two images, lam of them from x
            assert torch.all(from_x + from_other == 1.0)
            assert torch.allclose(from_x, torch.full_like(from_x, lam))
            kinds.add("cutmix")
    assert kinds == {"mixup", "cutmix"}


def test_auto_augment_edits_each_group_its_own_way_and_repeats_under_a_seed():
    x = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()  # one image, 64 times
    torch.manual_seed(0)
    y = auto_augment(x, "cifar10", group=8)
    assert y.shape == x.shape and y.dtype == x.dtype and 0.0 <= y.min() and y.max() <= 1.0
    groups = y.view(8, 8, -1)
    assert torch.all(groups == groups[:, :1])  # a group shares one sub-policy...
    distinct = {tuple(g[0].tolist()) for g in groups}
    assert len(distinct) > 1 and not torch.equal(y, x)  # ...and groups draw their own
    torch.manual_seed(0)
    assert torch.equal(auto_augment(x, "cifar10", group=8), y)
    with pytest.raises(ValueError, match="must be one of cifar10"):
        auto_augment(x, "bogus")
