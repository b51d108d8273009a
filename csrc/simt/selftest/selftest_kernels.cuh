// selftest_kernels.cuh — small kernels that check the SIMT layer itself.
//
// The known-good kernels (warp-shuffle reduction, tiled transpose, cooperative stencil
// with a grid-wide barrier per step, atomics, warp scan/ballot, device math, a barrier
// loop, a thread-block cluster all-gather through distributed shared memory) must give the
// same, correct results under every emulator schedule and on a GPU.
// The known-bad kernels (faulty_*) each contain one classic bug the emulator must catch
// (an error, or results that differ across schedules). The file compiles under nvcc
// (selftest_cuda.cu) and under g++ (selftest_ops.cpp), both in csrc/simt/selftest/.
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
// pattern of the fused RNN forward). Grid-stride loops, so any grid size is correct. The
// values other blocks read go through simt::load_cross_block / store_cross_block, so the
// emulator checks that the barriers order them.
//   state [2, n] float, read and written; state[0] holds the input, the result ends in
//         state[steps % 2]
//   flags [gridDim.x] unsigned, zeros: the barrier is simt::flag_barrier over every block;
//         null: simt::grid_sync
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(256) grid_stencil_kernel(float* state, int n, int steps, unsigned* flags) {
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int s = 0; s < steps; ++s) {
    const float* cur = state + static_cast<int64_t>(s % 2) * n;
    float* next = state + static_cast<int64_t>((s + 1) % 2) * n;
    for (int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride) {
      const float left = i > 0 ? simt::load_cross_block(cur + i - 1) : 0.0f;
      const float right = i + 1 < n ? simt::load_cross_block(cur + i + 1) : 0.0f;
      simt::store_cross_block(next + i, fmaf(0.5f, simt::load_cross_block(cur + i), 0.25f * (left + right)));
    }
    if (flags != nullptr) {
      simt::flag_barrier(flags, 0, gridDim.x, static_cast<unsigned>(s + 1));
    } else {
      simt::grid_sync();
    }
  }
}
SIMT_KERNEL_ATTRIBUTES(256, 32, grid_stencil_kernel);

// A flag relayed along the blocks: block 0 stores its values and publishes flag 0; block k > 0
// acquires flag k - 1, then publishes flag k, storing nothing; the last block then copies
// block 0's values, ordered after their stores only through the chain of releases and acquires
// (each release carries what its block acquired before it). relay_first: block k publishes
// before it acquires, and the chain is broken (a known-bad case of faulty_kernel).
//   x   [gridDim.x * blockDim.x] float, read (block 0 stores x[0 .. blockDim.x / 2))
//   out [gridDim.x * blockDim.x] float, zeros on entry: the flags in its first gridDim.x words;
//       block 0's values, then the last block's copy of them, from out[gridDim.x * blockDim.x / 2]
SIMT_DEVICE void flag_relay_body(const float* x, float* out, bool relay_first) {
  const unsigned t = threadIdx.x, half = blockDim.x / 2;
  unsigned* flags = reinterpret_cast<unsigned*>(out);
  float* values = out + static_cast<int64_t>(gridDim.x) * blockDim.x / 2;
  if (blockIdx.x == 0) {
    if (t < half) simt::store_cross_block(values + t, x[t]);
    __syncthreads();
    if (t == 0) simt::publish_flag(flags, 1u);
    return;
  }
  if (t == 0) {
    if (relay_first) simt::publish_flag(flags + blockIdx.x, 1u);
    simt::wait_flag(flags + blockIdx.x - 1, 1u);
    if (!relay_first) simt::publish_flag(flags + blockIdx.x, 1u);
  }
  if (blockIdx.x + 1 != gridDim.x) return;
  __syncthreads();  // thread 0's acquire before the block's reads
  if (t < half) values[half + t] = simt::load_cross_block(values + t);
}

SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(256) flag_relay_kernel(const float* x, float* out) { flag_relay_body(x, out, false); }
SIMT_KERNEL_ATTRIBUTES(256, 32, flag_relay_kernel);

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

// ---- Thread-block clusters ------------------------------------------------------------

// Elements of the vector a cluster shares when it is kept in static shared memory.
constexpr int kClusterVectorMax = 512;

// One round of the cluster recurrence for element j of h [n]:
//   h'[j] = 0.5 h[j] + 0.25 (h[(j + 1) mod n] + h[n - 1 - j])
// so every element soon depends on every block's slice.
SIMT_DEVICE float cluster_mix(const float* h, int j, int n) {
  return fmaf(0.5f, h[j], 0.25f * (h[(j + 1) % n] + h[n - 1 - j]));
}

// How a round of the all-gather ends after each block wrote its slice into every block's copy:
// cluster_sync; the barrier in halves (cluster_arrive, cluster_wait: the emulator runs other
// threads at the arrival, so a thread reaches its wait with the barrier complete or not); or,
// known-bad, only __syncthreads, or the halves with the round's reads of the copy between them.
enum class RoundEnd : int { ClusterSync, SplitBarrier, BlockBarrierOnly, ReadBeforeWait };

// Writes element j = v into `copy` [n] of every block of the cluster (distributed shared
// memory; each block starts with a different destination).
SIMT_DEVICE void publish_element(float* copy, int j, float v) {
  const unsigned size = simt::cluster_size();
  const unsigned rank = simt::cluster_rank();
  for (unsigned k = 0; k < size; ++k) simt::cluster_map_shared(copy, (rank + k) % size)[j] = v;
}

// The all-gather recurrence of cluster_allgather_kernel over `copies` [2, n] (two copies so
// one barrier per round suffices: round r writes copy r % 2 while reads use the other). The
// known-good kernel ends even rounds with cluster_sync and odd ones with the split barrier.
// Returns the cluster's final h in copies[rounds % 2].
SIMT_DEVICE const float* allgather_rounds(const float* x, float* copies, int rounds, bool known_good,
                                          RoundEnd bad_end = RoundEnd::BlockBarrierOnly) {
  const unsigned size = simt::cluster_size();
  const int n = static_cast<int>(size * blockDim.x);
  const int j = static_cast<int>(simt::cluster_rank() * blockDim.x + threadIdx.x);
  float v = x[static_cast<int64_t>(blockIdx.x / size) * n + j];
  for (int r = 0; r <= rounds; ++r) {
    float* copy = copies + (r % 2) * n;
    publish_element(copy, j, v);
    const RoundEnd end = known_good ? (r % 2 == 0 ? RoundEnd::ClusterSync : RoundEnd::SplitBarrier) : bad_end;
    switch (end) {
      case RoundEnd::ClusterSync: simt::cluster_sync(); break;
      case RoundEnd::SplitBarrier:
        simt::cluster_arrive();
        simt::cluster_wait();
        break;
      case RoundEnd::BlockBarrierOnly: __syncthreads(); break;
      case RoundEnd::ReadBeforeWait: {
        simt::cluster_arrive();
        const float next = r < rounds ? cluster_mix(copy, j, n) : v;
        simt::cluster_wait();
        if (r < rounds) v = next;
        continue;
      }
    }
    if (r < rounds) v = cluster_mix(copy, j, n);
  }
  return copies + (rounds % 2) * n;
}

// How a round of the all-gather by asynchronous stores (allgather_async_rounds) goes: right, or
// known-bad: each round's copy read before the mbarrier wait; one copy for every round, so a
// block's stores of round r + 1 may land while another still reads round r's; 4 bytes more
// expected than the blocks store (the phase never completes); no cluster_sync between the
// mbarriers' init and the other blocks' first stores; no init at all.
enum class AsyncRound : int { Correct, ReadBeforeWait, OneCopy, ExpectTooManyBytes, NoClusterSyncAfterInit, Uninitialised };

