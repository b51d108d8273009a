// The arguments of the ops that run a PackedSequence in the packed layout itself (the CPU backend's
// loops): rnn_packed_inference (packed_inference.cpp: a model's forward without gradients, or one
// layer's forward under packed training) and rnn_packed_layer_backward (packed_training.cpp: one
// layer's gradients). One check of them, before anything runs, and the per-direction call the CPU
// backend's loops read.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "host_layer.h"
#include "valid_rows.h"

namespace rnn_fused {

// One direction of a layer: its weights, as nn.RNN names them (weight_ih_l0, ...).
struct DirectionWeights {
  at::Tensor w_ih, w_hh;                       // [H,F], [H,H]
  std::optional<at::Tensor> bias_ih, bias_hh;  // [H] each, or none
};

// A tensor of data's dtype and device and of this shape, else an error naming it.
inline void check_packed_operand(const char* what, const at::Tensor& t, const at::Tensor& data,
                                 at::IntArrayRef shape, const std::string& name) {
  TORCH_CHECK(t.device() == data.device() && t.scalar_type() == data.scalar_type() && t.sizes() == shape, what,
              ": ", name, " must be a ", data.scalar_type(), " tensor of shape ", shape, " on ", data.device(),
              ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

struct PackedArguments {
  PackedLayout layout;
  int64_t directions = 1, hidden = 0;
  Activation activation = Activation::Tanh;
  const RecurrenceBackend* backend = nullptr;
  std::vector<DirectionWeights> weights;  // [num_layers * directions], nn.RNN's order
  at::Tensor lengths;                     // int64 [B] on the CPU: the layout's lengths

  // Direction `direction` of layer `layer` as the CPU backend's loops read it: the shape, the
  // lengths and the options (the op checked its operands itself: no call reaches
  // check_forward_call). data: the op's data (the loops read neither it nor the weights here).
  LayerForwardCall direction_call(const at::Tensor& data, int64_t layer, int64_t direction, int64_t in_features,
                                  const TruncationParams& truncation = {}) const {
    const DirectionWeights& w = weights[static_cast<size_t>(layer * directions + direction)];
    return LayerForwardCall{.input = data,
                            .weight_ih = w.w_ih,
                            .weight_hh = w.w_hh,
                            .options = LayerOptions{.activation = activation, .reverse = direction == 1,
                                                    .truncation = truncation, .backend = backend->name},
                            .shape = LayerShape{.steps = layout.steps, .batch = layout.batch,
                                                .input_size = in_features, .hidden = hidden},
                            .valid_lengths = SequenceLengths{.on_device = lengths, .host = layout.lengths}};
  }
};

// Checks a packed op's data [N,I], batch_sizes [T], hx [num_layers*D,B,H] and weights (per layer
// and direction weight_ih, weight_hh and, with has_biases, bias_ih and bias_hh: nn.RNN's
// all_weights flattened), the nonlinearity and the backend (one that runs the packed layout).
inline PackedArguments check_packed_arguments(const char* what, const at::Tensor& data,
                                              const at::Tensor& batch_sizes, const std::optional<at::Tensor>& hx,
                                              const std::vector<at::Tensor>& weights, bool has_biases,
                                              int64_t num_layers, bool bidirectional, c10::string_view nonlinearity,
                                              std::optional<c10::string_view> backend_name) {
  PackedArguments a{.layout = packed_layout(what, data, batch_sizes), .directions = bidirectional ? 2 : 1};
  const int64_t per_direction = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(num_layers >= 1, what, ": num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) == num_layers * a.directions * per_direction, what,
                    ": expected ", num_layers * a.directions * per_direction, " weights (num_layers=", num_layers,
                    ", bidirectional=", bidirectional ? "True" : "False", ", has_biases=",
                    has_biases ? "True" : "False", "), got ", weights.size());
  TORCH_CHECK(at::isFloatingType(data.scalar_type()), what, ": data must be a floating-point tensor, got ",
              data.scalar_type());
  a.backend = &find_recurrence_backend(data.device().type(),
                                       backend_name.has_value() ? std::string(*backend_name) : "");
  TORCH_CHECK_VALUE(a.backend->runs_packed_layout, what, ": backend '", a.backend->name,
                    "' runs padded batches only; the packed layout runs on the CPU backend ('cpu')");
  a.activation = parse_activation(std::string(nonlinearity));
  TORCH_CHECK(weights[1].dim() == 2, what, ": weight_hh must be 2-D [H, H], got shape ", weights[1].sizes());
  const int64_t H = a.hidden = weights[1].size(0);
  for (int64_t index = 0; index < num_layers * a.directions; ++index) {
    const auto w = weights.begin() + index * per_direction;
    const int64_t in_features = index < a.directions ? data.size(1) : a.directions * H;
    const std::string suffix =
        "_l" + std::to_string(index / a.directions) + (index % a.directions == 1 ? "_reverse" : "");
    check_packed_operand(what, w[0], data, {H, in_features}, "weight_ih" + suffix);
    check_packed_operand(what, w[1], data, {H, H}, "weight_hh" + suffix);
    if (has_biases) {
      check_packed_operand(what, w[2], data, {H}, "bias_ih" + suffix);
      check_packed_operand(what, w[3], data, {H}, "bias_hh" + suffix);
    }
    a.weights.push_back({w[0], w[1], has_biases ? std::optional(w[2]) : std::nullopt,
                         has_biases ? std::optional(w[3]) : std::nullopt});
  }
  if (hx.has_value()) check_packed_operand(what, *hx, data, {num_layers * a.directions, a.layout.batch, H}, "hx");
  a.lengths = at::tensor(a.layout.lengths, at::TensorOptions().dtype(at::kLong));
  return a;
}

}  // namespace rnn_fused
