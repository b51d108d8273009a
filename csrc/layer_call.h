// One call of the single-layer op pair, described once.
//
// The op entry points (ops.cpp) build a LayerForwardCall / LayerBackwardCall from their
// arguments with designated initializers and check it here, before anything is allocated
// or launched; the host layer (host_layer.h) and every backend read only the descriptor.
// Every backend therefore rejects the same inputs with the same messages, and no user
// input reaches a device-side check.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "recurrence_math.h"

namespace rnn_fused {

// Per-sample valid lengths, checked to lie in [0, T].
struct SequenceLengths {
  std::optional<at::Tensor> on_device;  // int64 [B], contiguous, on input's device; none: all T
  std::vector<int64_t> host;            // the same values on the host (empty when lengths were given
                                        // on the GPU: only their range was checked there)
};

// The non-tensor options of a call.
struct LayerOptions {
  Activation activation = Activation::Tanh;
  bool reverse = false;              // process each sample's valid steps from last to first
  TruncationParams truncation;       // what the backward does to the recurrent edges
  std::string backend;               // requested implementation; "" = the input device's own
  std::string path;                  // requested GPU recurrence path; "" = the planner's choice
  // How many recurrences run side by side on the device (the two directions of a
  // bidirectional layer: 2); the GPU planner gives this one 1/side_by_side of its SMs.
  int64_t side_by_side = 1;
};

struct LayerForwardCall {
  at::Tensor input;                            // [T,B,I]
  std::optional<at::Tensor> hx;                // [B,H] or None (zeros)
  at::Tensor weight_ih;                        // [H,I]
  at::Tensor weight_hh;                        // [H,H]
  std::optional<at::Tensor> bias_ih, bias_hh;  // [H] each, both or neither
  std::optional<at::Tensor> lengths;           // int64 [B] as given (CPU or input's device) or None
  LayerOptions options;
  // Filled by check_forward_call:
  LayerShape shape;
  SequenceLengths valid_lengths;
};

struct LayerBackwardCall {
  LayerForwardCall forward;      // the forward's arguments (the biases are checked, not read)
  at::Tensor grad_output;        // [T,B,H]
  at::Tensor grad_h_n;           // [B,H]; undefined: h_n was not used (a zero gradient, never materialised)
  at::Tensor output;             // [T,B,H] the forward's output (saved h_t)
  std::array<bool, 5> output_mask{};  // grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias
  bool record_norms = false;
};

inline Activation parse_activation(const std::string& nonlinearity) {
  if (nonlinearity == "tanh") return Activation::Tanh;
  if (nonlinearity == "relu") return Activation::Relu;
  TORCH_CHECK_VALUE(false, "rnn_fused: nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
}

// The backward's truncation arguments (docs/bptt.md), checked before anything runs.
// truncate_every 0 = never cut; keep_prob 1 = no randomized cuts.
inline TruncationParams parse_truncation(int64_t truncate_every, double keep_prob, int64_t seed, int64_t layer,
                                         bool reverse) {
  TORCH_CHECK_VALUE(truncate_every >= 0, "rnn_fused: truncate_every must be >= 0 (0 = full BPTT), got ",
                    truncate_every);
  TORCH_CHECK_VALUE(keep_prob > 0.0 && keep_prob <= 1.0, "rnn_fused: keep_prob must be in (0, 1], got ", keep_prob);
  TORCH_CHECK_VALUE(seed >= 0, "rnn_fused: seed must be >= 0, got ", seed);
  TORCH_CHECK_VALUE(layer >= 0 && layer < (int64_t(1) << 30), "rnn_fused: layer must be in [0, 2^30), got ", layer);
  return TruncationParams{.every = truncate_every,
                          .keep_prob = keep_prob,
                          .seed = static_cast<uint64_t>(seed),
                          .stream = static_cast<uint32_t>(2 * layer + (reverse ? 1 : 0))};
}

// How many recurrences share the device, checked before anything runs.
inline int64_t parse_side_by_side(int64_t side_by_side) {
  TORCH_CHECK_VALUE(side_by_side >= 1, "rnn_fused: side_by_side must be >= 1 (how many recurrences run side by side "
                    "on the device), got ", side_by_side);
  return side_by_side;
}

inline LayerOptions parse_options(const std::string& nonlinearity, bool reverse, int64_t truncate_every,
                                  double keep_prob, int64_t seed, int64_t layer, const std::string& backend,
                                  const std::string& path, int64_t side_by_side = 1) {
  return LayerOptions{.activation = parse_activation(nonlinearity),
                      .reverse = reverse,
                      .truncation = parse_truncation(truncate_every, keep_prob, seed, layer, reverse),
                      .backend = backend,
                      .path = path,
                      .side_by_side = parse_side_by_side(side_by_side)};
}

namespace detail {

inline void check_same_device_dtype(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "rnn_fused: ", name, " is on ", t.device(), " but input is on ",
              ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnn_fused: ", name, " has dtype ", t.scalar_type(),
              " but input has dtype ", ref.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "rnn_fused: ", name, " must have shape ", expected, ", got ", t.sizes());
}

[[noreturn]] inline void length_out_of_range(int64_t b, int64_t value, int64_t steps) {
  TORCH_CHECK_VALUE(false, "rnn_fused: lengths[", b, "] = ", value, " is outside [0, ", steps, "]");
}

// Checks lengths' values: on the host for CPU lengths; for lengths on the GPU with one
// reduction (a host synchronisation, paid only by callers who pass device lengths; the
// module passes CPU lengths, as pack_padded_sequence does).
inline SequenceLengths check_lengths(const std::optional<at::Tensor>& lengths, const at::Tensor& input,
                                     int64_t steps, int64_t batch) {
  if (!lengths.has_value()) return {};
  const at::Tensor& len = *lengths;
  TORCH_CHECK(len.scalar_type() == at::kLong, "rnn_fused: lengths must be int64, got ", len.scalar_type());
  TORCH_CHECK(len.is_cpu() || len.device() == input.device(), "rnn_fused: lengths is on ", len.device(),
              " but input is on ", input.device(), " (pass lengths on the CPU or on input's device)");
  check_shape(len, {batch}, "lengths");
  SequenceLengths out;
  if (len.is_cpu()) {
    const at::Tensor host = len.contiguous();
    const int64_t* values = host.data_ptr<int64_t>();
    out.host.assign(values, values + batch);
    for (int64_t b = 0; b < batch; ++b) {
      if (values[b] < 0 || values[b] > steps) length_out_of_range(b, values[b], steps);
    }
    // non_blocking: a blocking copy to the GPU would wait for the stream's queued work. The
    // copy from pageable memory is staged before the call returns, so `host` may go at once.
    out.on_device = input.is_cpu() ? host : host.to(input.device(), at::kLong, /*non_blocking=*/true);
  } else {
    const at::Tensor contiguous = len.contiguous();
    const at::Tensor bad = contiguous.lt(0).logical_or_(contiguous.gt(steps));
    if (bad.any().item<bool>()) {  // error path only: find the first offending entry
      const int64_t b = bad.to(at::kLong).argmax().item<int64_t>();
      length_out_of_range(b, contiguous[b].item<int64_t>(), steps);
    }
    out.on_device = contiguous;
  }
  return out;
}

}  // namespace detail

// Checks the forward's tensors and fills call.shape and call.valid_lengths. lengths_checked: the
// same lengths already checked for this input by another call (the other direction of a
// bidirectional layer), taken as they are: no second host check, no second copy to the device.
inline void check_forward_call(LayerForwardCall& call, const SequenceLengths* lengths_checked = nullptr) {
  const at::Tensor& input = call.input;
  TORCH_CHECK(input.dim() == 3, "rnn_fused: input must be 3-D [T, B, I], got ", input.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "rnn_fused: input must be a floating-point tensor, got ",
              input.scalar_type());
  TORCH_CHECK(call.weight_hh.dim() >= 1, "rnn_fused: weight_hh must have shape [H, H], got ", call.weight_hh.sizes());
  const LayerShape shape{.steps = input.size(0),
                         .batch = input.size(1),
                         .input_size = input.size(2),
                         .hidden = call.weight_hh.size(0)};
  const int64_t H = shape.hidden;
  detail::check_same_device_dtype(input, call.weight_ih, "weight_ih");
  detail::check_same_device_dtype(input, call.weight_hh, "weight_hh");
  detail::check_shape(call.weight_hh, {H, H}, "weight_hh");
  detail::check_shape(call.weight_ih, {H, shape.input_size}, "weight_ih");
  TORCH_CHECK(call.bias_ih.has_value() == call.bias_hh.has_value(),
              "rnn_fused: bias_ih and bias_hh must both be given or both be None");
  if (call.bias_ih.has_value()) {
    detail::check_same_device_dtype(input, *call.bias_ih, "bias_ih");
    detail::check_same_device_dtype(input, *call.bias_hh, "bias_hh");
    detail::check_shape(*call.bias_ih, {H}, "bias_ih");
    detail::check_shape(*call.bias_hh, {H}, "bias_hh");
  }
  if (call.hx.has_value()) {
    detail::check_same_device_dtype(input, *call.hx, "hx");
    detail::check_shape(*call.hx, {shape.batch, H}, "hx");
  }
  call.valid_lengths = lengths_checked != nullptr ? *lengths_checked
                                                  : detail::check_lengths(call.lengths, input, shape.steps, shape.batch);
  call.shape = shape;
}

// The backward takes the forward's arguments plus the gradients and the saved output.
// forward_checked: call.forward has been through check_forward_call already.
inline void check_backward_call(LayerBackwardCall& call, bool forward_checked = false) {
  if (!forward_checked) check_forward_call(call.forward);
  const at::Tensor& input = call.forward.input;
  const LayerShape& s = call.forward.shape;
  detail::check_same_device_dtype(input, call.grad_output, "grad_output");
  detail::check_same_device_dtype(input, call.output, "output");
  detail::check_shape(call.grad_output, {s.steps, s.batch, s.hidden}, "grad_output");
  detail::check_shape(call.output, {s.steps, s.batch, s.hidden}, "output");
  if (call.grad_h_n.defined()) {
    detail::check_same_device_dtype(input, call.grad_h_n, "grad_h_n");
    detail::check_shape(call.grad_h_n, {s.batch, s.hidden}, "grad_h_n");
  }
}

}  // namespace rnn_fused
