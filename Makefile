# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= $(firstword $(SLIDEMILL_SAMPLE_SLIDE) ../shared/data/CMU-1-Small-Region.svs)
DEMO ?= demo-out

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The main job on the embedded default (a LocalCluster sized to this machine): the real sample
# slide and a few generated ones, through a seeded random model.
demo: install
	test -d $(DEMO)/model || $(BIN)/slidemill model init --out $(DEMO)/model
	test -d $(DEMO)/synth || $(BIN)/slidemill synth --out $(DEMO)/synth --n 3
	$(BIN)/slidemill run $(SAMPLE) $(DEMO)/synth --model $(DEMO)/model --out $(DEMO)/run

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/slidemill bench --slide $(SAMPLE)

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
