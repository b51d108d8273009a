// CPU backend of the single-layer ops: fused forward and BPTT backward.
//
// The input projection, the weight/input gradients and the bias gradient are
// whole-sequence GEMMs/reductions. The recurrence runs as one C++ time loop with
// preallocated buffers: per step one BLAS call (W_hh against the batch's states)
// and one fused epilogue (bias already folded into the projection, activation,
// write of output and state). No dispatcher call and no allocation per step.
//
// Processing step s of sample b touches time t = step_time(s, len_b, reverse);
// samples whose length is <= s are frozen (state kept, output zero).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/activation.h"
#include "cpu/blas.h"
#include "layer_args.h"
#include "layer_gemms.h"

namespace rnn_fused::cpu {
namespace {

// Rows per parallel chunk: enough elementwise work to pay for a thread hand-off.
int64_t epilogue_grain(int64_t hidden) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(hidden, 1)); }

// Per-sample lengths as a host vector (all T when none are given).
struct Lengths {
  std::vector<int64_t> values;
  bool nonincreasing = true;
  int64_t max_len = 0;
};

Lengths read_lengths(const std::optional<at::Tensor>& lengths, int64_t batch, int64_t steps) {
  Lengths out;
  if (lengths.has_value()) {
    at::Tensor l = lengths->contiguous();
    const int64_t* ptr = l.data_ptr<int64_t>();
    out.values.assign(ptr, ptr + batch);
    out.nonincreasing = check_length_values(ptr, batch, steps);
  } else {
    out.values.assign(batch, steps);
  }
  for (int64_t v : out.values) out.max_len = std::max(out.max_len, v);
  return out;
}

// Samples still running at processing step s: the first `active` rows when the
// lengths are non-increasing (packed order), else every row (the epilogue masks).
int64_t active_rows(const Lengths& len, int64_t s) {
  if (!len.nonincreasing) return static_cast<int64_t>(len.values.size());
  return std::upper_bound(len.values.begin(), len.values.end(), s, std::greater<int64_t>()) -
         len.values.begin();
}

// Forward time loop.
// w_hh_t [H,H]   W_hh transposed (row k holds the weights of input unit k)
// out   [T,B,H]  in: X W_ih^T + b_ih + b_hh for every step; out: h_t (zero where t >= len)
// state [B,H]    in: h_0; out: h_n
// rec   [B,H]    scratch
template <typename scalar_t, Activation A>
void forward_time_loop(const LayerForwardParams& p, const Lengths& len, const scalar_t* w_hh_t,
                       scalar_t* out, scalar_t* state, scalar_t* rec) {
  const int64_t B = p.batch, H = p.hidden_size;
  const SingleThreadedBlas serial(B * H * H < kParallelStepMacs);
  for (int64_t s = 0; s < len.max_len; ++s) {
    const int64_t rows = active_rows(len, s);
    matmul_rows(state, w_hh_t, rec, rows, H, H);  // rec = h_{t-1} W_hh^T
    at::parallel_for(0, rows, epilogue_grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t length = len.values[b];
        if (s >= length) continue;
        const int64_t t = step_time(s, length, p.reverse);
        activate_row(A, out + (t * B + b) * H, rec + b * H, state + b * H, H);
      }
    });
  }
  // Steps past a sample's length still hold the projection: outputs there are zero.
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = len.values[b]; t < p.steps; ++t) std::fill_n(out + (t * B + b) * H, H, scalar_t(0));
  }
}

