// Elementwise epilogues of the CPU time loops: activation of a row (the input
// projection already holds both biases) and its derivative written in terms of the
// saved output h (tanh' = 1 - h^2, relu' = [h > 0]).
//
// On x86-64 the row functions (the float64 backward's excepted, below) are compiled once per
// instruction set (target_clones) and picked at load time, so one binary runs everywhere and uses
// AVX-512/AVX2 where the CPU has them. Other targets (aarch64) compile them once for the target's
// own vector unit.
#pragma once

#include <cstdint>

#include "cpu/vector_math.h"
#include "recurrence_math.h"

#if defined(__x86_64__)
#define RNN_FUSED_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define RNN_FUSED_SIMD_CLONES
#endif

namespace rnn_fused::cpu {

// The CPU's tanh for activate (recurrence_math.h): the vectorizable polynomial.
struct ApproxTanh {
  template <typename scalar_t>
  scalar_t operator()(scalar_t z) const {
    return tanh_approx(z);
  }
};

// xw [H] in: projection + biases of this step, out: h; rec [H] W_hh h_{t-1};
// state [H] out: h
template <Activation A, typename scalar_t>
inline void activate_row_body(scalar_t* __restrict xw, const scalar_t* __restrict rec,
                              scalar_t* __restrict state, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const scalar_t h = activate<A>(xw[j] + rec[j], ApproxTanh{});
    xw[j] = h;
    state[j] = h;
  }
}

// g = dy + scale * carry (+ extra), dz = g * act'(h). scale is the edge scale of the
// recurrent edge (1 for full BPTT); a cut edge (scale 0) is passed a zero carry row, so that
// a non-finite carry cannot leak through 0 * inf. g and dz are evaluated in double and dz
// rounded once: a float32 dz is then (but for double's own roundings) the correctly rounded
// value of its float32 operands, where float arithmetic rounded g's sums and 1 - h^2 apart, up
// to about 1.5 ulps; a fuzzed gradient that sums a few heavily cancelling dz (the biases' of a
// hidden size of 1) carried that past the tolerance rule on one CPU. With kNorm the row also
// returns sum_j g_j^2 of g rounded to scalar_t, summed in double (a float g's square is exact
// there, and no finite one underflows or overflows).
// dy [H] output gradient; carry [H] W_hh^T dz_{next}; extra [H] gradient of h_n (kExtra);
// h [H] saved output; dz, dz_step [H] out: dL/dz
template <Activation A, bool kExtra, bool kNorm, typename scalar_t>
inline double activation_grad_row_body(const scalar_t* __restrict dy, const scalar_t* __restrict carry,
                                       scalar_t scale, const scalar_t* __restrict extra,
                                       const scalar_t* __restrict h, scalar_t* __restrict dz,
                                       scalar_t* __restrict dz_step, int64_t H) {
  double g_sq = 0;
#pragma omp simd reduction(+ : g_sq)
  for (int64_t j = 0; j < H; ++j) {
    double g = double(dy[j]) + double(scale) * double(carry[j]);
    if constexpr (kExtra) g += double(extra[j]);
    if constexpr (kNorm) {
      const double rounded = double(scalar_t(g));
      g_sq += rounded * rounded;
    }
    const scalar_t d = scalar_t(g * activation_slope<A>(double(h[j])));
    dz[j] = d;
    dz_step[j] = d;
  }
  return g_sq;
}

template <Activation A, typename scalar_t>
inline double activation_grad_row_any(const scalar_t* dy, const scalar_t* carry, scalar_t scale,
                                      const scalar_t* extra, const scalar_t* h, scalar_t* dz, scalar_t* dz_step,
                                      int64_t H, bool want_norm) {
  if (extra != nullptr) {
    return want_norm ? activation_grad_row_body<A, true, true>(dy, carry, scale, extra, h, dz, dz_step, H)
                     : activation_grad_row_body<A, true, false>(dy, carry, scale, extra, h, dz, dz_step, H);
  }
  return want_norm ? activation_grad_row_body<A, false, true>(dy, carry, scale, extra, h, dz, dz_step, H)
                   : activation_grad_row_body<A, false, false>(dy, carry, scale, extra, h, dz, dz_step, H);
}

// activate_row is cloned per instruction set, and so is the float32 activation_grad_row: its dz
// is the same on every clone (each product FMA contraction could fuse, scale * carry, h * h and
// a rounded g's square, is exact in double, so fused or not it rounds alike), only the norms'
// double sums may add in another order by vector width; evaluated in double on the baseline ISA
// it took 2.5x the float row's time. The float64 activation_grad_row is compiled once, for the
// baseline ISA: there FMA contraction would round g = dy + scale * carry otherwise per machine,
// and the float64 backward rounds alike on every x86-64 CPU.
#define RNN_FUSED_DEFINE_ROWS(scalar_t, GRAD_CLONES)                                                    \
  RNN_FUSED_SIMD_CLONES inline void activate_row(Activation a, scalar_t* xw, const scalar_t* rec,      \
                                                 scalar_t* state, int64_t H) {                          \
    if (a == Activation::Tanh) {                                                                        \
      activate_row_body<Activation::Tanh>(xw, rec, state, H);                                          \
    } else {                                                                                            \
      activate_row_body<Activation::Relu>(xw, rec, state, H);                                          \
    }                                                                                                   \
  }                                                                                                     \
  GRAD_CLONES inline double activation_grad_row(                                                        \
      Activation a, const scalar_t* dy, const scalar_t* carry, scalar_t scale, const scalar_t* extra,      \
      const scalar_t* h, scalar_t* dz, scalar_t* dz_step, int64_t H, bool want_norm) {                  \
    return a == Activation::Tanh                                                                        \
               ? activation_grad_row_any<Activation::Tanh>(dy, carry, scale, extra, h, dz, dz_step, H,  \
                                                           want_norm)                                   \
               : activation_grad_row_any<Activation::Relu>(dy, carry, scale, extra, h, dz, dz_step, H,  \
                                                           want_norm);                                  \
  }

RNN_FUSED_DEFINE_ROWS(float, RNN_FUSED_SIMD_CLONES)
RNN_FUSED_DEFINE_ROWS(double, )
#undef RNN_FUSED_DEFINE_ROWS

}  // namespace rnn_fused::cpu
