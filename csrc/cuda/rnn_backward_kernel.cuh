// Backward recurrence (BPTT) of one layer and direction, processing steps s = T-1 .. 0:
//   carry = W_hh^T dz_{s+1}            (zero at a sample's last valid step)
//   g_s   = dy_t + c * carry (+ dh_n at the sample's last valid step)
//   dz_s  = g_s * act'(h_t)            (from the saved output h_t)
// with t = step_time(s, lengths[b], reverse). The weight, input, bias and h_0 gradients
// follow from dz as whole-sequence GEMMs on the host (layer_gemms.h).
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
#pragma once

#include "cuda/rnn_kernel_common.cuh"

namespace rnn_fused::cuda_kernels {
SIMT_BEGIN_WORLD

template <typename scalar_t>
struct BackwardRecurrenceArgs {
  const scalar_t* w_hh_t;
  const scalar_t* dy;
  const scalar_t* dh_n;
  const scalar_t* out;
  scalar_t* dz;
  scalar_t* dz_step;
  const int64_t* lengths;
  int64_t steps;
  int64_t batch;
  int64_t hidden;
  bool reverse;
};

// One processing step s for the units of this block's slice.
// w_cols: the slice's rows of W_hh^T, row u - slice.begin at w_cols + (u - slice.begin) * H.
template <Activation A, typename scalar_t>
SIMT_DEVICE void backward_step_slice(const BackwardRecurrenceArgs<scalar_t>& a, const scalar_t* w_cols,
                                     UnitSlice slice, int64_t s) {
  const int64_t B = a.batch, H = a.hidden;
  const scalar_t* dz_later = a.dz_step + ((s + 1) % 2) * B * H;  // dz at processing step s+1
  scalar_t* dz_now = a.dz_step + (s % 2) * B * H;
  // Rows of samples that were not active at step s+1 hold stale values: their products
  // are computed (the lanes stay uniform) and discarded below.
  for_each_slice_dot(w_cols, dz_later, B, H, slice, [&](int64_t u, int64_t b, scalar_t carry) {
    const int64_t length = a.lengths != nullptr ? a.lengths[b] : a.steps;
    if (s == a.steps - 1) SIMT_KERNEL_CHECK(length >= 0 && length <= a.steps, "rnn_fused: lengths outside [0, T]");
    if (s >= length) return;
    // Edge scale c of the edge h_t -> h_{t+1} in processing order: 1 for full BPTT.
    // Truncation / randomized truncation set it here (0 or 1/p) from (s + 1, b).
    const scalar_t edge_scale = scalar_t(1);
    const int64_t t = step_time(s, length, a.reverse);
    const int64_t at = (t * B + b) * H + u;
    scalar_t g = a.dy[at];
    if (s + 1 < length) g += edge_scale * carry;
    if (s == length - 1) g += a.dh_n[b * H + u];
    // Fused gradient-norm reduction goes here: g is the gradient arriving at h_t
    // (per step and sample ||g_t||^2 partial sums, and the non-finite flag).
    const scalar_t d = g * activation_slope<A>(a.out[at]);
    a.dz[at] = d;
    dz_now[b * H + u] = d;
  });
}

// Persistent kernel: grid = ceil(H / units_per_block) co-resident blocks (cooperative
// launch), kRecurrenceThreads threads, units_per_block * H * sizeof(scalar_t) bytes of
// dynamic shared memory.
template <Activation A, typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    backward_recurrence_persistent_kernel(BackwardRecurrenceArgs<scalar_t> a, int64_t units_per_block) {
  SIMT_DYNAMIC_SHARED(scalar_t, w_slice);
  const UnitSlice slice = block_units(units_per_block, a.hidden);
  load_weight_slice(a.w_hh_t, w_slice, slice, a.hidden);
  for (int64_t s = a.steps - 1; s >= 0; --s) {
    backward_step_slice<A>(a, w_slice, slice, s);
    simt::grid_sync();  // dz at step s of every unit is written before step s-1 reads it
  }
}

// Fallback: processing step s only. grid = ceil(H / units_per_block), kRecurrenceThreads
// threads, no shared memory; launched once per step (s = T-1 .. 0) on one stream.
template <Activation A, typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    backward_step_kernel(BackwardRecurrenceArgs<scalar_t> a, int64_t units_per_block, int64_t s) {
  const UnitSlice slice = block_units(units_per_block, a.hidden);
  backward_step_slice<A>(a, a.w_hh_t + slice.begin * a.hidden, slice, s);
}

SIMT_END_WORLD
}  // namespace rnn_fused::cuda_kernels
