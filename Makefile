# make test   - create .venv, install pinned dependencies, build the extension, run the suite
# make bench  - same set-up, then the main job (CPU benchmark table)
# make build  - (re)build rnn_fused._C in place; RNN_FUSED_CUDA=0 skips the CUDA sources
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
# The extension compiles with 2 parallel jobs on these 2-core machines.
export MAX_JOBS ?= 2

.PHONY: test bench build clean

$(DEPS): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	touch $@

build: $(DEPS)
	$(BIN)/python setup.py -q build_ext --inplace

test: build
	$(BIN)/python -m pytest -q

bench: build
	$(BIN)/python benchmarks/cpu_side_by_side.py

clean:
	rm -rf build rnn_fused/*.so *.egg-info
