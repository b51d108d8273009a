// Host side of the CUDA backend of the single-layer ops: argument checks, the launch
// planner, the kernel launches and the whole-sequence GEMMs. Shared verbatim by the CUDA
// build (csrc/cuda/rnn_cuda.cu, CUDA tensors, real device) and the SIMT emulation
// (csrc/simt/rnn_simt.cpp, CPU tensors, emulated device), so the tests execute the very
// planner and kernels a GPU runs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "cuda/rnn_backward_kernel.cuh"
#include "cuda/rnn_forward_kernel.cuh"
#include "layer_args.h"
#include "layer_gemms.h"

#if defined(__CUDACC__)
#include <c10/cuda/CUDAGuard.h>
#define RNN_FUSED_DEVICE_GUARD(t) const c10::cuda::CUDAGuard rnn_fused_device_guard_((t).device())
#else
#define RNN_FUSED_DEVICE_GUARD(t) (void)(t)
#endif

namespace rnn_fused::cuda_kernels {
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
  const RecurrencePlan plan = plan_forward<A, scalar_t>(args.hidden);
  const dim3 block(static_cast<unsigned>(plan.block_threads));
  if (plan.persistent) {
    simt::launch_cooperative(forward_recurrence_persistent_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid),
                             block, static_cast<std::size_t>(plan.shared_mem_bytes), args, plan.units_per_block);
  } else {
    for (int64_t s = 0; s < args.steps; ++s) {
      simt::launch(forward_step_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid), block, 0, args,
                   plan.units_per_block, s);
    }
  }
}

// plan: plan_backward's choice for args.hidden (its grid sizes args.norm_partials [2,grid,B]).
template <Activation A, typename scalar_t>
void launch_backward_recurrence(const BackwardRecurrenceArgs<scalar_t>& args, const RecurrencePlan& plan) {
  const dim3 block(static_cast<unsigned>(plan.block_threads));
  if (plan.persistent) {
    simt::launch_cooperative(backward_recurrence_persistent_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid),
                             block, static_cast<std::size_t>(plan.shared_mem_bytes), args, plan.units_per_block);
  } else {
    for (int64_t s = args.steps - 1; s >= 0; --s) {
      simt::launch(backward_step_kernel<A, scalar_t>, static_cast<unsigned>(plan.grid), block, 0, args,
                   plan.units_per_block, s);
    }
    if (args.norm_partials != nullptr) {
      simt::launch(backward_norms_tail_kernel<scalar_t>, static_cast<unsigned>(plan.grid), block, 0, args);
    }
  }
}

// Calls f(std::integral_constant<Activation, A>{}, scalar_t{}) for the runtime choice.
template <class F>
void dispatch_recurrence(at::ScalarType compute, Activation activation, F&& f) {
  auto with_activation = [&](auto zero) {
    if (activation == Activation::Tanh) {
      f(std::integral_constant<Activation, Activation::Tanh>{}, zero);
    } else {
      f(std::integral_constant<Activation, Activation::Relu>{}, zero);
    }
  };
  if (compute == at::kFloat) {
    with_activation(float{});
  } else if (compute == at::kDouble) {
    with_activation(double{});
  } else {
    TORCH_CHECK(false, "rnn_fused: no recurrence kernel for compute dtype ", compute);
  }
}

// The CPU copy of lengths (emulation) is checked on the host like the CPU backend does;
// a device copy is checked inside the kernels, which avoids a host synchronisation.
inline void check_lengths_on_host(const std::optional<at::Tensor>& lengths, const LayerForwardParams& p) {
  if (lengths.has_value() && lengths->is_cpu()) {
    const at::Tensor l = lengths->contiguous();
    check_length_values(l.data_ptr<int64_t>(), p.batch, p.steps);
  }
}

inline const int64_t* lengths_pointer(const std::optional<at::Tensor>& lengths_contiguous) {
  return lengths_contiguous.has_value() ? lengths_contiguous->data_ptr<int64_t>() : nullptr;
}

// rnn_fused::rnn_layer_forward (schema and shapes in csrc/op_schemas.h).
inline std::tuple<at::Tensor, at::Tensor> layer_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity, bool reverse, int64_t truncate_every,
    double keep_prob, int64_t seed, int64_t layer) {
  const LayerForwardParams p = check_layer_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                                std::string(nonlinearity), reverse);
  check_truncation_args(truncate_every, keep_prob, seed, layer, reverse);  // used by the backward only
  RNN_FUSED_DEVICE_GUARD(input);
  check_lengths_on_host(lengths, p);
  const int64_t T = p.steps, B = p.batch, I = p.input_size, H = p.hidden_size;
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  const at::Tensor x = input.to(ct).contiguous();
  const at::Tensor w_ih = weight_ih.to(ct).contiguous();
  const at::Tensor w_hh = weight_hh.to(ct).contiguous();
  const std::optional<at::Tensor> len =
      lengths.has_value() ? std::optional<at::Tensor>(lengths->contiguous()) : std::nullopt;

  at::Tensor out = at::empty({T, B, H}, x.options());
  at::Tensor state = at::empty({2, B, H}, x.options());
  if (hx.has_value()) {
    state[0].copy_(*hx);
  } else {
    state[0].zero_();
  }
  if (T > 0 && B > 0 && H > 0) {
    at::Tensor out2d = out.view({T * B, H});
    input_projection(out2d, x.view({T * B, I}), w_ih, bias_ih, bias_hh);
    dispatch_recurrence(ct, p.activation, [&](auto activation, auto zero) {
      using scalar_t = decltype(zero);
      ForwardRecurrenceArgs<scalar_t> args{w_hh.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                           state.data_ptr<scalar_t>(), lengths_pointer(len), T, B, H, reverse};
      launch_forward_recurrence<decltype(activation)::value, scalar_t>(args);
    });
    zero_past_lengths(out, len);
  } else {
    out.zero_();
  }
  // After T steps the final state is in state[T % 2] (frozen samples were copied forward).
  const at::Tensor h_n = state[T % 2];
  return {out.to(input.scalar_type()), h_n.to(input.scalar_type()).contiguous()};
}

