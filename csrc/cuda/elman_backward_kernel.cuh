// Backward recurrence (BPTT) of one layer and direction, processing steps s = T-1 .. 0:
//   carry = W_hh^T dz_{s+1}            (zero at a sample's last valid step)
//   g_s   = dy_t + c_{s+1} * carry (+ dh_n at the sample's last valid step)
//   dz_s  = g_s * act'(h_t)            (from the saved output h_t)
// with t = step_time(s, lengths[b], reverse) and c the edge scale of truncation
// (recurrence_math.h edge_scale: 1, 0 for a cut edge, or 1/p for a kept randomized one, drawn
// here from the counter-based generator). The weight, input, bias and h_0 gradients
// follow from dz as whole-sequence GEMMs on the host (layer_gemms.h).
// When norms are recorded, each block also reduces sum_u g^2 over its own units, per
// sample, into its partial of the step; at the next step (after the grid barrier) the
// grid adds the blocks' partials of the previous step, one warp per sample, into step_sq.
// Fixed orders and a fixed butterfly, no atomics: bitwise-reproducible, like the gradients.
//
// Two kernels share one step body (backward_step_slice), so they round identically:
//  - backward_recurrence_persistent_kernel: ONE cooperative launch for the whole sequence.
//    Block b owns units [b*units_per_block, min(H, (b+1)*units_per_block)) and keeps those
//    columns of W_hh (rows of W_hh^T) in dynamic shared memory, loaded once; one
//    simt::grid_sync() per step.
//  - backward_step_kernel: the fallback, one launch per step, W_hh^T rows from global memory.
// Thread mapping as in the forward: warp w handles work items w, w + warps, ... of the
// block's slice (one unit x kSamplesPerWarp samples); its lanes split the dot products.
//
// Arguments (BackwardRecurrenceArgs, all contiguous, compute dtype scalar_t):
//   w_hh_t  [H,H]    read: W_hh transposed (row u = column u of W_hh)
//   dy      [T,B,H]  read: gradient of the output
//   dh_n    [B,H]    read: gradient of h_n
//   out     [T,B,H]  read: saved h_t
//   dz      [T,B,H]  zero on entry; written at each sample's valid steps
//   dz_step [2,B,H]  zero on entry; step s writes dz at processing step s to dz_step[s % 2]
//                    and reads step s+1's from dz_step[(s + 1) % 2]; at exit dz_step[0]
//                    holds dz at each sample's processing step 0 (zero if lengths[b] = 0)
//   lengths [B]      int64 valid steps per sample, or null (all T)
//   truncation       the edge scales' parameters (TruncationParams)
//   g_sq    [B,H]    float64 scratch: g^2 of the current step, or null (norms not recorded)
//   norm_partials [2,G,B] float64 scratch (G = gridDim.x): at step s block k writes the
//                    sum over its units of g^2 of sample b to [s % 2, k, b]; or null
//   step_sq [T,B]    float64, zero on entry: ||g_t||^2 at each sample's valid steps; or null
//   edge_scratch [G,B] scratch for randomized truncation: block k draws the step's edge
//                    scales into row k; null when keep_prob = 1 (no draws: K or full BPTT)
#pragma once

#include "cuda/kernel_common.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

// Launch bounds of the backward kernels: 256 threads, at least 3 blocks per SM, i.e. up to
// 85 registers a thread (they use 78-80). Left to its own heuristic, ptxas (sm_90, float32)
// held the step body with truncation and norm reduction to 64 registers and spilled.
constexpr int kBackwardMinBlocksPerSm = 3;

template <typename scalar_t>
struct BackwardRecurrenceArgs {
  const scalar_t* w_hh_t;
  const scalar_t* dy;
  const scalar_t* dh_n;
  const scalar_t* out;
  scalar_t* dz;
  scalar_t* dz_step;
  const int64_t* lengths;
  LayerShape shape;  // input_size unused
  bool reverse;
  TruncationParams truncation;
  double* g_sq;
  double* norm_partials;
  double* step_sq;
  scalar_t* edge_scratch;
};

// step_sq at processing step r of every sample = the sum of the blocks' partials of step r,
// which every block wrote before the last grid-wide barrier. One warp per sample across the
// grid: lanes take blocks k = lane, lane + 32, ... in order, then a fixed butterfly.
template <typename scalar_t>
SIMT_DEVICE void add_up_norm_partials(const BackwardRecurrenceArgs<scalar_t>& a, int64_t r) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warps = static_cast<int64_t>(blockDim.x) / kWarp;
  const int64_t grid_warps = static_cast<int64_t>(gridDim.x) * warps;
  const int64_t blocks = gridDim.x;
  const double* partials = a.norm_partials + (r % 2) * blocks * a.shape.batch;
  for (int64_t b = blockIdx.x * warps + threadIdx.x / kWarp; b < a.shape.batch; b += grid_warps) {
    const int64_t length = a.lengths != nullptr ? a.lengths[b] : a.shape.steps;
    if (r >= length) continue;  // uniform over the warp
    double sum = 0.0;
    for (int64_t k = lane; k < blocks; k += kWarp) sum += partials[k * a.shape.batch + b];
    sum = warp_sum(sum);
    if (lane == 0) a.step_sq[step_time(r, length, a.reverse) * a.shape.batch + b] = sum;
  }
}

