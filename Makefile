# Two commands do everything on a fresh clone:
#   make demo   - install into .venv, then quantize + evaluate the built-in demo model
#   make test   - install into .venv, then run cargo test and every pytest test
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS := torch,eval,w8a8,plot,progress,test
DEPS_STAMP := $(VENV)/.deps-installed
OUT ?= out

.PHONY: install demo test test-fast cargo-test bench fuzz clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip maturin

# Python dependencies (torch, transformers, llama-cpp-python, ...) only when pyproject changes.
$(DEPS_STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet maturin
	$(VENV)/bin/maturin develop --release --extras $(EXTRAS) --quiet
	touch $@

# The Rust extension is rebuilt incrementally on every install (cargo skips unchanged crates).
install: $(DEPS_STAMP)
	$(VENV)/bin/maturin develop --release --quiet --skip-install

demo: install
	mkdir -p $(OUT)
	$(VENV)/bin/aqrecipe apply recipes/demo.yaml -o $(OUT)/demo.gguf --report $(OUT)/demo-report.json

cargo-test:
	cargo test --workspace --exclude aqrecipe-packer --quiet

test: install cargo-test
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not llamacpp"

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf target $(OUT) .pytest_cache
