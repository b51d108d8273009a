// CPU backend of the single-layer ops: the Elman forward and BPTT time loops.
//
// The host layer (host_layer.cpp) runs the whole-sequence GEMMs around them. Each loop
// is one C++ time loop with preallocated buffers: per step one BLAS call (W_hh against the
// batch's states) and one fused epilogue (bias already folded into the projection,
// activation, write of output and state). No dispatcher call and no allocation per step.
// Steps large enough run on torch's threads, each thread on its own units (step_team.h).
//
// Processing step s of sample b touches time t = step_time(s, len_b, reverse);
// samples whose length is <= s are frozen (state kept, output zero).
#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/activation.h"
#include "cpu/blas.h"
#include "cpu/step_team.h"
#include "host_layer.h"

namespace rnn_fused::cpu {
namespace {

// Per-sample lengths as a host vector (all T when none are given).
struct Lengths {
  std::vector<int64_t> values;
  bool nonincreasing = true;
  int64_t max_len = 0;
};

// The call's lengths (checked by the host layer) as the time loops read them.
Lengths host_lengths(const LayerForwardCall& call) {
  Lengths out;
  if (call.valid_lengths.on_device.has_value()) {
    out.values = call.valid_lengths.host;
    out.nonincreasing = std::is_sorted(out.values.begin(), out.values.end(), std::greater<int64_t>());
  } else {
    out.values.assign(call.shape.batch, call.shape.steps);
  }
  for (int64_t v : out.values) out.max_len = std::max(out.max_len, v);
  return out;
}

// Each row's step count as a split by rows balances it (step_team.h run_on_team): the lengths where
// they are non-increasing, since then a finished row leaves the step's product; null otherwise
// (every row is multiplied every step).
const std::vector<int64_t>* row_steps(const Lengths& len) { return len.nonincreasing ? &len.values : nullptr; }

// Samples still running at processing step s: the first `active` rows when the
// lengths are non-increasing (packed order), else every row (the epilogue masks).
int64_t active_rows(const Lengths& len, int64_t s) {
  if (!len.nonincreasing) return static_cast<int64_t>(len.values.size());
  return std::upper_bound(len.values.begin(), len.values.end(), s, std::greater<int64_t>()) -
         len.values.begin();
}

// Whether a share of rows [r0, r1) copies the weights it multiplies at processing steps
// [0, steps) (copies_step_weights: by its products of two rows or more and of one row).
bool share_copies_weights(const Lengths& len, int64_t steps, int64_t r0, int64_t r1) {
  int64_t multi_row = 0, one_row = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t rows = std::clamp(active_rows(len, s), r0, r1) - r0;
    multi_row += rows >= 2 ? 1 : 0;
    one_row += rows == 1 ? 1 : 0;
  }
  return copies_step_weights(multi_row, one_row);
}

// values [T,B,H] and norms [T,B], each where not null, zero at steps t >= len[b]: the time loops
// write only valid steps, and every entry of their results is written.
template <typename scalar_t>
void zero_past_lengths(const LayerShape& shape, const Lengths& len, scalar_t* values, scalar_t* norms) {
  const int64_t B = shape.batch, H = shape.hidden;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = len.values[b]; t < shape.steps; ++t) {
      if (values != nullptr) std::fill_n(values + time_major_offset(t, b, 0, B, H), H, scalar_t(0));
      if (norms != nullptr) norms[t * B + b] = scalar_t(0);
    }
  }
}

