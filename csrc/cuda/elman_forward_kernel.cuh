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
//   out      [T,B,H]  in: XW_t + b_ih + b_hh at every step (where x is null); out: h_t at each
//                     sample's valid steps, zero at steps t >= lengths[b] (every entry written)
//   x        [T,B,I]  read: the layer's input, where the kernel projects it itself (Block path,
//                     project_input: out's contents on entry unused); else null
//   w_ih     [H,I]    read with x: the input weight (else null)
//   b_ih, b_hh [H]    read with x: the biases, or null (no biases)
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
// a sample with lengths[b] <= s is frozen: its state carries over. Before the time loop each CTA
// writes zero at its outputs past each sample's end (zero_past_lengths): every entry of out is
// written.
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
  LayerShape shape;  // input_size: x's columns (used only with x)
  bool reverse;
  Activation activation;
  int64_t* phase_cycles = nullptr;
  unsigned* step_flags = nullptr;
  unsigned long long* tagged_exchange = nullptr;
  const scalar_t* x = nullptr;
  const scalar_t* w_ih = nullptr;
  const scalar_t* b_ih = nullptr;
  const scalar_t* b_hh = nullptr;
};

// The input projection of the CTA's outputs, out[t, b, u] = sum_i w_ih[u, i] x[t, b, i] +
// (b_ih[u] + b_hh[u]), at every step, for its samples [sample_begin, sample_begin + samples)
// and units [unit_begin, unit_end): what the host's bias sum and GEMM would have written there,
// for a CTA that reads no other CTA's outputs (the Block path). The launch asks for it only
// where that is at most about 150,000 multiply-adds (host_layer.h projects_input_in_kernel), so
// each thread takes one output of a step at a time, its row of w_ih and of x read through L1,
// with 32-bit indices within a step: the time loop's registers, not this loop's, set the
// kernel's count. The caller's __syncthreads before the steps makes the outputs visible to
// the whole CTA.
template <typename scalar_t>
SIMT_DEVICE void project_input(const ForwardRecurrenceArgs<scalar_t>& a, const CtaPlace& place, int samples) {
  const int64_t B = a.shape.batch, H = a.shape.hidden, I = a.shape.input_size;
  const unsigned units = static_cast<unsigned>(place.unit_end - place.unit_begin);
  const unsigned per_step = static_cast<unsigned>(samples) * units;
  for (int64_t t = 0; t < a.shape.steps; ++t) {
    for (unsigned k = threadIdx.x; k < per_step; k += blockDim.x) {
      const int64_t b = place.sample_begin + k / units, u = place.unit_begin + k % units;
      if (b >= B) continue;
      const scalar_t* x = a.x + time_major_offset(t, b, 0, B, I);
      const scalar_t* w = a.w_ih + u * I;
      scalar_t sum = 0;
      SIMT_NO_UNROLL  // (unrolled, its loads in flight raised the small kernels' registers by a half)
      for (int i = 0; i < static_cast<int>(I); ++i) sum += w[i] * x[i];
      if (a.b_ih != nullptr) sum += a.b_ih[u] + a.b_hh[u];
      a.out[time_major_offset(t, b, u, B, H)] = sum;
    }
  }
}