// rnn_fused::rnn_layer_backward (schema and shapes in csrc/op_schemas.h).
inline LayerBackwardResult layer_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const std::optional<at::Tensor>& hx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& output, const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity, bool reverse,
    std::array<bool, 5> output_mask, int64_t truncate_every, double keep_prob, int64_t seed, int64_t layer,
    bool record_norms) {
  const LayerForwardParams p = check_layer_args(input, hx, weight_ih, weight_hh, std::nullopt, std::nullopt, lengths,
                                                std::string(nonlinearity), reverse);
  check_backward_args(p, input, grad_output, grad_h_n, output);
  const TruncationParams truncation = check_truncation_args(truncate_every, keep_prob, seed, layer, reverse);
  RNN_FUSED_DEVICE_GUARD(input);
  check_lengths_on_host(lengths, p);
  const int64_t T = p.steps, B = p.batch, H = p.hidden_size;
  const at::ScalarType dt = input.scalar_type();
  const at::ScalarType ct = compute_dtype(dt);
  const BackwardOperands operands =
      backward_operands(ct, input, weight_ih, weight_hh, output, grad_output, grad_h_n);
  const at::Tensor &x = operands.x, &w_ih = operands.w_ih, &w_hh = operands.w_hh, &out = operands.out,
                   &dy = operands.dy, &dh_n = operands.dh_n;
  const std::optional<at::Tensor> len =
      lengths.has_value() ? std::optional<at::Tensor>(lengths->contiguous()) : std::nullopt;

  at::Tensor dz = at::zeros({T, B, H}, x.options());
  at::Tensor dz_step = at::zeros({2, B, H}, x.options());
  at::Tensor step_norms = record_norms ? at::zeros({T, B}, x.options()) : at::empty({0}, x.options());
  if (T > 0 && B > 0 && H > 0) {
    const at::Tensor w_hh_t = w_hh.t().contiguous();
    dispatch_recurrence(ct, p.activation, [&](auto activation, auto zero) {
      using scalar_t = decltype(zero);
      constexpr Activation A = decltype(activation)::value;
      const RecurrencePlan plan = plan_backward<A, scalar_t>(H);
      // Scratch of the in-kernel norm reduction: g^2 of a step, two steps of per-block
      // partial sums; ||g_t||^2 per (t, b).
      at::Tensor g_sq, norm_partials, step_sq;
      const at::Tensor edge_scratch =
          truncation.keep_prob < 1.0 ? at::empty({plan.grid, B}, x.options()) : at::Tensor();
      if (record_norms) {
        const at::TensorOptions f64 = x.options().dtype(at::kDouble);
        g_sq = at::empty({B, H}, f64);
        norm_partials = at::empty({2, plan.grid, B}, f64);
        step_sq = at::zeros({T, B}, f64);
      }
      BackwardRecurrenceArgs<scalar_t> args{w_hh_t.data_ptr<scalar_t>(),
                                            dy.data_ptr<scalar_t>(),
                                            dh_n.data_ptr<scalar_t>(),
                                            out.data_ptr<scalar_t>(),
                                            dz.data_ptr<scalar_t>(),
                                            dz_step.data_ptr<scalar_t>(),
                                            lengths_pointer(len),
                                            T,
                                            B,
                                            H,
                                            reverse,
                                            truncation,
                                            record_norms ? g_sq.data_ptr<double>() : nullptr,
                                            record_norms ? norm_partials.data_ptr<double>() : nullptr,
                                            record_norms ? step_sq.data_ptr<double>() : nullptr,
                                            edge_scratch.defined() ? edge_scratch.data_ptr<scalar_t>() : nullptr};
      launch_backward_recurrence<A, scalar_t>(args, plan);
      if (record_norms) step_norms.copy_(step_sq.sqrt_());
    });
  }
  return gradients_from_dz(x, w_ih, w_hh, out, dz, dz_step[0], dh_n, hx, len, reverse, output_mask, dt,
                           record_norms, std::move(step_norms));
}

// rnn_fused::recurrence_plan: what launch_{forward,backward}_recurrence would do for
// `like`'s dtype and hidden_size on the current (real or emulated) device.
// Returns (path, grid, block_threads, units_per_block, shared_mem_bytes, blocks_per_sm, reason).
inline std::tuple<std::string, int64_t, int64_t, int64_t, int64_t, int64_t, std::string> recurrence_plan(
    const at::Tensor& like, int64_t hidden_size, c10::string_view nonlinearity, bool backward) {
  TORCH_CHECK(hidden_size > 0, "rnn_fused.plan: hidden_size must be positive, got ", hidden_size);
  RNN_FUSED_DEVICE_GUARD(like);
  RecurrencePlan plan;
  dispatch_recurrence(compute_dtype(like.scalar_type()), parse_activation(std::string(nonlinearity)),
                      [&](auto activation, auto zero) {
                        using scalar_t = decltype(zero);
                        constexpr Activation A = decltype(activation)::value;
                        plan = backward ? plan_backward<A, scalar_t>(hidden_size) : plan_forward<A, scalar_t>(hidden_size);
                      });
  return {plan.persistent ? "persistent" : "fallback", plan.grid, plan.block_threads, plan.units_per_block,
          plan.shared_mem_bytes, plan.blocks_per_sm, plan.reason};
}

SIMT_END_WORLD
}  // namespace rnn_fused::cuda_kernels
