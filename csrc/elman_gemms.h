// Whole-sequence GEMMs and reductions of the Elman layer around its recurrence, run by the
// host layer (host_layer.cpp) for every backend: the input projection before the forward
// time loop and the gradients that follow from dz after the backward time loop. Only ATen
// ops, so the same code runs on CPU tensors and, through cuBLAS, on CUDA tensors, on the
// current stream and without host synchronisation. Elman-specific: one [H,I] and one [H,H]
// weight, biases folded into the projection.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "outer_product_chunks.h"
#include "valid_rows.h"

namespace rnn_fused {

// Reduced-precision inputs run in float32 (float32 accumulation) and are rounded back once.
inline at::ScalarType compute_dtype(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// The backward's tensor operands in the compute dtype, contiguous, as the backends'
// time loops read them: weights [H,I] and [H,H], saved output [T,B,H], grad_output [T,B,H],
// grad_h_n [B,H] (undefined where h_n was not used). The input [T,B,I] stays as given: only dW_ih reads it, after the time loop
// (in reduced precision its float32 copy is made there, when dy's copy is gone).
struct BackwardOperands {
  at::Tensor input, w_ih, w_hh, out, dy, dh_n;
};

inline BackwardOperands backward_operands(at::ScalarType ct, const at::Tensor& input, const at::Tensor& weight_ih,
                                          const at::Tensor& weight_hh, const at::Tensor& output,
                                          const at::Tensor& grad_output, const at::Tensor& grad_h_n) {
  return {input,
          weight_ih.to(ct).contiguous(),
          weight_hh.to(ct).contiguous(),
          output.to(ct).contiguous(),
          grad_output.to(ct).contiguous(),
          grad_h_n.defined() ? grad_h_n.to(ct).contiguous() : at::Tensor()};
}

// out2d [T*B,H] = x2d [T*B,I] @ w_ih^T (+ bias_ih + bias_hh): every step's input
// projection in one GEMM, biases folded in. With `rows` (int64 [N], valid_rows.h) only those
// rows are projected and written, piece by piece; the others are left as they are.
inline void input_projection(at::Tensor& out2d, const at::Tensor& x2d, const at::Tensor& w_ih,
                             const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                             const at::Tensor& rows = at::Tensor()) {
  if (rows.defined()) {
    for (const at::Tensor& piece : valid_row_pieces(rows)) {
      at::Tensor projected = at::empty({piece.size(0), out2d.size(1)}, out2d.options());
      input_projection(projected, gather_rows(x2d, piece), w_ih, bias_ih, bias_hh);
      scatter_rows(out2d, piece, projected);
    }
    return;
  }
  if (bias_ih.has_value()) {
    const at::Tensor b = bias_ih->to(out2d.scalar_type()).add(bias_hh->to(out2d.scalar_type()));
    at::addmm_out(out2d, b, x2d, w_ih.t());
  } else {
    at::mm_out(out2d, x2d, w_ih.t());
  }
}

// Widest H at which the CPU backend takes the batched products below: there one BLAS call per
// chunk (K = steps_per_chunk * B, an H x H result) splits a small product over the threads,
// where the batched call gives each thread whole chunks. Measured on the 2-core development
// CPU (2026-12-02, the dW_hh sum alone): batched 1.1-3x faster at H = 64-128 (T = 300-1000,
// B = 1-16), 0.8-1.0x at H = 256-1024, where each product is large enough to split.
constexpr int64_t kCpuBatchedMaxHidden = 128;

// sum_t a[t]^T b[t] for a, b [S,B,H], as a two-level sum: one GEMM per chunk of steps, the
// chunks' results added up (outer_product_chunks says how many and whether batched). One GEMM
// with K = S*B accumulates each entry in one long chain, about twice the rounding error of
// stock PyTorch's per-step sum.
// launch_bound: the GPU kernels' backends (CUDA, and the emulated one that mirrors it), where
// each product is a kernel launch: always batched. On the CPU, batched up to
// kCpuBatchedMaxHidden.
inline at::Tensor sum_of_outer_products(const at::Tensor& a, const at::Tensor& b, bool launch_bound) {
  const int64_t S = a.size(0), B = a.size(1), H = a.size(2);
  const bool batched = launch_bound || (a.is_cpu() && H <= kCpuBatchedMaxHidden);
  const OuterProductChunks c = outer_product_chunks(S, B, H, batched);
  const int64_t steps_per_chunk = c.steps_per_chunk, full = c.full, group = c.group;
  if (group > 1) {
    // On a GPU each product is a launch (about 5 us: 2 sqrt(T) of them cost more than a small
    // layer's whole recurrence): groups of full chunks as one batched product and one sum
    // each, the rest as one more product.
    at::Tensor result;
    for (int64_t first = 0; first < full; first += group) {
      const int64_t n = std::min(group, full - first);
      const auto rows_of = [&](const at::Tensor& t) {
        return t.narrow(0, first * steps_per_chunk, n * steps_per_chunk).reshape({n, steps_per_chunk * B, H});
      };
      at::Tensor sum = at::bmm(rows_of(a).transpose(1, 2), rows_of(b)).sum(0);
      result = result.defined() ? result.add_(sum) : sum;
    }
    const int64_t rows = full * steps_per_chunk;
    if (rows < S) {
      const int64_t n = S - rows;
      result.add_(at::mm(a.narrow(0, rows, n).reshape({n * B, H}).t(), b.narrow(0, rows, n).reshape({n * B, H})));
    }
    return result;
  }
  // The first chunk's product is the running sum (zeros plus it would round alike).
  const auto product = [&](at::Tensor& into, int64_t start) {
    const int64_t n = std::min(steps_per_chunk, S - start);
    at::mm_out(into, a.narrow(0, start, n).reshape({n * B, H}).t(), b.narrow(0, start, n).reshape({n * B, H}));
  };
  at::Tensor result = at::empty({H, H}, a.options());
  product(result, 0);
  if (steps_per_chunk < S) {
    at::Tensor partial = at::empty({H, H}, a.options());
    for (int64_t start = steps_per_chunk; start < S; start += steps_per_chunk) {
      product(partial, start);
      result.add_(partial);
    }
  }
  return result;
}

// What rnn_layer_backward returns (schema in csrc/ops.cpp): grad_input, grad_hx,
// grad_weight_ih, grad_weight_hh, grad_bias, step_norms [T,B], grad_sq_norms [5] float64,
// nonfinite (bool, 0-d).
using LayerBackwardResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Squared L2 norm of a gradient, accumulated in float64 as it is produced (0 for a
// gradient that was not computed), as a 0-d float64 tensor on the gradient's device.
inline at::Tensor squared_norm(const at::Tensor& grad) {
  const at::Tensor norm = at::linalg_vector_norm(grad, 2, std::nullopt, false, at::kDouble);
  return norm.mul(norm);
}

// The same on the host for a CPU tensor, in one vectorized pass: a handful of ATen calls
// per layer would cost more than the reduction itself at small sizes.
template <typename scalar_t>
double host_sum_of_squares(const scalar_t* p, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const double v = static_cast<double>(p[i]);
    sum += v * v;
  }
  return sum;
}

inline double host_sum_of_squares(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  double sum = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.scalar_type(), "rnn_fused_sum_of_squares", [&] {
    sum = host_sum_of_squares(c.const_data_ptr<scalar_t>(), c.numel());
  });
  return sum;
}

// grad_sq_norms [5] float64 and nonfinite (bool 0-d) of LayerBackwardResult, from the five
// gradients and the step norms. The float64 sum of squares is finite for any finite
// float32 gradient, so it is non-finite exactly when some element is.
inline std::pair<at::Tensor, at::Tensor> reduce_gradient_norms(const std::array<at::Tensor, 5>& grads,
                                                               const at::Tensor& step_norms) {
  if (step_norms.is_cpu()) {
    at::Tensor sq = at::empty({5}, step_norms.options().dtype(at::kDouble));
    double* out = sq.data_ptr<double>();
    double total = host_sum_of_squares(step_norms);
    for (size_t i = 0; i < grads.size(); ++i) {
      out[i] = host_sum_of_squares(grads[i]);
      total += out[i];
    }
    return {sq, at::scalar_tensor(!std::isfinite(total), step_norms.options().dtype(at::kBool))};
  }
  std::array<at::Tensor, 5> sq;
  for (size_t i = 0; i < grads.size(); ++i) sq[i] = squared_norm(grads[i]);
  at::Tensor sq_norms = at::stack(sq);
  const at::Tensor total = sq_norms.sum().add(squared_norm(step_norms));
  return {sq_norms, at::logical_not(at::isfinite(total))};
}

// The backward's results from its five gradients (compute dtype; those not in output_mask
// empty): each converted to `result_dtype`, and with record_norms the squared norm of each
// (grad_bias's of one row: one parameter's gradient; 0 for those not computed) and whether any
// gradient or g_t (step_norms [T,B], from the time loop) is NaN/Inf; otherwise both empty [0].
inline LayerBackwardResult finish_gradients(const std::array<at::Tensor, 5>& computed, std::array<bool, 5> output_mask,
                                            at::ScalarType result_dtype, bool record_norms, at::Tensor step_norms) {
  std::array<at::Tensor, 5> grads;
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = computed[i].to(result_dtype);
  const at::TensorOptions options = step_norms.options();
  at::Tensor sq_norms = at::empty({0}, options.dtype(at::kDouble));
  at::Tensor nonfinite = at::empty({0}, options.dtype(at::kBool));
  if (record_norms) {
    std::array<at::Tensor, 5> one_each = grads;  // one bias row: the norm of one parameter's gradient
    if (output_mask[4]) one_each[4] = grads[4][0];
    std::tie(sq_norms, nonfinite) = reduce_gradient_norms(one_each, step_norms);
  }
  return {grads[0], grads[1], grads[2], grads[3], grads[4], std::move(step_norms), sq_norms, nonfinite};
}

// whole_sequence_gemms' products over the valid rows alone (valid_rows.h), piece by piece
// (kValidRowsPieceRows), those not in output_mask undefined: grad_input [T*B,I] (zero at the
// other rows), grad_w_ih, grad_bias [2,H], and dW_hh's sum over the pairs of steps (h_0's term
// apart). dz2d [T*B,H] (zero past the lengths), out2d [T*B,H] the saved h_t, x2d [T*B,I] the
// input in its own dtype (read only for grad_w_ih, each piece's rows cast to dz's).
struct ValidRowProducts {
  at::Tensor grad_input, grad_w_ih, grad_bias, grad_w_hh;
};

inline ValidRowProducts valid_row_products(const at::Tensor& dz2d, const at::Tensor& out2d, const at::Tensor& x2d,
                                           const at::Tensor& w_ih, int64_t steps, const std::vector<int64_t>& lengths,
                                           bool reverse, std::array<bool, 5> output_mask) {
  const auto add_into = [](at::Tensor& sum, const at::Tensor& term) { sum = sum.defined() ? sum.add_(term) : term; };
  ValidRowProducts r;
  if (output_mask[0]) r.grad_input = at::zeros({dz2d.size(0), w_ih.size(1)}, dz2d.options());
  if (output_mask[0] || output_mask[2] || output_mask[4]) {
    at::Tensor dz_sum;
    for (const at::Tensor& piece : valid_row_pieces(valid_row_index(steps, lengths))) {
      const at::Tensor dz = gather_rows(dz2d, piece);
      if (output_mask[0]) scatter_rows(r.grad_input, piece, at::mm(dz, w_ih));
      if (output_mask[2]) add_into(r.grad_w_ih, at::mm(dz.t(), gather_rows(x2d, piece).to(dz.scalar_type())));
      if (output_mask[4]) add_into(dz_sum, dz.sum(0));
    }
    if (output_mask[4]) r.grad_bias = dz_sum.unsqueeze(0).repeat({2, 1});
  }
  if (output_mask[3]) {
    const auto [dz_rows, state_rows] = valid_pair_index(steps, lengths, reverse);
    const std::vector<at::Tensor> dz_pieces = valid_row_pieces(dz_rows), state_pieces = valid_row_pieces(state_rows);
    for (size_t i = 0; i < dz_pieces.size(); ++i) {
      add_into(r.grad_w_hh, at::mm(gather_rows(dz2d, dz_pieces[i]).t(), gather_rows(out2d, state_pieces[i])));
    }
  }
  return r;
}

// The whole-sequence products of a float32 layer this small (their multiply-adds, T B H (2 I + H))
// are summed in float64 on the host and rounded once: each gradient is then the correctly rounded
// sum of its float32 terms (a float product is exact in float64) unless they cancel by more than
// about 2^29, where float32 GEMMs round every partial sum. Found by fuzzing: a gradient that is one
// heavily cancelled sum (an input gradient of one feature, the biases' of a hidden size of 1)
// rounded by MKL in float32 came out over the tolerance rule's bound on one CPU and not on
// another, whose GEMM kernels sum in another order. At this size the float64 products cost a few
// microseconds at most, against a layer call's tens of host time. The GPU kernels' short-layer
// gradients do the same (kernel_makes_gradients); on the GPU every product is a launch, so the
// host's GEMMs there stay float32.
inline constexpr int64_t kFloat64SumMaxMultiplyAdds = int64_t(1) << 17;

inline bool sums_in_float64(at::ScalarType compute, int64_t multiply_adds, bool launch_bound) {
  return compute == at::kFloat && !launch_bound && multiply_adds <= kFloat64SumMaxMultiplyAdds;
}

// whole_sequence_gemms's five results for a small float32 layer on the host (sums_in_float64):
// each product's terms summed in double by plain loops that read the float32 operands where they
// lie, so that the call pays no conversion to float64 nor an ATen product per gradient (their
// host time was most of such a call's: about 8% of a one-step call of 4 units). Float64 results
// (grad_input rounded to result_dtype), as whole_sequence_gemms makes from float64 operands, and
// the same sums: only their order within double differs. Arguments as whole_sequence_gemms's, on
// the CPU.
inline std::array<at::Tensor, 5> small_sums_in_float64(
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& out,
    const at::Tensor& dz, const at::Tensor& dz_first, const at::Tensor& dh_n, const std::optional<at::Tensor>& hx,
    const std::optional<at::Tensor>& lengths, bool reverse, std::array<bool, 5> output_mask,
    at::ScalarType result_dtype, const std::vector<int64_t>* valid_only) {
  const int64_t T = dz.size(0), B = dz.size(1), H = dz.size(2), I = input.size(2);
  // Every operand as contiguous float32 (a no-op for those already so; reduced-precision ones
  // convert exactly).
  const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  const at::Tensor dz_c = f32(dz);
  const float* g = dz_c.const_data_ptr<float>();
  const at::TensorOptions wide = dz.options().dtype(at::kDouble);
  const at::Tensor skipped = at::empty({0}, dz.options().dtype(result_dtype));
  // Step t of sample b enters the sums: every step, or (valid_only) t < its length.
  const auto counted = [&](int64_t t, int64_t b) { return valid_only == nullptr || t < (*valid_only)[b]; };
  // acc[rows, cols] += l[rows] r[cols]^T (r null: a row of ones, cols = 1).
  const auto add_outer = [](double* acc, const float* l, int64_t rows, const float* r, int64_t cols) {
    for (int64_t i = 0; i < rows; ++i) {
      const double li = l[i];
      double* a = acc + i * cols;
      if (r == nullptr) {
        a[0] += li;
        continue;
      }
      for (int64_t j = 0; j < cols; ++j) a[j] += li * double(r[j]);
    }
  };
  // row[cols] += d[rows] @ w[rows, cols].
  const auto add_row_product = [](double* row, const float* d, const float* w, int64_t rows, int64_t cols) {
    for (int64_t j = 0; j < rows; ++j) {
      const double dj = d[j];
      for (int64_t i = 0; i < cols; ++i) row[i] += dj * double(w[j * cols + i]);
    }
  };
  // acc[r, c] = sum over counted (t, b) of left(t, b)[r] * right(t + right_shift, b)[c]: the outer
  // products' sum, left and right rows of a [T*B, *] matrix (right null: a row of ones).
  const auto outer_sum = [&](double* acc, const float* left, int64_t rows, const float* right, int64_t cols,
                             int64_t t_begin, int64_t t_end, int64_t right_shift) {
    for (int64_t t = t_begin; t < t_end; ++t) {
      for (int64_t b = 0; b < B; ++b) {
        if (!counted(t, b) || !counted(t + right_shift, b)) continue;
        add_outer(acc, left + (t * B + b) * rows, rows,
                  right != nullptr ? right + ((t + right_shift) * B + b) * cols : nullptr, cols);
      }
    }
  };
  at::Tensor grad_hx = skipped, grad_input = skipped, grad_w_ih = skipped, grad_w_hh = skipped,
             grad_bias = skipped;
  if (output_mask[1]) {
    // dz_first [B,H] @ W_hh [H,H]; h_n is h_0 for an empty sample.
    const at::Tensor first = f32(dz_first), w = f32(w_hh);
    grad_hx = at::zeros({B, H}, wide);
    double* r = grad_hx.data_ptr<double>();
    const float *d = first.const_data_ptr<float>(), *wp = w.const_data_ptr<float>();
    const at::Tensor n = dh_n.defined() ? f32(dh_n) : at::Tensor();
    const at::Tensor host_lengths = lengths.has_value() ? lengths->contiguous() : at::Tensor();
    for (int64_t b = 0; b < B; ++b) {
      if (host_lengths.defined() && host_lengths.const_data_ptr<int64_t>()[b] == 0) {
        if (n.defined()) {
          for (int64_t k = 0; k < H; ++k) r[b * H + k] = n.const_data_ptr<float>()[b * H + k];
        }
        continue;
      }
      add_row_product(r + b * H, d + b * H, wp, H, H);
    }
  }
  if (output_mask[0]) {
    // dz [T*B,H] @ W_ih [H,I]: rows not counted stay zero.
    const at::Tensor w = f32(w_ih);
    const float* wp = w.const_data_ptr<float>();
    at::Tensor sums = at::zeros({T, B, I}, wide);
    double* r = sums.data_ptr<double>();
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t b = 0; b < B; ++b) {
        if (counted(t, b)) add_row_product(r + (t * B + b) * I, g + (t * B + b) * H, wp, H, I);
      }
    }
    grad_input = sums.to(result_dtype);
  }
  if (output_mask[2]) {
    // dz^T x: the input's counted rows only.
    const at::Tensor x = f32(input);
    grad_w_ih = at::zeros({H, I}, wide);
    outer_sum(grad_w_ih.data_ptr<double>(), g, H, x.const_data_ptr<float>(), I, 0, T, 0);
  }
  if (output_mask[4]) {
    // A row for each bias (equal), as whole_sequence_gemms gives them.
    at::Tensor column = at::zeros({H, 1}, wide);
    outer_sum(column.data_ptr<double>(), g, H, nullptr, 1, 0, T, 0);
    grad_bias = column.view({1, H}).expand({2, H}).contiguous();
  }
  if (output_mask[3]) {
    // sum_t dz_t^T h_{t-1} over the steps in processing order, then the h_0 term added.
    const at::Tensor h = f32(out);
    grad_w_hh = at::zeros({H, H}, wide);
    if (T > 1) {
      outer_sum(grad_w_hh.data_ptr<double>(), g, H, h.const_data_ptr<float>(), H, reverse ? 0 : 1,
                reverse ? T - 1 : T, reverse ? 1 : -1);
    }
    if (hx.has_value()) {
      const at::Tensor first = f32(dz_first), h0 = f32(*hx);
      at::Tensor term = at::zeros({H, H}, wide);
      double* a = term.data_ptr<double>();
      const float *d = first.const_data_ptr<float>(), *h0p = h0.const_data_ptr<float>();
      for (int64_t b = 0; b < B; ++b) add_outer(a, d + b * H, H, h0p + b * H, H);
      grad_w_hh = term.add_(grad_w_hh);
    }
  }
  return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias};
}

