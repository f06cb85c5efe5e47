# Two entry points for a fresh machine: `make demo` (main job on the bundled default) and `make test`.
# Both create .venv on first use. torch is pinned to the CPU build on disk here; elsewhere pip picks the wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

.PHONY: setup demo test format bench bench-adapters gates
setup: $(BIN)/.installed

demo: setup
	$(BIN)/fairdiff demo --out out/demo

test: setup
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

format: setup
	$(BIN)/ruff format src tests bench tools
	$(BIN)/ruff check --fix src tests bench tools

bench: setup
	$(BIN)/python bench/render_throughput.py
	$(BIN)/python bench/audit_overhead.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/sampling_speed.py speed

bench-adapters: setup
	nice -n 10 $(BIN)/python bench/adapters.py

gates: setup
	$(BIN)/fairdiff world gates --out docs/results/gates.json