// The all-gather recurrence of allgather_rounds with the exchange by asynchronous stores and no
// cluster barrier per round (the pattern of the cluster recurrence path's asynchronous exchange):
// each thread writes its element into its own block's copy and stores it into every other
// block's with simt::store_async, whose bytes that block's mbarrier of the copy counts
// (`arrivals` [2] in shared memory: one arrival per phase, thread 0's, which also says how many
// bytes to expect); it reads the copy after waiting on its own block's mbarrier and a
// __syncthreads (its own block's elements). Copy r % 2 is rewritten in round r + 2 only by a
// thread that has all of round r + 1's elements, each written after the writer's reads of round
// r's copy. Returns the final h in copies[rounds % 2]; a cluster_sync ends it (no block exits
// while another may still store into its memory).
SIMT_DEVICE const float* allgather_async_rounds(const float* x, float* copies, unsigned long long* arrivals, int rounds,
                                                AsyncRound how = AsyncRound::Correct) {
  const unsigned size = simt::cluster_size(), rank = simt::cluster_rank();
  const int n = static_cast<int>(size * blockDim.x);
  const int j = static_cast<int>(rank * blockDim.x + threadIdx.x);
  float v = x[static_cast<int64_t>(blockIdx.x / size) * n + j];
  if (how != AsyncRound::Uninitialised && threadIdx.x == 0) {
    simt::mbarrier_init(&arrivals[0], 1);
    simt::mbarrier_init(&arrivals[1], 1);
  }
  if (how == AsyncRound::NoClusterSyncAfterInit) {
    __syncthreads();
  } else {
    simt::cluster_sync();
  }
  const unsigned bytes = static_cast<unsigned>((size - 1) * blockDim.x * sizeof(float)) +
                         (how == AsyncRound::ExpectTooManyBytes ? 4u : 0u);
  for (int r = 0; r <= rounds; ++r) {
    float* copy = copies + (how == AsyncRound::OneCopy ? 0 : r % 2) * n;
    unsigned long long* bar = &arrivals[r % 2];
    const unsigned parity = static_cast<unsigned>(r / 2) & 1u;
    copy[j] = v;
    if (threadIdx.x == 0) simt::mbarrier_arrive_expect_tx(bar, bytes);
    for (unsigned k = 1; k < size; ++k) simt::store_async(copy + j, (rank + k) % size, v, bar);
    if (how == AsyncRound::ReadBeforeWait && r < rounds) {
      const float next = cluster_mix(copy, j, n);
      simt::mbarrier_wait(bar, parity);
      __syncthreads();
      v = next;
      continue;
    }
    simt::mbarrier_wait(bar, parity);
    __syncthreads();
    if (r < rounds) v = cluster_mix(copy, j, n);
  }
  simt::cluster_sync();
  return copies + (how == AsyncRound::OneCopy ? 0 : rounds % 2) * n;
}

