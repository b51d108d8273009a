// Host side of the CUDA kernels' backend: the launch planner, the kernel launches, and the
// forward and backward recurrences the host layer (host_layer.h) calls. Shared verbatim by
// the CUDA build (csrc/cuda/elman_cuda.cu: backend "cuda", CUDA tensors, real device) and
// the emulated build (csrc/simt/elman_emulated.cpp: backend "emulated", CPU tensors, the
// SIMT emulator's device), so the tests execute the very planner and kernels a GPU runs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <string>

#include "cuda/elman_backward_kernel.cuh"
#include "cuda/elman_forward_kernel.cuh"
#include "host_layer.h"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

// Launch bounds and registers of every instantiation, for the emulator's occupancy model:
// the most ptxas reports for the kernel over float/double and sm_80/sm_90
// (benchmarks/nvcc_resource_usage.txt); under nvcc the real numbers are queried.
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_recurrence_persistent_kernel<Activation::Tanh, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_recurrence_persistent_kernel<Activation::Tanh, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_recurrence_persistent_kernel<Activation::Relu, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_recurrence_persistent_kernel<Activation::Relu, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_step_kernel<Activation::Tanh, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_step_kernel<Activation::Tanh, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_step_kernel<Activation::Relu, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 64, forward_step_kernel<Activation::Relu, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_recurrence_persistent_kernel<Activation::Tanh, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_recurrence_persistent_kernel<Activation::Tanh, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_recurrence_persistent_kernel<Activation::Relu, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_recurrence_persistent_kernel<Activation::Relu, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_step_kernel<Activation::Tanh, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_step_kernel<Activation::Tanh, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_step_kernel<Activation::Relu, float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 80, backward_step_kernel<Activation::Relu, double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 32, backward_norms_tail_kernel<float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, 32, backward_norms_tail_kernel<double>);

// A persistent block owns at least this many units: fewer would leave most of its warps
// idle at small batch sizes and add blocks to every grid-wide barrier for little work.
constexpr int64_t kMinUnitsPerBlock = 4;
// Units per block of the per-step fallback kernels.
constexpr int64_t kFallbackUnitsPerBlock = 8;

// What the planner chose for one recurrence kernel.
struct RecurrencePlan {
  bool persistent = false;
  int64_t grid = 0;              // blocks
  int64_t block_threads = kRecurrenceThreads;
  int64_t units_per_block = 0;   // hidden units per block
  int64_t shared_mem_bytes = 0;  // dynamic shared memory per block (persistent only)
  int64_t blocks_per_sm = 0;     // occupancy at that shared memory (persistent only)
  std::string reason;
};

inline RecurrencePlan fallback_plan(int64_t hidden, std::string reason) {
  RecurrencePlan plan;
  plan.persistent = false;
  plan.units_per_block = kFallbackUnitsPerBlock;
  plan.grid = std::max<int64_t>(1, (hidden + kFallbackUnitsPerBlock - 1) / kFallbackUnitsPerBlock);
  plan.reason = std::move(reason);
  return plan;
}

