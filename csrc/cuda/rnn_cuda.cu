// rnn_cuda.cu — the CUDA backend of the single-layer ops: the kernels of
// rnn_forward_kernel.cuh / rnn_backward_kernel.cuh instantiated for float and double
// (float16/bfloat16 run in float32) and launched by rnn_launch.h, which the SIMT emulation
// (csrc/simt/rnn_simt.cpp) shares verbatim. One .cu file: each costs ~80 s of nvcc.
#include <torch/library.h>

#include "cuda/rnn_launch.h"

TORCH_LIBRARY_IMPL(rnn_fused, CUDA, m) {
  namespace k = ::rnn_fused::cuda_kernels;
  m.impl("rnn_layer_forward", &k::layer_forward);
  m.impl("rnn_layer_backward", &k::layer_backward);
  m.impl("recurrence_plan", &k::recurrence_plan);
}
