// Device helpers shared by the recurrence kernels of every path (block, cluster, grid,
// stepwise): the thread mapping, 16-byte vector loads from shared memory, the per-unit dot
// products against the state rows, the 8-lane reduce-scatter, and the activation.
// Compiled by nvcc (CUDA) and by g++ (SIMT emulation; docs/simt.md).
//
// Thread mapping of a CTA (kRecurrenceThreads threads): 8 consecutive lanes ("a unit
// group") share one hidden unit u and split its dot products over k: lane q of the group
// takes the 16-byte chunks q, q + 8, q + 16, ... of the weight row and of every state row.
// A warp therefore covers 4 units, a CTA 32 units per pass (or 16 with only warps 0-3
// computing: see kUnitsPerPassOptions); a CTA owning more units has several passes. Each
// lane keeps a register tile of accumulators, pass_batch passes (units) x kSamples samples:
// every state chunk loaded from shared memory feeds the batch's units and every weight chunk
// (from shared memory, or from registers where a lane's share fits) its samples, and the
// batch's multiply-add chains are independent (one CTA per SM leaves 2 warps per scheduler, 1
// with 16 units per pass: latency is hidden by this instruction-level parallelism, not by
// other warps). The unit group's 8 partial tiles are combined by a reduce-scatter over the lane
// bits that leaves each lane with the totals of 1 or 2 of the batch's outputs, so the
// batch's epilogues run on all 8 lanes side by side.
#pragma once

#include <cstdint>
#include <type_traits>

#include "recurrence_math.h"
#include "simt/simt.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

constexpr int kRecurrenceThreads = 256;
// The persistent kernels run one CTA per SM: ptxas may give each thread up to 255 registers
// (left to its own occupancy target it capped some instantiations at 128 and spilled).
constexpr int kPersistentMinBlocksPerSm = 1;
constexpr int kWarp = 32;
constexpr int kUnitLanes = 8;                                      // lanes sharing one unit
constexpr int kUnitsPerPass = kRecurrenceThreads / kUnitLanes;     // units a CTA covers per pass
constexpr int kMaxPasses = 8;                                      // so a CTA owns at most 256 units
constexpr int kMaxUnitsPerCta = kUnitsPerPass * kMaxPasses;
// Units per pass a launch may take (RecurrenceTiling::units_per_pass): all 8 warps compute,
// or only warps 0-3, each lane then holding twice the passes of a tile. Every computing warp
// loads every state chunk of a step from shared memory, so with half the warps each state load
// feeds twice the units: where a CTA owns a single pass of 32 units and 8 samples (the Grid
// path at H ~ 1024), a lane of 8 warps loads 9 chunks per 32 multiply-adds and a lane of 4
// warps 10 per 64, fewer loads and address instructions to issue for the same multiply-adds
// per SM. Warps 4-7 then only stage state rows and join the barriers. The sums are the same
// either way: each output's order does not depend on the mapping.
constexpr int kUnitsPerPassOptions[] = {kUnitsPerPass, kUnitsPerPass / 2};
SIMT_HOST_DEVICE constexpr int max_units_per_cta(int units_per_pass) { return units_per_pass * kMaxPasses; }
// A lane's register tile of accumulators: pass_batch passes (units) x S samples, 64 bytes
// (16 float32 or 8 float64 values), at most kMaxPasses passes; always 8 or 16 values. A kernel
// compiled for a fixed number of passes (`fixed_passes` > 0: the Block path with the weight
// rows in registers) takes no more passes than it has, rounded up to a power of two, so that
// its reduce-scatter shuffles no empty passes: a tile of 1 to 16 values.
SIMT_HOST_DEVICE constexpr int pass_batch(int samples, int scalar_bytes, int fixed_passes = 0) {
  const int passes = 64 / scalar_bytes / samples;
  const int batch = passes < 1 ? 1 : passes > kMaxPasses ? kMaxPasses : passes;
  int fixed = 1;
  while (fixed < fixed_passes) fixed *= 2;
  return fixed_passes > 0 && fixed < batch ? fixed : batch;
}
SIMT_HOST_DEVICE constexpr int tile_size(int samples, int scalar_bytes, int fixed_passes = 0) {
  return pass_batch(samples, scalar_bytes, fixed_passes) * samples;
}
// Outputs (totals) a lane holds after reduce_scatter_tile: tile / 8, all of one pass and
// consecutive samples (1 or 2); 1 for a tile of fewer than 8 values, whose totals several
// lanes hold (tile_copy_lanes).
SIMT_HOST_DEVICE constexpr int outputs_per_lane(int samples, int scalar_bytes, int fixed_passes = 0) {
  const int n = tile_size(samples, scalar_bytes, fixed_passes);
  return n < kUnitLanes ? 1 : n / kUnitLanes;
}
// The first tile value (pass i * S + sample j) whose total lane q holds after
// reduce_scatter_tile; the lane's other totals follow it.
SIMT_HOST_DEVICE constexpr int tile_base(int samples, int scalar_bytes, int q, int fixed_passes = 0) {
  const int n = tile_size(samples, scalar_bytes, fixed_passes);
  return ((q & 4) != 0 ? n / 2 : 0) + ((q & 2) != 0 ? n / 4 : 0) + ((q & 1) != 0 ? n / 8 : 0);
}
// The lane bits of a unit group along which lanes hold copies of the same totals after
// reduce_scatter_tile (a tile of n < 8 values is down to one per lane after log2(n) levels;
// the others add both partners' sums): 7, 3, 1 for 1, 2, 4 values, else 0. The lane with
// these bits clear owns the outputs (runs their epilogues).
SIMT_HOST_DEVICE constexpr int tile_copy_lanes(int tile) { return tile >= kUnitLanes ? 0 : kUnitLanes / tile - 1; }
constexpr unsigned kFullMask = 0xffffffffu;

