// One layer's gradients over a PackedSequence on the CPU, in the packed layout itself
// (rnn_fused::rnn_packed_layer_backward): the backward of packed training, whose forward is the
// packed inference op run one layer at a time (functional._PackedLayer).
//
// The padded route runs a packed batch as the padded batch [T,B,F]: its input, output, dy and dz
// are each T*B rows where the packed data holds N, and the rows go there and back by index. Here
// every operand stays as the packed data holds it: the CPU backend's backward loop reads dy and
// the saved h_t and writes dz at step t's rows (BackwardRecurrence::packed_step_rows), and the
// whole-sequence gradients are products of the packed rows themselves: dX = dz W_ih, dW_ih = dz^T
// X and the biases' sum over the N rows, and dW_hh the sum over the pairs of neighbouring steps of
// dz_t^T h_{t-1}, whose rows are contiguous blocks of the packed data (packed_pair_products).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "host_layer.h"
#include "packed_arguments.h"

namespace rnn_fused {
namespace {

constexpr const char* kWhat = "rnn_fused.rnn_packed_layer_backward";

// A run of pairs of rows in the packed data: dz rows [dz_row, dz_row + rows) each with the state
// row the same offset from state_row.
struct RowPairs {
  int64_t dz_row = 0, state_row = 0, rows = 0;
};

// dW_hh's pairs in a PackedSequence's data, merged into runs: step t's dz with the state the step
// read, h_{t-1} (h_{t+1} for a reverse layer), for every step but each sample's first in
// processing order (h_0's term is added apart). Forward: step t's bs[t] rows with the first bs[t]
// rows of step t-1. Reverse: the first bs[t+1] rows of step t with step t+1's. Neighbouring steps'
// blocks join where both sides are adjacent (equal batch sizes), so that a batch of equal lengths
// is one run.
std::vector<RowPairs> packed_state_pairs(const PackedLayout& layout, bool reverse) {
  const auto batch_size = [&](int64_t t) {
    return (t + 1 < layout.steps ? layout.step_rows[t + 1] : layout.rows) - layout.step_rows[t];
  };
  std::vector<RowPairs> runs;
  for (int64_t t = reverse ? 0 : 1; t < (reverse ? layout.steps - 1 : layout.steps); ++t) {
    const RowPairs block{.dz_row = layout.step_rows[t],
                         .state_row = layout.step_rows[reverse ? t + 1 : t - 1],
                         .rows = batch_size(reverse ? t + 1 : t)};
    if (block.rows == 0) break;  // no sample runs past this step
    RowPairs* last = runs.empty() ? nullptr : &runs.back();
    if (last != nullptr && last->dz_row + last->rows == block.dz_row &&
        last->state_row + last->rows == block.state_row) {
      last->rows += block.rows;
    } else {
      runs.push_back(block);
    }
  }
  return runs;
}

// sum over the pairs of dz[pair]^T out[pair state] [H,H]: one product per run, in pieces of at
// most kValidRowsPieceRows rows (each entry summed in chains that long, as the padded route's
// products of its valid rows are). dz and out [N,H] of one dtype; zeros where there is no pair.
at::Tensor packed_pair_products(const at::Tensor& dz, const at::Tensor& out, const PackedLayout& layout,
                                bool reverse) {
  const int64_t H = dz.size(1);
  at::Tensor sum = at::zeros({H, H}, dz.options());
  for (const RowPairs& run : packed_state_pairs(layout, reverse)) {
    for (int64_t start = 0; start < run.rows; start += kValidRowsPieceRows) {
      const int64_t rows = std::min(kValidRowsPieceRows, run.rows - start);
      sum.addmm_(dz.narrow(0, run.dz_row + start, rows).t(), out.narrow(0, run.state_row + start, rows));
    }
  }
  return sum;
}

// sum over the rows of a[rows]^T b[rows], in pieces of at most kValidRowsPieceRows rows.
at::Tensor row_products(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor sum = at::zeros({a.size(1), b.size(1)}, a.options());
  for (int64_t start = 0; start < a.size(0); start += kValidRowsPieceRows) {
    const int64_t rows = std::min(kValidRowsPieceRows, a.size(0) - start);
    sum.addmm_(a.narrow(0, start, rows).t(), b.narrow(0, start, rows).to(a.scalar_type()));
  }
  return sum;
}

// A direction's columns [N,H] of t [N,D*H] in the compute dtype, as the backward loop reads them
// (BackwardRecurrence): a view where their rows are dense in that dtype (a bidirectional layer's
// dy and saved output need no copy of each direction's half), else a contiguous copy.
at::Tensor direction_columns(const at::Tensor& t, int64_t direction, int64_t hidden, at::ScalarType compute) {
  const at::Tensor columns = t.narrow(1, direction * hidden, hidden);
  if (columns.scalar_type() == compute && columns.stride(1) == 1 && columns.stride(0) >= hidden) return columns;
  return columns.to(compute).contiguous();
}

// Indices of the op's needs and of its results: the data, hx, then each weight of the layer.
constexpr size_t kNeedsData = 0, kNeedsHx = 1, kNeedsWeightsAt = 2, kMaxNeeds = 10;

std::vector<at::Tensor> rnn_packed_layer_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_h_n, const at::Tensor& output,
    std::array<bool, kMaxNeeds> needs, const at::Tensor& data, const at::Tensor& batch_sizes,
    const std::optional<at::Tensor>& hx, const std::vector<at::Tensor>& weights, bool has_biases, bool bidirectional,
    c10::string_view nonlinearity, int64_t truncate_every, double keep_prob, int64_t seed, int64_t layer,
    std::optional<c10::string_view> backend_name, bool directions_at_once, bool record_norms) {
  // Every argument is checked before anything runs.
  const PackedArguments a = check_packed_arguments(kWhat, data, batch_sizes, hx, weights, has_biases, 1,
                                                   bidirectional, nonlinearity, backend_name);
  const int64_t D = a.directions, H = a.hidden, N = a.layout.rows, B = a.layout.batch, F = data.size(1);
  const int64_t per_direction = has_biases ? 4 : 2;
  check_packed_operand(kWhat, output, data, {N, D * H}, "output");
  check_packed_operand(kWhat, grad_output, data, {N, D * H}, "grad_output");
  if (grad_h_n.has_value()) check_packed_operand(kWhat, *grad_h_n, data, {D, B, H}, "grad_h_n");
  std::array<TruncationParams, 2> truncation;
  for (int64_t d = 0; d < D; ++d) {
    truncation[d] = parse_truncation(truncate_every, keep_prob, seed, layer, /*reverse=*/d == 1);
  }

  const at::ScalarType ct = compute_dtype(data.scalar_type()), result_dtype = data.scalar_type();
  const at::TensorOptions options = data.options().dtype(ct);
  const size_t results = kNeedsWeightsAt + static_cast<size_t>(D * per_direction);
  std::vector<at::Tensor> grads(results, at::empty({0}, data.options()));
  const bool wants_data = needs[kNeedsData], wants_hx = needs[kNeedsHx] && hx.has_value();
  // hx's gradient: the directions' rows of one [D,B,H] tensor.
  at::Tensor grad_hx = wants_hx ? at::zeros({D, B, H}, data.options()) : at::Tensor();
  if (wants_hx) grads[kNeedsHx] = grad_hx;
  if (N == 0 || H == 0) {
    if (wants_data) grads[kNeedsData] = at::zeros({N, F}, data.options());
    for (size_t w = kNeedsWeightsAt; w < results; ++w) {
      if (needs[w]) grads[w] = at::zeros_like(weights[w - kNeedsWeightsAt]);
    }
    for (int64_t d = 0; record_norms && d < D; ++d) {
      grads.insert(grads.end(), {at::zeros({a.layout.steps, B}, options), at::zeros({5}, options.dtype(at::kDouble)),
                                 at::scalar_tensor(false, options.dtype(at::kBool))});
    }
    return grads;
  }

  // The backward loops: dz [N,H] per direction, and dz at each sample's first processing step;
  // with record_norms each direction's ||g_t|| [T,B] (zero past each sample's length).
  std::array<at::Tensor, 2> dz, dz_first, out, step_norms;
  std::array<std::optional<LayerBackwardCall>, 2> calls;
  std::array<std::optional<BackwardOperands>, 2> operands;
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = a.weights[static_cast<size_t>(d)];
    out[d] = direction_columns(output, d, H, ct);
    calls[d].emplace(LayerBackwardCall{.forward = a.direction_call(data, 0, d, F, truncation[d]),
                                       .grad_output = grad_output,
                                       .grad_h_n = grad_h_n.has_value() ? (*grad_h_n)[d] : at::Tensor(),
                                       .output = output,
                                       .record_norms = record_norms});
    operands[d].emplace(BackwardOperands{
        .input = data,
        .w_ih = w.w_ih.to(ct).contiguous(),
        .w_hh = w.w_hh.to(ct).contiguous(),
        .out = out[d],
        .dy = direction_columns(grad_output, d, H, ct),
        .dh_n = grad_h_n.has_value() ? (*grad_h_n)[d].to(ct).contiguous() : at::Tensor()});
    dz[d] = at::empty({N, H}, options);
    step_norms[d] = record_norms ? at::empty({a.layout.steps, B}, options) : at::empty({0}, options);
  }
  const auto run = [&](int64_t d) {
    dz_first[d] = a.backend->backward(BackwardRecurrence{.call = *calls[d],
                                                         .operands = *operands[d],
                                                         .dz = dz[d],
                                                         .step_norms = step_norms[d],
                                                         .packed_step_rows = &a.layout.step_rows});
  };
  if (D == 2 && directions_at_once) {
    run_at_once({[&] { run(0); }, [&] { run(1); }});
  } else {
    for (int64_t d = 0; d < D; ++d) run(d);
  }

