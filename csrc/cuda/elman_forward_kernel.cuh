// Forward recurrence of one layer and direction: h_t = act(XW_t + W_hh h_{t-1}), where
// XW_t (input projection plus both biases) was computed before by one GEMM.
//
// Two kernels share one step body (forward_step_slice), so they round identically:
//  - forward_recurrence_persistent_kernel: ONE cooperative launch for the whole sequence.
//    Block b owns hidden units [b*units_per_block, min(H, (b+1)*units_per_block)) and
//    keeps those rows of W_hh in dynamic shared memory (units_per_block * H scalars),
//    loaded once. Per processing step: compute the slice, then simt::grid_sync().
//  - forward_step_kernel: the fallback, one launch per step, rows of W_hh read from global
//    memory (when the slices do not fit on chip or cooperative launch is unavailable).
// Thread mapping inside a block: warp w handles the work items w, w + warps, ... of the
// block's slice, an item being one unit and kSamplesPerWarp consecutive samples; its lanes
// split the length-H dot products (one W_hh row against those samples' states) and reduce
// them with shuffles, lane j applies bias + activation for sample j (float32 accumulation for
// float32/float16/bfloat16 inputs, which the host runs in float32; float64 in float64).
//
// Arguments (ForwardRecurrenceArgs, all contiguous, compute dtype scalar_t):
//   w_hh    [H,H]    read: recurrent weight (row u produces unit u)
//   out     [T,B,H]  in: XW_t + b_ih + b_hh at every step; out: h_t at each sample's valid
//                    steps (steps t >= lengths[b] are left as they are; the host zeroes them)
//   state   [2,B,H]  in: state[0] = h_0; ping-pong buffers: processing step s reads
//                    state[s % 2] and writes state[(s + 1) % 2]; after T steps
//                    state[T % 2] = h_n (frozen samples are copied forward)
//   lengths [B]      int64 valid steps per sample, or null (all T)
// Processing step s of sample b is time step_time(s, lengths[b], reverse) (recurrence_math.h);
// a sample with lengths[b] <= s is frozen. Every block runs all T steps, so the number of
// steps never has to be read back to the host.
#pragma once

#include "cuda/kernel_common.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

template <typename scalar_t>
struct ForwardRecurrenceArgs {
  const scalar_t* w_hh;
  scalar_t* out;
  scalar_t* state;
  const int64_t* lengths;
  LayerShape shape;  // input_size unused
  bool reverse;
};

// One processing step s for the units of this block's slice.
// w_rows: the slice's rows of W_hh, row u - slice.begin at w_rows + (u - slice.begin) * H.
template <Activation A, typename scalar_t>
SIMT_DEVICE void forward_step_slice(const ForwardRecurrenceArgs<scalar_t>& a, const scalar_t* w_rows,
                                    UnitSlice slice, int64_t s) {
  const int64_t B = a.shape.batch, H = a.shape.hidden;
  const scalar_t* h_prev = a.state + (s % 2) * B * H;
  scalar_t* h_next = a.state + ((s + 1) % 2) * B * H;
  for_each_slice_dot(w_rows, h_prev, B, H, slice, [&](int64_t u, int64_t b, scalar_t recurrent) {
    const int64_t length = a.lengths != nullptr ? a.lengths[b] : a.shape.steps;
    if (s == 0) {
      SIMT_KERNEL_CHECK(length >= 0 && length <= a.shape.steps, "internal invariant: lengths in [0, T] (checked on the host)");
    }
    if (s >= length) {  // frozen: the state carries over
      h_next[b * H + u] = h_prev[b * H + u];
      return;
    }
    const int64_t t = step_time(s, length, a.reverse);
    scalar_t* o = a.out + (t * B + b) * H + u;
    const scalar_t h = activate<A>(*o + recurrent, DeviceTanh{});
    *o = h;
    h_next[b * H + u] = h;
  });
}

// Persistent kernel: grid = ceil(H / units_per_block) co-resident blocks (cooperative
// launch), kRecurrenceThreads threads, units_per_block * H * sizeof(scalar_t) bytes of
// dynamic shared memory.
template <Activation A, typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    forward_recurrence_persistent_kernel(ForwardRecurrenceArgs<scalar_t> a, int64_t units_per_block) {
  SIMT_DYNAMIC_SHARED(scalar_t, w_slice);
  const UnitSlice slice = block_units(units_per_block, a.shape.hidden);
  load_weight_slice(a.w_hh, w_slice, slice, a.shape.hidden);
  for (int64_t s = 0; s < a.shape.steps; ++s) {
    forward_step_slice<A>(a, w_slice, slice, s);
    simt::grid_sync();  // h_t of every unit is written before any block reads it
  }
}

// Fallback: processing step s only. grid = ceil(H / units_per_block), kRecurrenceThreads
// threads, no shared memory; launched once per step in order on one stream.
template <Activation A, typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    forward_step_kernel(ForwardRecurrenceArgs<scalar_t> a, int64_t units_per_block, int64_t s) {
  const UnitSlice slice = block_units(units_per_block, a.shape.hidden);
  forward_step_slice<A>(a, a.w_hh + slice.begin * a.shape.hidden, slice, s);
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