// The backward's five gradients from dz by the host's GEMMs, in the compute dtype (dz's), those
// not in output_mask empty [0] tensors (of result_dtype).
//   x [T,B,I], w_ih [H,I], w_hh [H,H], out [T,B,H] saved h_t, dz [T,B,H] (zero at invalid
//   steps), dz_first [B,H] dz at each sample's processing step 0, dh_n [B,H] or undefined (zero),
//   hx [B,H] or None, lengths int64 [B] or None. launch_bound: the backend runs GPU kernels
//   (each product a launch; see sum_of_outer_products). valid_only: the same lengths on the
//   host where the products multiply only the rows of valid steps (multiplies_valid_rows_only),
//   or null: every row.
// grad_bias is [2,H], a row for each bias.
inline std::array<at::Tensor, 5> whole_sequence_gemms(
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& out,
    const at::Tensor& dz, const at::Tensor& dz_first, const at::Tensor& dh_n, const std::optional<at::Tensor>& hx,
    const std::optional<at::Tensor>& lengths, bool reverse, std::array<bool, 5> output_mask,
    at::ScalarType result_dtype, bool launch_bound, const std::vector<int64_t>* valid_only) {
  const int64_t T = dz.size(0), B = dz.size(1), H = dz.size(2), I = input.size(2);
  if (sums_in_float64(dz.scalar_type(), T * B * H * (2 * I + H), launch_bound)) {
    return small_sums_in_float64(input, w_ih, w_hh, out, dz, dz_first, dh_n, hx, lengths, reverse, output_mask,
                                 result_dtype, valid_only);
  }
  const at::TensorOptions compute = dz.options();
  const at::Tensor skipped = at::empty({0}, compute.dtype(result_dtype));
  at::Tensor grad_hx = skipped, grad_input = skipped, grad_w_ih = skipped, grad_w_hh = skipped,
             grad_bias = skipped;
  if (output_mask[1]) {
    // dz_first holds dz at each sample's first processing step, the one that read h_0.
    grad_hx = at::mm(dz_first, w_hh);
    if (lengths.has_value()) {
      // h_n is h_0 for an empty sample. A device-side select: no host read of lengths.
      const at::Tensor empty_sample = lengths->eq(0).unsqueeze(1);
      grad_hx = dh_n.defined() ? at::where(empty_sample, dh_n, grad_hx) : grad_hx.masked_fill(empty_sample, 0);
    }
  }
  const at::Tensor dz2d = dz.view({T * B, H});
  ValidRowProducts valid;
  if (valid_only != nullptr) {
    valid = valid_row_products(dz2d, out.view({T * B, H}), input.reshape({T * B, I}), w_ih, T, *valid_only, reverse,
                               output_mask);
  }
  // grad_input is rounded to the result dtype before the input's compute-dtype copy is made
  // (reduced precision): the two [T,B,I] float32 tensors are never live together.
  if (output_mask[0]) {
    grad_input = (valid_only != nullptr ? valid.grad_input : at::mm(dz2d, w_ih)).view({T, B, I}).to(result_dtype);
  }
  if (output_mask[2]) {
    grad_w_ih = valid_only != nullptr
                    ? valid.grad_w_ih
                    : at::mm(dz2d.t(), input.to(compute.dtype()).contiguous().view({T * B, I}));
  }
  // grad_bias [2,H]: a row for each bias (equal, in one reduction over an expanded dz), so
  // that autograd hands each bias its own row: one tensor for both would be copied for one.
  if (output_mask[4]) {
    grad_bias = valid_only != nullptr ? valid.grad_bias : dz2d.unsqueeze(0).expand({2, T * B, H}).sum(1);
  }
  if (output_mask[3]) {
    // dW_hh = sum_t dz_t^T h_{t-1}: h_{t-1} is the neighbouring output in processing order
    // (zero past a sample's end, so those pairs add nothing), or h_0 at step 0.
    // Without hx the h_0 term is zero and nothing is added for it (two launches fewer on a GPU).
    const std::optional<at::Tensor> first_term =
        hx.has_value() ? std::optional<at::Tensor>(at::mm(dz_first.t(), hx->to(compute.dtype()))) : std::nullopt;
    if (T > 1) {
      grad_w_hh = valid_only != nullptr
                      ? valid.grad_w_hh
                      : sum_of_outer_products(dz.narrow(0, reverse ? 0 : 1, T - 1),
                                              out.narrow(0, reverse ? 1 : 0, T - 1), launch_bound);
      if (first_term.has_value()) grad_w_hh = first_term->add_(grad_w_hh);
    } else {
      grad_w_hh = first_term.has_value() ? *first_term : at::zeros({H, H}, compute);
    }
  }
  return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias};
}

// Everything the backward returns, from dz: whole_sequence_gemms, then finish_gradients.
inline LayerBackwardResult gradients_from_dz(
    const at::Tensor& input, const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& out,
    const at::Tensor& dz, const at::Tensor& dz_first, const at::Tensor& dh_n, const std::optional<at::Tensor>& hx,
    const std::optional<at::Tensor>& lengths, bool reverse, std::array<bool, 5> output_mask,
    at::ScalarType result_dtype, bool record_norms, at::Tensor step_norms, bool launch_bound,
    const std::vector<int64_t>* valid_only = nullptr) {
  return finish_gradients(whole_sequence_gemms(input, w_ih, w_hh, out, dz, dz_first, dh_n, hx, lengths, reverse,
                                               output_mask, result_dtype, launch_bound, valid_only),
                          output_mask, result_dtype, record_norms, std::move(step_norms));
}

}  // namespace rnn_fused
