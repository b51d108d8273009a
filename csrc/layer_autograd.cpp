// Autograd of the forward op, in C++ (the Autograd dispatch key of rnn_layer_forward).
//
// The forward saves its inputs and output; the backward calls rnn_layer_backward, the fused
// BPTT op, for the gradients autograd asks for. Both go through the dispatcher, so
// torch.compile traces them like any other op with fake kernels (rnn_fused/_ops.py), and
// autocast casts before autograd sees the arguments (the op's Autocast kernels), as for
// torch.rnn_tanh. When the backward itself is to be differentiated (create_graph=True) it
// calls rnn_layer_backward_with_graph instead, whose Python composite kernel builds the
// gradient from differentiable ATen ops (rnn_fused/functional.py).
//
// The directions' op pair of a bidirectional layer (rnn_directions_forward / _backward) gets
// the same: its node saves the layer's input, hx, both directions' weights and the output
// [T,B,2H], and its double backward calls rnn_directions_backward_with_graph.
//
// Why C++: at small sizes host time is the whole cost of a call, and a Python
// autograd.Function costs about 10 us per forward on the development CPU in its context
// and saved tensors alone (docs/architecture.md has the measured figures). Recording
// gradient norms stays in Python (functional._RecordingLayer, _LayerDirections): the norms
// leave the backward as a Python side effect.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "layer_ops.h"

namespace rnn_fused {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using namespace layer_ops;  // the ops' signatures and handles

OptionalTensor present(const at::Tensor& t) { return t.defined() ? OptionalTensor(t) : std::nullopt; }

// The options a node keeps for its backward: the ops' arguments after the tensors that both
// nodes' ops share (the layer's `reverse` and the directions' `has_biases` are their own).
struct SavedOptions {
  std::string nonlinearity;
  int64_t truncate_every = 0;
  double keep_prob = 1.0;
  int64_t layer = 0;
  std::optional<std::string> backend, path;
  int64_t side_by_side = 1;

  SavedOptions(c10::string_view nonlinearity, int64_t truncate_every, double keep_prob, int64_t layer,
               OptionalName backend, OptionalName path, int64_t side_by_side)
      : nonlinearity(nonlinearity),
        truncate_every(truncate_every),
        keep_prob(keep_prob),
        layer(layer),
        backend(backend ? std::optional<std::string>(std::string(*backend)) : std::nullopt),
        path(path ? std::optional<std::string>(std::string(*path)) : std::nullopt),
        side_by_side(side_by_side) {}

  void save(AutogradContext* ctx) const {
    ctx->saved_data["nonlinearity"] = nonlinearity;
    ctx->saved_data["truncate_every"] = truncate_every;
    ctx->saved_data["keep_prob"] = keep_prob;
    ctx->saved_data["layer"] = layer;
    ctx->saved_data["backend"] = backend ? c10::IValue(*backend) : c10::IValue();
    ctx->saved_data["path"] = path ? c10::IValue(*path) : c10::IValue();
    ctx->saved_data["side_by_side"] = side_by_side;
  }

  static SavedOptions load(AutogradContext* ctx) {
    const auto name = [&](const char* key) -> OptionalName {
      const c10::IValue& saved = ctx->saved_data[key];
      return saved.isNone() ? OptionalName() : OptionalName(saved.toStringRef());
    };
    return SavedOptions(ctx->saved_data["nonlinearity"].toStringRef(), ctx->saved_data["truncate_every"].toInt(),
                        ctx->saved_data["keep_prob"].toDouble(), ctx->saved_data["layer"].toInt(), name("backend"),
                        name("path"), ctx->saved_data["side_by_side"].toInt());
  }

  // (views of the strings above: valid while this object lives)
  OptionalName backend_name() const { return backend ? OptionalName(*backend) : std::nullopt; }
  OptionalName path_name() const { return path ? OptionalName(*path) : std::nullopt; }
};

// Differentiable inputs in the order of the forward's arguments (their gradients come back in it).
constexpr int kInput = 0, kHx = 1, kWeightIh = 2, kWeightHh = 3, kBiasIh = 4, kBiasHh = 5, kDifferentiable = 6;
// All arguments of the forward op: the backward returns one gradient (or none) for each.
constexpr int kForwardArguments = 16;

}  // namespace

