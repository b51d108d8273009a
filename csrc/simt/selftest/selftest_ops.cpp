// selftest_ops.cpp — the SIMT emulator's self-test kernels as ops of the test-only namespace
// rnn_fused_selftest (rnn_fused/tools/simt_selftest.py), run on CPU tensors by the
// emulator. Built only with RNN_FUSED_SELFTESTS=1 (`make build` sets it; a user's
// `pip install` leaves them out). selftest_cuda.cu registers the good ones for CUDA tensors.
#include <torch/library.h>

#include <string>

#include "simt/selftest/selftest_launch.h"

namespace rnn_fused::simt_selftest {
namespace {

// Occupancy of a self-test kernel under the emulated device (the planner's query).
int64_t occupancy(const std::string& kernel, int64_t block_threads, int64_t dynamic_smem) {
  const int threads = static_cast<int>(block_threads);
  const auto smem = static_cast<std::size_t>(dynamic_smem);
  if (kernel == "grid_stencil") return simt::max_active_blocks_per_sm(grid_stencil_kernel, threads, smem);
  if (kernel == "warp_reduce") return simt::max_active_blocks_per_sm(warp_reduce_kernel, threads, smem);
  if (kernel == "barrier_loop") return simt::max_active_blocks_per_sm(barrier_loop_kernel, threads, smem);
  if (kernel == "bounded") return simt::max_active_blocks_per_sm(bounded_kernel, threads, smem);
  if (kernel == "cluster_allgather") return simt::max_active_blocks_per_sm(cluster_allgather_kernel, threads, smem);
  TORCH_CHECK(false, "rnn_fused_selftest.occupancy: unknown kernel '", kernel, "'");
}

// Co-resident clusters of the cluster all-gather kernel under the emulated device (the
// planner's query), after setting its opt-in to non-portable cluster sizes.
int64_t cluster_occupancy(int64_t block_threads, int64_t dynamic_smem, int64_t cluster_size, bool nonportable) {
  simt::allow_nonportable_cluster_size(cluster_allgather_kernel, nonportable);
  return simt::max_active_clusters(cluster_allgather_kernel, static_cast<int>(block_threads),
                                   static_cast<std::size_t>(dynamic_smem), static_cast<unsigned>(cluster_size));
}

}  // namespace
}  // namespace rnn_fused::simt_selftest

TORCH_LIBRARY(rnn_fused_selftest, m) {
  // Blocks per SM of a self-test kernel under the emulated device's occupancy model.
  m.def("occupancy(str kernel, int block_threads, int dynamic_smem) -> int", &rnn_fused::simt_selftest::occupancy);
  // Co-resident clusters of the cluster all-gather kernel under the emulated device.
  m.def("cluster_occupancy(int block_threads, int dynamic_smem, int cluster_size, bool nonportable) -> int",
        &rnn_fused::simt_selftest::cluster_occupancy);
  // Self-test kernels (CPU tensors: emulated; CUDA tensors: selftest_cuda.cu).
  m.def("warp_reduce(Tensor x, int block_threads) -> Tensor");
  m.def("transpose(Tensor x) -> Tensor");
  m.def("grid_stencil(Tensor x, int steps, int block_threads, int blocks) -> (Tensor, Tensor)");
  m.def("flag_stencil(Tensor x, int steps, int block_threads, int blocks) -> (Tensor, Tensor)");
  m.def("flag_relay(Tensor x, int blocks) -> Tensor");
  m.def("cluster_exchange(Tensor x, int blocks, int cluster_size) -> Tensor");
  m.def("atomics(Tensor values, int bins, int blocks, int block_threads) -> (Tensor, Tensor, Tensor)");
  m.def("warp_scan(Tensor x, int block_threads) -> (Tensor, Tensor)");
  m.def("device_math(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("barrier_loop(Tensor x, int block_threads, int rounds) -> Tensor");
  m.def("bounded(Tensor like, int blocks, int block_x, int block_y, int dynamic_smem) -> Tensor");
  m.def("faulty(str fault, Tensor x, int blocks, int block_threads) -> Tensor");
  m.def("cluster_allgather(Tensor x, int blocks, int cluster_size, int rounds, bool static_buffers, bool nonportable, "
        "bool async_exchange=False) -> (Tensor, Tensor)");
  m.def("faulty_cluster(str fault, Tensor x, int blocks, int cluster_size, int rounds) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnn_fused_selftest, CPU, m) {
  RNN_FUSED_REGISTER_GOOD_SELFTESTS(m);
  m.impl("faulty", &::rnn_fused::simt_selftest::faulty);
  m.impl("faulty_cluster", &::rnn_fused::simt_selftest::faulty_cluster);
}
