// The Block path's lane-row step, opt-in (ForcedTiling::lane_rows_step): float32 recurrences of
// H <= 128 units, one CTA per group of kSamples samples (1, or 2 at H <= 64: lane_rows_compiled),
// one thread per hidden unit (blockDim.x = H rounded up to whole warps). Each lane holds its
// unit's whole weight row in registers (forward: row u of W_hh; backward: column u, a row of
// W_hh^T), reads the group's previous state rows from shared memory as 16-byte broadcasts, and
// computes its dot products alone: four accumulators per sample (the row's columns by their index
// modulo 4), added pairwise at the end. No reduce-scatter, no passes, no shuffles (but the norms'
// warp sums); one __syncthreads per step.
//
// Built to shorten the general block step (8 lanes per row: about 115 dependent instructions per
// warp at H = 64, 0.32-0.42 us a step on the H200). By its counts a step here is 205 cycles of
// compute at H = 64; the H200 measured about 535 forward and 840 backward (2026-12-04): no faster
// than the general kernels forward, slower backward, so the planner does not choose it
// (docs/cuda_backend.md; the cost model's lane_rows_step_terms adds the measured wait). Its
// operands were then loaded one step ahead; they now come kLaneRowsAhead steps ahead (4; 1 at
// H > 64), to tell whether their latency is that wait.
//
// Same arguments and results as forward_recurrence_kernel / backward_recurrence_kernel on the
// Block path (ForwardRecurrenceArgs, BackwardRecurrenceArgs: exchange, step_flags, tagged_exchange
// and norm_partials null), the same arithmetic per output (activate_runtime, backward_gradient,
// slope_runtime), the dot products summed in another order (so not bitwise equal to the
// general kernels', but bitwise reproducible run to run). Norms: each lane's g^2 in float64,
// summed over the warp by a fixed butterfly, the warps' sums added in warp order by thread k
// for sample k after the step's barrier.
//
// Grid = ceil(B / kSamples) CTAs of lane_rows_threads(H) threads (lane_rows_compiled pairs; independent CTAs: no
// co-residency needed), lane_rows_shared_bytes(kSamples, kVectors) bytes of dynamic shared
// memory:
//   states        [2][kSamples][4 kVectors] float  the state rows (h, or dz backward) by step
//                                                 parity, zero past H
//   warp_sums     [2][kLaneRowsMaxWarps][kSamples] double  backward with norms: per step parity
//   phase_running [kStepPhases + 1] long long     the step-phase clock's (PhaseClock)
#pragma once

#include <type_traits>
#include <utility>

#include "cuda/elman_backward_kernel.cuh"
#include "cuda/elman_forward_kernel.cuh"

