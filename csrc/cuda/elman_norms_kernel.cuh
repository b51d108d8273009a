// The deferred step norms' sums (docs/cuda_backend.md, deferred norms): one launch after a
// backward whose plain copy stored each g_t, in place of the norms' sums in its steps. Launched
// by elman_launch.h's sum_step_norms only (a kernel that is no template lives in one translation
// unit: this header is included by elman_launch.h alone, not by the kernel list's parts).
#pragma once

#include <cstdint>

#include "cuda/recurrence_paths.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

// Deferred step norms (the plain backward wrote g_t: step_g): step_sq[l, t, b] = the sum over
// units u of g[l, t, b, u]^2 in float64 at each sample's valid steps t < lengths[b], zero past its
// end, for each of `layers` layers (1, or a layer stack's L). One warp per (layer, t, b) row: lane
// l adds u = l, l + 32, ... in turn, then a fixed butterfly, so the sum is bitwise-reproducible
// and the same whatever launch shape wrote g. Summed in the step, the norms cost each step of a
// latency-bound recurrence a butterfly before its barrier and one thread's ordered sum after it
// (H200, 2026-12-04: +0.57 ms, 55%, over 1000 steps at H = 64, B = 8); here they cost a store per
// output and step, and this launch. Float32 only: only float32 kernels have plain copies.
// Any grid of 1-D CTAs of whole warps (each warp takes every warps-th row):
//   step_g  [L,T,B,H] read at valid steps
//   lengths [B]       int64 valid steps per sample, or null (all T)
//   step_sq [L,T,B]   float64 written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    step_norms_kernel(const float* step_g, const int64_t* lengths, LayerShape shape, int64_t layers, double* step_sq) {
  const int64_t rows = layers * shape.steps * shape.batch, H = shape.hidden;
  const int64_t warps_per_cta = blockDim.x / kWarp, warps = int64_t(gridDim.x) * warps_per_cta;
  const int64_t lane = threadIdx.x % kWarp;
  // (row is uniform over a warp: the shuffles see every lane)
  for (int64_t row = int64_t(blockIdx.x) * warps_per_cta + threadIdx.x / kWarp; row < rows; row += warps) {
    const int64_t t = (row / shape.batch) % shape.steps, b = row % shape.batch;
    const bool valid = t < sample_length(lengths, b, shape.batch, shape.steps);
    double sum = 0.0;
    if (valid) {
      for (int64_t u = lane; u < H; u += kWarp) {
        const double g = static_cast<double>(step_g[row * H + u]);
        sum += g * g;
      }
    }
    for (int bit = kWarp / 2; bit >= 1; bit /= 2) sum += __shfl_xor_sync(kFullMask, sum, bit);
    if (lane == 0) step_sq[row] = sum;
  }
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