// Plans the persistent kernel `kernel` for H hidden units of `element_bytes` each: the
// largest grid (at most one block per kMinUnitsPerBlock units) whose blocks can all be
// co-resident while each keeps its W_hh slice (units_per_block * H elements) in shared
// memory; tries fewer blocks per SM (bigger slices) until one fits. Falls back to the
// per-step kernels when cooperative launch is unavailable or no grid fits.
template <class Kernel>
RecurrencePlan plan_recurrence(Kernel kernel, int64_t hidden, int64_t element_bytes) {
  const simt::DeviceProperties props = simt::device_properties();
  if (!props.cooperative_launch) {
    return fallback_plan(hidden, "per-step kernels: the device does not support cooperative launch");
  }
  const simt::KernelAttributes attrs = simt::kernel_attributes(kernel);
  const int64_t smem_limit = props.shared_mem_per_block_optin - attrs.static_shared_bytes;
  const int64_t most_blocks = std::max<int64_t>(1, (hidden + kMinUnitsPerBlock - 1) / kMinUnitsPerBlock);
  int64_t smallest_slice = -1;
  for (int64_t per_sm = props.max_blocks_per_sm; per_sm >= 1; --per_sm) {
    int64_t grid = std::min<int64_t>(most_blocks, per_sm * props.sm_count);
    const int64_t units = (hidden + grid - 1) / grid;
    grid = (hidden + units - 1) / units;  // no block without units
    const int64_t smem = units * hidden * element_bytes;
    if (smallest_slice < 0) smallest_slice = smem;
    if (smem > smem_limit) continue;
    const int occupancy = simt::max_active_blocks_per_sm(kernel, kRecurrenceThreads, static_cast<std::size_t>(smem));
    if (static_cast<int64_t>(occupancy) * props.sm_count < grid) continue;
    RecurrencePlan plan;
    plan.persistent = true;
    plan.grid = grid;
    plan.units_per_block = units;
    plan.shared_mem_bytes = smem;
    plan.blocks_per_sm = occupancy;
    plan.reason = "persistent: " + std::to_string(grid) + " co-resident blocks (" + std::to_string(occupancy) +
                  " per SM x " + std::to_string(props.sm_count) + " SMs), each holding " + std::to_string(units) +
                  " rows of W_hh (" + std::to_string(smem) + " bytes of shared memory)";
    return plan;
  }
  return fallback_plan(hidden, "per-step kernels: W_hh does not stay on chip; the smallest slice (" +
                                   std::to_string(smallest_slice) + " bytes per block at " +
                                   std::to_string(std::min<int64_t>(most_blocks, int64_t(props.max_blocks_per_sm) * props.sm_count)) +
                                   " blocks) exceeds what " + std::to_string(props.sm_count) +
                                   " SMs can keep co-resident (" + std::to_string(props.shared_mem_per_block_optin) +
                                   " bytes per block, " + std::to_string(props.shared_mem_per_sm) + " per SM)");
}

template <Activation A, typename scalar_t>
RecurrencePlan plan_forward(int64_t hidden) {
  return plan_recurrence(forward_recurrence_persistent_kernel<A, scalar_t>, hidden, sizeof(scalar_t));
}

template <Activation A, typename scalar_t>
RecurrencePlan plan_backward(int64_t hidden) {
  return plan_recurrence(backward_recurrence_persistent_kernel<A, scalar_t>, hidden, sizeof(scalar_t));
}

template <Activation A, typename scalar_t>
void launch_forward_recurrence(const ForwardRecurrenceArgs<scalar_t>& args) {
  const RecurrencePlan plan = plan_forward<A, scalar_t>(args.shape.hidden);
  const dim3 block(static_cast<unsigned>(plan.block_threads));
  if (plan.persistent) {
    simt::launch_cooperative(forward_recurrence_persistent_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid),
                             block, static_cast<std::size_t>(plan.shared_mem_bytes), args, plan.units_per_block);
  } else {
    for (int64_t s = 0; s < args.shape.steps; ++s) {
      simt::launch(forward_step_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid), block, 0, args,
                   plan.units_per_block, s);
    }
  }
}

// plan: plan_backward's choice for args.shape.hidden (its grid sizes args.norm_partials [2,grid,B]).
template <Activation A, typename scalar_t>
void launch_backward_recurrence(const BackwardRecurrenceArgs<scalar_t>& args, const RecurrencePlan& plan) {
  const dim3 block(static_cast<unsigned>(plan.block_threads));
  if (plan.persistent) {
    simt::launch_cooperative(backward_recurrence_persistent_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid),
                             block, static_cast<std::size_t>(plan.shared_mem_bytes), args, plan.units_per_block);
  } else {
    for (int64_t s = args.shape.steps - 1; s >= 0; --s) {
      simt::launch(backward_step_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid), block, 0, args,
                   plan.units_per_block, s);
    }
    if (args.norm_partials != nullptr) {
      simt::launch(backward_norms_tail_kernel<scalar_t>, static_cast<unsigned>(plan.grid), block, 0, args);
    }
  }
}

inline const int64_t* lengths_pointer(const LayerForwardCall& call) {
  const std::optional<at::Tensor>& lengths = call.valid_lengths.on_device;
  return lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
}

