// selftest_kernels.cuh — small kernels that check the SIMT layer itself.
//
// The known-good kernels (warp-shuffle reduction, tiled transpose, cooperative stencil
// with a grid-wide barrier per step, atomics, warp scan/ballot, device math, a barrier
// loop) must give the same, correct results under every emulator schedule and on a GPU.
// The known-bad kernels (faulty_*) each contain one classic bug the emulator must catch
// (an error, or results that differ across schedules). The file compiles under nvcc
// (csrc/cuda/simt_selftest.cu) and under g++ (csrc/simt/simt_ops.cpp).
#pragma once

#include "simt/simt.cuh"

namespace rnn_fused::simt_selftest {
SIMT_BEGIN_WORLD

constexpr unsigned kFullMask = 0xffffffffu;

// Sum of one warp's values, left in every lane.
SIMT_DEVICE float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// One block sums blockDim.x consecutive elements: shuffles within each warp, then warp 0
// reduces the per-warp sums with __shfl_down_sync. blockDim.x is a multiple of 32.
//   x          [gridDim.x * blockDim.x] float, read
//   block_sums [gridDim.x] float, written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024) warp_reduce_kernel(const float* x, float* block_sums) {
  SIMT_SHARED(float[32], warp_sums);
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  const float v = warp_sum(x[blockIdx.x * blockDim.x + threadIdx.x]);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < blockDim.x / 32 ? warp_sums[lane] : 0.0f;
    for (unsigned offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(kFullMask, s, offset);
    if (lane == 0) block_sums[blockIdx.x] = s;
  }
}
SIMT_KERNEL_ATTRIBUTES(1024, 24, warp_reduce_kernel);

// Tiled transpose through a padded 32x33 shared tile; block (32, 8), grid
// (ceil(cols/32), ceil(rows/32)); each thread moves 4 elements.
//   in  [rows, cols] float, read
//   out [cols, rows] float, written
constexpr int kTile = 32;
constexpr int kTileRows = 8;
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(256) transpose_kernel(const float* in, float* out, int rows, int cols) {
  SIMT_SHARED(float[kTile][kTile + 1], tile);
  const int x = static_cast<int>(blockIdx.x * kTile + threadIdx.x);
  for (int j = static_cast<int>(threadIdx.y); j < kTile; j += kTileRows) {
    const int y = static_cast<int>(blockIdx.y * kTile) + j;
    if (x < cols && y < rows) tile[j][threadIdx.x] = in[static_cast<int64_t>(y) * cols + x];
  }
  __syncthreads();
  const int ox = static_cast<int>(blockIdx.y * kTile + threadIdx.x);
  for (int j = static_cast<int>(threadIdx.y); j < kTile; j += kTileRows) {
    const int oy = static_cast<int>(blockIdx.x * kTile) + j;
    if (ox < rows && oy < cols) out[static_cast<int64_t>(oy) * rows + ox] = tile[threadIdx.x][j];
  }
}
SIMT_KERNEL_ATTRIBUTES(256, 32, transpose_kernel);

// Persistent cooperative kernel: `steps` rounds of a 3-point smoothing stencil over n
// values, ping-ponging between two buffers with one grid-wide barrier per step (the
// pattern of the fused RNN forward). Grid-stride loops, so any grid size is correct.
//   state [2, n] float, read and written; state[0] holds the input, the result ends in
//         state[steps % 2]
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(256) grid_stencil_kernel(float* state, int n, int steps) {
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int s = 0; s < steps; ++s) {
    const float* cur = state + static_cast<int64_t>(s % 2) * n;
    float* next = state + static_cast<int64_t>((s + 1) % 2) * n;
    for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride) {
      const float left = i > 0 ? cur[i - 1] : 0.0f;
      const float right = i + 1 < n ? cur[i + 1] : 0.0f;
      next[i] = fmaf(0.5f, cur[i], 0.25f * (left + right));
    }
    simt::grid_sync();
  }
}
SIMT_KERNEL_ATTRIBUTES(256, 32, grid_stencil_kernel);

