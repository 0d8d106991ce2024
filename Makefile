# Lean Transformers: `make test` and `make book` are all a fresh machine needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Tests and CI: quick mode, and never reach for the network (the shipped subset is used).
# LEANFORMER_TIMING=brief is for `make test` alone: one round of timing per cost table
# (leanformer.measure.measure_costs), since a test run's timings are not read.
TEST_ENV := LEANFORMER_MODE=quick LEANFORMER_OFFLINE=1 MPLBACKEND=Agg

.PHONY: test typecheck book lab notebooks stamp benchmark reference clean

$(INSTALLED): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(INSTALLED)

## Unit tests, then every lesson under nbval (each cell must run; checked cells must match).
# Two xdist workers share the machine's two cores, so each worker's torch gets one thread.
# With two threads per worker, four threads fight over two cores: on a 2-core Xeon that made the
# suite take 451-554 s instead of 219 s. --durations lists the slowest tests, to see where the
# time goes as lessons are added.
# tests/conftest.py hands the lessons out longest first (by the cell times stored in each
# notebook), so that the longest one does not start last and run alone.
test: $(INSTALLED) typecheck
	OMP_NUM_THREADS=1 LEANFORMER_TIMING=brief $(TEST_ENV) $(PY) -m pytest -n 2 --dist loadfile --nbval-lax --nbval-current-env --durations=15

## mypy over the package: every public function has type hints (tests/test_types.py), and the
## code must agree with them. Settings in pyproject.toml.
typecheck: $(INSTALLED)
	$(PY) -m mypy

## The static book in _build/html, warnings as errors. Notebooks are not re-executed; the
## intro's ledger table and plot are written first from checkpoints/ledger.json.
book: $(INSTALLED)
	LEANFORMER_OFFLINE=1 MPLBACKEND=Agg $(PY) tools/notebooks.py ledger-page
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

## Open the lessons in JupyterLab, from the same venv.
lab: $(INSTALLED)
	$(VENV)/bin/jupyter lab notebooks/

## Re-execute every lesson in place, top to bottom in quick mode, to refresh its outputs.
notebooks: $(INSTALLED)
	$(TEST_ENV) $(PY) tools/notebooks.py execute notebooks/[0-9]*.ipynb

## Rewrite the Colab badges and set-up cells from _config.yml (book tooling in tools/, not the course's command line).
stamp: $(INSTALLED)
	$(PY) tools/notebooks.py stamp

## Training throughput of the reference model against a naive nn.TransformerEncoder
## model, their steps timed in turns (leanformer.measure.time_training), each speed-up
## with its interval.
benchmark: $(INSTALLED)
	$(PY) -m leanformer.benchmark

## Retrain the reference model into runs/reference.safetensors (close to three hours
## on 2 CPU cores; run it again to resume; see checkpoints/README.md). The shipped
## checkpoint is replaced only by copying the result over it.
reference: $(INSTALLED)
	$(PY) -m leanformer train --recipe reference --data $(DATA) \
		--out runs/reference.safetensors --resume

clean:
	rm -rf _build
