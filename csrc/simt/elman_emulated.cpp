// elman_emulated.cpp — backend "emulated": the CUDA backend's kernels and path planner
// (csrc/cuda/elman_*_kernel.cuh, elman_launch.h) compiled by g++ against the SIMT emulator
// and run on CPU tensors, so the exact CUDA sources execute on a GPU-less machine. The
// emulated device is configured through rnn_fused.simt (docs/simt.md).
// The persistent kernels themselves are compiled in eight parts beside this file
// (elman_emulated_part_<n>.cpp, csrc/cuda/elman_kernel_list.h); here they are only named.
// g++ cannot follow a dot-product tile's initialisation through the kernels' lambdas (every
// path zeroes it first: zero_tile) and warns at the reduce-scatter; zeroing it at its
// declaration would also change nvcc's register allocation of the measured kernels.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define RNN_FUSED_KERNELS_ELSEWHERE
#include "cuda/elman_launch.h"

namespace {

// Not the CPU's default: CPU tensors run the CPU loops unless backend="emulated" is asked for.
const bool registered = ::rnn_fused::register_recurrence_backend(
    ::rnn_fused::kernels::kernels_backend("emulated", c10::DeviceType::CPU, /*device_default=*/false));

}  // namespace
