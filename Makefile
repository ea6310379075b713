# The two commands of the README: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= $(firstword $(SLIDEMILL_SAMPLE_SLIDE) ../shared/data/CMU-1-Small-Region.svs)
DEMO ?= demo-out

.PHONY: install demo test postgres lint bench bench-service clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# The main job on the embedded default (a LocalCluster sized to this machine): synth → features
# → train → run on held-out slides and the real sample slide → evaluate.
demo: install
	$(BIN)/slidemill demo --out $(DEMO) --sample $(SAMPLE)

# Two pytest processes, whole files each (module fixtures start once): the suite waits on
# subprocesses and clusters as much as it computes.
TEST_WORKERS ?= 2

test: install postgres
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The ledger's tests start a real PostgreSQL server from Debian's `postgresql` package (its
# binaries live off the PATH, in /usr/lib/postgresql/<major>/bin); installed here when missing.
postgres:
	@if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; \
	  else \
	    echo "PostgreSQL's server is missing, so the ledger's PostgreSQL tests are skipped;" \
	      "install it (Debian: sudo apt-get install postgresql)"; \
	  fi; \
	fi

# mypy cannot see through the editable install's import hook: it reads the folders through links
# under their installed names (build/typecheck/slidemill/pipeline → pipeline/, …).
ROOMS := schemas cluster workers pipeline service cli

lint: install
	mkdir -p build/typecheck/slidemill
	for room in $(ROOMS); do ln -sfn ../../../$$room build/typecheck/slidemill/$$room; done
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: install
	$(BIN)/slidemill bench --slide $(SAMPLE)

bench-service: install
	$(BIN)/slidemill bench-service

clean:
	rm -rf $(DEMO) build .pytest_cache .mypy_cache .ruff_cache
