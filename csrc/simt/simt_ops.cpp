// simt_ops.cpp — the SIMT emulator's ops: emulated device properties, schedule, the
// fiber-switch benchmark, and the self-test kernels run on CPU tensors by the emulator.
// The self-test schemas are defined here once; csrc/cuda/simt_selftest.cu registers the
// same ops for CUDA tensors.
#include <torch/library.h>

#include <string>
#include <vector>

#include "simt/selftest_launch.h"
#include "simt/simt.cuh"

namespace rnn_fused::simt_ops {
namespace {

namespace st = ::rnn_fused::simt_selftest;

// Field order shared with rnn_fused/simt.py (DEVICE_PROPERTY_FIELDS).
std::vector<int64_t> get_device_properties() {
  const simt::DeviceProperties p = simt::device_properties();
  return {p.sm_count,           p.max_threads_per_block,      p.max_threads_per_sm,
          p.max_blocks_per_sm,  p.shared_mem_per_block,       p.shared_mem_per_block_optin,
          p.shared_mem_per_sm,  p.reserved_shared_mem_per_block, p.regs_per_block,
          p.regs_per_sm,        p.cooperative_launch ? 1 : 0};
}

int to_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= 2147483647, "simt_set_device_properties: ", what, " out of range: ", v);
  return static_cast<int>(v);
}

void set_device_properties(int64_t sm_count, int64_t max_threads_per_block, int64_t max_threads_per_sm,
                           int64_t max_blocks_per_sm, int64_t shared_mem_per_block, int64_t shared_mem_per_block_optin,
                           int64_t shared_mem_per_sm, int64_t reserved_shared_mem_per_block, int64_t regs_per_block,
                           int64_t regs_per_sm, bool cooperative_launch) {
  simt::DeviceProperties p;
  p.sm_count = to_int(sm_count, "sm_count");
  p.max_threads_per_block = to_int(max_threads_per_block, "max_threads_per_block");
  p.max_threads_per_sm = to_int(max_threads_per_sm, "max_threads_per_sm");
  p.max_blocks_per_sm = to_int(max_blocks_per_sm, "max_blocks_per_sm");
  p.shared_mem_per_block = shared_mem_per_block;
  p.shared_mem_per_block_optin = shared_mem_per_block_optin;
  p.shared_mem_per_sm = shared_mem_per_sm;
  p.reserved_shared_mem_per_block = reserved_shared_mem_per_block;
  p.regs_per_block = to_int(regs_per_block, "regs_per_block");
  p.regs_per_sm = to_int(regs_per_sm, "regs_per_sm");
  p.cooperative_launch = cooperative_launch;
  simt::set_device_properties(p);
}

void set_schedule(const std::string& mode, int64_t seed) {
  simt::Schedule s = simt::Schedule::Forward;
  if (mode == "forward") {
    s = simt::Schedule::Forward;
  } else if (mode == "reverse") {
    s = simt::Schedule::Reverse;
  } else if (mode == "shuffle") {
    s = simt::Schedule::Shuffle;
  } else {
    TORCH_CHECK(false, "simt_set_schedule: mode must be 'forward', 'reverse' or 'shuffle', got '", mode, "'");
  }
  simt::set_schedule(s, static_cast<uint64_t>(seed));
}

std::tuple<std::string, int64_t> get_schedule() {
  const char* names[] = {"forward", "reverse", "shuffle"};
  return {names[static_cast<int>(simt::schedule_mode())], static_cast<int64_t>(simt::schedule_seed())};
}

// Occupancy of a self-test kernel under the emulated device (the planner's query).
int64_t occupancy(const std::string& kernel, int64_t block_threads, int64_t dynamic_smem) {
  const int threads = static_cast<int>(block_threads);
  const auto smem = static_cast<std::size_t>(dynamic_smem);
  if (kernel == "grid_stencil") return simt::max_active_blocks_per_sm(st::grid_stencil_kernel, threads, smem);
  if (kernel == "warp_reduce") return simt::max_active_blocks_per_sm(st::warp_reduce_kernel, threads, smem);
  if (kernel == "barrier_loop") return simt::max_active_blocks_per_sm(st::barrier_loop_kernel, threads, smem);
  if (kernel == "bounded") return simt::max_active_blocks_per_sm(st::bounded_kernel, threads, smem);
  TORCH_CHECK(false, "simt_occupancy: unknown kernel '", kernel, "'");
}

}  // namespace
}  // namespace rnn_fused::simt_ops

TORCH_LIBRARY_FRAGMENT(rnn_fused, m) {
  using namespace rnn_fused::simt_ops;
  // Emulated device. Field order: sm_count, max_threads_per_block, max_threads_per_sm,
  // max_blocks_per_sm, shared_mem_per_block, shared_mem_per_block_optin, shared_mem_per_sm,
  // reserved_shared_mem_per_block, regs_per_block, regs_per_sm, cooperative_launch.
  m.def("simt_get_device_properties() -> int[]", &get_device_properties);
  m.def(
      "simt_set_device_properties(int sm_count, int max_threads_per_block, int max_threads_per_sm, "
      "int max_blocks_per_sm, int shared_mem_per_block, int shared_mem_per_block_optin, int shared_mem_per_sm, "
      "int reserved_shared_mem_per_block, int regs_per_block, int regs_per_sm, bool cooperative_launch) -> ()",
      &set_device_properties);
  m.def("simt_reset_device_properties() -> ()", [] { simt::reset_device_properties(); });
  // Order in which threads run between barriers: 'forward', 'reverse' or 'shuffle' (seeded).
  m.def("simt_set_schedule(str mode, int seed=0) -> ()", &set_schedule);
  m.def("simt_get_schedule() -> (str, int)", &get_schedule);
  m.def("simt_measure_fiber_switch_ns(int switches) -> float",
        [](int64_t switches) { return simt::measure_fiber_switch_ns(switches); });
  m.def("simt_occupancy(str kernel, int block_threads, int dynamic_smem) -> int", &occupancy);

  // Self-test kernels (CPU tensors: emulated; CUDA tensors: csrc/cuda/simt_selftest.cu).
  m.def("simt_selftest_warp_reduce(Tensor x, int block_threads) -> Tensor");
  m.def("simt_selftest_transpose(Tensor x) -> Tensor");
  m.def("simt_selftest_grid_stencil(Tensor x, int steps, int block_threads, int blocks) -> (Tensor, Tensor)");
  m.def("simt_selftest_atomics(Tensor values, int bins, int blocks, int block_threads) -> (Tensor, Tensor, Tensor)");
  m.def("simt_selftest_warp_scan(Tensor x, int block_threads) -> (Tensor, Tensor)");
  m.def("simt_selftest_device_math(Tensor x) -> (Tensor, Tensor, Tensor)");
  m.def("simt_selftest_barrier_loop(Tensor x, int block_threads, int rounds) -> Tensor");
  m.def("simt_selftest_bounded(Tensor like, int blocks, int block_x, int block_y, int dynamic_smem) -> Tensor");
  m.def("simt_selftest_faulty(str fault, Tensor x, int blocks, int block_threads) -> Tensor");
}

TORCH_LIBRARY_IMPL(rnn_fused, CPU, m) {
  RNN_FUSED_REGISTER_GOOD_SELFTESTS(m);
  m.impl("simt_selftest_faulty", &::rnn_fused::simt_selftest::faulty);
}
