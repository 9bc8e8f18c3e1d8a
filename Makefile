# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv on first use
# (and again whenever pyproject.toml changes), installing the pinned dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo lint test simulator bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# The simulator, the Dagster webserver (http://127.0.0.1:3000) and daemon, and one demo session.
# Ctrl-C stops everything. DEMO_ARGS="--exit-when-done --no-webserver" waits for the winner and exits.
demo: $(STAMP)
	$(PY) -m batch_pipeline.cli.demo $(DEMO_ARGS)

# Lint, format check and types first: a finding fails `make test` (and CI) before the slow tests start.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

simulator: $(STAMP)
	$(PY) -m openai_simulator --host 127.0.0.1 --port 8800 --data-dir var/simulator

bench: $(STAMP)
	$(PY) benchmarks/bench_side_by_side.py
	$(PY) benchmarks/bench_jsonl.py
	$(PY) benchmarks/bench_stream_memory.py
	$(PY) benchmarks/bench_sensor_tick.py
	$(PY) benchmarks/bench_rounds_per_iteration.py

clean:
	rm -rf $(VENV) var
