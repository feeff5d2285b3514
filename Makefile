# Two entry points, each self-contained on a fresh machine with Python 3 and pip:
#   make demo   - local demo: deliver, smarthost down -> queued, smarthost back -> mq-run delivers
#   make test   - install test dependencies, lint, type-check, run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-pythons lint typecheck install clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,plugins]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m schwarz.mailqueue.demo

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/python -m pytest

# The suite on the other supported CPythons (3.11 is `make test`); needs python3.X on PATH or pyenv.
test-pythons: install
	$(BIN)/nox -s tests-3.9 tests-3.10 tests-3.12 tests-3.13

# Benchmarks and the full torture test; each writes its figures into docs/.
bench: install
	$(BIN)/python bench/bench_runner.py --write-docs
	$(BIN)/python bench/bench_runner_memory.py --write-docs
	$(BIN)/python bench/bench_sendmail_startup.py --write-docs
	$(BIN)/python bench/bench_queue_list.py --write-docs
	$(BIN)/python bench/torture.py --messages 2000 --kills 25 --write-docs

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
