// rnn_simt.cpp — the CUDA backend's kernels and launch planner, compiled by g++ against
// the SIMT emulator and registered for CPU tensors as separate ops, so tests can run the
// exact CUDA sources (csrc/cuda/rnn_*_kernel.cuh, rnn_launch.h) on a GPU-less machine:
//   simt_rnn_layer_forward / simt_rnn_layer_backward: the schemas of rnn_layer_forward /
//     rnn_layer_backward (csrc/ops.cpp), executed by the emulated kernels.
//   recurrence_plan: the launch planner's choice for the emulated device (CPU tensors)
//     or, through csrc/cuda/rnn_cuda.cu, for the current CUDA device (CUDA tensors).
#include <torch/library.h>

#include "cuda/rnn_launch.h"
#include "op_schemas.h"

TORCH_LIBRARY_FRAGMENT(rnn_fused, m) {
  m.def(RNN_FUSED_LAYER_FORWARD_SCHEMA("simt_rnn_layer_forward"));
  m.def(RNN_FUSED_LAYER_BACKWARD_SCHEMA("simt_rnn_layer_backward"));
  // like: a tensor with the layer's dtype on the device to plan for (CPU: the emulated
  // device). Returns (path 'persistent' | 'fallback', grid, block_threads, units_per_block,
  // shared_mem_bytes, blocks_per_sm, reason).
  m.def(
      "recurrence_plan(Tensor like, int hidden_size, str nonlinearity, bool backward) "
      "-> (str, int, int, int, int, int, str)");
}

TORCH_LIBRARY_IMPL(rnn_fused, CPU, m) {
  namespace k = ::rnn_fused::cuda_kernels;
  m.impl("simt_rnn_layer_forward", &k::layer_forward);
  m.impl("simt_rnn_layer_backward", &k::layer_backward);
  m.impl("recurrence_plan", &k::recurrence_plan);
}
