// A model's forward over its layers in one op call (rnn_fused::rnn_layers_forward), a packed
// batch's way into the padded batch the layers run (rnn_fused::packed_to_padded), and the dropout
// between layers both the op and functional.rnn's loop in Python apply (valid_positions,
// dropout_between_layers).
//
// functional.rnn runs each layer and direction as a layer op (or a bidirectional layer as the
// directions' op pair); where every layer takes the same route, which it decides once per call,
// it hands the whole loop to this op instead. The op calls the same layer ops through the
// dispatcher (layer_ops.h), in the same order and with the same arguments, so autograd records
// the same nodes and every value is bitwise what the loop in Python gives. What it saves is host
// time: a short call's cost is the host's, and per layer the Python of the loop and of the op call
// (its arguments parsed and boxed) came to about as much as the op's own C++ (measured on the
// development CPU: docs/architecture.md).
//
// Its kernel is CompositeImplicitAutograd: it only composes differentiable ops (the layer ops,
// select, slice, cat, stack), whose own kernels do the rest.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "layer_ops.h"
#include "valid_rows.h"

namespace rnn_fused {
namespace {

using layer_ops::OptionalName;
using layer_ops::OptionalTensor;

// How a bidirectional layer runs (directions_op): 0, as two layer ops, the forward direction's
// first; 1 or 2, as one call of the directions' op pair with that side_by_side (2: at once).
constexpr int64_t kDirectionsAsLayerOps = 0;

// The rows of a flattened time-major batch [T*B,F] at steps t < lengths[b], in (step, sample)
// order: int64 [N] on `device` (functional.valid_positions). A PackedSequence's data order when the
// batch is padded in its own order (packed_to_padded). Found by a loop on the host and copied
// without waiting for the device (lengths on a GPU are read back first: a synchronisation, paid
// only by callers who pass them there).
at::Tensor valid_positions(const at::Tensor& lengths, int64_t steps, at::Device device) {
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.scalar_type() == at::kLong,
                    "rnn_fused.valid_positions: lengths must be a 1-D int64 tensor, got a ", lengths.scalar_type(),
                    " tensor of shape ", lengths.sizes());
  const at::Tensor host = lengths.to(at::kCPU).contiguous();
  const int64_t* length = host.const_data_ptr<int64_t>();
  const int64_t batch = host.numel();
  std::vector<int64_t> rows;
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t b = 0; b < batch; ++b) {
      if (t < length[b]) rows.push_back(t * batch + b);
    }
  }
  const at::Tensor positions = at::tensor(rows, host.options());
  // (non_blocking: the copy from pageable memory is staged before the call returns)
  return positions.to(device, at::kLong, /*non_blocking=*/true);
}

// Dropout of one layer's output [T,B,F] with nn.RNN's draws (functional.dropout_between_layers):
// at::dropout of the whole output, or with lengths (positions: valid_positions) of its valid
// positions only, in (step, sample) order, the rest zero.
at::Tensor dropout_at(const at::Tensor& output, double p, const at::Tensor& positions) {
  if (!positions.defined()) return at::dropout(output, p, /*train=*/true);
  const at::Tensor flat = output.reshape({-1, output.size(2)});
  const at::Tensor dropped = at::dropout(flat.index_select(0, positions), p, /*train=*/true);
  return at::zeros(flat.sizes(), flat.options()).index_copy_(0, positions, dropped).view(output.sizes());
}

at::Tensor dropout_between_layers(const at::Tensor& output, double p, const OptionalTensor& lengths) {
  TORCH_CHECK_VALUE(output.dim() == 3, "rnn_fused.dropout_between_layers: output must be 3-D [T, B, F], got ",
                    output.dim(), "-D");
  return dropout_at(output, p,
                    lengths.has_value() ? valid_positions(*lengths, output.size(0), output.device()) : at::Tensor());
}