namespace rnn_fused::kernels {

inline constexpr int64_t kLaneRowsMaxHidden = 128;
inline constexpr int kLaneRowsMaxThreads = 128;
inline constexpr int kLaneRowsMaxWarps = kLaneRowsMaxThreads / 32;
inline constexpr int kLaneRowsMaxSamples = 2;

// The 16-byte vectors of a lane's row the kernels are compiled for: the hidden sizes are
// bucketed (H <= 32, 64, 128; the row's tail past H is zeros) so that three row lengths serve
// every H, each with the whole row unrolled into registers.
SIMT_HOST_DEVICE constexpr int lane_row_vectors(int64_t hidden) { return hidden <= 32 ? 8 : hidden <= 64 ? 16 : 32; }
// One thread per unit, whole warps.
SIMT_HOST_DEVICE constexpr int64_t lane_rows_threads(int64_t hidden) { return (hidden + 31) / 32 * 32; }
// The (samples per CTA, row) pairs compiled: 1 or 2 samples per CTA with rows of up to 64
// columns, 1 sample with rows of 128. (ptxas spilled the backward at 4 samples, and at 2 with
// 128 columns: the row's 128 registers beside the samples' operands and offsets.)
SIMT_HOST_DEVICE constexpr bool lane_rows_compiled(int64_t samples, int64_t hidden) {
  return hidden >= 1 && hidden <= kLaneRowsMaxHidden &&
         (samples == 1 || (samples == 2 && lane_row_vectors(hidden) <= 16));
}

// Byte offsets of the layout above.
SIMT_HOST_DEVICE constexpr int64_t lane_rows_states_bytes(int64_t samples, int64_t vectors) {
  return 2 * samples * 4 * vectors * int64_t(sizeof(float));
}
SIMT_HOST_DEVICE constexpr int64_t lane_rows_running_offset(int64_t samples, int64_t vectors) {
  return lane_rows_states_bytes(samples, vectors) + 2 * kLaneRowsMaxWarps * samples * int64_t(sizeof(double));
}
SIMT_HOST_DEVICE constexpr int64_t lane_rows_shared_bytes(int64_t samples, int64_t vectors) {
  return lane_rows_running_offset(samples, vectors) + (kStepPhases + 1) * int64_t(sizeof(long long));
}
static_assert(lane_rows_states_bytes(1, 8) % 16 == 0, "the double arrays follow 16-byte aligned");

SIMT_BEGIN_WORLD

// The lane's whole row of `w` (row `u` where `transposed` is false, else column `u`), zero past
// H and on lanes past H.
template <int kVectors>
SIMT_DEVICE __forceinline__ void load_lane_row(const float* w, int64_t hidden, int64_t u, bool transposed,
                                               Vec16<float> (&row)[kVectors]) {
  SIMT_UNROLL
  for (int v = 0; v < kVectors; ++v) {
    SIMT_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int64_t c = 4 * v + e;
      row[v].v[e] = u < hidden && c < hidden ? w[transposed ? c * hidden + u : u * hidden + c] : 0.0f;
    }
  }
}

// acc[k][e] += row . state row k, column 4 v + e into accumulator e; returns the totals.
template <int kSamples, int kVectors>
SIMT_DEVICE __forceinline__ void lane_row_dots(const Vec16<float> (&row)[kVectors], const float* states,
                                               float (&total)[kSamples]) {
  constexpr int kRow = 4 * kVectors;
  float acc[kSamples][4] = {};
  SIMT_UNROLL
  for (int v = 0; v < kVectors; ++v) {
    SIMT_UNROLL
    for (int k = 0; k < kSamples; ++k) {
      const Vec16<float> h = load_vec(states + k * kRow + 4 * v);
      SIMT_UNROLL
      for (int e = 0; e < 4; ++e) acc[k][e] += row[v].v[e] * h.v[e];
    }
  }
  SIMT_UNROLL
  for (int k = 0; k < kSamples; ++k) total[k] = (acc[k][0] + acc[k][1]) + (acc[k][2] + acc[k][3]);
}

// The operands' offsets of the lane's outputs (unit u of sample first + k) at the current
// processing step, moved one step at a time.
template <int kSamples>
struct LaneRowOperands {
  int64_t at[kSamples];
  int64_t length[kSamples];
  int64_t stride;  // one processing step's move in [T,B,H]

  SIMT_DEVICE LaneRowOperands(const int64_t* lengths, int64_t first, const LayerShape& shape, bool reverse, int64_t u,
                              int64_t s) {
    const SampleRows<kSamples> rows(lengths, first, shape, reverse);
    stride = rows.time_stride;
    SIMT_UNROLL
    for (int k = 0; k < kSamples; ++k) {
      length[k] = rows.length[k];
      at[k] = rows.origin[k] + rows.shift(s) + u;
    }
  }
};

