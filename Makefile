# make test   - create .venv, install pinned dependencies and this checkout (editable: `rnn-fused` and
#               `python -m rnn_fused` then work from any directory), build the extension, run the suite
# make bench  - same set-up, then the main job: rnn-fused bench (rnn_fused vs torch.nn.RNN on the best
#               device; table, bench_out/<device>_benchmark.{md,json} and a ratio chart)
# make demo   - same set-up, then rnn-fused demo: the BPTT experiments as demo_out/report.md with figures
#               (under a minute on 2 cores)
# make build  - (re)build rnn_fused._C in place; RNN_FUSED_CUDA=0 skips the CUDA sources
# make resource-usage - the register/stack/spill report of the compiled recurrence kernels and the instruction
#                  counts of their dot loops, read from the build's object with cuobjdump
#                  (benchmarks/nvcc_resource_usage.txt, benchmarks/sass_dot_loop.txt; no GPU needed)
# make gpu-check - on a machine with an NVIDIA GPU and torch already installed (no venv, no downloads;
#                  PYTHON=python3 make gpu-check): build for that GPU's architecture only, run the GPU
#                  tests, benchmark against cuDNN with predicted and measured time per step for each path,
#                  into gpu_out/, and refit the cost model to it (docs/gpu_check.md; about 3-4 minutes on an
#                  H200). Every stage runs even if one before it failed; the target fails at the end if any did
# make sanitize - AddressSanitizer build of a copy in build/sanitize; runs the SIMT emulator tests, the
#                 emulated CUDA kernel tests (the layer stack's included) and the op-level truncation/norm tests there
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := $(VENV)/.deps-installed
EDITABLE := $(VENV)/.editable-installed
# The extension compiles with 2 parallel jobs on these 2-core machines.
export MAX_JOBS ?= 2
# The development build includes the SIMT emulator's self-test kernels (the test suite runs them).
export RNN_FUSED_SELFTESTS ?= 1

.PHONY: test bench demo build clean sanitize resource-usage gpu-check

$(DEPS): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	touch $@

# The checkout in editable mode (the console script rnn-fused, and rnn_fused importable from
# any directory). This compiles the extension in place, into the same build/temp.* folder as
# `make build`, so the build below finds every object up to date.
$(EDITABLE): $(DEPS) pyproject.toml
	$(BIN)/pip install --no-build-isolation --no-deps -e .
	touch $@

build: $(EDITABLE)
	$(BIN)/python setup.py -q build_ext --inplace

test: build
	$(BIN)/python -m pytest -q

bench: build
	$(BIN)/python -m rnn_fused bench

demo: build
	$(BIN)/python -m rnn_fused demo

# No venv and none of the targets above: the GPU machine's own python and torch.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out gpu_out

# After `build`, the report reads the object the build compiled instead of compiling elman_cuda.cu again.
resource-usage: build
	$(BIN)/python benchmarks/nvcc_resource_usage.py

# The ASan copy is CPU-only and -O0. libasan must be loaded before python's own libraries,
# and libstdc++ with it so ASan's __cxa_throw interceptor finds the real one.
SANITIZE_DIR := build/sanitize
sanitize: $(DEPS)
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	cp -r setup.py pyproject.toml csrc rnn_fused tests $(SANITIZE_DIR)/
	rm -rf $(SANITIZE_DIR)/rnn_fused/*.so $(SANITIZE_DIR)/rnn_fused/__pycache__ $(SANITIZE_DIR)/tests/__pycache__
	cd $(SANITIZE_DIR) && RNN_FUSED_CUDA=0 RNN_FUSED_SANITIZE=1 $(abspath $(BIN))/python setup.py -q build_ext --inplace
	cd $(SANITIZE_DIR) && RNN_FUSED_SANITIZER_RUN=1 ASAN_OPTIONS=detect_leaks=0 \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
		$(abspath $(BIN))/python -m pytest -q -p no:cacheprovider tests/test_simt.py tests/test_simt_cluster.py tests/test_simt_sanitize.py tests/test_cuda_kernels_emulated.py \
		tests/test_bptt_kernels.py tests/test_layer_stack.py

clean:
	rm -rf build rnn_fused/*.so rnn_fused/tools/*.so *.egg-info