// 16 bytes of scalars: 4 floats or 2 doubles, loaded from shared memory as one vector.
template <typename scalar_t>
struct alignas(16) Vec16 {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(scalar_t));
  scalar_t v[kSize];
};

template <typename scalar_t>
constexpr int vec_size() {
  return Vec16<scalar_t>::kSize;
}

template <typename scalar_t>
SIMT_DEVICE __forceinline__ Vec16<scalar_t> load_vec(const scalar_t* p) {
  return *reinterpret_cast<const Vec16<scalar_t>*>(p);
}

// Shared-memory rows (weights, states) hold H scalars padded with zeros to a whole number
// of 16-byte chunks, so the dot products read whole chunks without a tail case.
SIMT_HOST_DEVICE constexpr int64_t padded_row(int64_t hidden, int64_t vec) { return (hidden + vec - 1) / vec * vec; }

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

// act(z) for the activation chosen at run time (uniform over the launch, so the branch
// costs nothing; one kernel serves both activations).
template <typename scalar_t>
SIMT_DEVICE __forceinline__ scalar_t activate_runtime(Activation a, scalar_t z) {
  return a == Activation::Tanh ? activate<Activation::Tanh>(z, DeviceTanh{})
                               : activate<Activation::Relu>(z, DeviceTanh{});
}

template <typename scalar_t>
SIMT_DEVICE __forceinline__ scalar_t slope_runtime(Activation a, scalar_t h) {
  return a == Activation::Tanh ? activation_slope<Activation::Tanh>(h) : activation_slope<Activation::Relu>(h);
}

// Where this thread sits in the mapping above.
struct LaneRole {
  int unit_in_pass;  // 0 .. kUnitsPerPass-1: the unit group (computing only below units_per_pass)
  int q;             // 0 .. 7: lane in the unit group, its k chunks
};

SIMT_DEVICE __forceinline__ LaneRole lane_role() {
  const int t = static_cast<int>(threadIdx.x);
  return {t / kUnitLanes, t % kUnitLanes};
}

