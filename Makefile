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

# The Rust extension is rebuilt incrementally on every install (cargo skips unchanged crates);
# llama.cpp's converter (and its gguf-py) is set up once, from the pinned llama-cpp-python sdist.
install: $(DEPS_STAMP)
	$(VENV)/bin/maturin develop --release --quiet --skip-install
	$(PY) -m aqrecipe.models.converter install

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

# Fuzzing (issue #8): each cargo-fuzz target in fuzz/ for FUZZ_SECONDS (libFuzzer
# stops at the first crash, leaves it in fuzz/artifacts/ and fails the make), then the
# readers' hypothesis tests with FUZZ_EXAMPLES random examples each. cargo fuzz needs
# nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
FUZZ_SECONDS ?= 60
FUZZ_EXAMPLES ?= 2000
FUZZ_TARGETS := decode encode roundtrip
FUZZ_FLAGS = -max_total_time=$(FUZZ_SECONDS) -timeout=60 -rss_limit_mb=1024 -malloc_limit_mb=64 -max_len=8192 -len_control=0

fuzz: install
	cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== cargo fuzz run $$t for $(FUZZ_SECONDS) s"; \
	  RUSTC_BOOTSTRAP=1 RAYON_NUM_THREADS=1 cargo fuzz run $$t -- $(FUZZ_FLAGS); \
	done
	AQRECIPE_FUZZ=1 AQRECIPE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/test_fuzz_readers.py

clean:
	rm -rf target $(OUT) .pytest_cache
