# The two commands of the README: `make report` and `make test`.
# Both create .venv from the pinned lock on first use (Python 3.11+, pip and make only).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-lock
CORES ?= 4
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all install test lint report smoke bench clean

all: report

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

report: install
	$(BIN)/snakemake --cores $(CORES)

smoke: install
	$(BIN)/snakemake --cores $(CORES) --configfile config/smoke.yaml

bench: install
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) .snakemake .pytest_cache .ruff_cache
