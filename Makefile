# The two commands of the README: `make demo` and `make test`. Each bootstraps .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,test,agents,verify]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python dev-server/run.py -- $(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench dev-server
	$(BIN)/ruff format --check src
	$(BIN)/mypy src

# three test processes, each with its own dev server (most tests wait on the server and
# on timers, so three keep the two cores busier than two did: 545 s against 674 s); a
# file's tests stay in one process and in order, files in collection order (slowest
# first, tests/conftest.py) rather than xdist's most-tests-first. Every process replays
# the histories it made when it ends.
test: lint
	$(BIN)/pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=15

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,test,bench]'
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/fanout.py
	$(BIN)/python bench/replay_speed.py
	$(BIN)/python bench/ledger_throughput.py

clean:
	rm -rf $(VENV) .temporal