// Forward time loop, run by each thread of the step team on its units and rows (step_team.h).
// w_hh   [H,H]   W_hh (row u holds the weights into unit u); each thread multiplies its rows of
//                it (its units), transposed once where its products pay for it (StepWeights)
// out    [rows,H] in: X W_ih^T + b_ih + b_hh at every valid step; out: h_t there. Sample b's
//                 step t is row step_rows[t] + b: the padded batch [T,B,H] (step_rows[t] = t B)
//                 or a PackedSequence's data [N,H] (step t's batch_sizes[t] rows from
//                 step_rows[t]); rows of steps past a sample's length are left as they are.
//                 Rows lie out_row_stride elements apart (H, or a direction's columns of a
//                 bidirectional layer's [N,2H], which both directions write in place)
// step_rows [T]  the first row of each step in out
// states [2][B,H] states[0] in: h_0; step s reads states[s % 2] and writes states[(s+1) % 2],
//                 so that no thread overwrites a row another still multiplies; out: h_n in
//                 states[max_len % 2]
// rec    [B,H]   scratch: each thread's rows and product columns
template <typename scalar_t, Activation A>
void forward_time_loop(const LayerShape& shape, bool reverse, const Lengths& len, const scalar_t* w_hh,
                       scalar_t* out, int64_t out_row_stride, const int64_t* step_rows,
                       const std::array<scalar_t*, 2>& states, scalar_t* rec) {
  const int64_t B = shape.batch, H = shape.hidden;
  const TeamPlan plan = team_plan(len.max_len, B, H);
  run_on_team(plan, B, H, row_steps(len), [&](const TeamShare& share, StepBarrier& barrier) {
    const int64_t u0 = share.units.begin, U = share.units.size();
    const int64_t r0 = share.rows.begin, r1 = share.rows.end;
    // This thread's W_hh[units], transposed once where the loop is long enough to pay for it.
    const StepWeights<scalar_t> weights(w_hh + u0 * H, /*w_transposed=*/true, H, U, H,
                                        share_copies_weights(len, len.max_len, r0, r1));
    for (int64_t s = 0; s < len.max_len; ++s) {
      const scalar_t* state = states[s % 2];
      scalar_t* next = states[(s + 1) % 2];
      const int64_t rows = std::clamp(active_rows(len, s), r0, r1) - r0;  // the share's, from r0
      // rec[rows, units] = h_{t-1}[rows] W_hh[units]^T
      weights.multiply(state + r0 * H, rec + r0 * H + u0, H, rows);
      for (int64_t b = r0; b < r1; ++b) {
        const int64_t length = len.values[b];
        if (s >= length) {
          // Frozen: the state carries over into the other buffer once; from then on both hold it.
          if (s == length) std::copy_n(state + b * H + u0, U, next + b * H + u0);
          continue;
        }
        const int64_t t = step_time(s, length, reverse);
        activate_row(A, out + (step_rows[t] + b) * out_row_stride + u0, rec + b * H + u0, next + b * H + u0, U);
      }
      barrier.arrive_and_wait(s, share.count);
    }
  });
}