// Thread-block cluster all-gather iterated like a recurrence (the pattern of the cluster
// recurrence path). Cluster c (cluster_size consecutive blocks along x) owns
// h = x[c] [n], n = cluster_size * blockDim.x; block rank r owns elements
// [r * blockDim.x, (r + 1) * blockDim.x). Each round every block writes its slice into every
// block's copy of h, one cluster_sync, then computes its next slice from its own full copy
// (cluster_mix). After `rounds` rounds every block writes its whole copy.
//   x              [gridDim.x / cluster_size, n] float, read
//   out            [gridDim.x, n] float: each block's copy of its cluster's final h, written
//   ranks          [gridDim.x, 2] int32: (cluster_rank, cluster_size) of each block, written
//   static_buffers nonzero: the two copies in static shared memory (n <= kClusterVectorMax);
//                  zero: in the dynamic shared memory ([2, n] float)
//   async_exchange nonzero: the rounds exchange by asynchronous stores and mbarriers
//                  (allgather_async_rounds), not cluster barriers
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024)
    cluster_allgather_kernel(const float* x, float* out, int* ranks, int rounds, int static_buffers, int async_exchange) {
  SIMT_SHARED(float[2 * kClusterVectorMax], static_copies);
  SIMT_SHARED(unsigned long long[2], arrivals);
  SIMT_DYNAMIC_SHARED(float, dynamic_copies);
  float* copies = static_buffers != 0 ? &static_copies[0] : dynamic_copies;
  const float* h = async_exchange != 0 ? allgather_async_rounds(x, copies, &arrivals[0], rounds)
                                       : allgather_rounds(x, copies, rounds, true);
  const int n = static_cast<int>(simt::cluster_size() * blockDim.x);
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    out[static_cast<int64_t>(blockIdx.x) * n + i] = h[i];
  }
  if (threadIdx.x == 0) {
    ranks[2 * blockIdx.x] = static_cast<int>(simt::cluster_rank());
    ranks[2 * blockIdx.x + 1] = static_cast<int>(simt::cluster_size());
  }
}
SIMT_KERNEL_ATTRIBUTES(1024, 32, cluster_allgather_kernel);

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
  MissingGridSync,        // blocks exchange values through global memory behind only __syncthreads
  KernelCheck,            // SIMT_KERNEL_CHECK fails in one thread
  SharedOutOfBounds,      // writes one element past a static shared array
  DynamicSharedOutOfBounds,  // reads one element past the dynamic shared memory
  MismatchedWarpOps,      // half the warp shuffles, the other half votes, same mask
  ShuffleOutsideMask,     // lanes 0-15 shuffle among themselves but read lane 20
  StackOverflow,          // a thread needs more stack than an emulated thread has
  AsyncCopyUnwaited,      // reads shared memory that an asynchronous copy fills, before waiting for it
  AsyncCopyPendingAtExit, // exits without waiting for its asynchronous copies
  AsyncCopyOutsideShared, // an asynchronous copy into global memory
  FlagNeverPublished,     // each block waits for the next block's flag, which nobody publishes
  FlagAcrossPlainLaunch,  // block 0 waits for block 1's flag in a plain launch
  TaggedWordOverwritten,  // waits for tag 1 of a word that already carries tag 2
  // Blocks hand values to the next block through global memory (simt::store_cross_block /
  // load_cross_block), ordered by a flag per block, each missing one piece of the order:
  FlagBeforeBlockBarrier,       // thread 0 publishes the flag before the __syncthreads that orders the block's stores
  FlagWaitWithoutBlockBarrier,  // thread 0 acquires the flag, the other threads read without a __syncthreads after
  CrossBlockOverwrite,          // a block overwrites its values while the block before may still read them
  CrossBlockPlainLaunch,        // the same exchange between the blocks of a plain launch, behind no flag
  FlagRelayBroken,              // flag_relay_body with each block publishing before it acquires
  FlagLaterRelease,             // block 1 waits for flag value 1 and reads a store block 0 made before value 2
  CopyOverwrittenInFlight,      // block 1 overwrites a word that block 0's asynchronous copy, not yet waited for, reads
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
    case Fault::FlagNeverPublished:
    case Fault::FlagAcrossPlainLaunch: {
      // The flags are the first words of out (zeros on entry), one per block.
      unsigned* flags = reinterpret_cast<unsigned*>(out);
      if (fault == static_cast<int>(Fault::FlagAcrossPlainLaunch) && blockIdx.x == 1 && t == 0) {
        simt::publish_flag(flags + 1, 1u);
      }
      if (t == 0 && (fault == static_cast<int>(Fault::FlagNeverPublished) || blockIdx.x == 0)) {
        simt::wait_flag(flags + (blockIdx.x + 1) % gridDim.x, 1u);
      }
      break;
    }
    case Fault::TaggedWordOverwritten: {
      // The tagged word is the first 8 bytes of out (zeros on entry).
      auto* word = reinterpret_cast<unsigned long long*>(out);
      if (blockIdx.x == 0 && t == 0) {
        simt::store_relaxed(word, simt::tag_word(1.5f, 2u));
        out[2] = simt::word_value(simt::wait_word_tag(word, 1u));
      }
      break;
    }
    case Fault::FlagBeforeBlockBarrier:
    case Fault::FlagWaitWithoutBlockBarrier:
    case Fault::CrossBlockOverwrite:
    case Fault::CrossBlockPlainLaunch: {
      // flags: the first gridDim.x words of out (zeros on entry); values [gridDim.x][blockDim.x / 2]:
      // the upper half of out. Threads t < blockDim.x / 2 store x[i], then read the next block's.
      const auto f = static_cast<Fault>(fault);
      unsigned* flags = reinterpret_cast<unsigned*>(out);
      const unsigned half = blockDim.x / 2;
      float* values = out + static_cast<int64_t>(gridDim.x) * half;
      const unsigned next = (blockIdx.x + 1) % gridDim.x;
      if (t < half) simt::store_cross_block(values + blockIdx.x * half + t, x[i]);
      if (f != Fault::CrossBlockPlainLaunch) {
        if (f != Fault::FlagBeforeBlockBarrier) __syncthreads();
        if (t == 0) {
          simt::publish_flag(flags + blockIdx.x, 1u);
          simt::wait_flag(flags + next, 1u);
        }
        if (f != Fault::FlagWaitWithoutBlockBarrier) __syncthreads();
      }
      const float from_next = t < half ? simt::load_cross_block(values + next * half + t) : 0.0f;
      if (f == Fault::CrossBlockOverwrite && t < half) simt::store_cross_block(values + blockIdx.x * half + t, from_next);
      break;
    }
    case Fault::FlagRelayBroken:
      flag_relay_body(x, out, true);
      break;
    case Fault::FlagLaterRelease:
    case Fault::CopyOverwrittenInFlight: {
      // Two blocks, thread 0 of each. flag: the first word of out (zero on entry); words: the
      // 16-byte aligned stretch from out[n / 2].
      unsigned* flag = reinterpret_cast<unsigned*>(out);
      float* words = out + static_cast<int64_t>(gridDim.x) * blockDim.x / 2;
      if (t != 0) break;
      if (static_cast<Fault>(fault) == Fault::FlagLaterRelease) {
        if (blockIdx.x == 0) {
          simt::store_cross_block(words, x[0]);
          simt::publish_flag(flag, 1u);
          simt::store_cross_block(words + 1, x[1]);
          simt::publish_flag(flag, 2u);
        } else {
          simt::wait_flag(flag, 1u);  // may see 2, but need not
          out[1] = simt::load_cross_block(words + 1);
        }
      } else {
        // Block 0 hands the word over and waits for block 1's answer before waiting for its own
        // copy of the word (meant: wait_async first); the answer's flag is out's second word.
        SIMT_DYNAMIC_SHARED(float, dyn);
        unsigned* answer = flag + 1;
        if (blockIdx.x == 0) {
          simt::store_cross_block(words, x[0]);
          simt::copy_async_16(dyn, words);
          simt::commit_async();
          simt::publish_flag(flag, 1u);
          simt::wait_flag(answer, 1u);
          simt::wait_async<0>();
          out[2] = dyn[0];
        } else {
          simt::wait_flag(flag, 1u);
          simt::store_cross_block(words, x[1]);
          simt::publish_flag(answer, 1u);
        }
      }
      break;
    }
    case Fault::GridSyncBlockExits:
      if (blockIdx.x == 1) return;
      simt::grid_sync();
      out[i] = x[i];
      break;
    case Fault::MissingGridSync: {
      // Meant: out[i] = x[i] + x[i + blockDim.x] (cyclically), with a grid_sync where each
      // __syncthreads is: a block that runs ahead reads the next block's out before it is
      // written, or after it was overwritten.
      const int64_t n = static_cast<int64_t>(gridDim.x) * blockDim.x;
      out[i] = x[i];
      __syncthreads();
      const float next_block = out[(i + blockDim.x) % n];
      __syncthreads();
      out[i] += next_block;
      break;
    }
    case Fault::AsyncCopyUnwaited:
    case Fault::AsyncCopyPendingAtExit: {
      // Every 4th thread copies 4 floats of x into the dynamic shared memory, which held -1.
      SIMT_DYNAMIC_SHARED(float, dyn);
      dyn[t] = -1.0f;
      __syncthreads();
      if (t % 4 == 0) simt::copy_async_16(dyn + t, x + i);
      simt::commit_async();
      __syncthreads();  // meant: simt::wait_async<0>() first
      out[i] = dyn[t];
      if (fault == static_cast<int>(Fault::AsyncCopyUnwaited)) simt::wait_async<0>();
      break;
    }
    case Fault::AsyncCopyOutsideShared:
      if (t % 4 == 0) simt::copy_async_16(out + i, x + i);
      simt::commit_async();
      simt::wait_async<0>();
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

