// simt_ops.cpp — the SIMT emulator's controls, op namespace rnn_fused_simt (rnn_fused/simt.py):
// the emulated device's properties, the thread schedule between barriers, and the
// fiber-switch benchmark. They configure backend "emulated" (csrc/simt/elman_emulated.cpp).
#include <torch/library.h>

#include <string>
#include <vector>

#include "simt/simt.cuh"

namespace rnn_fused::simt_ops {
namespace {

// Field order of rnn_fused/simt.py DeviceProperties.
std::vector<int64_t> get_device_properties() {
  const simt::DeviceProperties p = simt::device_properties();
  return {p.sm_count,           p.max_threads_per_block,      p.max_threads_per_sm,
          p.max_blocks_per_sm,  p.shared_mem_per_block,       p.shared_mem_per_block_optin,
          p.shared_mem_per_sm,  p.reserved_shared_mem_per_block, p.regs_per_block,
          p.regs_per_sm,        p.cooperative_launch ? 1 : 0};
}

int to_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= 2147483647, "rnn_fused.simt.set_device_properties: ", what, " out of range: ", v);
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
    TORCH_CHECK(false, "rnn_fused.simt.schedule: mode must be 'forward', 'reverse' or 'shuffle', got '", mode, "'");
  }
  simt::set_schedule(s, static_cast<uint64_t>(seed));
}

std::tuple<std::string, int64_t> get_schedule() {
  const char* names[] = {"forward", "reverse", "shuffle"};
  return {names[static_cast<int>(simt::schedule_mode())], static_cast<int64_t>(simt::schedule_seed())};
}

}  // namespace
}  // namespace rnn_fused::simt_ops

TORCH_LIBRARY(rnn_fused_simt, m) {
  using namespace rnn_fused::simt_ops;
  // Emulated device. Field order: sm_count, max_threads_per_block, max_threads_per_sm,
  // max_blocks_per_sm, shared_mem_per_block, shared_mem_per_block_optin, shared_mem_per_sm,
  // reserved_shared_mem_per_block, regs_per_block, regs_per_sm, cooperative_launch.
  m.def("get_device_properties() -> int[]", &get_device_properties);
  m.def(
      "set_device_properties(int sm_count, int max_threads_per_block, int max_threads_per_sm, "
      "int max_blocks_per_sm, int shared_mem_per_block, int shared_mem_per_block_optin, int shared_mem_per_sm, "
      "int reserved_shared_mem_per_block, int regs_per_block, int regs_per_sm, bool cooperative_launch) -> ()",
      &set_device_properties);
  m.def("reset_device_properties() -> ()", [] { simt::reset_device_properties(); });
  // Order in which threads run between barriers: 'forward', 'reverse' or 'shuffle' (seeded).
  m.def("set_schedule(str mode, int seed=0) -> ()", &set_schedule);
  m.def("get_schedule() -> (str, int)", &get_schedule);
  m.def("measure_fiber_switch_ns(int switches) -> float",
        [](int64_t switches) { return simt::measure_fiber_switch_ns(switches); });
}