// Grid = tiling.groups * tiling.ctas_per_group CTAs of kRecurrenceThreads threads (cooperative
// on the Grid path), SharedLayout<scalar_t>::make(H, tiling, kPath, false, 0, kPasses, kIterations).bytes of dynamic
// shared memory. kSamples == tiling.samples; tiling.chunks == 1 except on the Grid path;
// kPasses == compiled_passes(...) of the launch shape (recurrence_paths.cuh; 0: read at run time),
// kIterations == compiled_iterations(...).
template <typename scalar_t, int kSamples, RecurrencePath kPath, int kPasses, int kIterations = kPasses>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    forward_recurrence_kernel(ForwardRecurrenceArgs<scalar_t> a, RecurrenceTiling tiling) {
  using Cta = RecurrenceCta<scalar_t, kSamples, kPath, kPasses, kIterations>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  SIMT_DYNAMIC_SHARED(scalar_t, smem);
  const SharedLayout<scalar_t> layout = SharedLayout<scalar_t>::make(H, tiling, kPath, false, 0, kPasses, kIterations);
  Cta cta(smem, layout, tiling, a.shape, a.shape.hidden, blockIdx.x);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  const int64_t R = cta.row;
  if constexpr (kPath == RecurrencePath::Block) {
    if (a.x != nullptr) project_input(a, cta.place, kSamples);
  }
  cta.load_weights(a.w_hh);
  // Every buffer starts as h0 so that its padding past H is zero (the Grid path's chunk buffers
  // are restaged from exchange every step, the padding never). No h0: all zeros.
  for (int buffer = 0; buffer < state_buffers(kPath, tiling.chunks); ++buffer) {
    load_padded_rows(a.h0, cta.states + buffer * kSamples * R, cta.place.sample_begin, kSamples,
                     a.h0 != nullptr ? B : 0, H, R);
  }
  __syncthreads();  // (and the input projection's writes are complete: the zeros overwrite some)
  zero_past_lengths(a.out, a.lengths, a.shape, cta.place.sample_begin,
                    cta.place.sample_begin + int64_t(kSamples) * tiling.chunks, cta.place.unit_begin, cta.place.unit_end);
  cta.cache_weights();
  StepBarrier<kPath> barrier(tiling, cta.place, a.step_flags, a.tagged_exchange, 2 * B * H, false,
                             layout.exchange_arrivals(smem), cta.exchange_bytes_in(layout));
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
    // Or through shared memory (the Block path's OperandRing, where the tiling asks for it).
    using Ring = OperandRing<scalar_t, Cta::kBatches, kOwned>;
    std::conditional_t<Cta::kOperandRing, Ring, NoOperandRing> ring(cta, smem + layout.operand_ring, tiling);
    const bool in_ring = Cta::kOperandRing && tiling.operand_ring != 0 && one_chunk;
    [[maybe_unused]] const scalar_t* const ring_sources[1] = {a.out};  // (Block path only)
    auto read_ring = [&](int64_t s, int64_t ahead) {  // step s + ahead's from its slot (the lane at step s)
      if constexpr (Cta::kOperandRing) {
        ring.wait_oldest();
        lane.for_each_valid(cta, s, ahead, [&](int batch, int k, int64_t) { xw[batch][k] = *ring.at(s + ahead, 0, batch, k); });
      }
    };
    if (in_ring) {
      if constexpr (Cta::kOperandRing) {
        for (int64_t ahead = 0; ahead < kOperandRingSteps; ++ahead) ring.issue(cta, lane, 0, ahead, ring_sources);
      }
      read_ring(0, 0);
    } else if (one_chunk) {
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
          publish_state<kPath>(next, exchange_next, tagged_next, static_cast<unsigned>(s + 1), j, b, u, R, H, h);
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
                         s % 2, step_chunk, [](int64_t) {}, clock, barrier.step_arrivals());
      clock.lap(kComputePhase);
      barrier.arrive();
      if (in_ring) {  // (step s's slot, read during step s - 1, takes step s + kOperandRingSteps's)
        if constexpr (Cta::kOperandRing) ring.issue(cta, lane, s, kOperandRingSteps, ring_sources);
        read_ring(s, 1);
        lane.move(1);
      } else if (one_chunk) {  // (after the arrival: StepBarrier::arrive)
        prefetch_operands(s, Cta::kOperandL1Steps);  // (none past a sample's length, so none past T)
        load_operands(s, 1);
        lane.move(1);
      }
      barrier.wait();
      clock.lap(kBarrierPhase);
      if (stores_after_barrier) {  // step s's h_t (the lane is at step s + 1)
        lane.for_each_valid(cta, s + 1, -1, [&](int batch, int k, int64_t at) { a.out[at] = h_out[batch][k]; });
      }
    }
    if constexpr (Cta::kOperandRing) {
      if (in_ring) ring.finish();  // (the copies of the steps past T: empty groups)
    }
    clock.store();
    barrier.finish();
  };
  run_with_phase_clock<kPasses>(a.phase_cycles, layout.phase_running(smem), run);
}