// Steps whose operands a lane holds in registers: a step's loads (XW_t; dy_t and h_t backward)
// are issued this many steps before it, into the ring slot the step it replaces freed. A lane-row
// step measured about as long as an L2 round trip (0.3 us), and with the loads issued one step
// ahead (and L1 prefetches further) the step did not shorten: this tests whether the loads'
// latency is what it waits for. The time loop is unrolled by the ring's depth so that every slot
// is a register (for_each_ring_step). 4 steps; 1 (the next step's, as before) with 128-column
// rows, whose backward spilled under sm_80's ptxas at 2 and 4 (254 registers; 182 at 1).
template <int kVectors>
inline constexpr int kLaneRowsAhead = kVectors >= 32 ? 1 : 4;
// The kernels' __launch_bounds__ minimum of CTAs per SM: 1 lets ptxas use up to 255 registers,
// which the unrolled ring needs (without it sm_80's ptxas held the backward to 96 and 128
// registers and spilled); 0 (none) with 128-column rows, which spilled at 1 (254 registers)
// and not without (182).
template <int kVectors>
inline constexpr int kLaneRowsMinBlocks = kVectors >= 32 ? 0 : 1;

template <class Step, int... kSlots>
SIMT_DEVICE __forceinline__ void ring_steps_from(int64_t first, int64_t steps, Step& step,
                                                 std::integer_sequence<int, kSlots...>) {
  // (steps is uniform over the CTA: every thread takes the same steps, barriers included)
  ((first + kSlots < steps ? step(first + kSlots, std::integral_constant<int, kSlots>{}) : void()), ...);
}

// Calls step(s, slot) for s = 0 .. steps - 1 in order, slot = s % kDepth as a constant
// (std::integral_constant) so that `ring[slot]` names a register.
template <int kDepth, class Step>
SIMT_DEVICE __forceinline__ void for_each_ring_step(int64_t steps, Step&& step) {
  for (int64_t first = 0; first < steps; first += kDepth) {
    ring_steps_from(first, steps, step, std::make_integer_sequence<int, kDepth>{});
  }
}

template <int kSamples, int kVectors>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kLaneRowsMaxThreads, kLaneRowsMinBlocks<kVectors>)
    forward_lane_rows_kernel(ForwardRecurrenceArgs<float> a) {
  constexpr int kRow = 4 * kVectors;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  SIMT_DYNAMIC_SHARED(float, smem);
  float* states = smem;
  long long* running =
      reinterpret_cast<long long*>(reinterpret_cast<unsigned char*>(smem) + lane_rows_running_offset(kSamples, kVectors));
  const int64_t u = threadIdx.x;
  const bool owns = u < H;
  const int64_t first = int64_t(blockIdx.x) * kSamples;
  Vec16<float> row[kVectors];
  load_lane_row<kVectors>(a.w_hh, H, u, false, row);
  // Buffer 0 holds h0 (or zeros), buffer 1 zeros: the padding past H stays zero.
  for (int64_t i = threadIdx.x; i < 2 * kSamples * kRow; i += blockDim.x) {
    const int64_t c = i % kRow, b = first + (i / kRow) % kSamples;
    states[i] = i < kSamples * kRow && a.h0 != nullptr && c < H && b < B ? a.h0[b * H + c] : 0.0f;
  }
  __syncthreads();
  zero_past_lengths(a.out, a.lengths, a.shape, first, first + kSamples, 0, H);  // (read at valid steps only)
  LaneRowOperands<kSamples> lane(a.lengths, first, a.shape, a.reverse, u, 0);
  // XW_t of the next kAhead steps, step s's in slot s % kAhead.
  constexpr int kAhead = kLaneRowsAhead<kVectors>;
  float xw[kAhead][kSamples] = {};
  if (owns) {
    SIMT_UNROLL
    for (int j = 0; j < kAhead; ++j) {
      SIMT_UNROLL
      for (int k = 0; k < kSamples; ++k) {
        if (j < lane.length[k]) xw[j][k] = a.out[lane.at[k] + j * lane.stride];
      }
    }
  }
  auto run = [&](auto clock) {
    clock.start();
    for_each_ring_step<kAhead>(T, [&](int64_t s, auto slot) {
      const float* current = states + (s % 2) * kSamples * kRow;
      float* next = states + ((s + 1) % 2) * kSamples * kRow;
      float recurrent[kSamples];
      lane_row_dots<kSamples, kVectors>(row, current, recurrent);
      if (owns) {
        SIMT_UNROLL
        for (int k = 0; k < kSamples; ++k) {
          const int64_t b = first + k;
          if (b >= B) continue;
          float h;
          if (s < lane.length[k]) {
            h = activate_runtime(a.activation, xw[slot][k] + recurrent[k]);
            a.out[lane.at[k]] = h;
          } else {
            h = current[k * kRow + u];  // frozen: the state carries over
          }
          next[k * kRow + u] = h;
          if (s == T - 1) a.h_n[b * H + u] = h;
        }
        // Step s + kAhead's XW_t into the slot just read, before the barrier.
        SIMT_UNROLL
        for (int k = 0; k < kSamples; ++k) {
          if (s + kAhead < lane.length[k]) xw[slot][k] = a.out[lane.at[k] + kAhead * lane.stride];
          lane.at[k] += lane.stride;
        }
      }
      clock.lap(kComputePhase);
      __syncthreads();
      clock.lap(kBarrierPhase);
    });
    clock.store();
  };
  // (compiled for its passes: the untimed steps carry no clock code)
  run_with_phase_clock<1>(a.phase_cycles, running, run);
}