// Named outside the anonymous namespace: the graph node shows it (CppNode<rnn_fused::FusedRnnLayer>).
class FusedRnnLayer : public torch::autograd::Function<FusedRnnLayer> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const OptionalTensor& hx,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh, const OptionalTensor& bias_ih,
                               const OptionalTensor& bias_hh, const OptionalTensor& lengths,
                               c10::string_view nonlinearity, bool reverse, int64_t truncate_every, double keep_prob,
                               const OptionalTensor& seed, int64_t layer, OptionalName backend, OptionalName path,
                               int64_t side_by_side) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // An unused output's gradient stays undefined (autograd would fill zeros, a launch apiece
    // on a GPU): the backward reads an absent h_n gradient as zero.
    ctx->set_materialize_grads(false);
    auto [output, h_n] = forward_op().call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                                           reverse, truncate_every, keep_prob, seed, layer, backend, path,
                                           side_by_side);
    const at::Tensor none;
    ctx->save_for_backward({input, hx.value_or(none), weight_ih, weight_hh, bias_ih.value_or(none),
                            bias_hh.value_or(none), lengths.value_or(none), seed.value_or(none), output});
    ctx->saved_data["reverse"] = reverse;
    SavedOptions(nonlinearity, truncate_every, keep_prob, layer, backend, path, side_by_side).save(ctx);
    return {output, h_n};
  }

  // grads: dL/d output [T,B,H] and dL/d h_n [B,H], each undefined where the graph gave none.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight_ih = saved[2], &weight_hh = saved[3], &output = saved[8];
    const OptionalTensor hx = present(saved[1]), bias_ih = present(saved[4]), bias_hh = present(saved[5]),
                         lengths = present(saved[6]), seed = present(saved[7]);
    const bool reverse = ctx->saved_data["reverse"].toBool();
    const SavedOptions o = SavedOptions::load(ctx);
    const OptionalName backend = o.backend_name(), path = o.path_name();

    // needs_input_grad counts only the arguments that were tensors: absent optionals have no edge.
    std::array<bool, kDifferentiable> needs{};
    const std::array<bool, kDifferentiable> present_input{true, hx.has_value(), true, true, bias_ih.has_value(),
                                                          bias_hh.has_value()};
    size_t edge = 0;
    for (int i = 0; i < kDifferentiable; ++i) {
      if (present_input[i]) needs[i] = ctx->needs_input_grad(edge++);
    }

    // Only h_n used: the output's gradient is zeros (the time loops read every step's).
    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    variable_list result(kForwardArguments);
    if (at::GradMode::is_enabled()) {  // create_graph=True: a gradient with a graph of its own
      const at::Tensor grad_h_n =
          grads[1].defined() ? grads[1] : at::zeros({output.size(1), output.size(2)}, output.options());
      const std::vector<at::Tensor> with_graph = backward_with_graph_op().call(
          grad_output, grad_h_n, needs, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, o.nonlinearity,
          reverse, o.truncate_every, o.keep_prob, seed, o.layer, backend, path, o.side_by_side);
      for (int i = 0; i < kDifferentiable; ++i) {
        if (needs[i]) result[i] = with_graph[i];
      }
      return result;
    }
    const std::array<bool, 5> mask{needs[kInput], needs[kHx], needs[kWeightIh], needs[kWeightHh],
                                   needs[kBiasIh] || needs[kBiasHh]};
    auto [grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias, step_norms, grad_sq_norms, nonfinite] =
        backward_op().call(grad_output, present(grads[1]), output, mask, /*record_norms=*/false, input, hx, weight_ih, weight_hh,
                           bias_ih, bias_hh, lengths, o.nonlinearity, reverse, o.truncate_every, o.keep_prob, seed,
                           o.layer, backend, path, o.side_by_side);
    if (needs[kInput]) result[kInput] = grad_input;
    if (needs[kHx]) result[kHx] = grad_hx;
    if (needs[kWeightIh]) result[kWeightIh] = grad_weight_ih;
    if (needs[kWeightHh]) result[kWeightHh] = grad_weight_hh;
    // grad_bias [2,H]: d/db_ih = d/db_hh, a row each, so that autograd copies neither.
    if (needs[kBiasIh]) result[kBiasIh] = grad_bias[0];
    if (needs[kBiasHh]) result[kBiasHh] = grad_bias[1];
    return result;
  }
};

