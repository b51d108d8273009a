// Argument checks and parameter-struct filling for the single-layer ops, shared by
// the host code of every backend (CPU, CUDA, SIMT emulation), so that all of them
// reject the same inputs with the same messages before anything is written.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

#include "rnn_params.h"

namespace rnn_fused {

inline Activation parse_activation(const std::string& nonlinearity) {
  if (nonlinearity == "tanh") return Activation::Tanh;
  if (nonlinearity == "relu") return Activation::Relu;
  TORCH_CHECK_VALUE(false, "rnn_fused: nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
}

inline void check_same_device_dtype(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "rnn_fused: ", name, " is on ", t.device(),
              " but input is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "rnn_fused: ", name, " has dtype ",
              t.scalar_type(), " but input has dtype ", ref.scalar_type());
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "rnn_fused: ", name, " must have shape ", expected,
              ", got ", t.sizes());
}

// Checks the forward's arguments and fills the sizes of LayerForwardParams.
// lengths must be int64 [B] with values in [0, T]; its pointer is filled by the caller
// (the CPU reads it in place, CUDA needs a device copy).
inline LayerForwardParams check_layer_args(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& lengths,
    const std::string& nonlinearity, bool reverse) {
  TORCH_CHECK(input.dim() == 3, "rnn_fused: input must be 3-D [T, B, I], got ", input.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()),
              "rnn_fused: input must be a floating-point tensor, got ", input.scalar_type());
  LayerForwardParams p;
  p.steps = input.size(0);
  p.batch = input.size(1);
  p.input_size = input.size(2);
  p.hidden_size = weight_hh.size(0);
  p.activation = parse_activation(nonlinearity);
  p.reverse = reverse;
  const int64_t H = p.hidden_size;
  check_same_device_dtype(input, weight_ih, "weight_ih");
  check_same_device_dtype(input, weight_hh, "weight_hh");
  check_shape(weight_hh, {H, H}, "weight_hh");
  check_shape(weight_ih, {H, p.input_size}, "weight_ih");
  TORCH_CHECK(bias_ih.has_value() == bias_hh.has_value(),
              "rnn_fused: bias_ih and bias_hh must both be given or both be None");
  if (bias_ih.has_value()) {
    check_same_device_dtype(input, *bias_ih, "bias_ih");
    check_same_device_dtype(input, *bias_hh, "bias_hh");
    check_shape(*bias_ih, {H}, "bias_ih");
    check_shape(*bias_hh, {H}, "bias_hh");
  }
  if (hx.has_value()) {
    check_same_device_dtype(input, *hx, "hx");
    check_shape(*hx, {p.batch, H}, "hx");
  }
  if (lengths.has_value()) {
    const at::Tensor& len = *lengths;
    TORCH_CHECK(len.scalar_type() == at::kLong, "rnn_fused: lengths must be int64, got ", len.scalar_type());
    TORCH_CHECK(len.device() == input.device(), "rnn_fused: lengths is on ", len.device(),
                " but input is on ", input.device());
    check_shape(len, {p.batch}, "lengths");
  }
  return p;
}

// Host-side check of the values of a CPU lengths tensor: 0 <= lengths[b] <= T.
// Also reports whether they are non-increasing (packed-sequence order), which lets the
// time loop shrink its active batch instead of masking.
inline bool check_length_values(const int64_t* lengths, int64_t batch, int64_t steps) {
  bool nonincreasing = true;
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lengths[b] >= 0 && lengths[b] <= steps, "rnn_fused: lengths[", b, "] = ",
                lengths[b], " is outside [0, ", steps, "]");
    if (b > 0 && lengths[b] > lengths[b - 1]) nonincreasing = false;
  }
  return nonincreasing;
}

// The backward's truncation arguments (docs/bptt.md), checked before anything runs.
// truncate_every 0 = never cut; keep_prob 1 = no randomized cuts.
inline TruncationParams check_truncation_args(int64_t truncate_every, double keep_prob, int64_t seed, int64_t layer,
                                              bool reverse) {
  TORCH_CHECK_VALUE(truncate_every >= 0, "rnn_fused: truncate_every must be >= 0 (0 = full BPTT), got ",
                    truncate_every);
  TORCH_CHECK_VALUE(keep_prob > 0.0 && keep_prob <= 1.0, "rnn_fused: keep_prob must be in (0, 1], got ", keep_prob);
  TORCH_CHECK_VALUE(seed >= 0, "rnn_fused: seed must be >= 0, got ", seed);
  TORCH_CHECK_VALUE(layer >= 0 && layer < (int64_t(1) << 30), "rnn_fused: layer must be in [0, 2^30), got ", layer);
  TruncationParams tp;
  tp.every = truncate_every;
  tp.keep_prob = keep_prob;
  tp.seed = static_cast<uint64_t>(seed);
  tp.stream = static_cast<uint32_t>(2 * layer + (reverse ? 1 : 0));
  return tp;
}

// Backward takes the forward's arguments plus the gradients and the saved output.
inline void check_backward_args(const LayerForwardParams& p, const at::Tensor& input,
                                const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                                const at::Tensor& output) {
  check_same_device_dtype(input, grad_output, "grad_output");
  check_same_device_dtype(input, grad_h_n, "grad_h_n");
  check_same_device_dtype(input, output, "output");
  check_shape(grad_output, {p.steps, p.batch, p.hidden_size}, "grad_output");
  check_shape(output, {p.steps, p.batch, p.hidden_size}, "output");
  check_shape(grad_h_n, {p.batch, p.hidden_size}, "grad_h_n");
}

}  // namespace rnn_fused