// The forward recurrence of the host layer (host_layer.h); returns h_n.
inline at::Tensor forward_recurrence(const ForwardRecurrence& r) {
  const LayerForwardCall& call = r.call;
  const LayerShape& shape = call.shape;
  const int64_t B = shape.batch, H = shape.hidden;
  at::Tensor state = at::empty({2, B, H}, r.out.options());
  state[0].copy_(r.h0);
  dispatch_elman(r.out.scalar_type(), call.options.activation, [&](auto activation, auto zero) {
    using scalar_t = decltype(zero);
    const ForwardRecurrenceArgs<scalar_t> args{.w_hh = r.w_hh.data_ptr<scalar_t>(),
                                               .out = r.out.data_ptr<scalar_t>(),
                                               .state = state.data_ptr<scalar_t>(),
                                               .lengths = lengths_pointer(call),
                                               .shape = shape,
                                               .reverse = call.options.reverse};
    launch_forward_recurrence<decltype(activation)::value, scalar_t>(args);
  });
  at::Tensor out = r.out;
  zero_past_lengths(out, call.valid_lengths.on_device);
  // After T steps the final state is in state[T % 2] (frozen samples were copied forward).
  return state[shape.steps % 2];
}

// The backward recurrence of the host layer (host_layer.h); returns dz at each sample's
// processing step 0.
inline at::Tensor backward_recurrence(const BackwardRecurrence& r) {
  const LayerForwardCall& call = r.call.forward;
  const LayerShape& shape = call.shape;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden;
  const BackwardOperands& op = r.operands;
  const TruncationParams& truncation = call.options.truncation;
  const bool record_norms = r.call.record_norms;
  at::Tensor dz_step = at::zeros({2, B, H}, op.x.options());
  const at::Tensor w_hh_t = op.w_hh.t().contiguous();
  dispatch_elman(op.x.scalar_type(), call.options.activation, [&](auto activation, auto zero) {
    using scalar_t = decltype(zero);
    constexpr Activation A = decltype(activation)::value;
    const RecurrencePlan plan = plan_backward<A, scalar_t>(H);
    // Scratch of the in-kernel norm reduction: g^2 of a step, two steps of per-block
    // partial sums; ||g_t||^2 per (t, b).
    at::Tensor g_sq, norm_partials, step_sq;
    const at::Tensor edge_scratch =
        truncation.randomized() ? at::empty({plan.grid, B}, op.x.options()) : at::Tensor();
    if (record_norms) {
      const at::TensorOptions f64 = op.x.options().dtype(at::kDouble);
      g_sq = at::empty({B, H}, f64);
      norm_partials = at::empty({2, plan.grid, B}, f64);
      step_sq = at::zeros({T, B}, f64);
    }
    const BackwardRecurrenceArgs<scalar_t> args{
        .w_hh_t = w_hh_t.data_ptr<scalar_t>(),
        .dy = op.dy.data_ptr<scalar_t>(),
        .dh_n = op.dh_n.data_ptr<scalar_t>(),
        .out = op.out.data_ptr<scalar_t>(),
        .dz = r.dz.data_ptr<scalar_t>(),
        .dz_step = dz_step.data_ptr<scalar_t>(),
        .lengths = lengths_pointer(call),
        .shape = shape,
        .reverse = call.options.reverse,
        .truncation = truncation,
        .g_sq = record_norms ? g_sq.data_ptr<double>() : nullptr,
        .norm_partials = record_norms ? norm_partials.data_ptr<double>() : nullptr,
        .step_sq = record_norms ? step_sq.data_ptr<double>() : nullptr,
        .edge_scratch = edge_scratch.defined() ? edge_scratch.data_ptr<scalar_t>() : nullptr};
    launch_backward_recurrence<A, scalar_t>(args, plan);
    if (record_norms) r.step_norms.copy_(step_sq.sqrt_());
  });
  return dz_step[0];
}

// What launch_{forward,backward}_recurrence would do for `hidden` units in `compute` dtype
// on the current (real or emulated) device.
inline RecurrencePlanReport recurrence_plan(at::ScalarType compute, int64_t hidden, Activation activation,
                                            bool backward) {
  TORCH_CHECK_VALUE(hidden > 0, "rnn_fused.plan: hidden_size must be positive, got ", hidden);
  RecurrencePlan plan;
  dispatch_elman(compute, activation, [&](auto act, auto zero) {
    using scalar_t = decltype(zero);
    constexpr Activation A = decltype(act)::value;
    plan = backward ? plan_backward<A, scalar_t>(hidden) : plan_forward<A, scalar_t>(hidden);
  });
  return RecurrencePlanReport{.path = plan.persistent ? "persistent" : "fallback",
                              .grid = plan.grid,
                              .block_threads = plan.block_threads,
                              .units_per_block = plan.units_per_block,
                              .shared_mem_bytes = plan.shared_mem_bytes,
                              .blocks_per_sm = plan.blocks_per_sm,
                              .reason = plan.reason};
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