// Histogram in shared memory, then merged into global memory; global and shared maxima;
// a float sum. Dynamic shared memory holds `bins` counters.
//   values [n] int32 in [0, bins), read
//   hist   [bins] int32, zero on entry, written
//   maxima [2] int32 (global max over all values, max of the per-block maxima), INT_MIN on entry
//   total  [1] float, zero on entry, written (sum of the values)
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(256)
    atomics_kernel(const int* values, int n, int bins, int* hist, int* maxima, float* total) {
  SIMT_DYNAMIC_SHARED(int, local_hist);
  SIMT_SHARED(int, block_max);
  for (int b = static_cast<int>(threadIdx.x); b < bins; b += static_cast<int>(blockDim.x)) local_hist[b] = 0;
  if (threadIdx.x == 0) block_max = -2147483647 - 1;
  __syncthreads();
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride) {
    atomicAdd(&local_hist[values[i]], 1);
    atomicMax(&block_max, values[i]);
    atomicMax(&maxima[0], values[i]);
    atomicAdd(total, static_cast<float>(values[i]));
  }
  __syncthreads();
  for (int b = static_cast<int>(threadIdx.x); b < bins; b += static_cast<int>(blockDim.x)) {
    atomicAdd(&hist[b], local_hist[b]);
  }
  if (threadIdx.x == 0) atomicMax(&maxima[1], block_max);
}
SIMT_KERNEL_ATTRIBUTES(256, 32, atomics_kernel);

// Per-warp inclusive scan with __shfl_up_sync and a per-warp ballot of (x > 0).
//   x      [gridDim.x * blockDim.x] float, read
//   scan   [gridDim.x * blockDim.x] float, written
//   ballot [gridDim.x * blockDim.x / 32] int32 (the 32-bit ballot), written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024) warp_scan_kernel(const float* x, float* scan, int* ballot) {
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned lane = threadIdx.x & 31u;
  float v = x[i];
  for (unsigned d = 1; d < 32; d <<= 1) {
    const float up = __shfl_up_sync(kFullMask, v, d);
    if (lane >= d) v += up;
  }
  scan[i] = v;
  const unsigned votes = __ballot_sync(kFullMask, x[i] > 0.0f);
  __syncwarp();
  if (lane == 0) ballot[i / 32] = static_cast<int>(votes);
}
SIMT_KERNEL_ATTRIBUTES(1024, 32, warp_scan_kernel);

// Device math and 16-bit conversions.
//   x    [n] float, read
//   y    [n] float: fmaf(tanhf(x), expf(-|x|), rsqrtf(1 + x^2)), written
//   half [n] float: y rounded through c10::Half, written
//   bf16 [n] float: y rounded through c10::BFloat16, written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(256) device_math_kernel(const float* x, float* y, float* half, float* bf16, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  const float v = x[i];
  const float r = fmaf(tanhf(v), expf(-fabsf(v)), rsqrtf(1.0f + v * v));
  y[i] = r;
  half[i] = static_cast<float>(c10::Half(r));
  bf16[i] = static_cast<float>(c10::BFloat16(r));
}
SIMT_KERNEL_ATTRIBUTES(256, 16, device_math_kernel);