  // The whole-sequence gradients. A float32 layer this small sums its products in float64 and
  // rounds once, as the layer op's host GEMMs do (elman_gemms.h sums_in_float64).
  const at::ScalarType wide =
      sums_in_float64(ct, N * H * (2 * F + H), /*launch_bound=*/false) ? at::kDouble : ct;
  const at::Tensor x = data.to(wide).contiguous();
  at::Tensor grad_data_sum;
  std::vector<at::Tensor> norms;  // with record_norms, per direction: step_norms, grad_sq_norms, nonfinite
  for (int64_t d = 0; d < D; ++d) {
    operands[d]->dy = at::Tensor();  // no longer read: its copy (if any) goes before the products'
    const size_t at_weights = kNeedsWeightsAt + static_cast<size_t>(d * per_direction);
    const BackwardOperands& o = *operands[d];
    const at::Tensor g = dz[d].to(wide);
    // The data's gradient is the directions' sum; each direction's own part is its norm's (taken
    // below, before the next direction's part is added in place).
    const at::Tensor own_grad_data = wants_data ? at::mm(g, o.w_ih.to(wide)) : at::Tensor();
    if (wants_data) grad_data_sum = grad_data_sum.defined() ? grad_data_sum.add_(own_grad_data) : own_grad_data;
    if (needs[at_weights]) grads[at_weights] = row_products(g, x).to(result_dtype);
    if (needs[at_weights + 1]) {
      at::Tensor sum = packed_pair_products(g, out[d].to(wide), a.layout, /*reverse=*/d == 1);
      // h_0's term: dz at each sample's first processing step with its initial state.
      if (hx.has_value()) sum.addmm_(dz_first[d].to(wide).t(), (*hx)[d].to(wide));
      grads[at_weights + 1] = sum.to(result_dtype);
    }
    if (has_biases && (needs[at_weights + 2] || needs[at_weights + 3])) {
      // d/db_ih = d/db_hh: a row for each bias of one [2,H] tensor, so that autograd copies neither.
      const at::Tensor rows = g.sum(0).unsqueeze(0).repeat({2, 1}).to(result_dtype);
      if (needs[at_weights + 2]) grads[at_weights + 2] = rows[0];
      if (needs[at_weights + 3]) grads[at_weights + 3] = rows[1];
    }
    // Every sample's first step read h_0 (a packed batch has no empty sample).
    if (wants_hx) grad_hx[d].copy_(at::mm(dz_first[d].to(wide), o.w_hh.to(wide)));
    if (record_norms) {
      // As the layer op reduces them (elman_gemms.h finish_gradients): each gradient as returned,
      // the biases' one row, 0 for those not computed.
      const at::Tensor skipped = at::empty({0}, data.options());
      const auto returned = [&](size_t i) { return needs[i] ? grads[i] : skipped; };
      const at::Tensor bias_row = has_biases && (needs[at_weights + 2] || needs[at_weights + 3])
                                      ? (needs[at_weights + 2] ? grads[at_weights + 2] : grads[at_weights + 3])
                                      : skipped;
      const auto [sq_norms, nonfinite] = reduce_gradient_norms(
          {wants_data ? own_grad_data.to(result_dtype) : skipped, wants_hx ? grad_hx[d] : skipped,
           returned(at_weights), returned(at_weights + 1), bias_row},
          step_norms[d]);
      norms.insert(norms.end(), {step_norms[d], sq_norms, nonfinite});
    }
  }
  if (wants_data) grads[kNeedsData] = grad_data_sum.to(result_dtype);
  grads.insert(grads.end(), norms.begin(), norms.end());
  return grads;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, CompositeExplicitAutograd, m) {
  m.impl("rnn_packed_layer_backward", &rnn_packed_layer_backward);
}

}  // namespace rnn_fused