// acc[j] += sum over e of w[e] * h[j][e]: one 16-byte chunk of a weight row against the same
// chunk of the kSamples state rows, elements in order.
template <typename scalar_t, int kSamples>
SIMT_DEVICE __forceinline__ void accumulate_chunk(const Vec16<scalar_t>& w, const Vec16<scalar_t> (&h)[kSamples],
                                                  scalar_t (&acc)[kSamples]) {
  constexpr int kVec = vec_size<scalar_t>();
  SIMT_UNROLL
  for (int j = 0; j < kSamples; ++j) {
    SIMT_UNROLL
    for (int e = 0; e < kVec; ++e) acc[j] += w.v[e] * h[j].v[e];
  }
}

// h[j] = chunk c of state row j (row j at states + j * row_stride).
template <typename scalar_t, int kSamples>
SIMT_DEVICE __forceinline__ void load_state_chunks(const scalar_t* states, int64_t row_stride, int c,
                                                   Vec16<scalar_t> (&h)[kSamples]) {
  SIMT_UNROLL
  for (int j = 0; j < kSamples; ++j) h[j] = load_vec(states + j * row_stride + c * vec_size<scalar_t>());
}

template <typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void zero_tile(scalar_t (&acc)[kUnits][kSamples]) {
  SIMT_UNROLL
  for (int i = 0; i < kUnits; ++i) {
    SIMT_UNROLL
    for (int j = 0; j < kSamples; ++j) acc[i][j] = scalar_t(0);
  }
}

// Calls f(std::integral_constant<int, U>{}) with U = used (1 <= used <= kUnits): a batch's dot
// products compiled for the number of units it has. With the count at run time nvcc predicates
// the missing units' loads and multiply-adds off instead of branching around them, and
// predicated-off instructions still take issue slots (sm_90 SASS of the 1-sample kernels: all 8
// units' instructions every iteration, for a batch of 1 or 2 units).
template <int kUnits, int U = kUnits, class F>
SIMT_DEVICE __forceinline__ void with_used_units(int used, F&& f) {
  if constexpr (U == 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    if (used == U) {
      f(std::integral_constant<int, U>{});
    } else {
      with_used_units<kUnits, U - 1>(used, f);
    }
  }
}

// acc += the products of unit_dots over chunks [first_chunk, end_chunk) only; first_chunk a
// multiple of kUnitLanes, so that a lane takes the same chunks in the same order as in one call
// over the whole row (split at such boundaries, the sums are bitwise those of unit_dots).
// Unrolled by 2: nvcc then addresses the second iteration's loads by immediate offsets and
// issues them among the first one's multiply-adds (sm_90 SASS: 16 instructions of loop
// overhead per iteration instead of 27 at 8 samples x 2 units). The weight loads of a batch
// come before its multiply-adds. By 4 it would spill.
template <int kUsed, typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void add_unit_dots(const scalar_t* const (&w_rows)[kUnits], const scalar_t* states,
                                               int64_t row_stride, int first_chunk, int end_chunk, int q,
                                               scalar_t (&acc)[kUnits][kSamples]) {
  static_assert(kUsed >= 1 && kUsed <= kUnits, "a batch of 1 to kUnits units");
  SIMT_UNROLL_2
  for (int c = first_chunk + q; c < end_chunk; c += kUnitLanes) {
    Vec16<scalar_t> h[kSamples], w[kUsed];
    load_state_chunks(states, row_stride, c, h);
    SIMT_UNROLL
    for (int i = 0; i < kUsed; ++i) w[i] = load_vec(w_rows[i] + c * vec_size<scalar_t>());
    SIMT_UNROLL
    for (int i = 0; i < kUsed; ++i) accumulate_chunk(w[i], h, acc[i]);
  }
}