// Blocks of a cluster hand values to each other through global memory, behind one
// cluster_sync: block i stores x's slice of its threads into stage[i], then reads the slice of
// the next rank of its cluster (across_clusters: of the same rank in the next cluster, which no
// barrier orders; a known-bad case of faulty_cluster_kernel).
//   x     [gridDim.x * blockDim.x] float, read
//   stage [gridDim.x * blockDim.x] float, written then read
//   got   [gridDim.x * blockDim.x] float, written: the partner's slice
SIMT_DEVICE void cluster_exchange_body(const float* x, float* stage, float* got, bool across_clusters) {
  const unsigned size = simt::cluster_size(), rank = simt::cluster_rank();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  simt::store_cross_block(stage + i, x[i]);
  simt::cluster_sync();
  const unsigned partner =
      across_clusters ? (blockIdx.x + size) % gridDim.x : blockIdx.x - rank + (rank + 1) % size;
  got[i] = simt::load_cross_block(stage + static_cast<int64_t>(partner) * blockDim.x + threadIdx.x);
  simt::cluster_sync();  // no block exits while another may still read its slice
}

SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024) cluster_exchange_kernel(const float* x, float* stage, float* got) {
  cluster_exchange_body(x, stage, got, false);
}
SIMT_KERNEL_ATTRIBUTES(1024, 32, cluster_exchange_kernel);

