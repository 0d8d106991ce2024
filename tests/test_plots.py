"""The lesson plots draw what their captions say."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def maps():
    rng = np.random.default_rng(0)
    weights = rng.random((3, 64))
    return np.zeros((3, 3, 32, 32), dtype=np.uint8), weights / weights.sum(1, keepdims=True)


def test_token_maps_with_a_colorbar_share_one_scale(maps):
    import matplotlib.pyplot as plt

    from leanformer.plots import show_token_maps

    images, weights = maps
    fig = show_token_maps(images, weights, colorbar_label="weight", ncols=2)
    drawn = [im for ax in fig.axes for im in ax.get_images() if im.get_array().shape == (8, 8)]
    assert len(drawn) == 3
    assert {im.get_clim() for im in drawn} == {(0.0, weights.max())}
    colorbars = [ax for ax in fig.axes if ax.get_ylabel() == "weight"]
    assert len(colorbars) == 1
    plt.close(fig)
