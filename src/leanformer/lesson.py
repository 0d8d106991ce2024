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
import random
from pathlib import Path

from .config import is_quick  # setup reads it; lessons may call lesson.is_quick() too
from .files import atomic_write


def setup(seed: int = 0) -> bool:
    """Seed every generator, apply the plot style, and return True in quick mode."""
    import numpy as np
    import torch

    # Imported here, not above: the notebook tools below (stamp, execute) need no matplotlib.
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


def glue(name, value):
    """Keep ``value`` under ``name`` for the sentences that ``say`` writes, and return it. A
    numpy or torch scalar is kept as the Python number it holds."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    _GLUED[name] = value
    return value


def render(template, values=None):
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


def say(template, **values):
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


def load_or_train(path, train, retrain=False):
    """The model saved at ``path``; if the file is missing, or ``retrain`` is set (a lesson in
    full mode, say), ``train()`` makes it here instead and its result is returned (not saved: the
    training commands save models, with their provenance)."""
    from .checkpoint import load_model

    path = Path(path)
    if path.exists() and not retrain:
        return load_model(path)
    if not retrain:
        print(f"No {path.name}: training it here (checkpoints/README.md gives the command and its time).")
    return train()


def show_source(obj):
    """Display the source of a leanformer class or function, so that a lesson shows the code it
    uses without copying it."""
    import inspect

    from IPython.display import Markdown, display

    display(Markdown(f"```python\n{inspect.getsource(obj).rstrip()}\n```"))


# --- keeping every lesson's Colab badge and set-up cell in step with _config.yml -------------

COLAB_CELL = '''\
# In Colab: fetch the course and install its package. Anywhere else this cell does nothing.
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.isdir("lean-transformers"):
    subprocess.run(["git", "clone", "--depth", "1", "{url}", "lean-transformers"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "lean-transformers"], check=True)
    sys.path.insert(0, os.path.abspath("lean-transformers/src"))'''

BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})"


def repository(config="_config.yml"):
    """(url, branch) from the book's _config.yml, the one place that names the repository."""
    import yaml

    with open(config, encoding="utf-8") as f:
        repo = yaml.safe_load(f)["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def stamp_notebooks(root: str | Path = ".", check: bool = False) -> list[Path]:
    """Write the Colab badge (first cell) and the Colab set-up cell (second cell, tagged
    ``colab-setup``) of every notebook from _config.yml. Returns the notebooks that changed
    (or, with ``check=True``, that would change)."""
    import nbformat

    root = Path(root)
    url, branch = repository(root / "_config.yml")
    changed = []
    for path in sorted((root / "notebooks").glob("[0-9]*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cells = nb["cells"]
        link = (url.replace("https://github.com/", "https://colab.research.google.com/github/")
                + f"/blob/{branch}/notebooks/{path.name}")
        lines = "".join(cells[0]["source"]).split("\n")
        rest = [line for line in lines[1:] if "colab-badge.svg" not in line]
        while rest and not rest[0].strip():
            rest.pop(0)
        title_src = "\n".join([lines[0], "", BADGE.format(link=link), ""] + rest)
        setup_src = COLAB_CELL.format(url=url + ".git")
        tags = ["colab-setup", "hide-cell"]
        has_setup = len(cells) > 1 and "colab-setup" in cells[1].get("metadata", {}).get("tags", [])
        if (cells[0]["source"] == title_src and has_setup and cells[1]["source"] == setup_src
                and cells[1]["metadata"].get("tags") == tags):
            continue
        changed.append(path)
        if check:
            continue
        cells[0]["source"] = title_src
        if not has_setup:
            cells.insert(1, nbformat.v4.new_code_cell(setup_src))
        cells[1]["source"] = setup_src
        cells[1]["metadata"]["tags"] = tags
        atomic_write(path, lambda tmp: nbformat.write(nb, str(tmp)))
    return changed


def execute_notebook(path: str | Path, timeout: int = 900, machine: str | None = None) -> None:
    """Run a notebook top to bottom in place, keeping its outputs. Progress-bar updates
    (carriage returns) are collapsed, so a saved output holds the final line, not every frame.
    ``machine`` (a description) is recorded in the notebook's metadata, so that a test can check
    that every saved lesson was executed on the same machine."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    if machine is not None:
        nb.metadata["leanformer"] = {"machine": machine}
    atomic_write(path, lambda tmp: nbformat.write(nb, str(tmp)))  # a kill mid-write keeps the old notebook