// The forward of a stack of L unidirectional layers of hidden size H in one launch, layer l
// running a few steps behind layer l - 1 (a wavefront), float32 on the Block path: one CTA per
// (layer, sample group) holds 2H weight rows, layer l's W_hh (the recurrence) and layer l + 1's
// W_ih, interleaved by halves of each pass (stack_row: a warp runs one kind of epilogue), so
// that the dot products of step s against the state h_{s-1} give both z_s's recurrent part and
// the next layer's input projection of h_{s-1}:
// the step's one pass over the state rows serves both, and the layers' steps overlap instead of
// following each other (one launch for the stack, no input GEMM between layers). Layer 0's
// input projection comes from one GEMM before the launch, as on the other paths; layer
// l + 1's reaches it in tagged words (simt::tag_word, tag kStackTag), each stored once by layer
// l's CTA and waited for by the lane that adds it: no barrier between layers and no fence. A
// layer's step s + 1 needs its own step s and the previous layer's step s + 2. The launch is
// cooperative (every CTA co-resident, so a wait ends). Step T computes the projections of
// h_{T-1} only. With dropout between layers the recurrence lanes also keep the state times
// the layer's mask in a second pair of buffers, which the projection warps read instead (the
// warps of a pass's second half: stack_row): the next layer's input is the masked output, as
// when the layers run one by one.
//
// Arguments (ForwardStackArgs, all contiguous float32 but the lengths and the words):
//   w_stacked [L,2H,H] read: per layer its W_hh, then the next layer's W_ih (the top layer's
//                     second half: rows whose dot products are dropped)
//   bias_next [L,H]    read: the next layer's b_ih + b_hh (row L-1 unused); null: no biases
//   out       [L,T,B,H] out[0] in: layer 0's XW_t + b_ih + b_hh; out[l]: h_t of layer l at each
//                     sample's valid steps, zero at steps t >= lengths[b] (every entry written)
//   xw_tagged [L-1,T,B,H] words: slot l - 1 holds layer l's XW_t + b_ih + b_hh in tagged words,
//                     stored by layer l - 1's CTAs at valid steps; zero on entry
//   h0        [L,B,H] read: the initial states; null for zeros
//   h_n       [L,B,H] written: each layer's state after each sample's last valid step
//   lengths   [B]      int64 valid steps per sample, or null (all T)
//   dropout_masks [L-1,T,B,H] read: the scale of each element of layer l's output in the next
//                     layer's input (0 or 1 / (1 - p)), or null: no dropout between layers
struct ForwardStackArgs {
  const float* w_stacked;
  const float* bias_next;
  float* out;
  unsigned long long* xw_tagged;
  const float* h0;
  float* h_n;
  const int64_t* lengths;
  LayerShape shape;  // one layer's (input_size unused)
  int64_t layers;
  Activation activation;
  const float* dropout_masks = nullptr;
};

