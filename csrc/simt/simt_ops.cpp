// simt_ops.cpp — the SIMT emulator's controls, op namespace rnn_fused_simt (rnn_fused/simt.py):
// the emulated device's properties, the thread schedule between barriers, and the
// fiber-switch benchmark. They configure backend "emulated" (csrc/simt/elman_emulated.cpp).
#include <torch/library.h>

#include <c10/util/StringUtil.h>

#include <string>
#include <vector>

#include "simt/simt.cuh"

namespace rnn_fused::simt_ops {
namespace {

// The emulated device crosses the op boundary as one int per field, in the order of
// SIMT_DEVICE_PROPERTY_FIELDS (simt.cuh); device_property_names lets rnn_fused/simt.py check
// that its DeviceProperties lists the same fields in the same order.
std::vector<std::string> device_property_names() {
#define SIMT_FIELD_NAME(field) #field,
  return {SIMT_DEVICE_PROPERTY_FIELDS(SIMT_FIELD_NAME)};
#undef SIMT_FIELD_NAME
}

std::vector<int64_t> get_device_properties() {
  const simt::DeviceProperties p = simt::device_properties();
#define SIMT_FIELD_VALUE(field) static_cast<int64_t>(p.field),
  return {SIMT_DEVICE_PROPERTY_FIELDS(SIMT_FIELD_VALUE)};
#undef SIMT_FIELD_VALUE
}

void assign_field(int& field, int64_t v, const std::string& name) {
  TORCH_CHECK(v >= -2147483647 - 1 && v <= 2147483647, "rnn_fused.simt.set_device_properties: ", name,
              " out of range: ", v);
  field = static_cast<int>(v);
}
void assign_field(int64_t& field, int64_t v, const std::string&) { field = v; }
void assign_field(bool& field, int64_t v, const std::string& name) {
  TORCH_CHECK(v == 0 || v == 1, "rnn_fused.simt.set_device_properties: ", name, " must be 0 or 1, got ", v);
  field = v != 0;
}

void set_device_properties(const std::vector<int64_t>& values) {
  const std::vector<std::string> names = device_property_names();
  TORCH_CHECK(values.size() == names.size(), "rnn_fused.simt.set_device_properties: expected ", names.size(),
              " values (", c10::Join(", ", names), "), got ", values.size());
  simt::DeviceProperties p;
  std::size_t i = 0;
#define SIMT_FIELD_ASSIGN(field) assign_field(p.field, values[i], names[i]), ++i;
  SIMT_DEVICE_PROPERTY_FIELDS(SIMT_FIELD_ASSIGN)
#undef SIMT_FIELD_ASSIGN
  simt::set_device_properties(p);  // range checks of the values themselves
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
  // Emulated device: one int per field, in the order device_property_names() gives.
  m.def("device_property_names() -> str[]", &device_property_names);
  m.def("get_device_properties() -> int[]", &get_device_properties);
  m.def("set_device_properties(int[] values) -> ()", &set_device_properties);
  m.def("reset_device_properties() -> ()", [] { simt::reset_device_properties(); });
  // Order in which threads run between barriers: 'forward', 'reverse' or 'shuffle' (seeded).
  m.def("set_schedule(str mode, int seed=0) -> ()", &set_schedule);
  // Launch recording (rnn_fused.simt.recording_launches): on or off, clearing the record.
  m.def("record_launches(bool on) -> ()", [](bool on) { simt::record_launches(on); });
  m.def("recorded_launches() -> str[]", [] { return simt::recorded_launches(); });
  m.def("get_schedule() -> (str, int)", &get_schedule);
  m.def("measure_fiber_switch_ns(int switches) -> float",
        [](int64_t switches) { return simt::measure_fiber_switch_ns(switches); });
}