// Differentiable inputs of the directions' forward: input, hx, then the weights (kMaxWeights at
// most: 4 per direction with biases); its other arguments follow them.
constexpr int kDirectionsWeightsAt = 2, kMaxWeights = 8, kDirectionsOtherArguments = 10;

class FusedRnnDirections : public torch::autograd::Function<FusedRnnDirections> {
 public:
  // weights: at::TensorList, so that autograd makes an edge for each (a std::vector would not).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const OptionalTensor& hx,
                               at::TensorList weights, bool has_biases, const OptionalTensor& lengths,
                               c10::string_view nonlinearity, int64_t truncate_every, double keep_prob,
                               const OptionalTensor& seed, int64_t layer, OptionalName backend, OptionalName path,
                               int64_t side_by_side) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->set_materialize_grads(false);  // (as FusedRnnLayer's)
    auto [output, h_n] = directions_forward_op().call(input, hx, weights.vec(), has_biases, lengths, nonlinearity,
                                                      truncate_every, keep_prob, seed, layer, backend, path,
                                                      side_by_side);
    const at::Tensor none;
    std::vector<at::Tensor> saved{input, hx.value_or(none), lengths.value_or(none), seed.value_or(none), output};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["has_biases"] = has_biases;
    SavedOptions(nonlinearity, truncate_every, keep_prob, layer, backend, path, side_by_side).save(ctx);
    return {output, h_n};
  }

  // grads: dL/d output [T,B,2H] and dL/d h_n [2,B,H], each undefined where the graph gave none.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &output = saved[4];
    const OptionalTensor hx = present(saved[1]), lengths = present(saved[2]), seed = present(saved[3]);
    const std::vector<at::Tensor> weights(saved.begin() + 5, saved.end());
    const bool has_biases = ctx->saved_data["has_biases"].toBool();
    const SavedOptions o = SavedOptions::load(ctx);
    const OptionalName backend = o.backend_name(), path = o.path_name();
    const int64_t count = static_cast<int64_t>(weights.size()), per_direction = count / 2;

    // needs[i]: input, hx, then each weight (edges only for the tensors present: hx may be None).
    std::array<bool, kDirectionsWeightsAt + kMaxWeights> needs{};
    size_t edge = 0;
    needs[0] = ctx->needs_input_grad(edge++);
    if (hx.has_value()) needs[1] = ctx->needs_input_grad(edge++);
    for (int64_t w = 0; w < count; ++w) needs[kDirectionsWeightsAt + w] = ctx->needs_input_grad(edge++);

    const at::Tensor grad_output = grads[0].defined() ? grads[0] : at::zeros_like(output);
    variable_list result(kDirectionsWeightsAt + count + kDirectionsOtherArguments);
    if (at::GradMode::is_enabled()) {  // create_graph=True: a gradient with a graph of its own
      const at::Tensor grad_h_n = grads[1].defined()
                                      ? grads[1]
                                      : at::zeros({2, output.size(1), output.size(2) / 2}, output.options());
      const std::vector<at::Tensor> with_graph = directions_backward_with_graph_op().call(
          grad_output, grad_h_n, needs, input, hx, weights, has_biases, lengths, o.nonlinearity, o.truncate_every,
          o.keep_prob, seed, o.layer, backend, path, o.side_by_side);
      for (int64_t i = 0; i < kDirectionsWeightsAt + count; ++i) {
        if (needs[static_cast<size_t>(i)]) result[static_cast<size_t>(i)] = with_graph[static_cast<size_t>(i)];
      }
      return result;
    }
    // The op's mask: grad_input, then per direction grad_hx, grad_weight_ih, grad_weight_hh, grad_bias.
    std::array<bool, 9> mask{};
    mask[0] = needs[0];
    for (int64_t d = 0; d < 2; ++d) {
      const bool* w = needs.data() + kDirectionsWeightsAt + d * per_direction;
      mask[static_cast<size_t>(1 + 4 * d)] = needs[1];
      mask[static_cast<size_t>(2 + 4 * d)] = w[0];
      mask[static_cast<size_t>(3 + 4 * d)] = w[1];
      mask[static_cast<size_t>(4 + 4 * d)] = has_biases && (w[2] || w[3]);
    }
    const std::vector<at::Tensor> g =
        directions_backward_op().call(grad_output, present(grads[1]), output, mask, input, hx, weights, has_biases,
                                      lengths, o.nonlinearity, o.truncate_every, o.keep_prob, seed, o.layer, backend,
                                      /*record_norms=*/false, path, o.side_by_side);
    if (needs[0]) result[0] = g[0];
    if (needs[1]) result[1] = at::stack({g[1], g[5]});
    for (int64_t d = 0; d < 2; ++d) {
      const size_t first = static_cast<size_t>(kDirectionsWeightsAt + d * per_direction);  // its weight_ih
      const at::Tensor& grad_bias = g[static_cast<size_t>(4 + 4 * d)];
      if (needs[first]) result[first] = g[static_cast<size_t>(2 + 4 * d)];
      if (needs[first + 1]) result[first + 1] = g[static_cast<size_t>(3 + 4 * d)];
      // grad_bias [2,H]: a row for each bias, so that autograd copies neither.
      if (has_biases && needs[first + 2]) result[first + 2] = grad_bias[0];
      if (has_biases && needs[first + 3]) result[first + 3] = grad_bias[1];
    }
    return result;
  }
};

