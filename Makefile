# Each target bootstraps its own virtual environment from uv.lock, so a fresh clone needs
# only python3: a pinned uv is pip-installed into .uv/, then `uv sync --frozen` installs
# exactly what uv.lock names into .venv (and removes anything else).
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
UV := .uv/bin/uv
# uv builds .venv from this interpreter; it never downloads one.
export UV_PYTHON_DOWNLOADS := never
SYNC := $(UV) sync --frozen --python $(PYTHON)
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-ci soak lock lock-check clean

$(UV):
	$(PYTHON) -m venv .uv
	.uv/bin/python -m pip install -q uv==$(UV_VERSION)

# Re-made whenever the project or the lock changes.
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra dev
	touch $(STAMP)

# CI and `make test` refuse a lock that pyproject.toml has moved away from.
lock-check: | $(UV)
	@$(UV) lock --check --quiet 2>/dev/null || { \
	  echo "uv.lock does not match pyproject.toml: run 'make lock' and commit uv.lock" >&2; \
	  exit 1; }

# Re-resolves uv.lock after pyproject.toml changes (`make lock UPGRADE=1` takes newer releases).
lock: | $(UV)
	$(UV) lock $(if $(UPGRADE),--upgrade)

# serve all finds PostgreSQL and Redis (settings, else the local ports, else embedded ones
# in ./data), creates and migrates the database, then runs everything until Ctrl-C.
run: $(STAMP)
	$(BIN)/chatctl serve all

test: lock-check $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check services workers tests bench
	$(BIN)/mypy services workers

# The dev and bench extras, from the same lock.
bench: | $(UV)
	$(SYNC) --extra dev --extra bench
	$(BIN)/python -m bench

# CI's regression check: every benchmark with --quick, then the gate over their ratios
# (bench/gate.py: the levels, the noise bands and how they were measured).
bench-ci: | $(UV)
	$(SYNC) --extra dev --extra bench
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
	rm -rf $(VENV) .uv
