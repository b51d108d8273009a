// A model's inference (no gradients) over a PackedSequence on the CPU, in the packed layout
// itself (rnn_fused::rnn_packed_inference).
//
// A layer op runs the padded batch [T,B,F]: a PackedSequence reaches it through packed_to_padded
// (a zero fill of the padded input and a copy of its rows), and its output goes back by rows, the
// input projection's valid rows gathered and scattered on the way. Measured at 10, 256, 512, 512
// (development CPU, 2026-12-07: docs/benchmarks.md) those copies came to about 3 ms of a 10 ms
// call, where nn.RNN's whole call took 8. Without gradients nothing needs the padded batch: here
// each layer projects the packed rows in one GEMM, and the CPU backend's time loop reads and
// writes step t's rows where the packed data holds them (ForwardRecurrence::packed_step_rows).
// The same GEMM, loop and epilogue as the layer op's, on the same rows: values within rounding of
// it (the projection's GEMM takes the N rows at once, the layer op's in pieces), and the time loop
// the same sums.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "host_layer.h"
#include "valid_rows.h"

namespace rnn_fused {
namespace {

constexpr const char* kWhat = "rnn_fused.rnn_packed_inference";

// One direction of a layer: its weights, as nn.RNN names them (weight_ih_l0, ...).
struct DirectionWeights {
  at::Tensor w_ih, w_hh;
  std::optional<at::Tensor> bias_ih, bias_hh;
};

void check_operand(const at::Tensor& t, const at::Tensor& data, at::IntArrayRef shape, const std::string& name) {
  TORCH_CHECK(t.device() == data.device() && t.scalar_type() == data.scalar_type() && t.sizes() == shape, kWhat, ": ",
              name, " must be a ", data.scalar_type(), " tensor of shape ", shape, " on ", data.device(), ", got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

std::tuple<at::Tensor, at::Tensor> rnn_packed_inference(const at::Tensor& data, const at::Tensor& batch_sizes,
                                                        const std::optional<at::Tensor>& hx,
                                                        const std::vector<at::Tensor>& weights, bool has_biases,
                                                        int64_t num_layers, bool bidirectional,
                                                        c10::string_view nonlinearity,
                                                        std::optional<c10::string_view> backend_name,
                                                        bool directions_at_once, double dropout) {
  // Every argument is checked before anything runs.
  const PackedLayout layout = packed_layout(kWhat, data, batch_sizes);
  const int64_t directions = bidirectional ? 2 : 1, per_direction = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(num_layers >= 1, kWhat, ": num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK_VALUE(static_cast<int64_t>(weights.size()) == num_layers * directions * per_direction, kWhat,
                    ": expected ", num_layers * directions * per_direction, " weights (num_layers=", num_layers,
                    ", bidirectional=", bidirectional ? "True" : "False", ", has_biases=",
                    has_biases ? "True" : "False", "), got ", weights.size());
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout <= 1.0, kWhat, ": dropout must be in [0, 1], got ", dropout);
  TORCH_CHECK(at::isFloatingType(data.scalar_type()), kWhat, ": data must be a floating-point tensor, got ",
              data.scalar_type());
  const RecurrenceBackend& backend =
      find_recurrence_backend(data.device().type(), backend_name.has_value() ? std::string(*backend_name) : "");
  TORCH_CHECK_VALUE(backend.runs_packed_layout, kWhat, ": backend '", backend.name,
                    "' runs padded batches only; the packed layout runs on the CPU backend ('cpu')");
  const Activation activation = parse_activation(std::string(nonlinearity));
  TORCH_CHECK(weights[1].dim() == 2, kWhat, ": weight_hh must be 2-D [H, H], got shape ", weights[1].sizes());
  const int64_t T = layout.steps, B = layout.batch, N = layout.rows, H = weights[1].size(0);
  std::vector<DirectionWeights> layer_weights;
  for (int64_t index = 0; index < num_layers * directions; ++index) {
    const auto w = weights.begin() + index * per_direction;
    const int64_t in_features = index < directions ? data.size(1) : directions * H;
    const std::string suffix = "_l" + std::to_string(index / directions) + (index % directions == 1 ? "_reverse" : "");
    check_operand(w[0], data, {H, in_features}, "weight_ih" + suffix);
    check_operand(w[1], data, {H, H}, "weight_hh" + suffix);
    if (has_biases) {
      check_operand(w[2], data, {H}, "bias_ih" + suffix);
      check_operand(w[3], data, {H}, "bias_hh" + suffix);
    }
    layer_weights.push_back({w[0], w[1], has_biases ? std::optional(w[2]) : std::nullopt,
                             has_biases ? std::optional(w[3]) : std::nullopt});
  }
  if (hx.has_value()) check_operand(*hx, data, {num_layers * directions, B, H}, "hx");
  if (at::GradMode::is_enabled()) {
    bool wants_grad = data.requires_grad() || (hx.has_value() && hx->requires_grad());
    for (const at::Tensor& w : weights) wants_grad = wants_grad || w.requires_grad();
    TORCH_CHECK(!wants_grad, kWhat, " makes no gradients: call it under torch.no_grad() or with tensors that do not "
                "require grad (rnn_fused.RNN takes the layer ops where gradients are wanted)");
  }

  const at::ScalarType ct = compute_dtype(data.scalar_type());
  const at::TensorOptions options = data.options().dtype(ct);
  at::Tensor h_n = hx.has_value() ? hx->to(ct).clone() : at::zeros({num_layers * directions, B, H}, options);
  // [N,F] in data's dtype: each layer's output is rounded to it, as the layer ops' are.
  at::Tensor layer_input = data;
  if (N == 0 || H == 0) return {at::zeros({N, directions * H}, data.options()), h_n.to(data.scalar_type())};
  // Each direction's call as the CPU backend's loop reads it: the shape, the lengths and the
  // options (the op checked its operands itself: no call reaches check_forward_call).
  const at::Tensor lengths = at::tensor(layout.lengths, at::TensorOptions().dtype(at::kLong));
  const auto direction_call = [&](int64_t layer, int64_t direction, int64_t in_features) {
    return LayerForwardCall{.input = data,
                            .weight_ih = layer_weights[layer * directions + direction].w_ih,
                            .weight_hh = layer_weights[layer * directions + direction].w_hh,
                            .options = LayerOptions{.activation = activation, .reverse = direction == 1,
                                                    .backend = backend.name},
                            .shape = LayerShape{.steps = T, .batch = B, .input_size = in_features, .hidden = H},
                            .valid_lengths = SequenceLengths{.on_device = lengths, .host = layout.lengths}};
  };
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t in_features = layer_input.size(1);
    const at::Tensor x2d = layer_input.to(ct).contiguous();
    std::array<at::Tensor, 2> outputs;
    std::array<std::optional<LayerForwardCall>, 2> calls;
    for (int64_t direction = 0; direction < directions; ++direction) {
      const DirectionWeights& w = layer_weights[layer * directions + direction];
      outputs[direction] = at::empty({N, H}, options);
      project_input_on_host(outputs[direction],
                            InputProjection{.x2d = x2d,
                                            .w_ih = w.w_ih.to(ct).contiguous(),
                                            .bias_ih = w.bias_ih.has_value() ? std::optional(w.bias_ih->to(ct))
                                                                             : std::nullopt,
                                            .bias_hh = w.bias_hh.has_value() ? std::optional(w.bias_hh->to(ct))
                                                                             : std::nullopt});
      calls[direction].emplace(direction_call(layer, direction, in_features));
    }
    const auto run = [&](int64_t direction) {
      const int64_t index = layer * directions + direction;
      const at::Tensor w_hh = layer_weights[index].w_hh.to(ct).contiguous();
      // h_n[index] holds h_0 until the loop (which starts from a copy of it) is over.
      const at::Tensor state = h_n[index];
      state.copy_(backend.forward(ForwardRecurrence{.call = *calls[direction],
                                                    .w_hh = w_hh,
                                                    .out = outputs[direction],
                                                    .h0 = state,
                                                    .packed_step_rows = &layout.step_rows}));
    };
    if (directions == 2 && directions_at_once) {
      run_at_once({[&] { run(0); }, [&] { run(1); }});
    } else {
      for (int64_t direction = 0; direction < directions; ++direction) run(direction);
    }
    layer_input = (directions == 1 ? outputs[0] : at::cat({outputs[0], outputs[1]}, 1)).to(data.scalar_type());
    // nn.RNN's draws: its dropout of the packed data between layers.
    if (dropout > 0 && layer < num_layers - 1) layer_input = at::dropout(layer_input, dropout, /*train=*/true);
  }
  return {layer_input, h_n.to(data.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, CompositeExplicitAutograd, m) { m.impl("rnn_packed_inference", &rnn_packed_inference); }

}  // namespace rnn_fused