enum class ClusterFault : int {
  MissingClusterSync = 0,   // the all-gather with __syncthreads where cluster_sync belongs (race)
  DivergentClusterSync,     // even and odd threads wait at two different cluster_sync
  RankOutOfRange,           // maps rank cluster_size()
  MapNonShared,             // maps a global-memory pointer
  ExitWhileMapped,          // rank 0 writes into rank 1's shared memory after the last cluster_sync
  ExitBeforeClusterSync,    // rank 1 returns while the other blocks wait at cluster_sync
  ClusterSyncAgainstBarrier,  // thread 0 waits at cluster_sync, its block at __syncthreads
  RemoteSharedOutOfBounds,  // writes one element past the next block's dynamic shared memory
  StaleRemoteAccess,        // writes through a pointer mapped before the owner exited
  GridSyncInCluster,        // grid_sync in a cluster launch (not cooperative)
  GlobalExchangeAcrossClusters,  // cluster_exchange_body reading the next cluster's stage, which no barrier orders
  ReadBeforeClusterWait,    // the all-gather reading each round's copy between cluster_arrive and cluster_wait (race)
  WaitWithoutArrive,        // cluster_wait with no cluster_arrive before it
  ArriveTwice,              // two cluster_arrive without a cluster_wait between them
  MapBetweenArriveAndWait,  // a distributed shared memory write between cluster_arrive and cluster_wait
  ExitAfterArrive,          // rank 1 returns after cluster_arrive, without its cluster_wait
  AsyncReadBeforeWait,      // the asynchronous all-gather reading each round's copy before its mbarrier wait
  AsyncOneCopy,             // the asynchronous all-gather storing every round into one copy (race)
  AsyncExpectTooManyBytes,  // the asynchronous all-gather expecting 4 bytes more than are stored (deadlock)
  AsyncStoreBeforeInitVisible,  // the asynchronous all-gather without the cluster_sync after the mbarriers' init
  AsyncUninitialisedBarrier,    // the asynchronous all-gather on mbarriers never initialised
  AsyncExitWithStoresPending,   // rank 0 stores into rank 1, which exits without arriving or waiting
};

