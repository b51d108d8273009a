// elman_emulated.cpp — backend "emulated": the CUDA backend's kernels and launch planner
// (csrc/cuda/elman_*_kernel.cuh, elman_launch.h) compiled by g++ against the SIMT emulator
// and run on CPU tensors, so the exact CUDA sources execute on a GPU-less machine. The
// emulated device is configured through rnn_fused.simt (docs/simt.md).
#include "cuda/elman_launch.h"

namespace {

namespace k = ::rnn_fused::kernels;

const bool registered = ::rnn_fused::register_recurrence_backend(
    ::rnn_fused::RecurrenceBackend{.name = "emulated",
                                   .device = c10::DeviceType::CPU,
                                   .device_default = false,
                                   .forward = &k::forward_recurrence,
                                   .backward = &k::backward_recurrence,
                                   .plan = &k::recurrence_plan});

}  // namespace
