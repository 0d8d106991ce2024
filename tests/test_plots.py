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


def test_accuracy_curves_draws_each_run_from_its_record_and_each_line():
    import matplotlib.pyplot as plt

    from leanformer.plots import accuracy_curves

    history = [{"epoch": e, "test_acc": a} for e, a in ((1, 0.5), (2, 0.6), (3, 0.7))]
    model = type("M", (), {"provenance": {"history": history}})()
    fig, ax = plt.subplots()
    accuracy_curves({"as a model": model, "as a record": {"history": history[1:]}}, ax,
                    {"reference": 0.8, "target": 0.9}, first_epoch=2)
    runs, lines = ax.get_lines()[:2], ax.get_lines()[2:]
    assert [list(line.get_xdata()) for line in runs] == [[2, 3], [2, 3]]  # epoch 1 left out
    assert list(runs[0].get_ydata()) == [60.0, 70.0]  # per cent
    assert [line.get_ydata()[0] for line in lines] == [80.0, 90.0]
    assert [line.get_label() for line in ax.get_lines()] == ["as a model", "as a record", "reference", "target"]
    plt.close(fig)