// Dispatches on the fault. The launch is a cluster launch with dynamic shared memory of
// [2, n] floats, n = cluster_size * blockDim.x.
//   x   [gridDim.x * blockDim.x] float, read
//   out [gridDim.x, n] float, written where the case produces output
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(1024) faulty_cluster_kernel(int fault, const float* x, float* out, int rounds) {
  SIMT_DYNAMIC_SHARED(float, copies);
  SIMT_SHARED(unsigned long long[2], arrivals);
  // The asynchronous all-gather with one bug, its copies zeroed first (stale reads stay finite).
  auto async_rounds = [&](AsyncRound how) {
    for (int i = static_cast<int>(threadIdx.x); i < 2 * static_cast<int>(simt::cluster_size() * blockDim.x);
         i += static_cast<int>(blockDim.x)) {
      copies[i] = 0.0f;
    }
    const float* h = allgather_async_rounds(x, copies, &arrivals[0], rounds, how);
    const int n = static_cast<int>(simt::cluster_size() * blockDim.x);
    for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
      out[static_cast<int64_t>(blockIdx.x) * n + i] = h[i];
    }
  };
  const unsigned t = threadIdx.x;
  const unsigned rank = simt::cluster_rank();
  const unsigned size = simt::cluster_size();
  const int n = static_cast<int>(size * blockDim.x);
  float* my_out = out + static_cast<int64_t>(blockIdx.x) * n;
  const float v = x[blockIdx.x * blockDim.x + t];
  switch (static_cast<ClusterFault>(fault)) {
    case ClusterFault::MissingClusterSync: {
      // Zeroed copies (then a correct cluster_sync) so stale reads give finite values, and a
      // correct cluster_sync before the blocks exit, so only the rounds race.
      for (int i = static_cast<int>(t); i < 2 * n; i += static_cast<int>(blockDim.x)) copies[i] = 0.0f;
      simt::cluster_sync();
      const float* h = allgather_rounds(x, copies, rounds, false);
      simt::cluster_sync();
      for (int i = static_cast<int>(t); i < n; i += static_cast<int>(blockDim.x)) my_out[i] = h[i];
      break;
    }
    case ClusterFault::DivergentClusterSync:
      if (t % 2 == 0) {
        simt::cluster_sync();
      } else {
        simt::cluster_sync();
      }
      my_out[t] = v;
      break;
    case ClusterFault::RankOutOfRange:
      simt::cluster_map_shared(copies, size)[t] = v;
      simt::cluster_sync();
      break;
    case ClusterFault::MapNonShared:
      simt::cluster_map_shared(my_out, 0)[t] = v;
      simt::cluster_sync();
      break;
    case ClusterFault::ExitWhileMapped:
      copies[t] = v;
      simt::cluster_sync();
      // Rank 1 may exit before rank 0's write lands: a cluster_sync belongs after it.
      if (rank == 0) simt::cluster_map_shared(copies, 1)[t] = v;
      break;
    case ClusterFault::ExitBeforeClusterSync:
      if (rank == 1) return;
      simt::cluster_sync();
      my_out[t] = v;
      break;
    case ClusterFault::ClusterSyncAgainstBarrier:
      if (t == 0) {
        simt::cluster_sync();
        __syncthreads();
      } else {
        __syncthreads();
        simt::cluster_sync();
      }
      my_out[t] = v;
      break;
    case ClusterFault::RemoteSharedOutOfBounds:
      if (t == 0) simt::cluster_map_shared(copies, (rank + 1) % size)[2 * n] = v;
      simt::cluster_sync();
      break;
    case ClusterFault::StaleRemoteAccess: {
      float* next = simt::cluster_map_shared(copies, (rank + 1) % size);
      simt::cluster_sync();
      if (rank == 1) return;
      next[t] = v;  // block 1 may have exited
      break;
    }
    case ClusterFault::GridSyncInCluster:
      simt::grid_sync();
      my_out[t] = v;
      break;
    case ClusterFault::ReadBeforeClusterWait: {
      // Zeroed copies and a correct cluster_sync before and after, as for MissingClusterSync.
      for (int i = static_cast<int>(t); i < 2 * n; i += static_cast<int>(blockDim.x)) copies[i] = 0.0f;
      simt::cluster_sync();
      const float* h = allgather_rounds(x, copies, rounds, false, RoundEnd::ReadBeforeWait);
      simt::cluster_sync();
      for (int i = static_cast<int>(t); i < n; i += static_cast<int>(blockDim.x)) my_out[i] = h[i];
      break;
    }
    case ClusterFault::WaitWithoutArrive:
      simt::cluster_wait();
      my_out[t] = v;
      break;
    case ClusterFault::ArriveTwice:
      simt::cluster_arrive();
      simt::cluster_arrive();
      simt::cluster_wait();
      break;
    case ClusterFault::MapBetweenArriveAndWait:
      simt::cluster_arrive();
      simt::cluster_map_shared(copies, (rank + 1) % size)[t] = v;
      simt::cluster_wait();
      break;
    case ClusterFault::ExitAfterArrive:
      simt::cluster_arrive();
      if (rank == 1) return;
      simt::cluster_wait();
      my_out[t] = v;
      break;
    case ClusterFault::AsyncReadBeforeWait: async_rounds(AsyncRound::ReadBeforeWait); break;
    case ClusterFault::AsyncOneCopy: async_rounds(AsyncRound::OneCopy); break;
    case ClusterFault::AsyncExpectTooManyBytes: async_rounds(AsyncRound::ExpectTooManyBytes); break;
    case ClusterFault::AsyncStoreBeforeInitVisible: async_rounds(AsyncRound::NoClusterSyncAfterInit); break;
    case ClusterFault::AsyncUninitialisedBarrier: async_rounds(AsyncRound::Uninitialised); break;
    case ClusterFault::AsyncExitWithStoresPending:
      if (t == 0) simt::mbarrier_init(&arrivals[0], 1);
      simt::cluster_sync();
      if (rank == 0) simt::store_async(copies + t, 1u, v, &arrivals[0]);
      break;
    case ClusterFault::GlobalExchangeAcrossClusters: {
      // stage and got: the first two [gridDim.x * blockDim.x] stretches of out (n >= 2 blockDim.x).
      const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
      cluster_exchange_body(x, out, out + threads, true);
      break;
    }
  }
}
SIMT_KERNEL_ATTRIBUTES(1024, 32, faulty_cluster_kernel);

// A kernel whose launch bounds (128) tests exceed on purpose.
//   out [gridDim.x * blockDim.x] float, written
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(128) bounded_kernel(float* out) {
  out[blockIdx.x * blockDim.x + threadIdx.x] = static_cast<float>(threadIdx.x);
}
SIMT_KERNEL_ATTRIBUTES(128, 32, bounded_kernel);

SIMT_END_WORLD
}  // namespace rnn_fused::simt_selftest
