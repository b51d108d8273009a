// simt_selftest.cu — the SIMT self-test kernels compiled by nvcc and registered for CUDA
// tensors. The schemas and the emulated (CPU) registration live in
// csrc/simt/simt_ops.cpp; the kernels and their host launchers are shared
// (csrc/simt/selftest_kernels.cuh, selftest_launch.h), so CI compiles the very sources the
// emulator runs. The known-bad kernels are not registered here: on a GPU they would hang
// or trap instead of raising an error.
#include <torch/library.h>

#include "simt/selftest_launch.h"

TORCH_LIBRARY_IMPL(rnn_fused, CUDA, m) {
  RNN_FUSED_REGISTER_GOOD_SELFTESTS(m);
}