// Many barriers: each round every thread publishes a value and mixes in its neighbour's.
// Two __syncthreads per round.
//   data [gridDim.x * blockDim.x] float, read and written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024) barrier_loop_kernel(float* data, int rounds) {
  SIMT_DYNAMIC_SHARED(float, values);
  const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = data[i];
  for (int r = 0; r < rounds; ++r) {
    values[threadIdx.x] = v;
    __syncthreads();
    v = 0.5f * v + 0.25f * values[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  data[i] = v;
}
SIMT_KERNEL_ATTRIBUTES(1024, 32, barrier_loop_kernel);

// ---- Known-bad kernels. Each case below is one bug. ------------------------------------

enum class Fault : int {
  DivergentBarrier = 0,   // threads wait at two different __syncthreads
  ExitBeforeBarrier,      // one thread returns, the rest wait at __syncthreads
  MissingBarrier,         // shared memory read before other threads wrote it (race)
  InactiveLane,           // full-mask shuffle in a warp with only 16 threads
  MaskExcludesCaller,     // lane 0 calls a shuffle whose mask lacks lane 0
  ExitedLane,             // lane 3 returns, the rest shuffle with a full mask
  WarpBarrierDeadlock,    // lane 0 at __syncthreads while the others wait at __syncwarp
  GridSyncNotCooperative, // grid_sync in a kernel launched without launch_cooperative
  GridSyncBlockExits,     // block 1 returns while block 0 waits at grid_sync
  KernelCheck,            // SIMT_KERNEL_CHECK fails in one thread
  SharedOutOfBounds,      // writes one element past a static shared array
  DynamicSharedOutOfBounds,  // reads one element past the dynamic shared memory
  MismatchedWarpOps,      // half the warp shuffles, the other half votes, same mask
  ShuffleOutsideMask,     // lanes 0-15 shuffle among themselves but read lane 20
  StackOverflow,          // a thread needs more stack than an emulated thread has
};

// Uses 384 KiB of stack: more than an emulated thread has (128 KiB; 256 KiB under ASan),
// less than CUDA's 512 KiB local-memory limit per thread.
constexpr int kDeepLocalFloats = 96 * 1024;
SIMT_DEVICE SIMT_NOINLINE float deep_local_sum(float v) {
  volatile float scratch[kDeepLocalFloats];
  for (int k = 0; k < kDeepLocalFloats; k += 1024) scratch[k] = v + static_cast<float>(k);
  float s = 0.0f;
  for (int k = 0; k < kDeepLocalFloats; k += 1024) s += scratch[k];
  return s;
}

// Dispatches on the fault; `x` [gridDim.x * blockDim.x] float is read, `out` (same shape)
// written where the case produces output.
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024) faulty_kernel(int fault, const float* x, float* out) {
  SIMT_SHARED(float[64], cells);
  const unsigned t = threadIdx.x;
  const unsigned i = blockIdx.x * blockDim.x + t;
  const unsigned lane = t & 31u;
  switch (static_cast<Fault>(fault)) {
    case Fault::DivergentBarrier:
      if (t % 2 == 0) {
        __syncthreads();
      } else {
        __syncthreads();
      }
      out[i] = x[i];
      break;
    case Fault::ExitBeforeBarrier:
      if (t == 5) return;
      __syncthreads();
      out[i] = x[i];
      break;
    case Fault::MissingBarrier:
      cells[t] = x[i];
      // A __syncthreads() belongs here.
      out[i] = cells[(t + 1) % blockDim.x];
      break;
    case Fault::InactiveLane:
      out[i] = __shfl_sync(kFullMask, x[i], 0);
      break;
    case Fault::MaskExcludesCaller:
      out[i] = __shfl_sync(0xfffffffeu, x[i], 1);
      break;
    case Fault::ExitedLane:
      if (lane == 3) return;
      out[i] = __shfl_xor_sync(kFullMask, x[i], 1);
      break;
    case Fault::WarpBarrierDeadlock:
      if (lane == 0) {
        __syncthreads();
      } else {
        __syncwarp();
      }
      out[i] = x[i];
      break;
    case Fault::GridSyncNotCooperative:
      simt::grid_sync();
      out[i] = x[i];
      break;
    case Fault::GridSyncBlockExits:
      if (blockIdx.x == 1) return;
      simt::grid_sync();
      out[i] = x[i];
      break;
    case Fault::KernelCheck:
      SIMT_KERNEL_CHECK(x[i] >= 0.0f, "input must be non-negative");
      out[i] = x[i];
      break;
    case Fault::SharedOutOfBounds:
      cells[t + 1] = x[i];
      __syncthreads();
      out[i] = cells[t];
      break;
    case Fault::DynamicSharedOutOfBounds: {
      SIMT_DYNAMIC_SHARED(float, dyn);
      dyn[t] = x[i];
      __syncthreads();
      out[i] = dyn[t + 1];
      break;
    }
    case Fault::MismatchedWarpOps:
      if (lane < 16) {
        out[i] = __shfl_sync(kFullMask, x[i], 0);
      } else {
        out[i] = static_cast<float>(__ballot_sync(kFullMask, x[i] > 0.0f));
      }
      break;
    case Fault::ShuffleOutsideMask:
      if (lane < 16) out[i] = __shfl_sync(0x0000ffffu, x[i], 20);
      break;
    case Fault::StackOverflow:
      out[i] = deep_local_sum(x[i]);
      break;
  }
}
SIMT_KERNEL_ATTRIBUTES(1024, 32, faulty_kernel);

// A kernel whose launch bounds (128) tests exceed on purpose.
//   out [gridDim.x * blockDim.x] float, written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(128) bounded_kernel(float* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = static_cast<float>(threadIdx.x);
}
SIMT_KERNEL_ATTRIBUTES(128, 32, bounded_kernel);

SIMT_END_WORLD
}  // namespace rnn_fused::simt_selftest
