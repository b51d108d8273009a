// Forward recurrence of one Elman layer and direction: h_t = act(XW_t + W_hh h_{t-1}), where
// XW_t (input projection plus both biases) was computed before by one GEMM.
//
// forward_recurrence_kernel<scalar_t, kSamples, kPath, kPasses> runs the whole sequence in one
// launch on the Block, Cluster or Grid path (recurrence_paths.cuh; kPasses: the passes it is
// compiled for, compiled_passes, or 0): a CTA owns hidden units [unit_begin, unit_end) of one
// sample group, keeps those rows of W_hh in shared memory for the whole sequence (each lane's
// share also in registers where it fits: H <= 128 in float32) and the group's state rows
// (double-buffered) beside them. Per
// processing step, a batch of passes at a time: the unit dot products against the current
// state (kernel_common.cuh), the reduce-scatter of the lane's tile, the epilogue of each
// output on the lane that holds its total (add XW_t read ahead: RecurrenceCta::kOperandL1Steps;
// activation, length mask), the new state published to every CTA of the group; then one
// barrier. forward_step_epilogue_kernel is the Stepwise path's per-step epilogue after a
// cuBLAS product, with the same arithmetic.
//
// Arguments (ForwardRecurrenceArgs, all contiguous, compute dtype scalar_t):
//   w_hh     [H,H]    read: recurrent weight (row u produces unit u)
//   out      [T,B,H]  in: XW_t + b_ih + b_hh at every step; out: h_t at each sample's valid
//                     steps (steps t >= lengths[b] are left as they are; the host zeroes them)
//   h0       [B,H]    read: initial state; null for zeros
//   h_n      [B,H]    written: state after each sample's last valid step (h0 if it has none)
//   exchange [2,B,H]  Grid and Stepwise paths: the state at each step (by parity); null on
//                     the other paths. Stepwise: h0 (or zeros) in exchange[0] on entry; Grid:
//                     uninitialised (step 0 stages h0, or zeros, directly)
//   lengths  [B]      int64 valid steps per sample, or null (all T)
//   phase_cycles [CTAs,3] int64 written: step-phase timing (PhaseClock), or null (untimed)
//   step_flags [CTAs] unsigned: Grid path with StepSync::FlagBarrier: the step barrier's flags
//                     (StepBarrier; uninitialised, zeroed by the kernel); else null
//   tagged_exchange [2,B,H] words: Grid path with StepSync::TaggedExchange (float32): h_s with
//                     tag s + 1 in slot (s + 1) % 2 (uninitialised, zeroed by the kernel; exchange
//                     is then null); else null
// Processing step s of sample b is time step_time(s, lengths[b], reverse) (recurrence_math.h);
// a sample with lengths[b] <= s is frozen: its state carries over, nothing is written to out.
#pragma once

#include "cuda/recurrence_paths.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

template <typename scalar_t>
struct ForwardRecurrenceArgs {
  const scalar_t* w_hh;
  scalar_t* out;
  const scalar_t* h0;
  scalar_t* h_n;
  scalar_t* exchange;
  const int64_t* lengths;
  LayerShape shape;  // input_size unused
  bool reverse;
  Activation activation;
  int64_t* phase_cycles = nullptr;
  unsigned* step_flags = nullptr;
  unsigned long long* tagged_exchange = nullptr;
};

