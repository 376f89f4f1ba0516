# Each target bootstraps its own virtual environment, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-ci soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# serve all finds PostgreSQL and Redis (settings, else the local ports, else embedded ones
# in ./data), creates and migrates the database, then runs everything until Ctrl-C.
run: $(STAMP)
	$(BIN)/chatctl serve all

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check services workers tests bench
	$(BIN)/mypy services workers

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench

# CI's regression check: every benchmark with --quick, then the gate over their ratios
# (bench/gate.py: the levels, the noise bands and how they were measured).
bench-ci: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	rm -f bench/results/*-quick.json
	$(BIN)/python -m bench --quick
	$(BIN)/python -m bench.gate

# 50 simulated users of mixed traffic for 10 minutes against `chatctl serve all` (a throwaway
# database); SOAK_USERS / SOAK_SECONDS override. Figures in bench/results/soak.json.
SOAK_USERS ?= 50
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(BIN)/python -m bench.soak --users $(SOAK_USERS) --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV)
