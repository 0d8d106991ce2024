import numpy as np
import pytest
import torch

from leanformer import lesson


@pytest.fixture
def glued():
    """An empty store of glued values, restored after the test."""
    saved = dict(lesson._GLUED)
    lesson._GLUED.clear()
    yield lesson._GLUED
    lesson._GLUED.clear()
    lesson._GLUED.update(saved)


def test_glue_keeps_numpy_and_torch_scalars_as_python_numbers(glued):
    assert lesson.glue("a", np.float64(2.5)) == 2.5
    lesson.glue("b", torch.tensor(3))
    lesson.glue("c", "less")
    assert glued == {"a": 2.5, "b": 3, "c": "less"}
    assert type(glued["a"]) is float and type(glued["b"]) is int


def test_render_fills_named_values_with_their_formats(glued):
    lesson.glue("acc", 0.8721)
    lesson.glue("n", 10000)
    lesson.glue("word", "faster")
    text = lesson.render("""
        It gets {acc:.2%} of {n:,} images right
        and runs {word}; $\\frac{{1}}{{2}}$ stays maths.
    """)
    assert text == "It gets 87.21% of 10,000 images right\nand runs faster; $\\frac{1}{2}$ stays maths."


def test_render_names_a_value_that_was_never_glued(glued):
    with pytest.raises(KeyError, match=r"no value is glued under 'speedup'.*lesson\.glue\('speedup'"):
        lesson.render("It runs {speedup:.2f} times as fast.")


def test_say_values_take_precedence_and_print_outside_a_notebook(glued, capsys):
    lesson.glue("x", 1)
    lesson.say("x is {x}, y is {y}", y=2)
    lesson.say("x is {x}", x=3)
    assert capsys.readouterr().out == "x is 1, y is 2\nx is 3\n"


def test_setup_forgets_the_values_of_an_earlier_run(glued):
    lesson.glue("stale", 1.0)
    lesson.setup(seed=0)
    with pytest.raises(KeyError):
        lesson.render("{stale}")


def test_say_in_a_kernel_shows_markdown_with_the_same_plain_text(glued, monkeypatch):
    import IPython
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw=False: shown.append((obj, raw)))
    lesson.glue("acc", 0.5)
    lesson.say("**{acc:.0%}** right")
    assert shown == [({"text/markdown": "**50%** right", "text/plain": "**50%** right"}, True)]


def test_load_or_train_loads_a_saved_model_and_trains_only_when_asked_or_missing(tmp_path, capsys):
    from leanformer.checkpoint import save_model
    from leanformer.model import ViTConfig, VisionTransformer

    model = VisionTransformer(ViTConfig(embed_dim=16, depth=1, num_heads=2, mlp_ratio=1.0))
    save_model(model, tmp_path / "m.safetensors", {"note": "saved"})
    trained = []

    def train():
        trained.append(1)
        return "trained"

    loaded = lesson.load_or_train(tmp_path / "m.safetensors", train)
    assert loaded.provenance["note"] == "saved" and not trained
    assert lesson.load_or_train(tmp_path / "m.safetensors", train, retrain=True) == "trained"
    assert lesson.load_or_train(tmp_path / "missing.safetensors", train) == "trained"
    assert trained == [1, 1] and "No missing.safetensors" in capsys.readouterr().out
