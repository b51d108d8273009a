// Device helpers shared by the forward and backward recurrence kernels: activation and
// its slope from the saved output, a warp-wide sum, and the thread mapping constants.
// Compiled by nvcc (CUDA) and by g++ (SIMT emulation); see csrc/simt/README_SECTION.md.
#pragma once

#include <cstdint>
#include <type_traits>

#include "rnn_params.h"
#include "simt/simt.cuh"

namespace rnn_fused::cuda_kernels {
SIMT_BEGIN_WORLD

// Threads per block of every recurrence kernel. Each warp computes one (sample, unit)
// dot product of length H at a time, so 8 warps keep 8 dot products in flight per block.
constexpr int kRecurrenceThreads = 256;
constexpr int kWarp = 32;

template <typename scalar_t>
SIMT_DEVICE scalar_t device_tanh(scalar_t z) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return tanhf(z);
  } else {
    return tanh(z);
  }
}

template <Activation A, typename scalar_t>
SIMT_DEVICE scalar_t activate(scalar_t z) {
  if constexpr (A == Activation::Tanh) {
    return device_tanh(z);
  } else {
    return z > scalar_t(0) ? z : scalar_t(0);
  }
}

// act'(z) from h = act(z): tanh' = 1 - h^2, relu' = [h > 0].
template <Activation A, typename scalar_t>
SIMT_DEVICE scalar_t activation_slope(scalar_t h) {
  if constexpr (A == Activation::Tanh) {
    return scalar_t(1) - h * h;
  } else {
    return h > scalar_t(0) ? scalar_t(1) : scalar_t(0);
  }
}

// Sum over the 32 lanes of a warp, every lane gets the total. A fixed butterfly, so the
// rounding is the same on every run and under every emulator schedule.
template <typename scalar_t>
SIMT_DEVICE scalar_t warp_sum(scalar_t v) {
  SIMT_UNROLL
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Samples per warp work item: one weight row is dotted with this many state rows at once,
// so each weight element read from shared memory feeds several independent multiply-adds
// (instruction-level parallelism, fewer shared-memory reads per multiply-add).
constexpr int kSamplesPerWarp = 4;

// dots[j] = row . vecs[j * n .. j * n + n) for j < kSamplesPerWarp, over a warp: lane l
// takes k = l, l+32, ... then the warp sums each. Every row j is read even past the last
// real sample (callers clamp the pointer), so the lanes stay uniform for the shuffles.
// row: [n] contiguous; vec_rows[j]: [n] contiguous.
template <typename scalar_t>
SIMT_DEVICE void warp_dots(const scalar_t* row, const scalar_t* const (&vec_rows)[kSamplesPerWarp], int64_t n,
                           int lane, scalar_t (&dots)[kSamplesPerWarp]) {
  SIMT_UNROLL
  for (int j = 0; j < kSamplesPerWarp; ++j) dots[j] = 0;
  for (int64_t k = lane; k < n; k += kWarp) {
    const scalar_t w = row[k];
    SIMT_UNROLL
    for (int j = 0; j < kSamplesPerWarp; ++j) dots[j] += w * vec_rows[j][k];
  }
  SIMT_UNROLL
  for (int j = 0; j < kSamplesPerWarp; ++j) dots[j] = warp_sum(dots[j]);
}

SIMT_END_WORLD
}  // namespace rnn_fused::cuda_kernels
