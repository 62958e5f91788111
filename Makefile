# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test demo test-reliability bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q tests

demo: venv
	$(BIN)/boxloop demo

test-reliability: venv
	BOXLOOP_RELIABILITY=1 $(BIN)/python -m pytest -q tests/reliability

bench: venv
	$(BIN)/python benchmarks/init_speed.py --n 2000
	$(BIN)/python benchmarks/selection_speed.py
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
