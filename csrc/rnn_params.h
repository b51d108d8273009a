// Plain parameter structs shared by every backend (CPU, CUDA, SIMT emulation).
// No torch includes: kernels compiled by nvcc or by the emulator see only this.
#pragma once

#include <cstdint>

namespace rnn_fused {

enum class Activation : int32_t { Tanh = 0, Relu = 1 };

// One layer, one direction. Shapes use T = steps, B = batch, I = input size, H = hidden.
// Every tensor is contiguous, time-major, in the compute dtype of the backend.
struct LayerForwardParams {
  int64_t steps = 0;            // T
  int64_t batch = 0;            // B
  int64_t input_size = 0;       // I
  int64_t hidden_size = 0;      // H
  Activation activation = Activation::Tanh;
  bool reverse = false;         // process each sample's valid steps from last to first
  const int64_t* lengths = nullptr;  // [B] valid steps per sample, or null (all T)
  bool lengths_nonincreasing = true; // lets the time loop shrink the active batch
};

// How the backward scales the recurrent edge h_{s-1} -> h_s of processing step s >= 1
// (docs/bptt.md). The edge into step 0 (from h_0) always keeps scale 1.
struct TruncationParams {
  int64_t every = 0;        // cut the edge when s % every == 0; 0: never
  double keep_prob = 1.0;   // < 1: keep with this probability, scaled by 1/keep_prob
  uint64_t seed = 0;        // Philox key of the randomized draws
  uint32_t stream = 0;      // 2 * layer + direction: separates the draws of each layer and direction
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

// Time index of processing step `s` for a sample with `len` valid steps. constexpr so
// that device code may call it too (nvcc --expt-relaxed-constexpr).
constexpr int64_t step_time(int64_t s, int64_t len, bool reverse) {
  return reverse ? len - 1 - s : s;
}

}  // namespace rnn_fused