// Grid = layers * tiling.groups CTAs of kRecurrenceThreads threads, cooperative; block index
// = layer * groups + group. tiling: the Block path's (ctas_per_group 1, chunks 1) with units_per_cta
// = stack_rows(H, units_per_pass); SharedLayout<float>::make(H, tiling, Block, true, kStackStateBuffers,
// kPasses, stack_iterations(kPasses)).bytes of dynamic shared memory (one size for both stack kernels:
// the backward's norm sums included); kPasses == compiled_passes_of(Block, tiling, H, false, forced, true)
// (stack_compiled_passes: at 5-8 passes, 1-2 samples per chunk, every row in registers too).
template <int kSamples, int kPasses>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    forward_stack_kernel(ForwardStackArgs a, RecurrenceTiling tiling) {
  using Cta = RecurrenceCta<float, kSamples, RecurrencePath::Block, kPasses, stack_iterations(kPasses)>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  const StackPlace place = stack_place(tiling, a.layers);
  const int64_t layer = place.layer, sequence = T * B * H, state = B * H;
  const bool top = place.top;
  SIMT_DYNAMIC_SHARED(float, smem);
  const SharedLayout<float> layout =
      SharedLayout<float>::make(H, tiling, RecurrencePath::Block, false, kStackStateBuffers, kPasses,
                                stack_iterations(kPasses));
  Cta cta(smem, layout, tiling, a.shape, tiling.units_per_cta, place.block);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  const int64_t R = cta.row, per_pass = tiling.units_per_pass;
  load_stack_rows(a.w_stacked + layer * 2 * H * H, cta.weights, cta.units, per_pass, H, R);
  const float* h0 = a.h0 != nullptr ? a.h0 + layer * state : nullptr;
  for (int buffer = 0; buffer < 2; ++buffer) {
    load_padded_rows(h0, cta.states + buffer * kSamples * R, cta.place.sample_begin, kSamples, h0 != nullptr ? B : 0,
                     H, R);
  }
  // With dropout, the masked state: zero (padding included) until the recurrence lanes write it;
  // the projection of h_{-1} at step 0 is dropped.
  const float* masks = a.dropout_masks != nullptr && !top ? a.dropout_masks + layer * sequence : nullptr;
  float* masked_states = cta.states + 2 * kSamples * R;
  if (masks != nullptr) {
    for (int64_t i = threadIdx.x; i < 2 * kSamples * R; i += blockDim.x) masked_states[i] = 0.0f;
  }
  // The warps of a pass's second half hold projection rows (stack_row; uniform over a warp).
  const bool projection_warp = cta.role.unit_in_pass >= per_pass / 2;
  __syncthreads();
  cta.cache_weights();
  float* out = a.out + layer * sequence;
  // (before the steps: layer 0's XW_t is read at valid steps only)
  zero_past_lengths(out, a.lengths, a.shape, cta.place.sample_begin, cta.place.sample_begin + kSamples, 0, H);
  float* h_n = a.h_n + layer * state;
  const unsigned long long* xw_words = layer > 0 ? a.xw_tagged + (layer - 1) * sequence : nullptr;
  unsigned long long* next_words = top ? nullptr : a.xw_tagged + layer * sequence;
  // The row this lane owns in each batch (the same every step), and for a projection unit the
  // next layer's bias.
  StackRow lane_row[Cta::kBatches] = {};
  float next_bias[Cta::kBatches] = {};
  cta.for_each_owned_unit([&](int batch, int64_t u) {
    lane_row[batch] = stack_row(u, per_pass);
    const StackRow& row = lane_row[batch];
    if (row.projection && row.unit < H && !top && a.bias_next != nullptr) {
      next_bias[batch] = a.bias_next[layer * H + row.unit];
    }
  });
  PhaseClock<false> clock(nullptr, nullptr);
  const SampleRows<kOwned> lane_rows(a.lengths, cta.place.sample_begin + cta.first_sample, a.shape, false);
  // Offsets of each output's unit (stack_row) at step s in the [T,B,H] tensors.
  LaneOutputs<Cta::kBatches, kOwned> lane(cta, lane_rows, 0, [&](int64_t u) { return stack_row(u, per_pass).unit; });
  // The lane's operands of step s + ahead (the lane at step s), read one step ahead: layer 0's
  // XW_t, or the tagged word (whose tag is checked where the value is used); with dropout, the
  // mask of the output.
  float xw[Cta::kBatches][kOwned] = {}, mask[Cta::kBatches][kOwned] = {};
  unsigned long long xw_word[Cta::kBatches][kOwned] = {};
  auto load_operands = [&](int64_t s, int64_t ahead) {
    const int64_t shift = ahead * lane.time_stride;
    cta.for_each_owned_output(cta.place.sample_begin, [&](int batch, int k, int64_t, int64_t) {
      const StackRow& row = lane_row[batch];
      if (row.projection || row.unit >= H || s + ahead >= lane.length[k]) return;
      if (xw_words == nullptr) {
        xw[batch][k] = out[lane.at[batch][k] + shift];
      } else {
        xw_word[batch][k] = simt::load_relaxed(xw_words + lane.at[batch][k] + shift);
      }
      if (masks != nullptr) mask[batch][k] = masks[lane.at[batch][k] + shift];
    });
  };
  load_operands(0, 0);
  for (int64_t s = 0; s <= T; ++s) {
    const float* current = cta.states + (s % 2) * kSamples * R;
    float* next = cta.states + (1 - s % 2) * kSamples * R;
    float* masked_next = masked_states + (1 - s % 2) * kSamples * R;
    const float* read = masks != nullptr && projection_warp ? masked_states + (s % 2) * kSamples * R : current;
    cta.for_each_output(read, clock, [&](int batch, int k, int64_t, float total) {
      const int64_t j = cta.first_sample + k, b = cta.place.sample_begin + j;
      const StackRow& row = lane_row[batch];
      const int64_t u = row.unit;
      if (b >= B || u >= H) return;
      if (row.projection) {  // the next layer's XW at step s - 1: W_ih h_{s-1} + its biases
        if (top || s == 0 || s - 1 >= lane.length[k]) return;
        const int64_t at = lane.at[batch][k] - lane.time_stride;  // (unit u, step s - 1)
        simt::store_relaxed(next_words + at, simt::tag_word(total + next_bias[batch], kStackTag));
        return;
      }
      if (s == T) return;
      float h;
      if (s < lane.length[k]) {
        const int64_t at = lane.at[batch][k];
        const float x = handed_operand(xw[batch][k], xw_word[batch][k], xw_words, at);
        h = activate_runtime(a.activation, x + total);
        out[at] = h;
        if (masks != nullptr) masked_next[j * R + u] = h * mask[batch][k];
      } else {
        h = current[j * R + u];  // frozen: the state carries over (its projections are dropped)
      }
      publish_state<RecurrencePath::Block>(next, static_cast<float*>(nullptr), nullptr, 0u, j, b, u, R, H, h);
      if (s == T - 1) h_n[b * H + u] = h;
    });
    if (s < T) {  // (step T only hands up the projection of h_{T-1}: the loop ends without a barrier)
      load_operands(s, 1);
      lane.move(1);
      __syncthreads();
    }
  }
}

