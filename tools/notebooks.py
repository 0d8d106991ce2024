"""The book's notebook tooling, not part of the course's command line:

    python tools/notebooks.py stamp [--check]        Colab badges and set-up cells from _config.yml
    python tools/notebooks.py execute NOTEBOOK...    stamp, then run notebooks in place
    python tools/notebooks.py ledger-page            the intro's ledger table and plot, from
                                                     checkpoints/ledger.json

``make stamp`` and ``make notebooks`` call it; tests/test_lessons.py checks that every lesson is
stamped. The notebooks and _config.yml are those of the repository this script sits in.
"""
import argparse
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

from leanformer.files import atomic_write
from leanformer.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]

# --- keeping every lesson's Colab badge and set-up cell in step with _config.yml -------------

COLAB_CELL = '''\
# In Colab: fetch the course and install its package. Elsewhere this cell does nothing.
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.isdir("lean-transformers"):
    repo_url = "{url}"
    subprocess.run(["git", "clone", "--depth", "1", repo_url, "lean-transformers"],
                   check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e",
                    "lean-transformers"], check=True)
    sys.path.insert(0, os.path.abspath("lean-transformers/src"))'''

# The badge's image ships with the book (book/_static), so that it shows when the book or a
# notebook is read offline; the link is Colab's.
BADGE_IMAGE = "../book/_static/colab-badge.svg"
BADGE = "[![Open In Colab](" + BADGE_IMAGE + ")]({link})"


def repository(config="_config.yml"):
    """(url, branch) from the book's _config.yml, the one place that names the repository."""
    with open(config, encoding="utf-8") as f:
        repo = yaml.safe_load(f)["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def stamp_notebooks(root: str | Path = ".", check: bool = False) -> list[Path]:
    """Write the Colab badge (first cell) and the Colab set-up cell (second cell, tagged
    ``colab-setup``) of every notebook from _config.yml. Returns the notebooks that changed
    (or, with ``check=True``, that would change)."""
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


# --- running a notebook in place ---------------------------------------------------------------

def execute_notebook(path: str | Path, timeout: int = 900, machine: str | None = None) -> None:
    """Run a notebook top to bottom in place, keeping its outputs. Progress-bar updates
    (carriage returns) are collapsed, so a saved output holds the final line, not every frame.
    ``machine`` (a description) is recorded in the notebook's metadata, so that a test can check
    that every saved lesson was executed on the same machine."""
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(Path(path).parent)}}).execute()
    if machine is not None:
        nb.metadata["leanformer"] = {"machine": machine}
    atomic_write(path, lambda tmp: nbformat.write(nb, str(tmp)))  # a kill mid-write keeps the old notebook


# --- the two commands --------------------------------------------------------------------------

def cmd_stamp(args):
    changed = stamp_notebooks(ROOT, check=args.check)
    for path in changed:
        print(f"{'out of date' if args.check else 'stamped'}: {path.relative_to(ROOT)}")
    if args.check and changed:
        sys.exit("Colab badges or set-up cells differ from _config.yml; run `make stamp`.")


def cmd_execute(args):
    stamp_notebooks(ROOT)
    machine = machine_info()
    for path in args.notebooks:
        t0 = time.perf_counter()
        execute_notebook(path, machine=machine)
        print(f"executed {path} in {time.perf_counter() - t0:.0f} s")


# --- the intro page's ledger: a table and a plot generated from the ledger's record ----------

LEDGER_PAGE = ROOT / "book" / "_generated"


def ledger_page(out: Path = LEDGER_PAGE) -> list[Path]:
    """Write ``ledger.md`` (each model in its fastest form) and ``ledger.png`` (the Pareto
    plot) under ``out`` from checkpoints/ledger.json, priced as lesson 08 prices them. The
    book's intro includes both; ``make book`` writes them first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanformer import ledger, load_cifar10, money

    record, predictions = ledger.read_ledger()
    labels = load_cifar10(verbose=False).test_labels
    frame = ledger.ledger_frame(record, predictions, labels)
    here = money.closest_instance(record["machine"], money.load_prices())
    frame["$ per million"] = [money.usd_per_million(here.usd_per_hour, r)
                              for r in frame["images/s"]]
    frame["no loss"] = ledger.not_worse(frame)
    best = ledger.fastest_forms(frame)
    lines = [f"Measured side by side on the {record['machine'].split(' (')[0]} "
             f"({record['test_images']:,} test images; dollars at {here.instance}'s "
             f"${here.usd_per_hour} an hour, read {here.read_on}). Each model in its "
             "fastest form; lesson 08 shows every form.", "",
             "| model | form | accuracy | vs reference (points, 95%) | speed-up (95%) "
             "| $ per million images |", "|---|---|---|---|---|---|"]
    for model, r in best.iterrows():
        lines.append(f"| {model} | {ledger.FORM_NAMES[r['form']]} | "
                     f"{r['accuracy (%)']:.2f}% | {r['vs reference (points)']:+.2f} "
                     f"({r['low']:+.2f} to {r['high']:+.2f}) | {r['speed-up']:.1f}× "
                     f"({r['speed-up low']:.1f}–{r['speed-up high']:.1f}) | "
                     f"{r['$ per million']:.4f} |")
    out.mkdir(parents=True, exist_ok=True)
    table = out / "ledger.md"
    text = "\n".join(lines) + "\n"
    atomic_write(table, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    ledger.plot_pareto(frame, ax=ax, baseline=record["baseline"])
    ax.set(xlabel=f"$ per million images ({here.instance}, log scale)",
           title="Every model of the course, every form: accuracy against cost")
    figure = out / "ledger.png"
    atomic_write(figure, lambda tmp: fig.savefig(tmp, format="png", dpi=120,
                                                 bbox_inches="tight"))
    return [table, figure]


def cmd_ledger_page(args):
    for path in ledger_page():
        print(f"wrote {path.relative_to(ROOT)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python tools/notebooks.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stamp", help="write Colab badges and set-up cells from _config.yml")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p.set_defaults(func=cmd_stamp)
    p = sub.add_parser("execute", help="stamp, then run notebooks in place, keeping outputs")
    p.add_argument("notebooks", nargs="+")
    p.set_defaults(func=cmd_execute)
    p = sub.add_parser("ledger-page", help="the intro's ledger table and plot, from "
                       "checkpoints/ledger.json")
    p.set_defaults(func=cmd_ledger_page)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