// Grid = tiling.groups * tiling.ctas_per_group CTAs of kRecurrenceThreads threads (cooperative
// on the Grid path), SharedLayout<scalar_t>::make(H, tiling, kPath, false).bytes of dynamic
// shared memory. kSamples == tiling.samples; tiling.chunks == 1 except on the Grid path;
// kPasses == compiled_passes(...) of the launch shape (recurrence_paths.cuh; 0: read at run time).
template <typename scalar_t, int kSamples, RecurrencePath kPath, int kPasses>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    forward_recurrence_kernel(ForwardRecurrenceArgs<scalar_t> a, RecurrenceTiling tiling) {
  using Cta = RecurrenceCta<scalar_t, kSamples, kPath, kPasses>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  SIMT_DYNAMIC_SHARED(scalar_t, smem);
  const SharedLayout<scalar_t> layout = SharedLayout<scalar_t>::make(H, tiling, kPath, false);
  Cta cta(smem, layout, tiling, a.shape);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  const int64_t R = cta.row;
  cta.load_weights(a.w_hh);
  // Every buffer starts as h0 so that its padding past H is zero (the Grid path's chunk buffers
  // are restaged from exchange every step, the padding never). No h0: all zeros.
  for (int buffer = 0; buffer < state_buffers(kPath, tiling.chunks); ++buffer) {
    load_padded_rows(a.h0, cta.states + buffer * kSamples * R, cta.place.sample_begin, kSamples,
                     a.h0 != nullptr ? B : 0, H, R);
  }
  __syncthreads();
  cta.cache_weights();
  StepBarrier<kPath> barrier(tiling, cta.place, a.step_flags, a.tagged_exchange, 2 * B * H, false);
  barrier.start();

  // The steps, timed by `clock` (a PhaseClock).
  auto run = [&](auto clock) {
    clock.start();
    // The lane's XW_t operands, read ahead (Cta::kOperandL1Steps): with one chunk a lane owns the
    // same outputs every step (LaneOutputs), so step s + kOperandL1Steps's go into L1 and step
    // s + 1's into xw during step s; with several chunks, each chunk's go into xw as its dot
    // products start.
    const bool one_chunk = cta.chunk_count() == 1;
    scalar_t xw[Cta::kBatches][kOwned] = {};
    // With one chunk on the cluster and grid paths, h_t waits here for the step's barrier
    // (Cta::kStoresAfterBarrier).
    const bool stores_after_barrier = Cta::kStoresAfterBarrier && one_chunk;
    scalar_t h_out[Cta::kBatches][kOwned] = {};
    const SampleRows<kOwned> lane_rows(a.lengths, cta.place.sample_begin + cta.first_sample, a.shape, a.reverse);
    LaneOutputs<Cta::kBatches, kOwned> lane(cta, lane_rows, 0);
    auto load_operands = [&](int64_t s, int64_t ahead) {  // step s + ahead's (the lane at step s), one chunk
      lane.for_each_valid(cta, s, ahead, [&](int batch, int k, int64_t at) { xw[batch][k] = a.out[at]; });
    };
    auto prefetch_operands = [&](int64_t s, int64_t ahead) {  // step s + ahead's into L1 (the lane at step s), one chunk
      if constexpr (Cta::kOperandsAheadInL1) {
        lane.for_each_valid(cta, s, ahead, [&](int, int, int64_t at) { simt::prefetch_l1(a.out + at); });
      }
    };
    if (one_chunk) {
      for (int64_t ahead = 1; ahead < Cta::kOperandL1Steps; ++ahead) prefetch_operands(0, ahead);
      load_operands(0, 0);
    }

    for (int64_t s = 0; s < T; ++s) {
      scalar_t* exchange_next = a.exchange != nullptr ? a.exchange + ((s + 1) % 2) * B * H : nullptr;
      unsigned long long* tagged_next =
          a.tagged_exchange != nullptr ? a.tagged_exchange + ((s + 1) % 2) * B * H : nullptr;
      auto step_chunk = [&](int64_t first, const scalar_t* current, scalar_t* next) {
        const SampleRows<kOwned> rows =
            one_chunk ? lane_rows : SampleRows<kOwned>(a.lengths, first + cta.first_sample, a.shape, a.reverse);
        const int64_t shift = one_chunk ? 0 : rows.shift(s);
        if (!one_chunk) {
          cta.for_each_owned_output(first, [&](int batch, int k, int64_t, int64_t u) {
            if (s < rows.length[k]) xw[batch][k] = a.out[rows.origin[k] + u + shift];
          });
        }
        cta.for_each_output(current, clock, [&](int batch, int k, int64_t u, scalar_t recurrent) {
          const int64_t j = cta.first_sample + k, b = first + j;
          if (b >= B) return;
          scalar_t h;
          if (s < rows.length[k]) {
            const int64_t at = one_chunk ? lane.at[batch][k] : rows.origin[k] + u + shift;
            h = activate_runtime(a.activation, xw[batch][k] + recurrent);
            if (stores_after_barrier) {
              h_out[batch][k] = h;
            } else {
              a.out[at] = h;
            }
          } else {
            h = current[j * R + u];  // frozen: the state carries over
          }
          publish_state<kPath>(next, exchange_next, tagged_next, static_cast<unsigned>(s + 1), j, b, u, R, H,
                               tiling.ctas_per_group, h);
          if (s == T - 1) a.h_n[b * H + u] = h;
        });
      };
      // The Grid path stages step 0's rows from h0 itself (null: zeros), the others' from exchange
      // (or from the tagged words of tag s).
      const scalar_t* exchange_current =
          s == 0 ? a.h0 : (a.exchange != nullptr ? a.exchange + (s % 2) * B * H : nullptr);
      const unsigned long long* tagged_current =
          s == 0 || a.tagged_exchange == nullptr ? nullptr : a.tagged_exchange + (s % 2) * B * H;
      cta.for_each_chunk(Cta::kStateInShared ? nullptr : exchange_current, tagged_current, static_cast<unsigned>(s),
                         s % 2, step_chunk, [](int64_t) {}, clock);
      if (one_chunk) {
        prefetch_operands(s, Cta::kOperandL1Steps);  // (none past a sample's length, so none past T)
        load_operands(s, 1);
        lane.move(1);
      }
      clock.lap(kComputePhase);
      barrier.wait();
      clock.lap(kBarrierPhase);
      if (stores_after_barrier) {  // step s's h_t (the lane is at step s + 1)
        lane.for_each_valid(cta, s + 1, -1, [&](int batch, int k, int64_t at) { a.out[at] = h_out[batch][k]; });
      }
    }
    clock.store();
  };
  // The kernels compiled for their passes step without the clock's code where the launch is
  // untimed (PhaseClock<false>); the others test the argument.
  if constexpr (kPasses > 0) {
    if (a.phase_cycles == nullptr) {
      run(PhaseClock<false>(nullptr, nullptr));
      return;
    }
  }
  run(PhaseClock<true>(a.phase_cycles, layout.phase_running(smem)));
}

// Stepwise path, processing step s: h = act(XW_t + recurrent) at valid steps, the state
// carried over for frozen samples. One thread per (b, u) of the [B,H] step; any grid.
//   recurrent [B,H] read: h_{s-1} W_hh^T from the cuBLAS product; h_prev [B,H] read;
//   h_next [B,H] written; out and h_n as in ForwardRecurrenceArgs.
template <typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    forward_step_epilogue_kernel(ForwardRecurrenceArgs<scalar_t> a, const scalar_t* recurrent,
                                 const scalar_t* h_prev, scalar_t* h_next, int64_t s) {
  const int64_t B = a.shape.batch, H = a.shape.hidden, T = a.shape.steps;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < B * H; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / H, u = i % H;
    const int64_t length = sample_length(a.lengths, b, B, T);
    scalar_t h;
    if (s < length) {
      const int64_t at = time_major_offset(step_time(s, length, a.reverse), b, u, B, H);
      h = activate_runtime(a.activation, a.out[at] + recurrent[i]);
      a.out[at] = h;
    } else {
      h = h_prev[i];
    }
    h_next[i] = h;
    if (s == T - 1) a.h_n[i] = h;
  }
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
