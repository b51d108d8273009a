// elman_cuda.cu — backend "cuda": the kernels of elman_forward_kernel.cuh /
// elman_backward_kernel.cuh instantiated for float and double (float16/bfloat16 run in
// float32), launched by elman_launch.h, which the emulated backend
// (csrc/simt/elman_emulated.cpp) shares verbatim. One .cu file: each costs minutes of nvcc.
#include "cuda/elman_launch.h"

namespace {

const bool registered = ::rnn_fused::register_recurrence_backend(
    ::rnn_fused::kernels::kernels_backend("cuda", c10::DeviceType::CUDA, /*device_default=*/true));

}  // namespace
