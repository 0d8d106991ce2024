import numpy as np
import torch

from leanformer import lesson


def test_glue_stores_numpy_and_torch_scalars_as_python_numbers(monkeypatch):
    import myst_nb

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: stored.update({name: value}))
    assert lesson.glue("a", np.float64(2.5)) == 2.5
    lesson.glue("b", torch.tensor(3))
    lesson.glue("c", "less")
    assert stored == {"a": 2.5, "b": 3, "c": "less"}
    assert type(stored["a"]) is float and type(stored["b"]) is int