// acc[i][j] = sum over the lane's k chunks of w_rows[i][k] * states[j * row_stride + k], for
// the first kUsed rows (the rest are left at zero) and the kSamples state rows. Rows in
// shared memory, 16-byte aligned, padded with zeros to `chunks` whole chunks. Each
// accumulator takes its chunks in order, so the result is the same on every run and does not
// depend on kUnits or on where the weights are (register_unit_dots).
template <int kUsed, typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void unit_dots(const scalar_t* const (&w_rows)[kUnits], const scalar_t* states,
                                           int64_t row_stride, int chunks, int q, scalar_t (&acc)[kUnits][kSamples]) {
  zero_tile(acc);
  add_unit_dots<kUsed>(w_rows, states, row_stride, 0, chunks, q, acc);
}

// Weights held in registers where a lane's share fits: for each of at most
// kRegisterPasses passes, its chunks q, q + 8, ... up to kRegisterIterations of them (64
// registers: H <= 128, at most 128 units per CTA). Float32 on the Block path only: in float64
// the same share takes twice the registers and the kernels spill; the Cluster and Grid
// kernels, which the planner takes for larger H, would hold the 64 registers for nothing and
// spill with the unrolled dot loop (benchmarks/nvcc_resource_usage.txt).
constexpr int kRegisterPasses = 4;
constexpr int kRegisterIterations = 4;
SIMT_HOST_DEVICE constexpr bool weights_fit_registers(int64_t passes, int64_t chunk_iterations, bool fp64) {
  return !fp64 && passes <= kRegisterPasses && chunk_iterations <= kRegisterIterations;
}

// Past H = 128 one CTA cannot hold a layer's rows in shared memory alone (H = 256: 256 KB of
// W_hh against 227 KB) nor in registers alone (256 per lane). Split weights: the rows of the
// first passes in registers, as many whole passes as split_register_chunks 16-byte chunks hold
// at up to kSplitIterations chunks each, and only the others' in shared memory, the Block
// path's float32 kernels compiled for 5 to 8 passes at up to kSplitMaxSamples samples per
// chunk. At 1 sample kSplitRegisterChunks (128 registers; 128 KB of shared memory at H = 256):
// ptxas gave the kernels 157-238 registers, no spills, at sm_80 and sm_90. At 2 samples, whose
// state chunks and accumulators take more, 32 chunks spilled the sm_90 backward, and 24 (96
// registers; 160 KB of shared memory at H = 256) left 149-232, no spills. At 4 samples (the
// Cluster path's split only, below) 20 chunks, 80 registers: 250-254 at sm_90, no spills.
constexpr int kSplitIterations = 8;
constexpr int kSplitMaxSamples = 2;
constexpr int kSplitRegisterChunks = 32;
SIMT_HOST_DEVICE constexpr int64_t split_register_chunks(int64_t samples) {
  return samples <= 1 ? kSplitRegisterChunks : samples == 2 ? 24 : 20;
}
// The passes a split CTA holds in registers: at 1 sample all 5 at H = 129-160, 5 of 6 at
// 161-192, 4 of 7 or 8 at 193-256; at 2 samples 4 of 5 or 6 at 129-192, 3 of 7 or 8 at 193-256.
SIMT_HOST_DEVICE constexpr int split_register_passes(int64_t passes, int64_t chunk_iterations, int64_t samples) {
  const int64_t fit = split_register_chunks(samples) / (chunk_iterations > 0 ? chunk_iterations : 1);
  return static_cast<int>(passes < fit ? passes : fit);
}
SIMT_HOST_DEVICE constexpr bool weights_split(int64_t passes, int64_t chunk_iterations, bool fp64, int64_t samples) {
  return !fp64 && samples <= kSplitMaxSamples && passes > kRegisterPasses && passes <= kMaxPasses &&
         chunk_iterations > kRegisterIterations && chunk_iterations <= kSplitIterations;
}