// Backward time loop, s = max_len-1 .. 0, run by each thread of the step team on its units and
// rows.
// dy [rows,H] gradient of the output; out [rows,H] saved h_t; dz [rows,H] out: dL/dz_t. Sample
//    b's step t is row step_rows[t] + b of each, as in the forward loop (the padded batch [T,B,H]
//    or a PackedSequence's data [N,H]); rows past a sample's length are left as they are. dy's
//    and out's rows lie dy_row_stride and out_row_stride elements apart (H, or a direction's
//    columns of a bidirectional layer's [N,2H]: 2H), dz's H
// dh_n [B,H] or null (h_n not used: zero)
// dz_steps [2][B,H] zeros in; step s reads dz_{s+1} from dz_steps[(s+1) % 2] and writes dz_s
//          into dz_steps[s % 2]; out: dz at each sample's processing step 0 in dz_steps[0]
// carry [B,H] scratch: each thread's rows and product columns; zero_row [H] zeros (the carry of
//       a cut edge)
// step_norms [T,B] out: ||g_t|| (zero where t >= len), or null when not recorded. Each thread
//            sums g^2 over its units; after the step's barrier the thread of the first unit
//            slice adds the slices' sums in order for its rows (one slice: the row's own sum).
template <typename scalar_t, Activation A>
void backward_time_loop(const LayerShape& shape, bool reverse, const TruncationParams& tp, const Lengths& len,
                        const scalar_t* w_hh, const scalar_t* dy, int64_t dy_row_stride, const scalar_t* dh_n,
                        const scalar_t* out, int64_t out_row_stride, scalar_t* dz, const int64_t* step_rows,
                        const std::array<scalar_t*, 2>& dz_steps,
                        scalar_t* carry,
                        const scalar_t* zero_row, scalar_t* step_norms) {
  const int64_t B = shape.batch, H = shape.hidden;
  std::fill_n(carry, B * H, scalar_t(0));
  const TeamPlan plan = team_plan(len.max_len, B, H);
  const int64_t slices = plan.split == TeamSplit::Units ? plan.threads : 1;
  const bool record = step_norms != nullptr;
  // [2][slices][B]: by step parity, each unit slice's sum of g^2 per sample (a thread's sum in
  // the slot of its first slice; the others stay 0).
  std::vector<double> partial_sq(record ? 2 * slices * B : 0, 0.0);
  run_on_team(plan, B, H, row_steps(len), [&](const TeamShare& share, StepBarrier& barrier) {
    const int64_t u0 = share.units.begin, U = share.units.size();
    const int64_t r0 = share.rows.begin, r1 = share.rows.end;
    // This thread's columns of W_hh (its units), copied contiguous once where a slice's rows lie H
    // apart and the loop is long enough to pay for it.
    const StepWeights<scalar_t> weights(w_hh + u0, /*w_transposed=*/false, H, U, H,
                                        U < H && share_copies_weights(len, len.max_len - 1, r0, r1));
    for (int64_t s = len.max_len - 1; s >= 0; --s) {
      const scalar_t* dz_next = dz_steps[(s + 1) % 2];
      scalar_t* dz_step = dz_steps[s % 2];
      double* step_sq = record ? partial_sq.data() + (s % 2) * slices * B : nullptr;
      const int64_t rows = std::clamp(active_rows(len, s), r0, r1) - r0;  // the share's, from r0
      // carry[rows, units] = dz_{s+1}[rows] W_hh[:, units]: the gradient reaching h_{t-1}
      // through W_hh. Rows that were not active at s+1 hold dz = 0 in both buffers, so their
      // carry is 0.
      if (s + 1 < len.max_len) weights.multiply(dz_next + r0 * H, carry + r0 * H + u0, H, rows);
      for (int64_t b = r0; b < r0 + rows; ++b) {
        const int64_t length = len.values[b];
        if (s >= length) continue;
        const int64_t t = step_time(s, length, reverse);
        const int64_t row = step_rows[t] + b;
        const scalar_t* extra = (dh_n != nullptr && s == length - 1) ? dh_n + b * H + u0 : nullptr;
        // The carry crosses the edge into step s+1 (none past the sample's last step).
        const scalar_t scale = s + 1 < length ? scalar_t(edge_scale(tp, s + 1, b)) : scalar_t(1);
        const scalar_t* carry_row = scale != scalar_t(0) ? carry + b * H + u0 : zero_row;
        const double g_sq = activation_grad_row(A, dy + row * dy_row_stride + u0, carry_row, scale, extra,
                                                out + row * out_row_stride + u0, dz + row * H + u0,
                                                dz_step + b * H + u0, U, record);
        if (record) step_sq[share.unit_slice * B + b] = g_sq;
      }
      barrier.arrive_and_wait(len.max_len - 1 - s, share.count);
      // The other threads write the other parity's sums until the next barrier.
      if (record && share.unit_slice == 0) {
        for (int64_t b = r0; b < r0 + rows; ++b) {
          const int64_t length = len.values[b];
          if (s >= length) continue;
          double total = 0.0;
          for (int64_t i = 0; i < slices; ++i) total += step_sq[i * B + b];
          step_norms[step_time(s, length, reverse) * B + b] = scalar_t(std::sqrt(total));
        }
      }
    }
  });
}

// The first row of each step: the packed batch's, or the padded batch's t B (into `padded`).
const int64_t* step_rows_of(const std::vector<int64_t>* packed, int64_t steps, int64_t batch,
                            std::vector<int64_t>& padded) {
  if (packed != nullptr) return packed->data();
  padded.resize(static_cast<size_t>(steps));
  for (int64_t t = 0; t < steps; ++t) padded[t] = t * batch;
  return padded.data();
}

// Elements between t's rows: H in the padded batch; in the packed layout t's own row stride,
// which may exceed H (a direction's columns of a bidirectional layer's [N,2H]).
int64_t row_stride_of(const std::vector<int64_t>* packed, const at::Tensor& t, int64_t H) {
  if (packed == nullptr) return H;
  TORCH_INTERNAL_ASSERT(t.dim() == 2 && t.size(1) == H && t.stride(1) == 1 && t.stride(0) >= H);
  return t.stride(0);
}