namespace {

bool requires_grad(const OptionalTensor& t) { return t.has_value() && t->requires_grad(); }

std::tuple<at::Tensor, at::Tensor> rnn_directions_forward_autograd(
    const at::Tensor& input, const OptionalTensor& hx, const std::vector<at::Tensor>& weights, bool has_biases,
    const OptionalTensor& lengths, c10::string_view nonlinearity, int64_t truncate_every, double keep_prob,
    const OptionalTensor& seed, int64_t layer, OptionalName backend, OptionalName path, int64_t side_by_side) {
  const bool records = at::GradMode::is_enabled() &&
                       (input.requires_grad() || requires_grad(hx) ||
                        std::any_of(weights.begin(), weights.end(), [](const at::Tensor& w) { return w.requires_grad(); }));
  if (!records) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return directions_forward_op().call(input, hx, weights, has_biases, lengths, nonlinearity, truncate_every,
                                        keep_prob, seed, layer, backend, path, side_by_side);
  }
  // (the op's own checks of the weights' count run in its forward, before anything is launched)
  TORCH_CHECK_VALUE(weights.size() <= static_cast<size_t>(kMaxWeights), "rnn_fused.rnn_directions_forward: expected ",
                    "at most ", kMaxWeights, " weights, got ", weights.size());
  const variable_list outputs = FusedRnnDirections::apply(input, hx, at::TensorList(weights), has_biases, lengths,
                                                          nonlinearity,
                                                          truncate_every, keep_prob, seed, layer, backend, path,
                                                          side_by_side);
  return {outputs[0], outputs[1]};
}

// The Autograd kernel: a graph node only where autograd would record one; otherwise straight
// to the backend kernel (no context, nothing saved).
std::tuple<at::Tensor, at::Tensor> rnn_layer_forward_autograd(
    const at::Tensor& input, const OptionalTensor& hx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptionalTensor& bias_ih, const OptionalTensor& bias_hh, const OptionalTensor& lengths,
    c10::string_view nonlinearity, bool reverse, int64_t truncate_every, double keep_prob, const OptionalTensor& seed,
    int64_t layer, OptionalName backend, OptionalName path, int64_t side_by_side) {
  const bool records = at::GradMode::is_enabled() &&
                       (input.requires_grad() || requires_grad(hx) || weight_ih.requires_grad() ||
                        weight_hh.requires_grad() || requires_grad(bias_ih) || requires_grad(bias_hh));
  if (!records) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op().call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity, reverse,
                             truncate_every, keep_prob, seed, layer, backend, path, side_by_side);
  }
  const variable_list outputs = FusedRnnLayer::apply(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                                     nonlinearity, reverse, truncate_every, keep_prob, seed, layer,
                                                     backend, path, side_by_side);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, Autograd, m) {
  m.impl("rnn_layer_forward", &rnn_layer_forward_autograd);
  m.impl("rnn_directions_forward", &rnn_directions_forward_autograd);
}

}  // namespace rnn_fused