// The Cluster path past H = 768: a CTA of a 16-CTA cluster owns up to 64 units of up to 1024
// columns, 256 KB of W_hh against 227 KB of shared memory. Its rows split too: at 1 sample per
// chunk the first pass's 32 rows wholly in registers (kClusterSplitIterations chunks a lane, 128
// registers, as the split kernels' kSplitRegisterChunks), the second pass's in shared memory. At
// 2 samples a lane holds split_register_chunks(2) = 24 chunks, so the first pass's rows are
// split along their columns as well: chunk iterations 0-23 in registers, the rest of those rows
// (256 columns at H = 1024, 32 KB) in shared memory beside the second pass's rows: 176 KB a CTA
// with the state rows. At 4 samples (kClusterSplitMaxSamples: 8 clusters of 4 samples hold
// B = 32 in one wave on 132 SMs, where 2 samples took two) 20 chunks, 80 registers: the tails
// past column 640 take 48 KB, 208 KB a CTA with two buffers of 4 state rows (at 16 chunks the
// backward with recorded norms, 233040 bytes, would exceed the 232448 of an H100/H200 CTA). At
// H <= 768 a CTA's rows fit in shared memory (48 units x 768 columns: 144 KB).
constexpr int kClusterSplitMaxSamples = 4;
constexpr int kClusterSplitPasses = 2;
constexpr int kClusterSplitIterations = 32;
constexpr int kClusterSplitMinIterations = 25;  // (H >= 769)
SIMT_HOST_DEVICE constexpr bool cluster_weights_split(int64_t passes, int64_t chunk_iterations, bool fp64,
                                                      int64_t samples) {
  return !fp64 && samples >= 1 && samples <= kClusterSplitMaxSamples && passes == kClusterSplitPasses &&
         chunk_iterations >= kClusterSplitMinIterations && chunk_iterations <= kClusterSplitIterations;
}
// The chunk iterations of the first pass's rows that a split cluster CTA holds in registers
// (the rest of those rows in shared memory: its held rows' tails).
SIMT_HOST_DEVICE constexpr int cluster_split_held_iterations(int64_t samples) {
  return static_cast<int>(split_register_chunks(samples) < kClusterSplitIterations ? split_register_chunks(samples)
                                                                                     : kClusterSplitIterations);
}
static_assert(kClusterSplitIterations <= kSplitRegisterChunks, "a lane holds one pass of the cluster split");

// The Cluster path at H = 129-256 (5-8 chunk iterations), one sample per chunk: a CTA's rows,
// 1 or 2 passes of them, all in registers, kClusterRowIterations chunks a lane each (32
// registers a pass), rows padded with zeros to 256 columns. Its kernels compiled for their
// passes alone read every row from shared memory each step, in a loop over the row's chunks
// whose trips each waited for their loads (sm_90 SASS: 4 trips of 4 16-byte loads and 8
// multiply-adds at H = 256 on 16 CTAs of 16 units). Not 3 or 4 passes, which 128 registers
// would hold too (tried: 179-227 registers at sm_90, no spills): the cost model prices 1 to 4
// passes in registers alike (its step there is its fitted latency chain and epilogue), so it
// moved every cluster plan at H = 129-256 to 2-CTA clusters of 4 passes on a 1% predicted
// difference that no GPU has measured, where 2026-11-30 measured the 8-16 CTA clusters it
// took before.
constexpr int kClusterRowIterations = kSplitIterations;
constexpr int kClusterRowPasses = 2;
SIMT_HOST_DEVICE constexpr bool cluster_rows_in_registers(int64_t passes, int64_t chunk_iterations, bool fp64,
                                                          int64_t samples) {
  return !fp64 && samples == 1 && passes >= 1 && passes <= kClusterRowPasses &&
         chunk_iterations > kRegisterIterations && chunk_iterations <= kClusterRowIterations;
}
static_assert(kClusterRowPasses * kClusterRowIterations <= kSplitRegisterChunks, "a lane holds the rows");
static_assert(kClusterRowIterations < kClusterSplitMinIterations, "the cluster path's register kernels by H");
static_assert(cluster_split_held_iterations(2) < kClusterSplitMinIterations &&
                  cluster_split_held_iterations(kClusterSplitMaxSamples) < kClusterSplitMinIterations,
              "at 2 and 4 samples every row has a tail past the registers' iterations");

