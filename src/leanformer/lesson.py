"""What every lesson calls in its setup cell: the quick/full switch, the seed, the plot style,
and ``glue`` and ``say`` for the sentences that quote a measurement.

Quick or full
-------------
Quick mode (the default) trains small models on few images so that every notebook runs in
about two minutes on a laptop CPU; tests and CI use it. Full mode runs each lesson as
written for a reader with a GPU or time to spare. Choose it with the environment variable
``LEANFORMER_MODE=full`` or by setting ``QUICK = False`` in a lesson's setup cell
(``config.is_quick`` reads the variable; ``lesson.is_quick`` is the same function).

Sentences with measured numbers
-------------------------------
A sentence that quotes a measurement is the Markdown output of a cell, not a markdown cell:
the book, JupyterLab and Colab then all show the same text, with the numbers of the run that
made it. A code cell keeps a value under a name (``lesson.glue("speedup", 2.5)``); a prose
cell right after it writes the sentence from a template with named values
(``lesson.say("It runs {speedup:.2f} times as fast.")``). Such a cell is hidden in all three
places: the book's ``remove-input`` tag, JupyterLab's ``source_hidden`` and Colab's form
view (``PROSE_METADATA``).
"""
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Mapping

from .checkpoint import load_model
from .config import is_quick  # setup reads it; lessons may call lesson.is_quick() too


def setup(seed: int = 0) -> bool:
    """Seed every generator, apply the plot style, and return True in quick mode."""
    import numpy as np
    import torch

    # Imported here, not above: a lesson that imports this module for glue or say alone
    # need not load matplotlib.
    from .plots import use_course_style

    _GLUED.clear()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # torch.utils.benchmark imports torch.utils.cpp_extension, which logs a guess at CUDA_HOME on
    # a machine without CUDA. The lessons build no extensions, so the line is only noise.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    _quiet_library_noise()
    _inline_plots()
    use_course_style()
    quick = is_quick()
    print(f"leanformer: {'quick' if quick else 'full'} mode, seed {seed}")
    return quick


# Warnings that PyTorch's compiler and exporter print about their own internals: they say
# nothing about the lesson and nothing a reader can act on.
_NOISE = (
    ("To copy construct from a tensor", r"torch\._inductor"),
    ("No complete tensor found in the group", r"torch\.export"),
    ("TypedStorage is deprecated", r"torch\."),
)


def _quiet_library_noise():
    import warnings

    for message, module in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=module)
    # torch.compile logs that torchao's enums no longer need registering: a note for torchao.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def _inline_plots():
    """In a notebook kernel, draw figures into the notebook even when MPLBACKEND=Agg is set
    (as `make test` and `make notebooks` set it), so that saved outputs keep their plots."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell":
        shell.run_line_magic("matplotlib", "inline")


# The values a lesson's prose quotes, by name: filled by glue, read by say.
_GLUED: dict = {}

# How a prose cell is kept out of the reader's way: the book drops its source
# (remove-input), JupyterLab collapses it, Colab shows it as a form with only its title.
PROSE_TITLE = "#@title This run's numbers, in words"
PROSE_METADATA = {"tags": ["remove-input"], "jupyter": {"source_hidden": True}, "cellView": "form"}


def glue(name: str, value: Any) -> Any:
    """Keep ``value`` under ``name`` for the sentences that ``say`` writes, and return it. A
    numpy or torch scalar is kept as the Python number it holds."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    _GLUED[name] = value
    return value


def render(template: str, values: Mapping[str, Any] | None = None) -> str:
    """``template`` (dedented, stripped) with each ``{name}`` or ``{name:format}`` filled from
    ``values`` (by default, every value glued so far). Literal braces are written ``{{`` and
    ``}}``, as in ``str.format``."""
    import textwrap

    values = _GLUED if values is None else values
    text = textwrap.dedent(template).strip()
    try:
        return text.format_map(values)
    except KeyError as err:
        name = err.args[0]
        raise KeyError(f"the sentence quotes {{{name}}}, but no value is glued under {name!r}: "
                       f"run the cell that calls lesson.glue({name!r}, ...) first") from None


def say(template: str, **values: Any) -> None:
    """Display ``template`` as Markdown, filled from the glued values (and ``values``, which
    take precedence). In a notebook the output is Markdown with the same text as its plain
    fallback; elsewhere the text is printed."""
    text = render(template, {**_GLUED, **values})
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    display({"text/markdown": text, "text/plain": text}, raw=True)


def load_or_train(path: str | os.PathLike, train: Callable[[], Any], retrain: bool = False) -> Any:
    """The model saved at ``path``; if the file is missing, or ``retrain`` is set (a lesson in
    full mode, say), ``train()`` makes it here instead and its result is returned (not saved: the
    training commands save models, with their provenance)."""
    path = Path(path)
    if path.exists() and not retrain:
        return load_model(path)
    if not retrain:
        print(f"No {path.name}: training it here (checkpoints/README.md gives the command and its time).")
    return train()


def show_source(obj: Any) -> None:
    """Display the source of a leanformer class or function, so that a lesson shows the code it
    uses without copying it."""
    import inspect

    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```"))
