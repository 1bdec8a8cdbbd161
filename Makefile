# `make demo` and `make test` create or refresh .venv, then run. Versions are pinned in
# constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modelzip-installed
# Real data for tests and benchmarks, if it lies beside the checkout.
ifeq ($(origin MODELZIP_DATA), undefined)
ifneq ($(wildcard ../shared/data/mnist),)
MODELZIP_DATA := $(abspath ../shared/data)
export MODELZIP_DATA
endif
endif

.PHONY: demo test search-services lint bench-baselines bench-deep-compression bench-latency bench-runner \
	readme-table clean

# torch is installed first, so that pip takes the CPU build and not a multi-GB CUDA one. Where
# the default index serves CUDA builds (plain PyPI on Linux does), point TORCH_INDEX at
# PyTorch's CPU wheel index: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar on --upgrade pip
	$(PY) -m pip install --progress-bar on $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
		-c constraints.txt torch
	$(PY) -m pip install --progress-bar on -c constraints.txt -e '.[compress,demo,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modelzip demo

# PostgreSQL and Chromium (the search tests) are installed when missing where that is possible
# (root or sudo); elsewhere those tests are skipped with one summary line (CI: .ci/run fails).
test: $(STAMP)
	-scripts/setup_search_services.sh
	$(PY) -m ruff check src tests bench examples scripts
	$(PY) bench/readme_table.py --check
	$(PY) -m pytest -n 2 --dist loadfile -q

# System packages of the search tests (PostgreSQL, Chromium + driver); apt-get, as root
search-services:
	scripts/setup_search_services.sh

lint: $(STAMP)
	$(PY) -m ruff check src tests bench

bench-baselines: $(STAMP)
	$(PY) bench/baselines.py

bench-deep-compression: $(STAMP)
	$(PY) bench/deep_compression.py

# The latency benchmark also times torchao's PT2E int8 path: the `bench` extra.
bench-latency: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	$(PY) bench/latency.py

bench-runner: $(STAMP)
	$(PY) bench/runner.py

readme-table: $(STAMP)
	$(PY) bench/readme_table.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
