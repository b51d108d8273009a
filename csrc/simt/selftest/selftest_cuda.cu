// selftest_cuda.cu — the SIMT self-test kernels compiled by nvcc and registered for CUDA
// tensors in the test-only op namespace rnn_fused_selftest (built only with
// RNN_FUSED_SELFTESTS=1, as `make build` does). The schemas and the emulated (CPU)
// registration live in selftest_ops.cpp; the kernels and their host launchers are shared
// (selftest_kernels.cuh, selftest_launch.h), so CI compiles the very sources the emulator
// runs. The known-bad kernels are not registered here: on a GPU they would hang or trap
// instead of raising an error.
#include <torch/library.h>

#include "simt/selftest/selftest_launch.h"

TORCH_LIBRARY_IMPL(rnn_fused_selftest, CUDA, m) {
  RNN_FUSED_REGISTER_GOOD_SELFTESTS(m);
}
