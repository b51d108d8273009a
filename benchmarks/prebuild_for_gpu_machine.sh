#!/usr/bin/env bash
# Builds the extension here, on a CPU-only machine, for the GPU machine's Python and torch, and
# packs it into .prebuilt/ for the device tool's `carry` (docs/gpu_check.md, "Where the build
# would not fit"). The GPU machine of 2026-12-04 did not finish the build in 338 s: the SIMT
# emulator's kernels were then one long g++ job (eight side by side since 2026-12-06, so
# gpu_session.sh now builds there where nothing is carried). Built here from PyPI's torch wheel
# of the same version and CUDA build, the extension loaded and ran there unchanged.
#
#   benchmarks/prebuild_for_gpu_machine.sh        # HEAD of this checkout, committed work only
#
# Then on the GPU machine, with `.prebuilt` carried:
#   gzip -dc .prebuilt/_C.so.gz > rnn_fused/$(cat .prebuilt/name)
#   cp .prebuilt/libmalloc_meter.so rnn_fused/tools/
#   python3 benchmarks/gpu_check.py --out /tmp/g --stages benchmark,tests,fit-model,smem-counters
#
# Settings (environment): PY_VERSION (3.12), TORCH_VERSION (2.11.0), TORCH_CUDA_ARCH_LIST (9.0),
# WORK (/tmp/rnn_fused_prebuild: the virtual environment and a clone kept between runs, so
# ninja rebuilds only what changed; the first run takes about 20 minutes on 2 cores).
set -euo pipefail

PY_VERSION=${PY_VERSION:-3.12}
TORCH_VERSION=${TORCH_VERSION:-2.11.0}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
WORK=${WORK:-/tmp/rnn_fused_prebuild}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/.prebuilt"

python=$(command -v "python$PY_VERSION" || true)
if [ -z "$python" ] || ! "$python" -c pass 2>/dev/null; then  # pyenv's (its shim may refuse the version)
    python=$(ls -d "$HOME"/.pyenv/versions/"$PY_VERSION"*/bin/python"$PY_VERSION" 2>/dev/null | tail -1 || true)
fi
[ -n "$python" ] || { echo "prebuild: no python$PY_VERSION found" >&2; exit 1; }
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
[ -x "$nvcc" ] || { echo "prebuild: nvcc not found" >&2; exit 1; }

venv="$WORK/venv"
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q "torch==$TORCH_VERSION" ninja numpy pybind11 "setuptools<82"
fi

src="$WORK/src"
if [ -d "$src/.git" ]; then
    git -C "$src" fetch -q "$ROOT" HEAD
    git -C "$src" reset -q --hard FETCH_HEAD
else
    rm -rf "$src"
    git clone -q "$ROOT" "$src"
fi

# (setup.py finds the toolkit's root from nvcc itself, which may be a wrapper outside it.)
(cd "$src" && PATH="$venv/bin:$(dirname "$nvcc"):$PATH" \
    TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" RNN_FUSED_CUDA=1 RNN_FUSED_SELFTESTS=1 \
    "$venv/bin/python" setup.py -q build_ext --inplace)

so=$(ls "$src"/rnn_fused/_C.cpython-*.so)
mkdir -p "$OUT"
strip --strip-debug -o "$WORK/stripped.so" "$so"  # 160 MB with its debug information, 34 MB without
gzip -c "$WORK/stripped.so" > "$OUT/_C.so.gz"
cp "$src/rnn_fused/tools/libmalloc_meter.so" "$OUT/"
basename "$so" > "$OUT/name"
git -C "$src" rev-parse HEAD > "$OUT/commit"
echo "prebuild: $(cat "$OUT/name") for torch $TORCH_VERSION, sm_${ARCH/./} at $(cat "$OUT/commit"): $OUT ($(du -sh "$OUT" | cut -f1))"
