# Set-up and jobs for a fresh machine. `make digits` runs the main job, `make test`
# runs the whole test suite; both install what they need into .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= runs/digits

.PHONY: setup digits test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel first: an unpinned torch would resolve to a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

digits: setup
	$(PY) examples/classify_digits.py --output-dir $(OUT)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

lint: setup
	$(VENV)/bin/ruff format --check ignitrain tests examples benchmarks
	$(VENV)/bin/ruff check ignitrain tests examples benchmarks

bench: setup
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs build *.egg-info
