// Device helpers shared by the forward and backward recurrence kernels: the device tanh,
// a warp-wide sum, warp dot products, the block's unit slice and the thread mapping.
// Compiled by nvcc (CUDA) and by g++ (SIMT emulation; docs/simt.md).
#pragma once

#include <cstdint>
#include <type_traits>

#include "recurrence_math.h"
#include "simt/simt.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

// Threads per block of every recurrence kernel. Each warp computes one (sample, unit)
// dot product of length H at a time, so 8 warps keep 8 dot products in flight per block.
constexpr int kRecurrenceThreads = 256;
constexpr int kWarp = 32;

// The device's tanh for activate (recurrence_math.h).
struct DeviceTanh {
  template <typename scalar_t>
  RNN_FUSED_HOST_DEVICE scalar_t operator()(scalar_t z) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      return tanhf(z);
    } else {
      return tanh(z);
    }
  }
};

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

// The units [unit_begin, unit_end) that block blockIdx.x owns: units_per_block of them,
// fewer in the last block.
struct UnitSlice {
  int64_t begin, end;
};

SIMT_DEVICE __forceinline__ UnitSlice block_units(int64_t units_per_block, int64_t hidden) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * units_per_block;
  return {begin, begin + units_per_block < hidden ? begin + units_per_block : hidden};
}

// Copies this block's rows of a [H,H] weight (rows slice.begin .. slice.end) into shared
// memory once, before a persistent kernel's time loop. weights [H,H] read; w_slice
// [(slice.end - slice.begin) * H] written.
template <typename scalar_t>
SIMT_DEVICE void load_weight_slice(const scalar_t* weights, scalar_t* w_slice, UnitSlice slice, int64_t hidden) {
  const int64_t elements = (slice.end - slice.begin) * hidden;
  for (int64_t i = threadIdx.x; i < elements; i += blockDim.x) w_slice[i] = weights[slice.begin * hidden + i];
  __syncthreads();
}

// The thread mapping of one step of either recurrence: a warp's work item is one unit u of
// the block's slice and kSamplesPerWarp consecutive samples; its lanes compute the dot
// products of weight row u with those samples' rows of `source`, then lane j calls
// epilogue(u, b, dot) for the j-th sample b of the group (when b < B). Consecutive warps take the units of one
// sample group, so they read the same source rows (cache reuse).
// w_rows [(slice.end - slice.begin) * H] the slice's weight rows; source [B,H].
template <typename scalar_t, typename Epilogue>
SIMT_DEVICE void for_each_slice_dot(const scalar_t* w_rows, const scalar_t* source, int64_t B, int64_t H,
                                    UnitSlice slice, Epilogue&& epilogue) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int warps = static_cast<int>(blockDim.x) / kWarp;
  const int64_t units = slice.end - slice.begin;
  const int64_t groups = (B + kSamplesPerWarp - 1) / kSamplesPerWarp;
  for (int64_t item = warp; item < units * groups; item += warps) {
    const int64_t local = item % units, first = (item / units) * kSamplesPerWarp;
    const scalar_t* rows[kSamplesPerWarp];
    SIMT_UNROLL
    for (int j = 0; j < kSamplesPerWarp; ++j) rows[j] = source + (first + j < B ? first + j : first) * H;
    scalar_t dots[kSamplesPerWarp];
    warp_dots(w_rows + local * H, rows, H, lane, dots);
    // Every lane holds every dot: lane j runs sample j's epilogue, so the epilogues of a
    // work item run side by side.
    SIMT_UNROLL
    for (int j = 0; j < kSamplesPerWarp; ++j) {
      if (lane == j && first + j < B) epilogue(slice.begin + local, first + j, dots[j]);
    }
  }
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