// The forward of a stack of L unidirectional layers in one launch on the Cluster path, for
// hidden sizes whose W_hh needs several CTAs (H > 128): one thread-block cluster of L x P CTAs
// per sample group (ClusterStackPlace), P per layer, each holding its units' rows [W_ih^l |
// W_hh^l] and the state rows [h^{l-1} | h^l] of the group's samples, so that one dot product
// over 2 x padded_row(H) columns gives both of layer l's terms (layer 0: [0 | W_hh^0], its
// input projection XW_t from one GEMM before the launch, as on the other paths). Every layer
// computes in every step of a wavefront: at step w layer l is at time t = w - l, whose input
// h^{l-1}_t layer l - 1 computed at step w - 1; a layer outside [0, length) is frozen (before
// its start its rows hold h0 in both buffers, nothing is sent; after a sample's end its state
// carries over). A step's new slice of h^l goes into the layer's other CTAs and into the first
// half of the next layer's (share_cluster_stack_slice), then one cluster barrier: T + L - 1
// steps and barriers for the stack, where its layers one after another take L x T. With
// dropout between layers the next layer's copy is the state times its mask (loaded one step
// ahead like XW_t), written after the step's dot products into the CTA's current rows, which
// nothing reads any more in that step.
//
// Arguments: ForwardStackArgs as forward_stack_kernel's (w_stacked [L,2H,H] per layer its W_hh,
// then the next layer's W_ih; bias_next [L,H] the next layer's b_ih + b_hh; dropout_masks
// [L-1,T,B,H] or null; xw_tagged unused, null).
//
// Grid = groups x L x P CTAs of kRecurrenceThreads threads in clusters of L x P; tiling: one
// layer's (ctas_per_group P, units_per_cta, samples, units_per_pass, chunks 1, step_sync 0);
// SharedLayout<float>::make(2 * padded_row(H), tiling, Cluster, true).bytes of dynamic shared
// memory (one size for both stack kernels: the backward's norm sums included); kPasses ==
// compiled_passes_of(Cluster, tiling, 2 * padded_row(H), false) (1 to 8, as the cluster path's
// layer kernels; 0: read at run time).
template <int kSamples, int kPasses>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    forward_cluster_stack_kernel(ForwardStackArgs a, RecurrenceTiling tiling) {
  using Cta = RecurrenceCta<float, kSamples, RecurrencePath::Cluster, kPasses>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, L = a.layers;
  const int64_t half = padded_row(H, vec_size<float>());
  const ClusterStackPlace at = cluster_stack_place(tiling, L);
  const int64_t layer = at.layer, state = B * H;
  SIMT_DYNAMIC_SHARED(float, smem);
  const SharedLayout<float> layout = SharedLayout<float>::make(2 * half, tiling, RecurrencePath::Cluster, false);
  Cta cta(smem, layout, tiling, a.shape, H, at.block);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  const int64_t R = cta.row;  // 2 * half
  load_cluster_stack_rows(a.w_stacked, cta.weights, layer, cta.place.unit_begin, cta.units, H, half);
  // Both buffers: no input yet, the layer's h0 (zero-padded; zeros without h0).
  const float* h0 = a.h0 != nullptr ? a.h0 + layer * state : nullptr;
  for (int64_t i = threadIdx.x; i < 2 * kSamples * R; i += blockDim.x) {
    const int64_t j = i / R % kSamples, k = i % R - half, b = cta.place.sample_begin + j;
    cta.states[i] = k >= 0 && k < H && h0 != nullptr && b < B ? h0[b * H + k] : 0.0f;
  }
  __syncthreads();
  StepBarrier<RecurrencePath::Cluster> barrier(tiling, cta.place, nullptr, nullptr, 0, false);
  barrier.start();
  float* out = a.out + layer * T * state;
  // (before the steps: layer 0's XW_t is read at valid steps only)
  zero_past_lengths(out, a.lengths, a.shape, cta.place.sample_begin, cta.place.sample_begin + kSamples,
                    cta.place.unit_begin, cta.place.unit_end);
  float* h_n = a.h_n + layer * state;
  // Layers above the first add their b_ih + b_hh (the next-layer biases of the layer below).
  float bias[Cta::kBatches] = {};
  cta.for_each_owned_unit([&](int batch, int64_t u) {
    if (layer > 0 && a.bias_next != nullptr) bias[batch] = a.bias_next[(layer - 1) * H + u];
  });
  PhaseClock<false> clock(nullptr, nullptr);
  const SampleRows<kOwned> lane_rows(a.lengths, cta.place.sample_begin + cta.first_sample, a.shape, false);
  LaneOutputs<Cta::kBatches, kOwned> lane(cta, lane_rows, -layer);  // at time t = -layer: step 0
  // The mask of this layer's output in the next layer's input (dropout), or null.
  const float* masks = a.dropout_masks != nullptr && layer + 1 < L ? a.dropout_masks + layer * T * state : nullptr;
  // Layer 0's XW_t and the masks, read one step ahead (the lane at step w, time t = w - layer).
  float xw[Cta::kBatches][kOwned] = {}, mask[Cta::kBatches][kOwned] = {};
  float h_out[Cta::kBatches][kOwned] = {}, masked[Cta::kBatches][kOwned] = {};
  auto load_operands = [&](int64_t t, int64_t ahead) {  // time t + ahead's (the lane at time t)
    if ((layer != 0 && masks == nullptr) || t + ahead < 0) return;
    lane.for_each_valid(cta, t, ahead, [&](int batch, int k, int64_t offset) {
      if (layer == 0) xw[batch][k] = out[offset];
      if (masks != nullptr) mask[batch][k] = masks[offset];
    });
  };
  load_operands(-layer, 0);  // (layer 0's at time 0; the others' are loaded the step before their first)
  for (int64_t w = 0; w < T + L - 1; ++w) {
    const int64_t t = w - layer;
    const float* current = cta.states + (w % 2) * kSamples * R;
    float* next = cta.states + (1 - w % 2) * kSamples * R;
    cta.template for_each_output<false>(current, clock, [&](int batch, int k, int64_t u, float total) {
      const int64_t j = cta.first_sample + k, b = cta.place.sample_begin + j;
      if (b >= B || t < 0) return;  // (not started: both buffers hold h0, the next layer waits)
      float h;
      if (t < lane.length[k]) {
        h = activate_runtime(a.activation, (layer == 0 ? xw[batch][k] : bias[batch]) + total);
        h_out[batch][k] = h;
        masked[batch][k] = h * mask[batch][k];
      } else {
        h = current[j * R + half + u];  // frozen: the state carries over (the next layer is frozen too)
        masked[batch][k] = h;
      }
      next[j * R + half + u] = h;
      if (t == T - 1) h_n[b * H + u] = h;
    });
    float* input_rows = next;  // what the next layer's CTAs get: the state, or times its mask
    if (masks != nullptr) {
      __syncthreads();  // every dot product of the step has read `current`
      input_rows = cta.states + (w % 2) * kSamples * R;
      cta.for_each_owned_output(cta.place.sample_begin, [&](int batch, int k, int64_t, int64_t u) {
        if (t >= 0) input_rows[(cta.first_sample + k) * R + half + u] = masked[batch][k];
      });
    }
    share_cluster_stack_slice<kSamples>(next + half, input_rows + half, next, layer + 1 < L ? layer + 1 : -1, at,
                                        cta.place, tiling, H, half, R);
    barrier.arrive();
    load_operands(t, 1);  // (after the arrival: StepBarrier::arrive)
    barrier.wait();
    if (t >= 0) {  // step w's h_t (stored after the barrier: Cta::kStoresAfterBarrier)
      lane.for_each_valid(cta, t, 0, [&](int batch, int k, int64_t offset) { out[offset] = h_out[batch][k]; });
    }
    lane.move(1);
  }
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
      a.out[time_major_offset(s, b, u, B, H)] = scalar_t(0);  // (time s is past the sample's end)
    }
    h_next[i] = h;
    if (s == T - 1) a.h_n[i] = h;
  }
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
