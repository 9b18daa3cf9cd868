# The two commands of the README: `make report` and `make test`.
# Both create .venv from the pinned lock on first use (Python 3.11+, pip and make only).
# `make run PROFILE=quick` runs another profile (config/<PROFILE>.yaml) into results/<PROFILE>/;
# only the default profile publishes its report into paper/.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-from-lock
CORES ?= 4
PROFILE ?= default
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: all install test test-fast lint report run quick smoke bench clean data mutate

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

# everything but the tests marked slow (the real workflow runs)
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

# the default profile: results/default/, then the published copy paper/report.md + figures/
report: install
	$(BIN)/snakemake --cores $(CORES)

# any profile (the check first: it names the line of a YAML error, which Snakemake does not)
run: install
	$(BIN)/python -m sngrad config check config/$(PROFILE).yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/$(PROFILE).yaml

quick:
	$(MAKE) run PROFILE=quick

smoke:
	$(MAKE) run PROFILE=smoke

# every dataset of the default profile into results/default/data/ (downloads land in the cache,
# $SNGRAD_DATA_DIR or ~/.cache/sngrad, so later runs are offline)
data: install
	$(BIN)/python -m sngrad data profile config/default.yaml

# the step-time benchmark of a profile (not part of `report`: no verdict reads it), then the
# profile's report again, now with the benchmark's tables
bench: install
	$(BIN)/python -m sngrad config check config/$(PROFILE).yaml
	$(BIN)/snakemake --cores $(CORES) bench --configfile config/$(PROFILE).yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/$(PROFILE).yaml

# the SLURM profile run for real: the smoke profile through a one-node SLURM of this machine
# and plainly, results compared (root on Debian/Ubuntu; see workflow/cluster/local-slurm.sh)
.PHONY: slurm-check
slurm-check: install
	workflow/cluster/local-slurm.sh

# mutation testing of the modules that decide results (pyproject's [tool.mutmut]); slow, and not
# part of `make test`. MUTATE_SAMPLE=N checks a seeded sample of N mutants per module (0: all).
MUTATE_SAMPLE ?= 0
MUTATE_JOBS ?= 1
mutate: install
	nice -n 19 $(BIN)/python tools/mutation_scores.py run --sample $(MUTATE_SAMPLE) --jobs $(MUTATE_JOBS)

clean:
	rm -rf $(VENV) .snakemake .pytest_cache .ruff_cache