// Backward time loop, s = max_len-1 .. 0.
// dy [T,B,H] gradient of the output; dh_n [B,H]; out [T,B,H] saved h_t
// dz [T,B,H] out: dL/dz_t (zero where t >= len); dz_step [B,H] out: dz at each
// sample's processing step 0; carry [B,H] scratch; zero_row [H] zeros (the carry of a cut edge)
// step_norms [T,B] out: ||g_t|| (zero where t >= len), or null when not recorded
template <typename scalar_t, Activation A>
void backward_time_loop(const LayerForwardParams& p, const TruncationParams& tp, const Lengths& len,
                        const scalar_t* w_hh, const scalar_t* dy, const scalar_t* dh_n, const scalar_t* out,
                        scalar_t* dz, scalar_t* dz_step, scalar_t* carry, const scalar_t* zero_row,
                        scalar_t* step_norms) {
  const int64_t B = p.batch, H = p.hidden_size;
  std::fill_n(dz_step, B * H, scalar_t(0));
  std::fill_n(carry, B * H, scalar_t(0));
  const SingleThreadedBlas serial(B * H * H < kParallelStepMacs);
  for (int64_t s = len.max_len - 1; s >= 0; --s) {
    const int64_t rows = active_rows(len, s);
    // Rows that were not active at s+1 hold dz_step = 0, so their carry is 0.
    // carry = dz_{s+1} W_hh: the gradient reaching h_{t-1} through W_hh.
    if (s + 1 < len.max_len) matmul_rows(dz_step, w_hh, carry, rows, H, H);
    at::parallel_for(0, rows, epilogue_grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t length = len.values[b];
        if (s >= length) continue;
        const int64_t t = step_time(s, length, p.reverse);
        const int64_t at_t = (t * B + b) * H;
        const scalar_t* extra = (s == length - 1) ? dh_n + b * H : nullptr;
        // The carry crosses the edge into step s+1 (none past the sample's last step).
        const scalar_t scale = s + 1 < length ? scalar_t(edge_scale(tp, s + 1, b)) : scalar_t(1);
        const scalar_t* carry_row = scale != scalar_t(0) ? carry + b * H : zero_row;
        double g_sq = activation_grad_row(A, dy + at_t, carry_row, scale, extra, out + at_t, dz + at_t,
                                          dz_step + b * H, H, step_norms != nullptr);
        if (step_norms != nullptr) {
          if (std::is_same_v<scalar_t, float> && !(g_sq >= kSafeLow && g_sq < kSafeHigh)) {
            g_sq = row_sum_of_squares(dy + at_t, carry_row, scale, extra, H);
          }
          step_norms[t * B + b] = scalar_t(std::sqrt(g_sq));
        }
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> layer_forward_cpu(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& lengths,
    c10::string_view nonlinearity, bool reverse, int64_t truncate_every, double keep_prob, int64_t seed,
    int64_t layer) {
  LayerForwardParams p = check_layer_args(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                          std::string(nonlinearity), reverse);
  check_truncation_args(truncate_every, keep_prob, seed, layer, reverse);  // used by the backward only
  const Lengths len = read_lengths(lengths, p.batch, p.steps);
  const int64_t T = p.steps, B = p.batch, I = p.input_size, H = p.hidden_size;
  const at::ScalarType ct = compute_dtype(input.scalar_type());

  const at::Tensor x = input.to(ct).contiguous();
  const at::Tensor w_ih = weight_ih.to(ct).contiguous();
  // Transposed once, so every step's product reads W_hh row by row.
  const at::Tensor w_hh_t = weight_hh.to(ct).t().contiguous();
  at::Tensor out = at::empty({T, B, H}, x.options());
  at::Tensor state = hx.has_value() ? hx->to(ct).contiguous().clone() : at::zeros({B, H}, x.options());
  if (T > 0 && B > 0) {
    // One GEMM for every step's input projection, biases folded in.
    at::Tensor out2d = out.view({T * B, H});
    input_projection(out2d, x.view({T * B, I}), w_ih, bias_ih, bias_hh);
    at::Tensor rec = at::empty({B, H}, x.options());
    AT_DISPATCH_FLOATING_TYPES(ct, "rnn_layer_forward_cpu", [&] {
      auto run = [&](auto act) {
        forward_time_loop<scalar_t, decltype(act)::value>(p, len, w_hh_t.data_ptr<scalar_t>(),
                                                          out.data_ptr<scalar_t>(),
                                                          state.data_ptr<scalar_t>(), rec.data_ptr<scalar_t>());
      };
      if (p.activation == Activation::Tanh) {
        run(std::integral_constant<Activation, Activation::Tanh>{});
      } else {
        run(std::integral_constant<Activation, Activation::Relu>{});
      }
    });
  } else if (T > 0) {
    out.zero_();
  }
  return {out.to(input.scalar_type()), state.to(input.scalar_type())};
}

LayerBackwardResult layer_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const std::optional<at::Tensor>& hx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& output, const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity,
    bool reverse, std::array<bool, 5> output_mask, int64_t truncate_every, double keep_prob, int64_t seed,
    int64_t layer, bool record_norms) {
  LayerForwardParams p = check_layer_args(input, hx, weight_ih, weight_hh, std::nullopt, std::nullopt,
                                          lengths, std::string(nonlinearity), reverse);
  check_backward_args(p, input, grad_output, grad_h_n, output);
  const TruncationParams tp = check_truncation_args(truncate_every, keep_prob, seed, layer, reverse);
  const Lengths len = read_lengths(lengths, p.batch, p.steps);
  const int64_t T = p.steps, B = p.batch, H = p.hidden_size;
  const at::ScalarType dt = input.scalar_type();
  const at::ScalarType ct = compute_dtype(dt);

  const BackwardOperands operands =
      backward_operands(ct, input, weight_ih, weight_hh, output, grad_output, grad_h_n);
  const at::Tensor &x = operands.x, &w_ih = operands.w_ih, &w_hh = operands.w_hh, &out = operands.out,
                   &dy = operands.dy, &dh_n = operands.dh_n;

  at::Tensor dz = at::zeros({T, B, H}, x.options());
  at::Tensor dz_step = at::empty({B, H}, x.options());
  at::Tensor carry = at::empty({B, H}, x.options());
  const at::Tensor zero_row = at::zeros({H}, x.options());
  at::Tensor step_norms = record_norms ? at::zeros({T, B}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(ct, "rnn_layer_backward_cpu", [&] {
    auto run = [&](auto act) {
      backward_time_loop<scalar_t, decltype(act)::value>(
          p, tp, len, w_hh.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), dh_n.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), dz_step.data_ptr<scalar_t>(),
          carry.data_ptr<scalar_t>(), zero_row.data_ptr<scalar_t>(),
          record_norms ? step_norms.data_ptr<scalar_t>() : nullptr);
    };
    if (p.activation == Activation::Tanh) {
      run(std::integral_constant<Activation, Activation::Tanh>{});
    } else {
      run(std::integral_constant<Activation, Activation::Relu>{});
    }
  });

  return gradients_from_dz(x, w_ih, w_hh, out, dz, dz_step, dh_n, hx, lengths, reverse, output_mask, dt,
                           record_norms, std::move(step_norms));
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, CPU, m) {
  m.impl("rnn_layer_forward", &layer_forward_cpu);
  m.impl("rnn_layer_backward", &layer_backward_cpu);
}

}  // namespace rnn_fused::cpu