// One processing step s for the units of this block's slice.
// w_cols: the slice's rows of W_hh^T, row u - slice.begin at w_cols + (u - slice.begin) * H.
template <Activation A, typename scalar_t>
SIMT_DEVICE void backward_step_slice(const BackwardRecurrenceArgs<scalar_t>& a, const scalar_t* w_cols,
                                     UnitSlice slice, int64_t s) {
  const int64_t B = a.shape.batch, H = a.shape.hidden;
  // Step s+1's partials are complete (grid barrier or kernel boundary since); slot
  // (s + 1) % 2 is written again only at step s-1, after the next barrier.
  if (a.norm_partials != nullptr && s + 1 < a.shape.steps) add_up_norm_partials(a, s + 1);
  // Randomized truncation: the block draws the scales of the edges into step s+1 once per
  // sample (a Philox evaluation each), not once per (unit, sample) in the epilogue.
  if (a.edge_scratch != nullptr) {  // uniform over the grid, so the barrier is too
    for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
      a.edge_scratch[blockIdx.x * B + b] = static_cast<scalar_t>(edge_scale(a.truncation, s + 1, b));
    }
    __syncthreads();  // the previous step's readers passed a grid barrier or kernel boundary
  }
  const scalar_t* dz_later = a.dz_step + ((s + 1) % 2) * B * H;  // dz at processing step s+1
  scalar_t* dz_now = a.dz_step + (s % 2) * B * H;
  // Rows of samples that were not active at step s+1 hold stale values: their products
  // are computed (the lanes stay uniform) and discarded below.
  for_each_slice_dot(w_cols, dz_later, B, H, slice, [&](int64_t u, int64_t b, scalar_t carry) {
    const int64_t length = a.lengths != nullptr ? a.lengths[b] : a.shape.steps;
    if (s == a.shape.steps - 1) {
      SIMT_KERNEL_CHECK(length >= 0 && length <= a.shape.steps, "internal invariant: lengths in [0, T] (checked on the host)");
    }
    if (s >= length) return;
    const int64_t t = step_time(s, length, a.reverse);
    const int64_t at = (t * B + b) * H + u;
    scalar_t g = a.dy[at];
    if (s + 1 < length) {
      // The carry crosses the edge h_t -> step s+1. A cut edge adds nothing (not 0 * carry,
      // which would let an inf/NaN carry through, unlike a detached state).
      const scalar_t c = a.edge_scratch != nullptr ? a.edge_scratch[blockIdx.x * B + b]
                                                   : static_cast<scalar_t>(edge_scale(a.truncation, s + 1, b));
      if (c != scalar_t(0)) g += c * carry;
    }
    if (s == length - 1) g += a.dh_n[b * H + u];
    if (a.g_sq != nullptr) a.g_sq[b * H + u] = static_cast<double>(g) * static_cast<double>(g);
    const scalar_t d = g * activation_slope<A>(a.out[at]);
    a.dz[at] = d;
    dz_now[b * H + u] = d;
  });
  if (a.norm_partials != nullptr) {  // uniform over the grid, so the barrier is too
    __syncthreads();                 // g_sq of every unit of the slice is written
    double* partials = a.norm_partials + (s % 2) * gridDim.x * B;
    for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
      const int64_t length = a.lengths != nullptr ? a.lengths[b] : a.shape.steps;
      if (s >= length) continue;
      double sum = 0.0;
      for (int64_t u = slice.begin; u < slice.end; ++u) sum += a.g_sq[b * H + u];
      partials[blockIdx.x * B + b] = sum;
    }
  }
}

// Persistent kernel: grid = ceil(H / units_per_block) co-resident blocks (cooperative
// launch), kRecurrenceThreads threads, units_per_block * H * sizeof(scalar_t) bytes of
// dynamic shared memory.
template <Activation A, typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kBackwardMinBlocksPerSm)
    backward_recurrence_persistent_kernel(BackwardRecurrenceArgs<scalar_t> a, int64_t units_per_block) {
  SIMT_DYNAMIC_SHARED(scalar_t, w_slice);
  const UnitSlice slice = block_units(units_per_block, a.shape.hidden);
  load_weight_slice(a.w_hh_t, w_slice, slice, a.shape.hidden);
  for (int64_t s = a.shape.steps - 1; s >= 0; --s) {
    backward_step_slice<A>(a, w_slice, slice, s);
    simt::grid_sync();  // dz at step s of every unit is written before step s-1 reads it
  }
  if (a.norm_partials != nullptr) add_up_norm_partials(a, 0);  // step 0's, after the last barrier
}

// Fallback: processing step s only. grid = ceil(H / units_per_block), kRecurrenceThreads
// threads, no shared memory; launched once per step (s = T-1 .. 0) on one stream.
template <Activation A, typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kBackwardMinBlocksPerSm)
    backward_step_kernel(BackwardRecurrenceArgs<scalar_t> a, int64_t units_per_block, int64_t s) {
  const UnitSlice slice = block_units(units_per_block, a.shape.hidden);
  backward_step_slice<A>(a, a.w_hh_t + slice.begin * a.shape.hidden, slice, s);
}

// Fallback, norms recorded: after the launch of step 0, adds up step 0's partials. Same
// grid and block as backward_step_kernel.
template <typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads) backward_norms_tail_kernel(BackwardRecurrenceArgs<scalar_t> a) {
  add_up_norm_partials(a, 0);
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