// unit_dots with the weights of passes first_pass .. first_pass + kUnits - 1 from registers
// (w[p][i]: chunk q + 8 i of the lane's row in pass p, zero past the row) for the passes below
// kHeldPasses, and from the shared-memory rows shared_rows[i] for those at or past it (split
// weights), over at most kIterations chunk iterations. Where kIterations exceeds kHeld (the
// Cluster path's split at 2 and 4 samples), the held passes' chunk iterations from kHeld on come from
// shared_rows[i] too, which for such a pass addresses its row's tail (chunk c at c *
// vec_size from it, for c >= kHeld * 8). The same sums in the same order. The
// state chunks of up to kLoadedTogether iterations are loaded before their multiply-adds (a lane
// past the row's last chunk loads chunk 0 and skips its products): with a test between them,
// as in a loop that stops at the row's end, each load waited for the previous iteration's
// multiply-adds to be issued, one shared-memory latency per iteration on the step's critical
// path (sm_90 SASS). The first kWholeIterations iterations are whole on every lane (the
// kernel's rows have more chunks than they span: a split kernel's, more than
// kRegisterIterations or kClusterSplitMinIterations - 1 iterations), so they need no test:
// without one the compiler issues their shared-memory weight loads ahead of the multiply-adds
// (behind a test, each waited for its chunk's test and was used at once: sm_90 SASS).
// kWholeRows (RecurrenceCta::kWholeRows: the kernels with weight rows in registers): the rows,
// state rows and tails are padded with zeros over all kIterations, `chunks` counts those that
// hold columns below H, and no lane is tested: a lane past the row's end in an iteration some
// lane needs adds products of zeros, as the padding of a row's last chunk always did (they
// leave every sum as it was, but for the sign of a sum that is exactly -0). Counted (sm_90
// SASS, untimed step loop): the cluster split forward at 2 samples 1002 -> 931 instructions,
// the block forward at 4 passes 206 -> 178.
template <int kUsed, int kIterations, int kWholeIterations = 0, bool kWholeRows = false, typename scalar_t,
          int kHeldPasses, int kHeld, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void register_unit_dots(const Vec16<scalar_t> (&w)[kHeldPasses][kHeld],
                                                    const scalar_t* const (&shared_rows)[kUnits], int first_pass,
                                                    const scalar_t* states, int64_t row_stride, int chunks, int q,
                                                    scalar_t (&acc)[kUnits][kSamples]) {
  static_assert(kIterations >= 1 && kHeld <= kClusterSplitIterations && kIterations <= kClusterSplitIterations,
                "the iterations the registers hold");
  // At most 8 vectors (32 registers) of state chunks in flight.
  constexpr int kLoadedTogether = kSamples >= 8 ? 1 : 8 / kSamples < kIterations ? 8 / kSamples : kIterations;
  // Over more than kSplitIterations chunk iterations at several samples (the Cluster path's
  // split at 2), each state row's chunk q is addressed once and every iteration's chunk at an
  // immediate offset from it: from states + j * row_stride + c the compiler derived the second
  // row's address anew every iteration (sm_90 SASS: that forward's step loop 1071 -> 1002
  // instructions). Elsewhere the two forms counted within a few instructions, or this one more.
  constexpr bool kLaneRowBases = kSamples > 1 && kIterations > kSplitIterations;
  constexpr int kVec = vec_size<scalar_t>();
  const scalar_t* sample_rows[kSamples];  // (kLaneRowBases) row j's chunk 0, and chunk q
  const scalar_t* lane_chunks[kSamples];
  if constexpr (kLaneRowBases) {
    SIMT_UNROLL
    for (int j = 0; j < kSamples; ++j) {
      sample_rows[j] = states + j * row_stride;
      lane_chunks[j] = sample_rows[j] + q * kVec;
    }
  }
  // kWholeRows: the rows are padded with zeros over all kIterations, so every chunk loads as it
  // is, and an iteration's products are skipped only where they are past the row on every lane:
  // one test per iteration, the same for the whole warp.
  const int row_iterations = (chunks + kUnitLanes - 1) / kUnitLanes;
  auto in_row = [&](int it, int c) {  // (a row has at least one chunk: iteration 0 is whole with whole rows)
    return it < kWholeIterations || (kWholeRows ? it == 0 || it < row_iterations : c < chunks);
  };
  zero_tile(acc);
  SIMT_UNROLL
  for (int first = 0; first < kIterations; first += kLoadedTogether) {
    Vec16<scalar_t> h[kLoadedTogether][kSamples];
    SIMT_UNROLL
    for (int g = 0; g < kLoadedTogether; ++g) {
      const int it = first + g;
      const int c = q + it * kUnitLanes;
      if (it >= kIterations) continue;
      const bool whole = kWholeRows || in_row(it, c);  // (else chunk 0: its products are skipped)
      if constexpr (kLaneRowBases) {
        SIMT_UNROLL
        for (int j = 0; j < kSamples; ++j) {
          h[g][j] = load_vec(whole ? lane_chunks[j] + it * kUnitLanes * kVec : sample_rows[j]);
        }
      } else {
        load_state_chunks(states, row_stride, whole ? c : 0, h[g]);
      }
    }
    SIMT_UNROLL
    for (int g = 0; g < kLoadedTogether; ++g) {
      const int it = first + g;
      const int c = q + it * kUnitLanes;
      if (it >= kIterations || !in_row(it, c)) continue;
      SIMT_UNROLL
      for (int i = 0; i < kUsed; ++i) {
        const int p = first_pass + i;
        if (p < kHeldPasses && it < kHeld) {
          accumulate_chunk(w[p][it < kHeld ? it : 0], h[g], acc[i]);
        } else {
          accumulate_chunk(load_vec(shared_rows[i] + c * kVec), h[g], acc[i]);
        }
      }
    }
  }
}