// input [T,B,I]; hx [L*D,B,H] or None; weights: per layer and direction (nn.RNN's order) its
// weight_ih [H,I or D*H], weight_hh [H,H] and, with has_biases, bias_ih and bias_hh [H];
// dropout: the probability of dropout on every layer's output but the last (0: none), as in
// training (the caller passes 0 in evaluation).
// Returns output [T,B,D*H] and h_n [L*D,B,H], as functional.rnn's loop.
std::tuple<at::Tensor, at::Tensor> rnn_layers_forward(
    const at::Tensor& input, const OptionalTensor& hx, const std::vector<at::Tensor>& weights, bool has_biases,
    int64_t num_layers, bool bidirectional, const OptionalTensor& lengths, c10::string_view nonlinearity,
    int64_t truncate_every, double keep_prob, const OptionalTensor& seed, OptionalName backend, OptionalName path,
    int64_t directions_op, double dropout) {
  const int64_t directions = bidirectional ? 2 : 1, per_direction = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(num_layers >= 1, "rnn_fused.rnn_layers_forward: num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) == num_layers * directions * per_direction,
                    "rnn_fused.rnn_layers_forward: expected ", num_layers * directions * per_direction,
                    " weights (num_layers=", num_layers, ", bidirectional=", bidirectional ? "True" : "False",
                    ", has_biases=", has_biases ? "True" : "False", "), got ", weights.size());
  TORCH_CHECK_VALUE(directions_op >= 0 && directions_op <= 2,
                    "rnn_fused.rnn_layers_forward: directions_op must be 0, 1 or 2, got ", directions_op);
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout <= 1.0,
                    "rnn_fused.rnn_layers_forward: dropout must be in [0, 1], got ", dropout);
  const bool directions_in_one_op = bidirectional && directions_op != kDirectionsAsLayerOps;
  // With lengths, dropout draws over the valid positions: found once, after the first layer's op
  // has checked the lengths.
  at::Tensor positions;
  at::Tensor layer_input = input;
  // The final states: [B,H] per layer op, or [2,B,H] per directions' op.
  std::vector<at::Tensor> states;
  states.reserve(static_cast<size_t>(num_layers * directions));
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const auto first = weights.begin() + layer * directions * per_direction;
    if (directions_in_one_op) {
      const OptionalTensor layer_hx = hx.has_value() ? OptionalTensor(hx->slice(0, 2 * layer, 2 * layer + 2))
                                                     : std::nullopt;
      auto [output, h_n] = layer_ops::directions_forward_op().call(
          layer_input, layer_hx, std::vector<at::Tensor>(first, first + 2 * per_direction), has_biases, lengths,
          nonlinearity, truncate_every, keep_prob, seed, layer, backend, path, directions_op);
      states.push_back(std::move(h_n));
      layer_input = std::move(output);
    } else {
      std::vector<at::Tensor> outputs;
      for (int64_t direction = 0; direction < directions; ++direction) {
        const int64_t index = layer * directions + direction;
        const auto w = first + direction * per_direction;
        auto [output, h_n] = layer_ops::forward_op().call(
            layer_input, hx.has_value() ? OptionalTensor(hx->select(0, index)) : std::nullopt, w[0], w[1],
            has_biases ? OptionalTensor(w[2]) : std::nullopt, has_biases ? OptionalTensor(w[3]) : std::nullopt,
            lengths, nonlinearity, /*reverse=*/direction == 1, truncate_every, keep_prob, seed, layer, backend,
            path, /*side_by_side=*/1);
        outputs.push_back(std::move(output));
        states.push_back(std::move(h_n));
      }
      layer_input = directions == 1 ? std::move(outputs[0]) : at::cat(outputs, 2);
    }
    if (dropout > 0 && layer < num_layers - 1) {
      if (lengths.has_value() && !positions.defined()) positions = valid_positions(*lengths, input.size(0), input.device());
      layer_input = dropout_at(layer_input, dropout, positions);
    }
  }
  // One op's final states need no copy (a launch on a GPU).
  if (directions_in_one_op) return {layer_input, states.size() == 1 ? states[0] : at::cat(states)};
  return {layer_input, states.size() == 1 ? states[0].unsqueeze(0) : at::stack(states)};
}

// A PackedSequence's data [N,F] as a time-major padded batch [T,B,F] in the packed (length-sorted)
// order, zeros past each sample's length (functional.packed_to_padded); batch_sizes int64 [T] on
// the CPU, non-increasing, B = batch_sizes[0]. Returns (padded, lengths int64 [B] on the CPU,
// positions int64 [N] on data's device: the padded rows holding the packed rows, in (step, sample)
// order). Lengths and positions are found by a loop on the host, one copy to the device and no
// synchronisation; padded is one zero fill and one copy by index, differentiable in data.
std::tuple<at::Tensor, at::Tensor, at::Tensor> packed_to_padded(const at::Tensor& data, const at::Tensor& batch_sizes) {
  const PackedLayout layout = packed_layout("rnn_fused.packed_to_padded", data, batch_sizes);
  const int64_t steps = layout.steps, batch = layout.batch;
  const at::Tensor lengths = at::tensor(layout.lengths, batch_sizes.options());
  const at::Tensor positions = valid_positions(lengths, steps, data.device());
  const at::Tensor padded = at::zeros({steps * batch, data.size(1)}, data.options()).index_copy_(0, positions, data);
  return {padded.view({steps, batch, data.size(1)}), lengths, positions};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, CompositeImplicitAutograd, m) {
  m.impl("rnn_layers_forward", &rnn_layers_forward);
  m.impl("packed_to_padded", &packed_to_padded);
  m.impl("valid_positions", &valid_positions);
  m.impl("dropout_between_layers", &dropout_between_layers);
}

}  // namespace rnn_fused
