// The arithmetic that host and device code share, so every backend (CPU loops, CUDA
// kernels, the same kernels emulated on the CPU) computes it from one definition.
// No torch includes: nvcc device code and the emulator see only this.
//
// Generic to any recurrence: the time index of a processing step (step_time) and the
// truncation edge scales of the backward (TruncationParams, edge_scale).
// Elman-cell specific: the activation and its slope from the saved output. A GRU or LSTM
// cell would add its own gate math next to these, not change the generic part.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>

#if defined(__CUDACC__)
#define RNN_FUSED_HOST_DEVICE __host__ __device__
#else
#define RNN_FUSED_HOST_DEVICE
#endif

namespace rnn_fused {

// ---- Generic: sizes, processing order and truncation --------------------------------------

// T steps, B samples, I input features, H hidden units (time-major tensors).
struct LayerShape {
  int64_t steps = 0;
  int64_t batch = 0;
  int64_t input_size = 0;
  int64_t hidden = 0;

  constexpr bool empty() const { return steps == 0 || batch == 0 || hidden == 0; }
};

// Offset of element (t, b, u) of a time-major [T,B,H] tensor; every backend indexes with it.
// int64 throughout: T*B*H exceeds 2^31 for long sequences (T = 100,000, B = 64, H = 512).
constexpr int64_t time_major_offset(int64_t t, int64_t b, int64_t u, int64_t batch, int64_t hidden) {
  return (t * batch + b) * hidden + u;
}

// Compile-time checks of the index arithmetic past 2^31 elements (no run could allocate them).
static_assert(time_major_offset(99'999, 63, 511, 64, 512) == int64_t(100'000) * 64 * 512 - 1);
static_assert(time_major_offset(1'000'000, 4'095, 4'095, 4'096, 4'096) ==
              int64_t(1'000'000) * 4'096 * 4'096 + int64_t(4'095) * 4'096 + 4'095);

// Time index of processing step `s` for a sample with `len` valid steps. The reverse
// direction walks each sample's valid steps from its last to its first.
constexpr int64_t step_time(int64_t s, int64_t len, bool reverse) { return reverse ? len - 1 - s : s; }

// How the backward scales the recurrent edge h_{s-1} -> h_s of processing step s >= 1
// (docs/bptt.md). The edge into step 0 (from h_0) always keeps scale 1.
struct TruncationParams {
  int64_t every = 0;       // cut the edge when s % every == 0; 0: never
  double keep_prob = 1.0;  // < 1: keep with this probability, scaled by 1/keep_prob
  uint64_t seed = 0;       // Philox key of the randomized draws
  uint32_t stream = 0;     // 2 * layer + direction: separates the draws of each layer and direction

  constexpr bool randomized() const { return keep_prob < 1.0; }
  // Whether any edge may be cut or scaled (else every edge_scale is 1).
  constexpr bool cuts() const { return every > 0 || keep_prob < 1.0; }
  // The cuts every K steps alone: edge_scale of it compiles without the draws (the CUDA
  // kernels read randomized truncation's scales drawn before their launch).
  constexpr TruncationParams periodic_part() const { return TruncationParams{.every = every}; }
};

// First 32-bit output of Philox4x32-10 (a counter-based generator: the draw is a pure
// function of key and counter, so every backend and run get the same one).
constexpr uint32_t philox4x32_10_first(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                       uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0);
    const uint32_t hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return c0;
}

// Scale c of the edge into processing step s of sample b: 0 (cut), 1, or 1/keep_prob.
// Randomized draw: u = (first output >> 8) * 2^-24 for counter (s, b, stream, 0), kept when
// u < keep_prob. Computed in double and rounded once, identically on every backend.
constexpr double edge_scale(const TruncationParams& tp, int64_t s, int64_t b) {
  if (s == 0) return 1.0;
  if (tp.every > 0 && s % tp.every == 0) return 0.0;
  if (tp.keep_prob < 1.0) {
    const uint32_t r = philox4x32_10_first(uint32_t(s), uint32_t(b), tp.stream, 0u, uint32_t(tp.seed),
                                           uint32_t(tp.seed >> 32));
    const double u = double(r >> 8) * (1.0 / 16777216.0);
    return u < tp.keep_prob ? 1.0 / tp.keep_prob : 0.0;
  }
  return 1.0;
}

// Truncation every K steps alone (no randomized draws), as the backward's step loop meets the
// edges: whether the edge into processing step s is cut (edge_scale's s % every == 0), asked
// for s = first, first - 1, ... once per step: a compare with the next cut step and a
// predicated subtraction per call instead of a remainder per step and sample. `Step`: int32_t
// where 0 <= first < kPeriodicCutSteps (the backward kernels' plain copies: about 4 instructions
// per step in the sm_90 SASS; 64-bit, 12 with the register moves it caused), int64_t for any
// first (the general kernels; a 64-bit remainder there was ~40 instructions per step and sample
// with its division call). edge_scale stays the definition. every == 0 never cuts.
inline constexpr int64_t kPeriodicCutSteps = int64_t(1) << 30;
template <typename Step>
class BasicPeriodicCut {
 public:
  static constexpr Step kNone = std::numeric_limits<Step>::min();
  constexpr BasicPeriodicCut(int64_t every, int64_t first)
      : next_(every > 0 && every <= first ? Step(first - first % every) : kNone) {}
  // `every`: the constructor's (read again at each call rather than held: in the kernels a
  // kernel parameter, so no register holds it; held, it spilled the float64 grid kernel at 8
  // samples on sm_80, at 255 registers).
  constexpr bool cut(int64_t s, int64_t every) {
    const bool at = Step(s) == next_;
    if (at) next_ -= Step(every);
    return at;
  }

 private:
  Step next_;  // the largest cut step not yet passed (kNone: none, or every == 0)
};
using PeriodicCut = BasicPeriodicCut<int32_t>;
using WidePeriodicCut = BasicPeriodicCut<int64_t>;

// The cuts walk edge_scale's, checked at compile time over small periods and starts.
template <typename Cut>
constexpr bool periodic_cut_matches_edge_scale() {
  for (int64_t every = 0; every <= 5; ++every) {
    for (int64_t first = 1; first <= 12; ++first) {
      Cut periodic(every, first);
      for (int64_t s = first; s >= 1; --s) {
        if (periodic.cut(s, every) != (edge_scale(TruncationParams{.every = every}, s, 0) == 0.0)) return false;
      }
    }
  }
  return true;
}
static_assert(periodic_cut_matches_edge_scale<PeriodicCut>());
static_assert(periodic_cut_matches_edge_scale<WidePeriodicCut>());
// ... and past 32 bits for the 64-bit one.
constexpr bool wide_periodic_cut_matches_edge_scale_past_32_bits() {
  const int64_t first = (int64_t(1) << 33) + 5;
  for (int64_t every : {int64_t(3), (int64_t(1) << 32) + 1}) {
    WidePeriodicCut periodic(every, first);
    for (int64_t s = first; s > first - 12; --s) {
      if (periodic.cut(s, every) != (edge_scale(TruncationParams{.every = every}, s, 0) == 0.0)) return false;
    }
  }
  return true;
}
static_assert(wide_periodic_cut_matches_edge_scale_past_32_bits());

// The whole-sequence gradients of a layer's backward: the number of outputs among those asked
// for (dX [T,B,I], h_0's [B,H], dW_ih [H,I], dW_hh [H,H], the biases' [H] once), in the order the
// gradients kernel's threads take them (cuda/elman_gradients_kernel.cuh).
RNN_FUSED_HOST_DEVICE constexpr int64_t whole_sequence_gradient_outputs(const LayerShape& s, bool x, bool hx,
                                                                        bool w_ih, bool w_hh, bool bias) {
  return (x ? s.steps * s.batch * s.input_size : 0) + (hx ? s.batch * s.hidden : 0) +
         (w_ih ? s.hidden * s.input_size : 0) + (w_hh ? s.hidden * s.hidden : 0) + (bias ? s.hidden : 0);
}

// ---- Elman cell: h_t = act(z_t) ----------------------------------------------------------

enum class Activation : int32_t { Tanh = 0, Relu = 1 };

// act(z). `tanh_fn` is the backend's tanh: a vectorizable polynomial on the CPU
// (cpu/vector_math.h), tanhf/tanh on the device.
template <Activation A, typename scalar_t, typename TanhFn>
RNN_FUSED_HOST_DEVICE inline scalar_t activate(scalar_t z, TanhFn tanh_fn) {
  if constexpr (A == Activation::Tanh) {
    return tanh_fn(z);
  } else {
    return z > scalar_t(0) ? z : scalar_t(0);
  }
}

// act'(z) from h = act(z), so the backward needs only the saved output:
// tanh' = 1 - h^2, relu' = [h > 0].
template <Activation A, typename scalar_t>
RNN_FUSED_HOST_DEVICE inline scalar_t activation_slope(scalar_t h) {
  if constexpr (A == Activation::Tanh) {
    return scalar_t(1) - h * h;
  } else {
    return h > scalar_t(0) ? scalar_t(1) : scalar_t(0);
  }
}

}  // namespace rnn_fused
