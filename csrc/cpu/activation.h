// Elementwise epilogues of the CPU time loops: bias-free activation of a row
// (the input projection already holds both biases) and its derivative written in
// terms of the saved output h (tanh' = 1 - h^2, relu' = [h > 0]).
#pragma once

#include <cmath>
#include <cstdint>

#include "rnn_params.h"

namespace rnn_fused::cpu {

// h[j] = act(xw[j] + rec[j]); also written to state[j].
// xw: [H] input projection + biases of this step (overwritten with h)
// rec: [H] W_hh h_{t-1} of this step; state: [H] recurrent state (written)
template <Activation A, typename scalar_t>
inline void activate_row(scalar_t* xw, const scalar_t* rec, scalar_t* state, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t z = xw[j] + rec[j];
    scalar_t h;
    if constexpr (A == Activation::Tanh) {
      h = std::tanh(z);
    } else {
      h = z > scalar_t(0) ? z : scalar_t(0);
    }
    xw[j] = h;
    state[j] = h;
  }
}

// dz[j] = (dy[j] + carry[j] + extra[j]) * act'(h[j]); also written to dz_step[j].
// extra (the gradient of h_n) is null except at a sample's last valid step.
template <Activation A, typename scalar_t>
inline void activation_grad_row(const scalar_t* dy, const scalar_t* carry, const scalar_t* extra,
                                const scalar_t* h, scalar_t* dz, scalar_t* dz_step, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    scalar_t g = dy[j] + carry[j];
    if (extra != nullptr) g += extra[j];
    scalar_t d;
    if constexpr (A == Activation::Tanh) {
      d = g * (scalar_t(1) - h[j] * h[j]);
    } else {
      d = h[j] > scalar_t(0) ? g : scalar_t(0);
    }
    dz[j] = d;
    dz_step[j] = d;
  }
}

}  // namespace rnn_fused::cpu