// The CPU backend's forward recurrence (host_layer.h ForwardRecurrence); returns h_n.
at::Tensor forward_recurrence(const ForwardRecurrence& r) {
  const LayerForwardCall& call = r.call;
  const Lengths len = host_lengths(call);
  const int64_t T = call.shape.steps, B = call.shape.batch, H = call.shape.hidden;
  const std::array<at::Tensor, 2> states = {r.h0.defined() ? r.h0.clone() : at::zeros({B, H}, r.out.options()),
                                            at::empty({B, H}, r.out.options())};
  at::Tensor rec = at::empty({B, H}, r.out.options());
  std::vector<int64_t> padded_step_rows;
  const int64_t* step_rows = step_rows_of(r.packed_step_rows, T, B, padded_step_rows);
  dispatch_elman(r.out.scalar_type(), call.options.activation, [&](auto activation, auto zero) {
    using scalar_t = decltype(zero);
    scalar_t* out = r.out.data_ptr<scalar_t>();
    forward_time_loop<scalar_t, decltype(activation)::value>(
        call.shape, call.options.reverse, len, r.w_hh.data_ptr<scalar_t>(), out,
        row_stride_of(r.packed_step_rows, r.out, H), step_rows,
        std::array<scalar_t*, 2>{states[0].data_ptr<scalar_t>(), states[1].data_ptr<scalar_t>()},
        rec.data_ptr<scalar_t>());
    // The padded batch's steps past a sample's length still hold the projection: outputs there
    // are zero (a packed batch has no such rows).
    if (r.packed_step_rows == nullptr) zero_past_lengths(call.shape, len, out, static_cast<scalar_t*>(nullptr));
  });
  return states[len.max_len % 2];
}

// The CPU backend's backward recurrence (host_layer.h BackwardRecurrence); returns dz at
// each sample's processing step 0.
at::Tensor backward_recurrence(const BackwardRecurrence& r) {
  const LayerForwardCall& call = r.call.forward;
  const Lengths len = host_lengths(call);
  const BackwardOperands& op = r.operands;
  const int64_t T = call.shape.steps, B = call.shape.batch, H = call.shape.hidden;
  const at::TensorOptions options = op.out.options();
  std::vector<int64_t> padded_step_rows;
  const int64_t* step_rows = step_rows_of(r.packed_step_rows, T, B, padded_step_rows);
  // The packed layout's dy and out may be a direction's columns of [N,2H] (BackwardRecurrence).
  const auto row_stride = [&](const at::Tensor& t) { return row_stride_of(r.packed_step_rows, t, H); };
  const std::array<at::Tensor, 2> dz_steps = {at::zeros({B, H}, options), at::zeros({B, H}, options)};
  at::Tensor carry = at::empty({B, H}, options);
  const at::Tensor zero_row = at::zeros({H}, options);
  const bool record = r.call.record_norms;
  dispatch_elman(op.out.scalar_type(), call.options.activation, [&](auto activation, auto zero) {
    using scalar_t = decltype(zero);
    backward_time_loop<scalar_t, decltype(activation)::value>(
        call.shape, call.options.reverse, call.options.truncation, len, op.w_hh.data_ptr<scalar_t>(),
        op.dy.data_ptr<scalar_t>(), row_stride(op.dy), op.dh_n.defined() ? op.dh_n.data_ptr<scalar_t>() : nullptr,
        op.out.data_ptr<scalar_t>(), row_stride(op.out),
        r.dz.data_ptr<scalar_t>(), step_rows,
        std::array<scalar_t*, 2>{dz_steps[0].data_ptr<scalar_t>(), dz_steps[1].data_ptr<scalar_t>()},
        carry.data_ptr<scalar_t>(),
        zero_row.data_ptr<scalar_t>(), record ? r.step_norms.data_ptr<scalar_t>() : nullptr);
    // The padded batch's steps past a sample's length: dz and the norm zero (every entry written:
    // no buffer is cleared first). A packed batch has no such rows; its norms [T,B] do.
    if (r.packed_step_rows == nullptr) {
      zero_past_lengths(call.shape, len, r.dz.data_ptr<scalar_t>(),
                        record ? r.step_norms.data_ptr<scalar_t>() : nullptr);
    } else if (record) {
      zero_past_lengths(call.shape, len, static_cast<scalar_t*>(nullptr), r.step_norms.data_ptr<scalar_t>());
    }
  });
  return dz_steps[0];
}

const bool registered = register_recurrence_backend(RecurrenceBackend{.name = "cpu",
                                                                       .device = c10::DeviceType::CPU,
                                                                       .device_default = true,
                                                                       .forward = &forward_recurrence,
                                                                       .runs_packed_layout = true,
                                                                       .backward = &backward_recurrence});

}  // namespace
}  // namespace rnn_fused::cpu