template <typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ scalar_t& tile_at(scalar_t (&acc)[kUnits][kSamples], int v) {
  return acc[v / kSamples][v % kSamples];
}

// The 8 lanes of a unit group hold partial sums of the same tile of outputs. Reduce-scatter
// over lane bits 4, 2, 1: at each level a lane keeps half of the values it holds (the upper
// half if its bit is set), adds the partner's partial sums of that half and sends the other
// half; once a lane holds a single value (tiles of fewer than 8), the remaining levels add the
// partner's sum of it (both lanes then hold the same total). Afterwards acc[0][k],
// k < outputs_per_lane, of lane q is the total of tile value tile_base(q) + k
// (v = pass * kSamples + sample): every lane, or every copy_lanes group of lanes, finishes
// different outputs, so a batch's epilogues run on the lanes side by side. Every total is the
// same tree over the 8 lanes' partial sums (pairs by bit 4, then 2, then 1; a + b == b + a
// in IEEE arithmetic, so which partner keeps it does not matter), whatever the tile: bitwise
// reproducible, independent of the tile's shape. Every lane of the warp must call it.
template <typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void reduce_scatter_tile(scalar_t (&acc)[kUnits][kSamples], int q) {
  constexpr int kTile = kUnits * kSamples;
  static_assert(kTile == 1 || kTile == 2 || kTile == 4 || kTile == 8 || kTile == 16, "a tile of 1 to 16 values");
  SIMT_UNROLL
  for (int level = 0; level < 3; ++level) {
    const int bit = kUnitLanes >> (level + 1);  // 4, 2, 1
    const int half = kTile >> (level + 1);      // values kept at this level
    if (half == 0) {  // one value left: both partners add the other's
      acc[0][0] += __shfl_xor_sync(kFullMask, acc[0][0], bit);
      continue;
    }
    const bool upper = (q & bit) != 0;
    SIMT_UNROLL
    for (int v = 0; v < (kTile + 1) / 2; ++v) {
      if (v < half) {
        const scalar_t low = tile_at(acc, v), high = tile_at(acc, v + half);
        tile_at(acc, v) = (upper ? high : low) + __shfl_xor_sync(kFullMask, upper ? low : high, bit);
      }
    }
  }
}

