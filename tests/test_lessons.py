"""Every lesson has the course's shape, and its saved outputs come from one clean run."""
import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from leanformer.lesson import stamp_notebooks

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


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
    assert "colab-badge.svg" in src(cs[0])
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


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_glued_name_in_the_prose_is_glued_by_the_code(path):
    cs = cells(path)
    used = set()
    for c in cs:
        if c["cell_type"] == "markdown":
            used |= set(re.findall(r"\{glue:\w+\}`([\w-]+)", src(c)))
    glued = set()
    for c in cs:
        for o in c.get("outputs", []):
            if "scrapbook" in o.get("metadata", {}):
                glued.add(o["metadata"]["scrapbook"]["name"])
    assert used <= glued, f"glued in prose but not computed: {sorted(used - glued)}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_glued_numbers_are_plain_numbers_the_book_can_format(path):
    """`{glue:text}`name:.1%`` parses the saved text/plain; `np.float64(0.5)` or `tensor(0.5)`
    would leave the number out of the page."""
    bad = []
    for c in cells(path):
        for o in c.get("outputs", []):
            if "scrapbook" in o.get("metadata", {}):
                data = o["data"]
                text = "".join(data.get("application/papermill.record/text/plain",
                                        data.get("text/plain", "")))
                if re.match(r"(np\.|numpy\.|tensor\(|array\()", text):
                    bad.append((o["metadata"]["scrapbook"]["name"], text))
    assert not bad, f"glue plain Python numbers (lesson.glue converts scalars): {bad}"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_code_cells_stay_short(path):
    """A code cell over 25 lines hides the lesson in plumbing: split it or move it to leanformer."""
    long = [(i, len(src(c).splitlines())) for i, c in enumerate(cells(path))
            if c["cell_type"] == "code" and len(src(c).splitlines()) > 25]
    assert not long, f"(cell index, lines) over 25 lines: {long}"


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
