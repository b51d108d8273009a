// Typed handles of the layer ops (schemas: ops.cpp), for C++ that calls them through the
// dispatcher, so that each call gets its Autograd, Autocast and device kernels as a call from
// Python would: the layer ops' autograd nodes (layer_autograd.cpp) and the model's forward over
// its layers (model_forward.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

namespace rnn_fused::layer_ops {

using OptionalTensor = std::optional<at::Tensor>;
using OptionalName = std::optional<c10::string_view>;

// The ops' signatures (ops.cpp has their schemas): after the forward's
// own arguments come, in every op, the same layer options.
#define RNN_FUSED_LAYER_ARGUMENTS                                                                           \
  const at::Tensor &, const OptionalTensor &, const at::Tensor &, const at::Tensor &, const OptionalTensor &, \
      const OptionalTensor &, const OptionalTensor &, c10::string_view, bool, int64_t, double,               \
      const OptionalTensor &, int64_t, OptionalName, OptionalName, int64_t
using ForwardSignature = std::tuple<at::Tensor, at::Tensor>(RNN_FUSED_LAYER_ARGUMENTS);
using BackwardSignature =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const OptionalTensor&, const at::Tensor&, std::array<bool, 5>, bool, RNN_FUSED_LAYER_ARGUMENTS);
using BackwardWithGraphSignature =
    std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&, std::array<bool, 6>, RNN_FUSED_LAYER_ARGUMENTS);
#undef RNN_FUSED_LAYER_ARGUMENTS
// The directions' ops: after their own arguments, the layer's input, hx [2,B,H], the weights of
// both directions and the options (ops.cpp).
#define RNN_FUSED_DIRECTIONS_ARGUMENTS                                                                        \
  const at::Tensor &, const OptionalTensor &, const std::vector<at::Tensor> &, bool, const OptionalTensor &,   \
      c10::string_view,                                                                                     \
      int64_t, double, const OptionalTensor &, int64_t, OptionalName
using DirectionsForwardSignature = std::tuple<at::Tensor, at::Tensor>(RNN_FUSED_DIRECTIONS_ARGUMENTS, OptionalName,
                                                                      int64_t);
using DirectionsBackwardSignature = std::vector<at::Tensor>(const at::Tensor&, const OptionalTensor&, const at::Tensor&,
                                                            std::array<bool, 9>, RNN_FUSED_DIRECTIONS_ARGUMENTS, bool,
                                                            OptionalName, int64_t);
using DirectionsBackwardWithGraphSignature = std::vector<at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                     std::array<bool, 10>,
                                                                     RNN_FUSED_DIRECTIONS_ARGUMENTS, OptionalName,
                                                                     int64_t);
#undef RNN_FUSED_DIRECTIONS_ARGUMENTS

template <typename Signature>
inline c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

inline const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op = typed_op<ForwardSignature>("rnn_fused::rnn_layer_forward");
  return op;
}

inline const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op = typed_op<BackwardSignature>("rnn_fused::rnn_layer_backward");
  return op;
}

inline const c10::TypedOperatorHandle<BackwardWithGraphSignature>& backward_with_graph_op() {
  static const auto op = typed_op<BackwardWithGraphSignature>("rnn_fused::rnn_layer_backward_with_graph");
  return op;
}

inline const c10::TypedOperatorHandle<DirectionsForwardSignature>& directions_forward_op() {
  static const auto op = typed_op<DirectionsForwardSignature>("rnn_fused::rnn_directions_forward");
  return op;
}

inline const c10::TypedOperatorHandle<DirectionsBackwardSignature>& directions_backward_op() {
  static const auto op = typed_op<DirectionsBackwardSignature>("rnn_fused::rnn_directions_backward");
  return op;
}

inline const c10::TypedOperatorHandle<DirectionsBackwardWithGraphSignature>& directions_backward_with_graph_op() {
  static const auto op =
      typed_op<DirectionsBackwardWithGraphSignature>("rnn_fused::rnn_directions_backward_with_graph");
  return op;
}

}  // namespace rnn_fused::layer_ops