// The tiled dot products (RecurrenceTiling::tiled_dots; float32, the Grid path at 4 or 8
// samples per chunk, the Cluster path at 4): a whole warp splits the columns of one tile of
// kTileValues outputs, tiled_units(S) units x S samples, instead of 8 lanes splitting one
// unit's. Lane l takes the 16-byte chunks l,
// l + 32, l + 64, ... of the tile's weight rows and of the S state rows, so each chunk a lane
// loads feeds tiled_units(S) or S multiply-add chains: per 4 columns a lane loads 4 + 8 (8
// samples) or 8 + 4 chunks for 128 multiply-adds, where the 8-lane mapping loads 10 for 64 (2
// units x 8 samples a lane on 4 warps: the measured H = 1024 grid steps' bound, 4 wavefronts
// per warp-wide 16-byte load, docs/benchmarks.md). A 32-lane reduce-scatter then leaves lane l
// with output l of the tile. The sums' order differs from the other paths' (32 partial sums
// per output, not 8): these results equal the other paths' within rounding, not bitwise.
constexpr int kTileValues = kWarp;
SIMT_HOST_DEVICE constexpr int tiled_units(int samples) { return kTileValues / samples; }

// acc[i][j] += the products of the tile's rows w_rows[i] and state rows j (at states +
// j * row_stride) over this lane's chunks in [first_chunk, end_chunk): those c with
// c % kWarp == lane, in increasing order, so that splitting a row at any chunk boundaries
// gives bitwise the sums of one call over the whole row.
template <typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void add_tile_dots(const scalar_t* const (&w_rows)[kUnits], const scalar_t* states,
                                               int64_t row_stride, int first_chunk, int end_chunk, int lane,
                                               scalar_t (&acc)[kUnits][kSamples]) {
  const int skip = (lane - first_chunk % kWarp + kWarp) % kWarp;
  for (int c = first_chunk + skip; c < end_chunk; c += kWarp) {
    Vec16<scalar_t> h[kSamples];
    load_state_chunks(states, row_stride, c, h);
    SIMT_UNROLL
    for (int i = 0; i < kUnits; ++i) accumulate_chunk(load_vec(w_rows[i] + c * vec_size<scalar_t>()), h, acc[i]);
  }
}

// The 32 lanes of a warp hold partial sums of the same tile of kTileValues outputs.
// Reduce-scatter over lane bits 16, 8, 4, 2, 1 (as reduce_scatter_tile over 8 lanes): at each
// level a lane keeps the upper half of its values if its bit is set, else the lower, and adds
// the partner's partial sums of that half. Returns the total of tile value `lane` (v = unit *
// kSamples + sample): the same tree over the 32 lanes for every value, bitwise reproducible.
// Every lane of the warp must call it.
template <typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ scalar_t reduce_scatter_warp_tile(scalar_t (&acc)[kUnits][kSamples], int lane) {
  static_assert(kUnits * kSamples == kTileValues, "a tile of one value per lane");
  SIMT_UNROLL
  for (int level = 0; level < 5; ++level) {
    const int bit = (kWarp / 2) >> level;  // 16, 8, 4, 2, 1
    const int half = kTileValues >> (level + 1);
    const bool upper = (lane & bit) != 0;
    SIMT_UNROLL
    for (int v = 0; v < kTileValues / 2; ++v) {
      if (v < half) {
        const scalar_t low = tile_at(acc, v), high = tile_at(acc, v + half);
        tile_at(acc, v) = (upper ? high : low) + __shfl_xor_sync(kFullMask, upper ? low : high, bit);
      }
    }
  }
  return acc[0][0];
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
