// A model's inference (no gradients) over a PackedSequence on the CPU, in the packed layout
// itself (rnn_fused::rnn_packed_inference); run for one layer alone, also the forward of packed
// training (functional._PackedLayer, whose backward is packed_training.cpp's).
//
// A layer op runs the padded batch [T,B,F]: a PackedSequence reaches it through packed_to_padded
// (a zero fill of the padded input and a copy of its rows), and its output goes back by rows, the
// input projection's valid rows gathered and scattered on the way. Measured at 10, 256, 512, 512
// (development CPU, 2026-12-07: docs/benchmarks.md) those copies came to about 3 ms of a 10 ms
// call, where nn.RNN's whole call took 8. Without gradients nothing needs the padded batch: here
// each layer projects the packed rows in one GEMM (a bidirectional layer's two directions into its
// [N,2H] at once), and the CPU backend's time loop reads and writes step t's rows where the
// packed data holds them (ForwardRecurrence::packed_step_rows), a direction's own columns.
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
#include "packed_arguments.h"

namespace rnn_fused {
namespace {

constexpr const char* kWhat = "rnn_fused.rnn_packed_inference";

std::tuple<at::Tensor, at::Tensor> rnn_packed_inference(const at::Tensor& data, const at::Tensor& batch_sizes,
                                                        const std::optional<at::Tensor>& hx,
                                                        const std::vector<at::Tensor>& weights, bool has_biases,
                                                        int64_t num_layers, bool bidirectional,
                                                        c10::string_view nonlinearity,
                                                        std::optional<c10::string_view> backend_name,
                                                        bool directions_at_once, double dropout) {
  // Every argument is checked before anything runs.
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout <= 1.0, kWhat, ": dropout must be in [0, 1], got ", dropout);
  const PackedArguments a = check_packed_arguments(kWhat, data, batch_sizes, hx, weights, has_biases, num_layers,
                                                   bidirectional, nonlinearity, backend_name);
  if (at::GradMode::is_enabled()) {
    bool wants_grad = data.requires_grad() || (hx.has_value() && hx->requires_grad());
    for (const at::Tensor& w : weights) wants_grad = wants_grad || w.requires_grad();
    TORCH_CHECK(!wants_grad, kWhat, " makes no gradients: call it under torch.no_grad() or with tensors that do not "
                "require grad (rnn_fused.RNN takes the layer ops where gradients are wanted)");
  }
  const int64_t directions = a.directions, B = a.layout.batch, N = a.layout.rows, H = a.hidden;

  const at::ScalarType ct = compute_dtype(data.scalar_type());
  const at::TensorOptions options = data.options().dtype(ct);
  at::Tensor h_n = hx.has_value() ? hx->to(ct).clone() : at::zeros({num_layers * directions, B, H}, options);
  // [N,F] in data's dtype: each layer's output is rounded to it, as the layer ops' are.
  at::Tensor layer_input = data;
  if (N == 0 || H == 0) return {at::zeros({N, directions * H}, data.options()), h_n.to(data.scalar_type())};
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const int64_t in_features = layer_input.size(1);
    const at::Tensor x2d = layer_input.to(ct).contiguous();
    // [N,D*H]: one GEMM projects every direction ([F,D*H]: the directions' W_ih^T side by side),
    // and each direction's time loop runs on its own columns (rows D*H apart), so no direction's
    // output is copied into the layer's.
    at::Tensor layer_output = at::empty({N, directions * H}, options);
    std::vector<at::Tensor> w_ih, b_ih, b_hh;
    for (int64_t direction = 0; direction < directions; ++direction) {
      const DirectionWeights& w = a.weights[layer * directions + direction];
      w_ih.push_back(w.w_ih);
      if (w.bias_ih.has_value()) b_ih.push_back(*w.bias_ih), b_hh.push_back(*w.bias_hh);
    }
    const auto joined = [&](const std::vector<at::Tensor>& parts) {
      return (parts.size() == 1 ? parts[0] : at::cat(parts, 0)).to(ct).contiguous();
    };
    project_input_on_host(layer_output,
                          InputProjection{.x2d = x2d,
                                          .w_ih = joined(w_ih),
                                          .bias_ih = b_ih.empty() ? std::nullopt : std::optional(joined(b_ih)),
                                          .bias_hh = b_hh.empty() ? std::nullopt : std::optional(joined(b_hh))});
    std::array<at::Tensor, 2> outputs;
    std::array<std::optional<LayerForwardCall>, 2> calls;
    for (int64_t direction = 0; direction < directions; ++direction) {
      outputs[direction] = layer_output.narrow(1, direction * H, H);
      calls[direction].emplace(a.direction_call(data, layer, direction, in_features));
    }
    const auto run = [&](int64_t direction) {
      const int64_t index = layer * directions + direction;
      const at::Tensor w_hh = a.weights[index].w_hh.to(ct).contiguous();
      // h_n[index] holds h_0 until the loop (which starts from a copy of it) is over.
      const at::Tensor state = h_n[index];
      state.copy_(a.backend->forward(ForwardRecurrence{.call = *calls[direction],
                                                       .w_hh = w_hh,
                                                       .out = outputs[direction],
                                                       .h0 = state,
                                                       .packed_step_rows = &a.layout.step_rows}));
    };
    if (directions == 2 && directions_at_once) {
      run_at_once({[&] { run(0); }, [&] { run(1); }});
    } else {
      for (int64_t direction = 0; direction < directions; ++direction) run(direction);
    }
    layer_input = layer_output.to(data.scalar_type());
    // nn.RNN's draws: its dropout of the packed data between layers.
    if (dropout > 0 && layer < num_layers - 1) layer_input = at::dropout(layer_input, dropout, /*train=*/true);
  }
  return {layer_input, h_n.to(data.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, CompositeExplicitAutograd, m) { m.impl("rnn_packed_inference", &rnn_packed_inference); }

}  // namespace rnn_fused
