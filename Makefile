# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= results/quickstart

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# The benchmarks' peers (Locust) on top of the dev install.
$(VENV)/.installed-bench: $(VENV)/.installed-dev
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/citytwin run scenarios/quickstart.yaml --out $(OUT)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n 2 -q

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/engine_parity.py
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/citizens_1m.py
	$(BIN)/python benchmarks/devices_10k.py
	$(BIN)/python benchmarks/devices_mqtt.py
	$(BIN)/python benchmarks/drive_capacity.py
	$(BIN)/python benchmarks/drive_honesty.py
	$(BIN)/python benchmarks/drive_mqtt.py

clean:
	rm -rf results .pytest_cache
