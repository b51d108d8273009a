// Elementwise epilogues of the CPU time loops: activation of a row (the input
// projection already holds both biases) and its derivative written in terms of the
// saved output h (tanh' = 1 - h^2, relu' = [h > 0]).
//
// The row functions are compiled once per instruction set (target_clones) and
// picked at load time, so one binary runs everywhere and uses AVX-512/AVX2 where
// the CPU has them.
#pragma once

#include <cstdint>

#include "cpu/vector_math.h"
#include "rnn_params.h"

#define RNN_FUSED_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))

namespace rnn_fused::cpu {

template <Activation A, typename scalar_t>
inline scalar_t activate(scalar_t z) {
  if constexpr (A == Activation::Tanh) {
    return tanh_approx(z);
  } else {
    return z > scalar_t(0) ? z : scalar_t(0);
  }
}

// act'(z) from h = act(z).
template <Activation A, typename scalar_t>
inline scalar_t activation_slope(scalar_t h) {
  if constexpr (A == Activation::Tanh) {
    return scalar_t(1) - h * h;
  } else {
    return h > scalar_t(0) ? scalar_t(1) : scalar_t(0);
  }
}

// xw [H] in: projection + biases of this step, out: h; rec [H] W_hh h_{t-1};
// state [H] out: h
template <Activation A, typename scalar_t>
inline void activate_row_body(scalar_t* __restrict xw, const scalar_t* __restrict rec,
                              scalar_t* __restrict state, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t h = activate<A>(xw[j] + rec[j]);
    xw[j] = h;
    state[j] = h;
  }
}

// dy [H] output gradient; carry [H] W_hh^T dz_{next}; extra [H] gradient of h_n or
// null; h [H] saved output; dz, dz_step [H] out: (dy + carry + extra) * act'
template <Activation A, typename scalar_t>
inline void activation_grad_row_body(const scalar_t* __restrict dy, const scalar_t* __restrict carry,
                                     const scalar_t* __restrict extra, const scalar_t* __restrict h,
                                     scalar_t* __restrict dz, scalar_t* __restrict dz_step, int64_t H) {
  if (extra != nullptr) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t d = (dy[j] + carry[j] + extra[j]) * activation_slope<A>(h[j]);
      dz[j] = d;
      dz_step[j] = d;
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t d = (dy[j] + carry[j]) * activation_slope<A>(h[j]);
      dz[j] = d;
      dz_step[j] = d;
    }
  }
}

#define RNN_FUSED_DEFINE_ROWS(scalar_t)                                                                 \
  RNN_FUSED_SIMD_CLONES inline void activate_row(Activation a, scalar_t* xw, const scalar_t* rec,      \
                                                 scalar_t* state, int64_t H) {                          \
    if (a == Activation::Tanh) {                                                                        \
      activate_row_body<Activation::Tanh>(xw, rec, state, H);                                          \
    } else {                                                                                            \
      activate_row_body<Activation::Relu>(xw, rec, state, H);                                          \
    }                                                                                                   \
  }                                                                                                     \
  RNN_FUSED_SIMD_CLONES inline void activation_grad_row(Activation a, const scalar_t* dy,              \
                                                        const scalar_t* carry, const scalar_t* extra,   \
                                                        const scalar_t* h, scalar_t* dz,                \
                                                        scalar_t* dz_step, int64_t H) {                 \
    if (a == Activation::Tanh) {                                                                        \
      activation_grad_row_body<Activation::Tanh>(dy, carry, extra, h, dz, dz_step, H);                 \
    } else {                                                                                            \
      activation_grad_row_body<Activation::Relu>(dy, carry, extra, h, dz, dz_step, H);                 \
    }                                                                                                   \
  }

RNN_FUSED_DEFINE_ROWS(float)
RNN_FUSED_DEFINE_ROWS(double)
#undef RNN_FUSED_DEFINE_ROWS

}  // namespace rnn_fused::cpu
