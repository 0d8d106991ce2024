"""Every lesson has the course's shape, and its saved outputs come from one clean run."""
import ast
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from leanformer.lesson import PROSE_TITLE

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def _notebook_tools():
    """tools/notebooks.py, the book's notebook tooling: a script beside the package, not in it
    (loaded from its path, as the name ``notebooks`` is also the lessons' folder)."""
    spec = importlib.util.spec_from_file_location("notebook_tools", ROOT / "tools" / "notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stamp_notebooks = _notebook_tools().stamp_notebooks


def cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def src(cell):
    return "".join(cell["source"])


def test_there_are_lessons_and_all_are_in_the_toc():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    assert len(LESSONS) >= 2
    for nb in LESSONS:
        assert f"notebooks/{nb.stem}" in files, f"{nb.name} is missing from _toc.yml"


def test_badges_and_colab_cells_follow_config():
    assert stamp_notebooks(ROOT, check=True) == [], "run `make stamp`"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_lesson_shape(path):
    cs = cells(path)
    assert re.match(rf"# {path.name[:2]} · ", src(cs[0])), "title: '# NN · Title'"
    badge = re.search(r"\[!\[Open In Colab\]\(([^)]+)\)\]", src(cs[0]))
    assert badge, "the title cell holds the Colab badge (`make stamp`)"
    # The image ships with the book, so that the badge shows when the book is read offline.
    assert not badge.group(1).startswith("http"), badge.group(1)
    assert (path.parent / badge.group(1)).is_file(), badge.group(1)
    assert "colab-setup" in cs[1]["metadata"].get("tags", [])
    assert "lesson.setup(" in src(cs[2]) and "QUICK" in src(cs[2])
    code = [c for c in cs if c["cell_type"] == "code"]
    assert any("assert " in src(c) for c in code), "a lesson checks its claims"
    assert any(src(c).startswith("# NBVAL_CHECK_OUTPUT") for c in code)
    markdown = "\n".join(src(c) for c in cs if c["cell_type"] == "markdown")
    assert "What it cost" in markdown and "Exercises" in markdown
    assert any("hide-cell" in c["metadata"].get("tags", []) for c in code[2:]), "hidden solutions"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_saved_outputs_are_one_clean_top_to_bottom_run(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert None not in counts[1:], "every cell after the Colab cell has run"
    ran = [n for n in counts if n is not None]
    assert ran == sorted(ran) and len(set(ran)) == len(ran)
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert images, "plots are saved with the notebook"


def is_prose(cell):
    """A cell whose only job is to write the sentences that quote this run's measurements."""
    return cell["cell_type"] == "code" and "lesson.say(" in src(cell)


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_no_markdown_cell_holds_a_glue_role(path):
    """JupyterLab and Colab do not know myst-nb's roles: a `{glue:text}` left in a markdown cell
    shows there as raw text. Sentences with measured numbers are prose cells (lesson.say)."""
    raw = [(i, m) for i, c in enumerate(cells(path)) if c["cell_type"] == "markdown"
           for m in re.findall(r"\{glue[^}]*\}`?[^`\s]*`?", src(c))]
    assert not raw, f"(cell index, role) in markdown cells; move the sentence into lesson.say: {raw}"


def test_no_book_page_holds_a_glue_role():
    pages = [p.name for p in (ROOT / "book").glob("*.md") if "{glue" in p.read_text(encoding="utf-8")]
    assert not pages, f"glue roles in {pages}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_prose_cells_are_hidden_in_the_book_jupyterlab_and_colab(path):
    """The book drops the source of a cell tagged remove-input, JupyterLab collapses a cell whose
    source_hidden is set, and Colab shows a cell with cellView form as its #@title alone."""
    prose = [(i, c) for i, c in enumerate(cells(path)) if is_prose(c)]
    assert prose, "a lesson quotes its measurements through lesson.say"
    for i, c in prose:
        meta = c["metadata"]
        assert "remove-input" in meta.get("tags", []), f"cell {i}: no remove-input tag"
        assert meta.get("jupyter", {}).get("source_hidden") is True, f"cell {i}: source not hidden"
        assert meta.get("cellView") == "form", f"cell {i}: not a Colab form"
        assert src(c).startswith(PROSE_TITLE + "\n"), f"cell {i}: Colab's form needs {PROSE_TITLE!r}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_prose_cells_saved_their_sentences_as_markdown(path):
    """What a reader sees before running the lesson: every prose cell's saved output is one
    Markdown text with all its names filled in."""
    for i, c in enumerate(cells(path)):
        if not is_prose(c):
            continue
        shown = [o for o in c["outputs"] if "text/markdown" in o.get("data", {})]
        assert len(shown) == 1 and len(c["outputs"]) == 1, f"cell {i}: {len(c['outputs'])} outputs"
        text = "".join(shown[0]["data"]["text/markdown"])
        assert text.strip(), f"cell {i}: empty sentence"
        left = re.findall(r"\{[A-Za-z_][\w-]*:[^{}\s]*\}|\{glue", text)  # {name:format} unfilled
        assert not left, f"cell {i}: {left} left unfilled in {text[:200]!r}"


def test_saved_lessons_were_executed_on_one_machine():
    """A figure in one lesson is compared with figures in others: all saved outputs come from
    one `make notebooks` run on one machine, and each cost table names that machine."""
    machines = {}
    for path in LESSONS:
        meta = json.loads(path.read_text(encoding="utf-8"))["metadata"]
        machines[path.name] = meta.get("leanformer", {}).get("machine")
    assert None not in machines.values(), f"run `make notebooks`: no machine recorded in {machines}"
    assert len(set(machines.values())) == 1, f"lessons executed on different machines: {machines}"
    cpu = next(iter(machines.values())).split(" cores,")[0]
    for path in LESSONS:
        for c in cells(path):
            for o in c.get("outputs", []):
                text = "".join(o.get("text", ""))
                for line in re.findall(r"Timed side by side on (.*)", text):
                    assert line.startswith(cpu), f"{path.name}: a cost table timed on {line}, not {cpu}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_code_cells_stay_short(path):
    """A code cell over 25 lines hides the lesson in plumbing: split it or move it to leanformer.
    Lines are counted as Python counts them, one a statement (a call wrapped over several
    physical lines to fit 88 columns is one line), plus comment lines; import statements do not
    count (the setup cell lists what the lesson uses, one module a line)."""
    def length(code):
        tree = ast.parse(code)
        starts = {node.lineno for node in ast.walk(tree) if isinstance(node, ast.stmt)
                  and not isinstance(node, (ast.Import, ast.ImportFrom))}
        comments = {n for n, line in enumerate(code.splitlines(), 1)
                    if line.strip().startswith("#")}
        return len(starts | comments)

    long = [(i, length(src(c))) for i, c in enumerate(cells(path))
            if c["cell_type"] == "code" and not is_prose(c) and length(src(c)) > 25]
    assert not long, f"(cell index, lines) over 25 lines, imports and blank lines aside: {long}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_code_lines_fit_the_page(path):
    """The book column shows about 88 characters of code: a longer line is cut off on the
    page. Prose cells are exempt (the book hides their source)."""
    wide = [(i, len(line), line[:40]) for i, c in enumerate(cells(path))
            if c["cell_type"] == "code" and not is_prose(c)
            for line in src(c).splitlines() if len(line) > 88]
    assert not wide, f"(cell index, line length, line start) over 88 characters: {wide}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_no_cell_echoes_a_glued_value(path):
    """``lesson.glue`` returns its value, so a cell that ends with it prints a bare number below
    the code; end such a line with ``;``."""
    def echoes(code):
        body = ast.parse(code).body
        last = body[-1] if body else None
        return (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                and ast.unparse(last.value.func) in ("glue", "lesson.glue")
                and not code.rstrip().endswith(";"))

    echo = [i for i, c in enumerate(cells(path)) if c["cell_type"] == "code" and echoes(src(c))]
    assert not echo, f"cells ending in a glue call that echoes its value: {echo}"