// kNorms: step_sq is recorded (not null); the copy without compiles none of the norms' code.
template <int kSamples, int kVectors, bool kNorms>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kLaneRowsMaxThreads, kLaneRowsMinBlocks<kVectors>)
    backward_lane_rows_kernel(BackwardRecurrenceArgs<float> a) {
  constexpr int kRow = 4 * kVectors;
  SIMT_KERNEL_CHECK((a.step_sq != nullptr) == kNorms, "the lane-row backward compiled for the call's norms");
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  SIMT_DYNAMIC_SHARED(float, smem);
  float* states = smem;
  double* warp_sums =
      reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + lane_rows_states_bytes(kSamples, kVectors));
  long long* running =
      reinterpret_cast<long long*>(reinterpret_cast<unsigned char*>(smem) + lane_rows_running_offset(kSamples, kVectors));
  const int64_t u = threadIdx.x;
  const bool owns = u < H;
  [[maybe_unused]] const int warp = static_cast<int>(threadIdx.x / 32), warps = static_cast<int>(blockDim.x / 32);
  const int64_t first = int64_t(blockIdx.x) * kSamples;
  Vec16<float> row[kVectors];
  load_lane_row<kVectors>(a.w_hh, H, u, true, row);
  // Randomized truncation reads its drawn scales (which hold the cuts every K steps too); else
  // the cuts every K steps come from `periodic`. (Before the barrier: its 64-bit remainder is a
  // call, across which ptxas spilled the operands loaded below when they came before it.)
  const bool drawn = a.drawn_scales != nullptr;
  WidePeriodicCut periodic(drawn ? 0 : a.truncation.every, T);
  // No step after the last: dz_T = 0 (and the padding stays zero).
  for (int64_t i = threadIdx.x; i < 2 * kSamples * kRow; i += blockDim.x) states[i] = 0.0f;
  __syncthreads();
  zero_past_lengths(a.dz, a.lengths, a.shape, first, first + kSamples, 0, H);
  if constexpr (kNorms) zero_norms_past_lengths(a.step_sq, a.lengths, a.shape, first, first + kSamples);
  LaneRowOperands<kSamples> lane(a.lengths, first, a.shape, a.reverse, u, T - 1);
  // dy_t and the saved h_t of the next kAhead steps (processing step T - 1 - i's in slot
  // i % kAhead); the drawn scale of the edge into the current step (read during the step after
  // it: none into step T - 1).
  constexpr int kAhead = kLaneRowsAhead<kVectors>;
  float dy[kAhead][kSamples] = {}, h[kAhead][kSamples] = {}, drawn_edge[kSamples] = {};
  if (owns) {
    SIMT_UNROLL
    for (int j = 0; j < kAhead; ++j) {
      SIMT_UNROLL
      for (int k = 0; k < kSamples; ++k) {
        const int64_t s = T - 1 - j;
        if (s >= 0 && s < lane.length[k]) {
          dy[j][k] = a.dy[lane.at[k] - j * lane.stride];
          h[j][k] = a.out[lane.at[k] - j * lane.stride];
        }
      }
    }
  }
  auto run = [&](auto clock) {
    clock.start();
    for_each_ring_step<kAhead>(T, [&](int64_t i, auto slot) {
      const int64_t s = T - 1 - i;
      const bool cut_later = periodic.cut(s + 1, a.truncation.every);  // (the edge into step s + 1)
      const float* later = states + ((s + 1) % 2) * kSamples * kRow;  // dz at step s + 1
      float* now = states + (s % 2) * kSamples * kRow;
      float carry[kSamples];
      lane_row_dots<kSamples, kVectors>(row, later, carry);
      [[maybe_unused]] double g_sq[kSamples] = {};
      if (owns) {
        SIMT_UNROLL
        for (int k = 0; k < kSamples; ++k) {
          const int64_t b = first + k;
          if (b >= B) continue;
          float d = 0.0f;  // a sample past its length passes no gradient on
          if (s < lane.length[k]) {
            const float edge = s + 1 >= lane.length[k] ? 0.0f : drawn ? drawn_edge[k] : cut_later ? 0.0f : 1.0f;
            const float g = backward_gradient(a.dh_n, H, s, lane.length[k], b, u, dy[slot][k], carry[k], edge);
            if constexpr (kNorms) g_sq[k] = static_cast<double>(g) * static_cast<double>(g);
            d = g * slope_runtime(a.activation, h[slot][k]);
            a.dz[lane.at[k]] = d;
          }
          now[k * kRow + u] = d;
          if (s == 0) a.dz_first[b * H + u] = d;
        }
      }
      if constexpr (kNorms) {
        // The warp's sums per sample (a fixed butterfly: every lane gets them), by parity of the
        // step: read after this step's barrier, rewritten two steps later.
        SIMT_UNROLL
        for (int k = 0; k < kSamples; ++k) {
          SIMT_UNROLL
          for (int bit = 16; bit >= 1; bit /= 2) g_sq[k] += __shfl_xor_sync(kFullMask, g_sq[k], bit);
        }
        if (threadIdx.x % 32 == 0) {
          SIMT_UNROLL
          for (int k = 0; k < kSamples; ++k) warp_sums[((s % 2) * kLaneRowsMaxWarps + warp) * kSamples + k] = g_sq[k];
        }
      }
      if (owns) {
        // Step s - kAhead's operands into the slots just read, and the drawn scale of the edge into
        // step s - 1, before the barrier.
        SIMT_UNROLL
        for (int k = 0; k < kSamples; ++k) {
          const int64_t ahead = s - kAhead;
          if (ahead >= 0 && ahead < lane.length[k]) {
            dy[slot][k] = a.dy[lane.at[k] - kAhead * lane.stride];
            h[slot][k] = a.out[lane.at[k] - kAhead * lane.stride];
          }
          if (drawn && s > 0 && s < lane.length[k]) drawn_edge[k] = a.drawn_scales[s * B + first + k];
          lane.at[k] -= lane.stride;
        }
      }
      clock.lap(kComputePhase);
      __syncthreads();
      if constexpr (kNorms) {
        const int k = static_cast<int>(threadIdx.x);
        if (k < kSamples && first + k < B) {
          const int64_t length = sample_length(a.lengths, first + k, B, T);
          if (s < length) {
            double sum = 0.0;
            for (int w = 0; w < warps; ++w) sum += warp_sums[((s % 2) * kLaneRowsMaxWarps + w) * kSamples + k];
            a.step_sq[step_time(s, length, a.reverse) * B + first + k] = sum;
          }
        }
      }
      clock.lap(kBarrierPhase);
    });
    clock.store();
  };
  run_with_phase_clock<1>(a.phase_cycles, running, run);
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
