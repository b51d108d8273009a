// Backward recurrence (BPTT) of one Elman layer and direction, processing steps s = T-1 .. 0:
//   carry = W_hh^T dz_{s+1}            (zero at a sample's last valid step)
//   g_s   = dy_t + c_{s+1} * carry (+ dh_n at the sample's last valid step)
//   dz_s  = g_s * act'(h_t)            (from the saved output h_t)
// with t = step_time(s, lengths[b], reverse) and c the edge scale of truncation
// (recurrence_math.h edge_scale: 1, 0 for a cut edge, or 1/p for a kept randomized one,
// drawn from the counter-based generator before the launch: edge_scale_table_kernel). The weight, input, bias and h_0 gradients
// follow from dz as whole-sequence GEMMs on the host (elman_gemms.h).
//
// backward_recurrence_kernel<scalar_t, kSamples, kPath, kPasses> mirrors the forward kernel
// (elman_forward_kernel.cuh) with rows of W_hh^T and the group's dz rows as the state. When
// norms are recorded, each lane adds g^2 of its outputs in float64, the lanes of a unit group
// combine theirs by a fixed butterfly, the CTA sums those per sample in unit-group order, and
// the group's CTAs' sums are added (rank order) into step_sq: bitwise-reproducible run to
// run, like the gradients (the order depends on the tile, so not across launch shapes). backward_step_epilogue_kernel is the
// Stepwise path's per-step epilogue.
//
// Arguments (BackwardRecurrenceArgs, all contiguous, compute dtype scalar_t):
//   w_hh     [H,H]    read: the recurrent weight (a CTA loads the columns of its units: rows of W_hh^T)
//   dy       [T,B,H]  read: gradient of the output
//   dh_n     [B,H]    read: gradient of h_n; null: h_n was not used (zero)
//   out      [T,B,H]  read: saved h_t
//   dz       [T,B,H]  written: dz_t at each sample's valid steps, zero at steps t >= lengths[b]
//   dz_first [B,H]    written: dz at each sample's processing step 0 (zero for an empty sample)
//   exchange [2,B,H]  Grid and Stepwise paths: dz at each step (by parity); else null.
//                     Stepwise: slot T % 2 (dz after the last step) zero on entry; Grid:
//                     uninitialised (the last step stages zeros); each slot written before read
//   lengths  [B]      int64 valid steps per sample, or null (all T)
//   truncation        the edge scales' parameters (TruncationParams)
//   drawn_scales [T,B] randomized truncation's edge scales c_s (processing step s, sample b),
//                     drawn before the launch by edge_scale_table_kernel; null without it
//   step_sq  [T,B]    float64 written: ||g_t||^2 at each sample's valid steps, zero past its end; or null
//   norm_partials [3,B,C] float64 scratch of the Grid path's norm sums (C CTAs per group); or null
//   step_g   [T,B,H]  written by the plain copy (kPlain) only: g_t at each sample's valid steps, for
//                     step_norms_kernel to sum after the launch (deferred norms); or null
//   phase_cycles [CTAs,3] int64 written: step-phase timing (PhaseClock), or null (untimed)
//   step_flags [CTAs] unsigned: Grid path with StepSync::FlagBarrier, or with the tagged exchange
//                     and step_sq: the step barrier's flags (StepBarrier; uninitialised, zeroed by
//                     the kernel); else null
//   tagged_exchange [2,B,H] words: Grid path with StepSync::TaggedExchange (float32): dz at step s
//                     with tag T - s in slot s % 2 (uninitialised, zeroed by the kernel; exchange is
//                     then null); else null
#pragma once

#include "cuda/recurrence_paths.cuh"

namespace rnn_fused::kernels {
SIMT_BEGIN_WORLD

template <typename scalar_t>
struct BackwardRecurrenceArgs {
  const scalar_t* w_hh;
  const scalar_t* dy;
  const scalar_t* dh_n;
  const scalar_t* out;
  scalar_t* dz;
  scalar_t* dz_first;
  scalar_t* exchange;
  const int64_t* lengths;
  LayerShape shape;  // input_size unused
  bool reverse;
  Activation activation;
  TruncationParams truncation;
  const scalar_t* drawn_scales;
  double* step_sq;
  double* norm_partials;
  scalar_t* step_g = nullptr;
  int64_t* phase_cycles = nullptr;
  unsigned* step_flags = nullptr;
  unsigned long long* tagged_exchange = nullptr;
};

// g of one (sample, unit) at processing step s < length (the arithmetic every path and the
// layer stack share). carry = (W_hh^T dz_{s+1})_u; edge = c_{s+1}, read only when s + 1 <
// length; dh_n [B,H] the gradient of h_n, or null where h_n was not used (zero).
// kStateGradientGiven: dh_n is never null (the layer stack's kernels: their op fills zeros), so
// the null test is not compiled (it cost those kernels up to 2 registers).
template <bool kStateGradientGiven = false, typename scalar_t>
SIMT_DEVICE __forceinline__ scalar_t backward_gradient(const scalar_t* dh_n, int64_t hidden, int64_t s,
                                                       int64_t length, int64_t b, int64_t u, scalar_t dy,
                                                       scalar_t carry, scalar_t edge) {
  scalar_t g = dy;
  // A cut edge adds nothing (not 0 * carry, which would let an inf/NaN carry through,
  // unlike a detached state).
  if (s + 1 < length && edge != scalar_t(0)) g += edge * carry;
  if ((kStateGradientGiven || dh_n != nullptr) && s == length - 1) g += dh_n[b * hidden + u];
  return g;
}

// Norms. Block path: the CTA's per-sample sums of g^2 are the norms. Grid path: each CTA's
// sums go to partials [3,B,C] in global memory; Cluster path: to cta_sums [3][C][S] in the
// shared memory of the cluster's rank 0 (with the asynchronous exchange by simt::store_async,
// counted on rank 0's mbarrier of the next step: norm_sum_bytes). Either buffer is indexed by
// step modulo 3 (it is rewritten two steps after it was written, once its reader has moved
// on); after the step's barrier (or wait), rank 0 of each group adds the ranks' sums (rank
// order) into step_sq.

// The CTA's sum of g^2 of sample row j: its computing unit groups' sums of one phase
// (phase_sums [kUnitsPerPass][kSamples], the first units_per_pass rows written), in a fixed
// order: kNormPartials partial sums (unit groups p, p + kNormPartials, ...) added pairwise.
// One thread adds them after a step's barrier, on the way to its next dot products: added in
// one chain they were 32 dependent double additions (sm_90 SASS: 32 DADD) on every step of a
// call that records norms; now rounds of 8 loads issued together and 8 independent additions,
// then a tree 3 deep (16 partial sums took up to 63 more registers in some kernels). (The
// ranks' sums that rank 0 then adds on the cluster and grid paths are at most 16, mostly 2-8:
// a chain, as predicated rounds would execute more than they save.)
inline constexpr int kNormPartials = 8;
static_assert(kUnitsPerPassOptions[0] % kNormPartials == 0 && kUnitsPerPassOptions[1] % kNormPartials == 0,
              "cta_sample_sum adds whole rounds of partial sums");
template <int kSamples>
SIMT_DEVICE __forceinline__ double cta_sample_sum(const double* phase_sums, int units_per_pass, int64_t j) {
  double partial[kNormPartials] = {};
  SIMT_NO_UNROLL  // (unrolled, nvcc copied the rounds into every step loop: 258 DADD at 1 sample)
  for (int i = 0; i < units_per_pass; i += kNormPartials) {
    SIMT_UNROLL
    for (int p = 0; p < kNormPartials; ++p) partial[p] += phase_sums[(i + p) * kSamples + j];
  }
  SIMT_UNROLL
  for (int width = kNormPartials / 2; width >= 1; width /= 2) {
    SIMT_UNROLL
    for (int p = 0; p < width; ++p) partial[p] += partial[p + width];
  }
  return partial[0];
}

// step_sq of sample b at processing step s = the sum over the group's ranks (Grid path).
template <typename scalar_t>
SIMT_DEVICE void write_step_norm(const BackwardRecurrenceArgs<scalar_t>& a, const RecurrenceTiling& tiling, int64_t b,
                                 int64_t s) {
  const int64_t length = sample_length(a.lengths, b, a.shape.batch, a.shape.steps);
  if (s >= length) return;
  const double* partials = a.norm_partials + ((s % 3) * a.shape.batch + b) * tiling.ctas_per_group;
  double sum = 0.0;
  for (int64_t r = 0; r < tiling.ctas_per_group; ++r) sum += simt::load_cross_block(partials + r);
  a.step_sq[step_time(s, length, a.reverse) * a.shape.batch + b] = sum;
}

// The CTA's sum of g^2 per sample of a chunk, after the barrier that follows the owners'
// unit_sums writes of this phase (the computing unit groups in order): the step's norm on the
// Block path, a partial on the Grid path. Threads j < kSamples.
// `arrivals`: the Cluster path's asynchronous exchange, rank 0's mbarrier that counts them
// (StepBarrier::step_arrivals after the wait); null: plain stores, ordered by the next barrier.
template <RecurrencePath kPath, int kSamples, typename scalar_t>
SIMT_DEVICE void store_cta_norms(const BackwardRecurrenceArgs<scalar_t>& a, const RecurrenceTiling& tiling,
                                 const CtaPlace& place, const double* unit_sums, double* cta_sums, int64_t first,
                                 int64_t s, unsigned long long* arrivals = nullptr) {
  const int64_t j = threadIdx.x;
  if (j >= kSamples || first + j >= a.shape.batch) return;
  const int64_t b = first + j;
  const double cta_sum = cta_sample_sum<kSamples>(unit_sums, tiling.units_per_pass, j);
  if constexpr (kPath == RecurrencePath::Grid) {
    simt::store_cross_block(a.norm_partials + ((s % 3) * a.shape.batch + b) * tiling.ctas_per_group + place.rank,
                            cta_sum);
  } else if constexpr (kPath == RecurrencePath::Cluster) {
    const int64_t at = ((s % 3) * tiling.ctas_per_group + place.rank) * kSamples + j;
    if (place.rank == 0) {
      cta_sums[at] = cta_sum;
    } else if (arrivals != nullptr) {
      simt::store_async(cta_sums + at, 0u, cta_sum, arrivals);
    } else {
      simt::cluster_map_shared(cta_sums, 0u)[at] = cta_sum;
    }
  } else {
    const int64_t length = sample_length(a.lengths, b, a.shape.batch, a.shape.steps);
    if (s < length) a.step_sq[step_time(s, length, a.reverse) * a.shape.batch + b] = cta_sum;
  }
}

// Cluster path with the asynchronous exchange: the bytes of the other CTAs' norm sums of a step
// that rank 0's phase of the next step counts (store_cta_norms: a double per sample of the
// group within the batch, from each of the C - 1 other ranks); 0 on the other ranks.
template <int kSamples>
SIMT_DEVICE unsigned norm_sum_bytes(const RecurrenceTiling& tiling, const CtaPlace& place, int64_t batch) {
  if (place.rank != 0) return 0;
  const int64_t samples = batch - place.sample_begin < kSamples ? batch - place.sample_begin : kSamples;
  return static_cast<unsigned>((tiling.ctas_per_group - 1) * samples * int64_t(sizeof(double)));
}

// Cluster path, rank 0 after the barrier of step s: the norms of step `finished` from the
// ranks' sums gathered in its shared memory. Threads j < kSamples.
template <int kSamples, typename scalar_t>
SIMT_DEVICE void finish_cluster_norms(const BackwardRecurrenceArgs<scalar_t>& a, const RecurrenceTiling& tiling,
                                      const CtaPlace& place, const double* cta_sums, int64_t finished) {
  const int64_t j = threadIdx.x;
  const int64_t b = place.sample_begin + j;
  if (place.rank != 0 || j >= kSamples || b >= a.shape.batch) return;
  const int64_t length = sample_length(a.lengths, b, a.shape.batch, a.shape.steps);
  if (finished >= length) return;
  double sum = 0.0;
  for (int64_t r = 0; r < tiling.ctas_per_group; ++r) sum += cta_sums[((finished % 3) * tiling.ctas_per_group + r) * kSamples + j];
  a.step_sq[step_time(finished, length, a.reverse) * a.shape.batch + b] = sum;
}

// Grid path, rank 0 of each group after the barrier of step s: the norms of step `finished`.
template <int kSamples, typename scalar_t>
SIMT_DEVICE void finish_group_norms(const BackwardRecurrenceArgs<scalar_t>& a, const RecurrenceTiling& tiling,
                                    const CtaPlace& place, int64_t finished) {
  if (place.rank != 0) return;
  const int64_t group_samples = int64_t(kSamples) * tiling.chunks;
  for (int64_t i = threadIdx.x; i < group_samples; i += blockDim.x) {
    if (place.sample_begin + i < a.shape.batch) write_step_norm(a, tiling, place.sample_begin + i, finished);
  }
}

// Randomized truncation's edge scales, drawn before the backward's launch: scales[l, s, b] =
// edge_scale(truncation with stream truncation.stream + 2 l, s, b) for layer l < layers,
// processing step s < steps and sample b < batch (rounded once to scalar_t, as the kernels
// round edge_scale). Any grid of 1-D CTAs (each thread takes every grid-th entry).
//   scales [layers,T,B] written
// The recurrence kernels read a sample's scale once per step instead of running ten Philox
// rounds: drawn inline, the draws doubled the plain backward's static step loop and took 8-30
// more registers (sm_90 SASS), which kept randomized truncation off the plain copies.
template <typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    edge_scale_table_kernel(TruncationParams truncation, int64_t steps, int64_t batch, int64_t layers,
                            scalar_t* scales) {
  const int64_t per_layer = steps * batch, total = layers * per_layer;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t layer = i / per_layer, s = (i % per_layer) / batch, b = i % batch;
    TruncationParams drawn = truncation;
    drawn.stream = truncation.stream + static_cast<uint32_t>(2 * layer);
    scales[i] = static_cast<scalar_t>(edge_scale(drawn, s, b));
  }
}

// Randomized truncation comes drawn (drawn_scales, which then holds every edge's scale, the
// cuts every K steps too), and only randomized truncation: the kernels run no draws.
template <class Args>
SIMT_DEVICE __forceinline__ void check_drawn_scales(const Args& a) {
  SIMT_KERNEL_CHECK(a.truncation.randomized() == (a.drawn_scales != nullptr),
                    "randomized truncation's edge scales come drawn (drawn_scales), and only they");
}

// A backward kernel's plain copy (kPlain, below) runs only calls that sum no norms in their steps
// (it may write g for deferred norms: step_norms_kernel), and truncate every K steps without
// drawn scales only where PeriodicCut can count the steps (plain_backward_call): a kernel's
// arguments `a` say so.
SIMT_HOST_DEVICE __forceinline__ bool plain_backward_truncation(const TruncationParams& truncation, int64_t steps) {
  return truncation.every == 0 || truncation.randomized() || steps < kPeriodicCutSteps;
}
template <class Args>
SIMT_HOST_DEVICE __forceinline__ bool plain_backward_call(const Args& a) {
  return a.step_sq == nullptr && plain_backward_truncation(a.truncation, a.shape.steps);
}
template <bool kPlain, class Args>
SIMT_DEVICE __forceinline__ void check_plain_call(const Args& a) {
  check_drawn_scales(a);
  SIMT_KERNEL_CHECK(kPlain || a.step_g == nullptr, "only the plain backward writes g for deferred norms");
  if constexpr (kPlain) {
    SIMT_KERNEL_CHECK(plain_backward_call(a), "the plain kernel records no norms");
  }
}

// Grid = tiling.groups * tiling.ctas_per_group CTAs of kRecurrenceThreads threads (cooperative
// on the Grid path), SharedLayout<scalar_t>::make(H, tiling, kPath, step_sq != null, 0, kPasses,
// kIterations).bytes of
// dynamic shared memory. kSamples == tiling.samples; tiling.chunks == 1 except on the Grid path;
// kPasses == compiled_passes(...) of the launch shape (recurrence_paths.cuh; 0: read at run time),
// kIterations == compiled_iterations(...). kPlain: BPTT without recorded norms (step_sq null),
// full, truncated every K steps or randomized, compiled without the norm sums; it finds the
// cut edges by PeriodicCut, or reads the drawn scales. Only the
// kernels compiled for their passes have a plain copy (with_persistent_kernel): there a step is
// a few hundred instructions, and that code, never run by such a call, still took registers and
// kept the compiler from stepping the operands' addresses (sm_90 SASS, counted: the block step
// loop at 1 sample and 1 pass 395 -> 99 static instructions, about 126 -> 92 executed).
template <typename scalar_t, int kSamples, RecurrencePath kPath, int kPasses, bool kPlain = false,
          int kIterations = kPasses>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    backward_recurrence_kernel(BackwardRecurrenceArgs<scalar_t> a, RecurrenceTiling tiling) {
  check_plain_call<kPlain>(a);
  const bool norms = !kPlain && a.step_sq != nullptr;  // uniform over the launch
  // Randomized truncation reads its drawn scales (`drawn`, which hold the cuts every K steps
  // too); else the cuts every K steps come from `periodic` (run's): the plain copy's in 32 bits
  // (plain_backward_call), the general kernels' in 64.
  const bool drawn = a.drawn_scales != nullptr;
  using Cta = RecurrenceCta<scalar_t, kSamples, kPath, kPasses, kIterations>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  SIMT_DYNAMIC_SHARED(scalar_t, smem);
  const SharedLayout<scalar_t> layout = SharedLayout<scalar_t>::make(H, tiling, kPath, norms, 0, kPasses, kIterations);
  Cta cta(smem, layout, tiling, a.shape, a.shape.hidden, blockIdx.x);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  const CtaPlace& place = cta.place;
  double* unit_sums = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + layout.unit_sums_offset);
  double* cta_sums = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + layout.cta_sums_offset);
  cta.load_weights_transposed(a.w_hh);
  // No step after the last: dz_T = 0 (and the padding stays zero).
  for (int64_t i = threadIdx.x; i < state_buffers(kPath, tiling.chunks) * kSamples * cta.row; i += blockDim.x) {
    cta.states[i] = scalar_t(0);
  }
  // dz, and the norms by each group's first CTA, zero past each sample's end (before the steps,
  // which write only valid ones).
  const int64_t group_end = place.sample_begin + int64_t(kSamples) * tiling.chunks;
  zero_past_lengths(a.dz, a.lengths, a.shape, place.sample_begin, group_end, place.unit_begin, place.unit_end);
  if (place.rank == 0) zero_norms_past_lengths(a.step_sq, a.lengths, a.shape, place.sample_begin, group_end);
  __syncthreads();
  cta.cache_weights();
  StepBarrier<kPath> barrier(tiling, place, a.step_flags, a.tagged_exchange, 2 * B * H, norms,
                             layout.exchange_arrivals(smem), cta.exchange_bytes_in(layout));
  barrier.start();
  // With the asynchronous exchange, what rank 0's phase of a step also counts: the other CTAs'
  // norm sums of the step before (none before the first step).
  const unsigned sums_in = norms && barrier.async_exchange() ? norm_sum_bytes<kSamples>(tiling, place, B) : 0u;
  // The steps, timed by `clock` (a PhaseClock); `truncates` (std::bool_constant): the plain
  // copy's steps of a truncated call, which test `periodic` for a cut every K steps or read the
  // drawn scales (its other calls run a copy of the steps without either: in the sm_90 SASS the
  // cut test and the registers it holds cost the block step loop at 1 sample and 1 pass 9 static
  // instructions, 96 -> 105).
  auto run = [&](auto clock, auto truncates) {
    constexpr bool kTruncates = decltype(truncates)::value;
    const bool reads_drawn = (!kPlain || kTruncates) && drawn;  // (false in the plain copy's other steps)
    clock.start();
    // The lane's dy_t and saved h_t, read ahead (Cta::kOperandL1Steps) as the forward reads XW_t:
    // with one chunk (LaneOutputs), step s - kOperandL1Steps's into L1 and step s - 1's into
    // registers during step s; with several chunks, each chunk's into registers as its dot
    // products start.
    const bool one_chunk = cta.chunk_count() == 1;
    scalar_t dy[Cta::kBatches][kOwned] = {}, h[Cta::kBatches][kOwned] = {};
    // With one chunk on the cluster and grid paths, dz_s (and the plain copy's g_s for deferred
    // norms) waits here for the step's barrier (Cta::kStoresAfterBarrier).
    const bool stores_after_barrier = Cta::kStoresAfterBarrier && one_chunk;
    scalar_t dz_out[Cta::kBatches][kOwned] = {}, g_out[Cta::kBatches][kOwned] = {};
    const SampleRows<kOwned> lane_rows(a.lengths, place.sample_begin + cta.first_sample, a.shape, a.reverse);
    LaneOutputs<Cta::kBatches, kOwned> lane(cta, lane_rows, T - 1);
    // With one chunk, the drawn scale of the edge into step s of each of the lane's samples, read
    // during step s for step s - 1 (with the operands: the edge of step T - 1 is never read).
    scalar_t drawn_ahead[kOwned] = {};
    // Or through shared memory (the Block path's OperandRing, where the tiling asks for it).
    using Ring = OperandRing<scalar_t, Cta::kBatches, kOwned>;
    std::conditional_t<Cta::kOperandRing, Ring, NoOperandRing> ring(cta, smem + layout.operand_ring, tiling);
    const bool in_ring = Cta::kOperandRing && tiling.operand_ring != 0 && one_chunk;
    [[maybe_unused]] const scalar_t* const ring_sources[2] = {a.dy, a.out};  // (Block path only)
    auto load_operands = [&](int64_t s, int64_t ahead) {  // step s + ahead's (the lane at step s), one chunk
      if (in_ring) {
        if constexpr (Cta::kOperandRing) {
          ring.wait_oldest();
          lane.for_each_valid(cta, s, ahead, [&](int batch, int k, int64_t) {
            dy[batch][k] = *ring.at(s + ahead, 0, batch, k);
            h[batch][k] = *ring.at(s + ahead, 1, batch, k);
          });
        }
      } else {
        lane.for_each_valid(cta, s, ahead, [&](int batch, int k, int64_t at) {
          dy[batch][k] = a.dy[at];
          h[batch][k] = a.out[at];
        });
      }
      if (reads_drawn) {
        const int64_t into = s + ahead + 1;  // the edge that step s + ahead reads
        SIMT_UNROLL
        for (int k = 0; k < kOwned; ++k) {
          if (into < lane_rows.length[k]) {
            drawn_ahead[k] = a.drawn_scales[into * B + place.sample_begin + cta.first_sample + k];
          }
        }
      }
    };
    auto prefetch_operands = [&](int64_t s, int64_t ahead) {  // step s + ahead's into L1, one chunk
      if constexpr (Cta::kOperandsAheadInL1) {
        if (s + ahead < 0) return;
        lane.for_each_valid(cta, s, ahead, [&](int, int, int64_t at) {
          simt::prefetch_l1(a.dy + at);
          simt::prefetch_l1(a.out + at);
        });
      }
    };
    if (in_ring) {
      if constexpr (Cta::kOperandRing) {
        for (int64_t ahead = 0; ahead < kOperandRingSteps; ++ahead) ring.issue(cta, lane, T - 1, -ahead, ring_sources);
      }
      load_operands(T - 1, 0);
    } else if (one_chunk) {
      for (int64_t ahead = 1; ahead < Cta::kOperandL1Steps; ++ahead) prefetch_operands(T - 1, -ahead);
      load_operands(T - 1, 0);
    }

    int64_t phase = 0;  // chunks computed so far: its parity picks the unit_sums buffer
    std::conditional_t<kPlain, PeriodicCut, WidePeriodicCut> periodic(drawn ? 0 : a.truncation.every, T);
    for (int64_t s = T - 1; s >= 0; --s) {
      // (the edge into step s + 1)
      const bool cut_later = (!kPlain || kTruncates) && periodic.cut(s + 1, a.truncation.every);
      scalar_t* exchange_now = a.exchange != nullptr ? a.exchange + (s % 2) * B * H : nullptr;
      unsigned long long* tagged_now = a.tagged_exchange != nullptr ? a.tagged_exchange + (s % 2) * B * H : nullptr;
      // `later` holds dz at step s+1; `now` takes dz at step s.
      auto step_chunk = [&](int64_t first, const scalar_t* later, scalar_t* now) {
        double* phase_sums = unit_sums + (phase % 2) * kUnitsPerPass * kSamples;
        // The lane's samples (SampleRows), and the edge into step s+1 (once per sample and step,
        // not per unit; with several chunks the drawn scale is read here, before the chunk's dot
        // products, which its latency overlaps).
        const SampleRows<kOwned> rows =
            one_chunk ? lane_rows : SampleRows<kOwned>(a.lengths, first + cta.first_sample, a.shape, a.reverse);
        const int64_t shift = one_chunk ? 0 : rows.shift(s);
        scalar_t edge[kOwned];
        SIMT_UNROLL
        for (int k = 0; k < kOwned; ++k) {
          const int64_t b = first + cta.first_sample + k;
          edge[k] = s + 1 >= rows.length[k] ? scalar_t(0)
                    : reads_drawn      ? (one_chunk ? drawn_ahead[k] : a.drawn_scales[(s + 1) * B + b])
                    : cut_later        ? scalar_t(0)
                                       : scalar_t(1);
        }
        double g_sq[kOwned] = {};  // this lane's outputs of each sample, in batch order
        if (!one_chunk) {
          cta.for_each_owned_output(first, [&](int batch, int k, int64_t, int64_t u) {
            if (s < rows.length[k]) {
              dy[batch][k] = a.dy[rows.origin[k] + u + shift];
              h[batch][k] = a.out[rows.origin[k] + u + shift];
            }
          });
        }
        cta.for_each_output(later, clock, [&](int batch, int k, int64_t u, scalar_t carry) {
          const int64_t j = cta.first_sample + k, b = first + j;
          if (b >= B) return;
          scalar_t d = scalar_t(0);  // a sample past its length passes no gradient on
          if (s < rows.length[k]) {
            const int64_t at = one_chunk ? lane.at[batch][k] : rows.origin[k] + u + shift;
            const scalar_t g = backward_gradient(a.dh_n, H, s, rows.length[k], b, u, dy[batch][k], carry, edge[k]);
            g_sq[k] += static_cast<double>(g) * static_cast<double>(g);
            d = g * slope_runtime(a.activation, h[batch][k]);
            if (stores_after_barrier) {
              dz_out[batch][k] = d;
              if constexpr (kPlain) g_out[batch][k] = g;
            } else {
              a.dz[at] = d;
              if constexpr (kPlain) {
                if (a.step_g != nullptr) a.step_g[at] = g;  // (deferred norms)
              }
            }
          }
          publish_state<kPath>(now, exchange_now, tagged_now, static_cast<unsigned>(T - s), j, b, u, cta.row, H, d);
          if (s == 0) a.dz_first[b * H + u] = d;
        });
        if (norms) {
          // The unit group's sums per sample; read after the next barrier, this parity is
          // written again two chunks later.
          cta.sum_over_unit_group(g_sq);
          if (cta.computes && cta.holds_sample_sums()) {
            SIMT_UNROLL
            for (int k = 0; k < kOwned; ++k) phase_sums[cta.role.unit_in_pass * kSamples + cta.first_sample + k] = g_sq[k];
          }
        }
        ++phase;
      };
      auto after_chunk = [&](int64_t first) {  // Grid path: the chunk's rows and sums are complete
        if (norms) {
          store_cta_norms<kPath, kSamples>(a, tiling, place, unit_sums + ((phase - 1) % 2) * kUnitsPerPass * kSamples,
                                           cta_sums, first, s);
        }
      };
      // dz after the last step is zero: the Grid path stages it from no buffer (zeros); the others
      // from exchange (or from the tagged words of tag T - (s + 1)).
      const scalar_t* exchange_later =
          s == T - 1 || a.exchange == nullptr ? nullptr : a.exchange + ((s + 1) % 2) * B * H;
      const unsigned long long* tagged_later =
          s == T - 1 || a.tagged_exchange == nullptr ? nullptr : a.tagged_exchange + ((s + 1) % 2) * B * H;
      cta.for_each_chunk(Cta::kStateInShared ? nullptr : exchange_later, tagged_later, static_cast<unsigned>(T - 1 - s),
                         (s + 1) % 2, step_chunk, after_chunk, clock, barrier.step_arrivals());
      clock.lap(kComputePhase);
      barrier.arrive(s < T - 1 ? sums_in : 0u);
      if (in_ring) {  // (step s's slot, read during step s + 1, takes step s - kOperandRingSteps's)
        if constexpr (Cta::kOperandRing) ring.issue(cta, lane, s, -kOperandRingSteps, ring_sources);
        if (s > 0) load_operands(s, -1);
        lane.move(-1);
      } else if (one_chunk) {  // (after the arrival: StepBarrier::arrive)
        prefetch_operands(s, -Cta::kOperandL1Steps);
        if (s > 0) load_operands(s, -1);
        lane.move(-1);
      }
      barrier.wait();
      clock.lap(kBarrierPhase);
      if (stores_after_barrier) {  // step s's dz and g (the lane is at step s - 1)
        lane.for_each_valid(cta, s - 1, 1, [&](int batch, int k, int64_t at) {
          a.dz[at] = dz_out[batch][k];
          if constexpr (kPlain) {
            if (a.step_g != nullptr) a.step_g[at] = g_out[batch][k];
          }
        });
      }
      if (norms) {
        if constexpr (Cta::kStateInShared) {  // (the asynchronous exchange's: counted by the next step's phase)
          store_cta_norms<kPath, kSamples>(a, tiling, place, unit_sums + ((phase - 1) % 2) * kUnitsPerPass * kSamples,
                                           cta_sums, place.sample_begin, s, barrier.step_arrivals());
        }
        if constexpr (kPath == RecurrencePath::Cluster) {
          if (s + 1 < T) finish_cluster_norms<kSamples>(a, tiling, place, cta_sums, s + 1);
        } else if constexpr (kPath == RecurrencePath::Grid) {
          if (s + 1 < T) finish_group_norms<kSamples>(a, tiling, place, s + 1);
        }
        clock.lap(kComputePhase);
      }
    }
    if constexpr (Cta::kOperandRing) {
      if (in_ring) ring.finish();  // (the copies of the steps before 0: empty groups)
    }
    clock.store();
    if (norms) {
      // Step 0's sums are complete after one more barrier (which also keeps every CTA of a
      // cluster alive until rank 0's shared memory is no longer written); with the asynchronous
      // exchange after rank 0's phase of them alone (finish()'s barrier keeps the CTAs alive).
      if constexpr (kPath == RecurrencePath::Grid) {
        barrier.arrive();
        barrier.wait();
        finish_group_norms<kSamples>(a, tiling, place, 0);
      } else if constexpr (kPath == RecurrencePath::Cluster) {
        if (!barrier.async_exchange()) {
          barrier.arrive();
          barrier.wait();
        } else if (place.rank == 0) {
          barrier.arrive_extra(sums_in);
          barrier.wait();
        }
        finish_cluster_norms<kSamples>(a, tiling, place, cta_sums, 0);
      }
    }
    barrier.finish();
  };
  run_with_phase_clock<kPasses>(a.phase_cycles, layout.phase_running(smem), [&](auto clock) {
    if constexpr (kPlain) {
      if (a.truncation.cuts()) {
        run(clock, std::true_type{});
        return;
      }
    }
    run(clock, std::false_type{});
  });
}

// The backward of a stack of L unidirectional layers in one launch, the mirror of
// forward_stack_kernel (elman_forward_kernel.cuh): processing steps s = T-1 .. 0, layer l a few
// steps behind layer l + 1. One CTA per (layer, sample group) holds 2H rows, W_hh^T of its
// layer and W_ih^T of its layer (unused for layer 0, whose input gradient the host takes from
// dz by a GEMM), interleaved by halves of each pass (stack_row), so the dot products of step s against
// dz_{s+1} give the recurrent carry and the gradient of the layer below's output at time
// s + 1, dy^{l-1}_{s+1} = W_ih^T dz_{s+1}, handed down in tagged words; step -1 computes
// dy^{l-1}_0 only. Float32, the Block path's arithmetic (backward_gradient, the truncation's edge
// scales drawn with stream 2 l as each layer's own backward draws them; recorded norms summed
// as the Block path sums them: each lane's g^2, its unit group's butterfly, the CTA's unit
// groups in order after the step's barrier). With dropout between layers the
// gradient handed down is scaled by the layer below's mask (its output's share of this layer's
// input). Cooperative launch.
//
// Arguments (BackwardStackArgs, all contiguous float32 but the lengths and the words):
//   w_stacked [L,2H,H] read: per layer W_hh^T, then W_ih^T (layer 0's second half: rows whose
//                     dot products are dropped)
//   dy        [T,B,H]  read: the gradient of the top layer's output
//   dh_n      [L,B,H]  read: the gradients of the final states (never null: zeros where unused)
//   out       [L,T,B,H] read: every layer's saved h_t
//   dz        [L,T,B,H] written: each layer's dz_t at each sample's valid steps, zero past its end
//   dz_first  [L,B,H]  written: dz at each sample's step 0 (zero for an empty sample)
//   dy_tagged [L-1,T,B,H] words: slot l holds layer l's dy_t in tagged words, stored by layer
//                     l + 1's CTAs at valid steps; zero on entry
//   lengths   [B]      int64 valid steps per sample, or null (all T)
//   truncation         layer 0's edge-scale parameters (layer l's: stream 2 l)
//   drawn_scales [L,T,B] randomized truncation's edge scales of each layer (edge_scale_table_kernel
//                     with `layers` L), or null without it
//   dropout_masks [L-1,T,B,H] read: as for forward_stack_kernel, or null
//   step_sq   [L,T,B]  float64 written: ||g_t||^2 of each layer at each sample's valid steps, zero
//                     past its end; or null: no norms
//   step_g    [L,T,B,H] written by the plain copy (kPlain) only: each layer's g_t at each sample's
//                     valid steps, for step_norms_kernel to sum after the launch (deferred norms);
//                     or null
struct BackwardStackArgs {
  const float* w_stacked;
  const float* dy;
  const float* dh_n;
  const float* out;
  float* dz;
  float* dz_first;
  unsigned long long* dy_tagged;
  const int64_t* lengths;
  LayerShape shape;  // one layer's (input_size unused)
  int64_t layers;
  Activation activation;
  TruncationParams truncation;
  const float* dropout_masks = nullptr;
  double* step_sq = nullptr;
  const float* drawn_scales = nullptr;
  float* step_g = nullptr;
};

// A stack lane's edge scales into processing step `into` (>= 1 inside the sequence) of its
// samples first, first + 1, ... (lengths[k] valid steps each; 0 past a sample's end and outside the
// sequence): from the layer's drawn scales [T,B] (`drawn`, or null), or 0 at a cut every K steps
// (`cut`, the kernel's periodic cut), else 1.
template <int kOwned>
SIMT_DEVICE __forceinline__ void stack_edge_scales(float (&edge)[kOwned], int64_t into, const int64_t (&lengths)[kOwned],
                                                   int64_t first, int64_t batch, const float* drawn, bool cut) {
  SIMT_UNROLL
  for (int k = 0; k < kOwned; ++k) {
    edge[k] = into < 1 || into >= lengths[k] ? 0.0f
              : drawn != nullptr             ? drawn[into * batch + first + k]
              : cut                          ? 0.0f
                                             : 1.0f;
  }
}

// Grid, tiling, shared memory and kPasses as for forward_stack_kernel; kPlain as for
// backward_recurrence_kernel (block step loop at 1 sample and 1 pass, sm_90: 459 -> 190 static
// instructions).
template <int kSamples, int kPasses, bool kPlain = false>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    backward_stack_kernel(BackwardStackArgs a, RecurrenceTiling tiling) {
  check_plain_call<kPlain>(a);
  using Cta = RecurrenceCta<float, kSamples, RecurrencePath::Block, kPasses, stack_iterations(kPasses)>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden;
  const StackPlace place = stack_place(tiling, a.layers);
  const int64_t layer = place.layer, sequence = T * B * H, state = B * H;
  const bool top = place.top, bottom = place.bottom;
  SIMT_DYNAMIC_SHARED(float, smem);
  const SharedLayout<float> layout =
      SharedLayout<float>::make(H, tiling, RecurrencePath::Block, true, kStackStateBuffers, kPasses,
                                stack_iterations(kPasses));
  Cta cta(smem, layout, tiling, a.shape, tiling.units_per_cta, place.block);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  const int64_t R = cta.row, per_pass = tiling.units_per_pass;
  const bool norms = !kPlain && a.step_sq != nullptr;  // uniform over the launch
  double* unit_sums = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + layout.unit_sums_offset);
  load_stack_rows(a.w_stacked + layer * 2 * H * H, cta.weights, cta.units, per_pass, H, R);
  for (int64_t i = threadIdx.x; i < 2 * kSamples * R; i += blockDim.x) cta.states[i] = 0.0f;  // dz_T = 0
  __syncthreads();
  cta.cache_weights();
  const float* out = a.out + layer * sequence;
  float* dz = a.dz + layer * sequence;
  float* step_g = a.step_g != nullptr ? a.step_g + layer * sequence : nullptr;  // (the plain copy's only)
  // The layer's dz and norms zero past each sample's end (the CTA holds all its units), before
  // the steps, which write only valid ones.
  zero_past_lengths(dz, a.lengths, a.shape, cta.place.sample_begin, cta.place.sample_begin + kSamples, 0, H);
  if (norms) {
    zero_norms_past_lengths(a.step_sq + layer * T * B, a.lengths, a.shape, cta.place.sample_begin,
                            cta.place.sample_begin + kSamples);
  }
  const float* dh_n = a.dh_n + layer * state;
  float* dz_first = a.dz_first + layer * state;
  const unsigned long long* dy_words = top ? nullptr : a.dy_tagged + layer * sequence;
  unsigned long long* below_words = bottom ? nullptr : a.dy_tagged + (layer - 1) * sequence;
  const float* masks_below = a.dropout_masks != nullptr && !bottom ? a.dropout_masks + (layer - 1) * sequence : nullptr;
  // (as in backward_recurrence_kernel; the layer's drawn scales [T,B], or null)
  const float* drawn = a.drawn_scales != nullptr ? a.drawn_scales + layer * T * B : nullptr;
  std::conditional_t<kPlain, PeriodicCut, WidePeriodicCut> periodic(drawn == nullptr ? a.truncation.every : 0, T);
  PhaseClock<false> clock(nullptr, nullptr);
  const SampleRows<kOwned> lane_rows(a.lengths, cta.place.sample_begin + cta.first_sample, a.shape, false);
  // The row this lane owns in each batch (the same every step).
  StackRow lane_row[Cta::kBatches] = {};
  cta.for_each_owned_unit([&](int batch, int64_t u) { lane_row[batch] = stack_row(u, per_pass); });
  // Offsets of each output's unit (stack_row) at step s in the [T,B,H] tensors.
  LaneOutputs<Cta::kBatches, kOwned> lane(cta, lane_rows, T - 1,
                                          [&](int64_t u) { return stack_row(u, per_pass).unit; });
  // The lane's operands of step s + ahead (the lane at step s), read one step ahead: the saved
  // h_t, and dy_t (the top layer's) or its tagged word (checked where the value is used); on a
  // projection lane with dropout, the layer below's mask at the time it hands down (s + ahead + 1).
  float dy[Cta::kBatches][kOwned] = {}, h[Cta::kBatches][kOwned] = {}, mask_below[Cta::kBatches][kOwned] = {};
  unsigned long long dy_word[Cta::kBatches][kOwned] = {};
  auto load_operands = [&](int64_t s, int64_t ahead) {
    const int64_t shift = ahead * lane.time_stride;
    cta.for_each_owned_output(cta.place.sample_begin, [&](int batch, int k, int64_t, int64_t) {
      const StackRow& row = lane_row[batch];
      if (row.unit >= H) return;
      if (row.projection) {
        if (masks_below != nullptr && s + ahead + 1 < lane.length[k]) {
          mask_below[batch][k] = masks_below[lane.at[batch][k] + shift + lane.time_stride];
        }
        return;
      }
      if (s + ahead < 0 || s + ahead >= lane.length[k]) return;
      const int64_t at = lane.at[batch][k] + shift;
      h[batch][k] = out[at];
      if (dy_words == nullptr) {
        dy[batch][k] = a.dy[at];
      } else {
        dy_word[batch][k] = simt::load_relaxed(dy_words + at);
      }
    });
  };
  // The steps; `truncates` (std::bool_constant) as in backward_recurrence_kernel's run: the plain
  // copy's steps of a truncated call, which test `periodic` for a cut every K steps or read the
  // drawn scales (its full-BPTT steps carry neither).
  auto run = [&](auto truncates) {
    constexpr bool kTruncates = decltype(truncates)::value;
    const float* step_drawn = kPlain && !kTruncates ? nullptr : drawn;  // (null in the plain copy's other steps)
    load_operands(T - 1, 0);
    for (int64_t s = T - 1; s >= -1; --s) {
      // (the edge into step s + 1)
      const bool cut_later = (!kPlain || kTruncates) && periodic.cut(s + 1, a.truncation.every);
      const int64_t parity = (T - 1 - s) % 2;
      const float* later = cta.states + parity * kSamples * R;  // dz_{s+1}
      float* now = cta.states + (1 - parity) * kSamples * R;     // takes dz_s
      float edge[kOwned];
      stack_edge_scales(edge, s + 1, lane.length, cta.place.sample_begin + cta.first_sample, B, step_drawn, cut_later);
      double g_sq[kOwned] = {};  // this lane's recurrence outputs of each sample (norms)
      cta.for_each_output(later, clock, [&](int batch, int k, int64_t, float total) {
        const int64_t j = cta.first_sample + k, b = cta.place.sample_begin + j;
        const StackRow& row = lane_row[batch];
        const int64_t u = row.unit;
        if (b >= B || u >= H) return;
        if (row.projection) {  // the layer below's dy at step s + 1: W_ih^T dz_{s+1}
          if (bottom || s + 1 >= lane.length[k]) return;
          const int64_t at = lane.at[batch][k] + lane.time_stride;  // (unit u, step s + 1)
          const float handed = masks_below != nullptr ? total * mask_below[batch][k] : total;
          simt::store_relaxed(below_words + at, simt::tag_word(handed, kStackTag));
          return;
        }
        if (s < 0) return;
        float d = 0.0f;  // a sample past its length passes no gradient on
        if (s < lane.length[k]) {
          const int64_t at = lane.at[batch][k];
          const float gradient_in = handed_operand(dy[batch][k], dy_word[batch][k], dy_words, at);
          const float g = backward_gradient<true>(dh_n, H, s, lane.length[k], b, u, gradient_in, total, edge[k]);
          if (norms) g_sq[k] += static_cast<double>(g) * static_cast<double>(g);
          d = g * slope_runtime(a.activation, h[batch][k]);
          dz[at] = d;
          if constexpr (kPlain) {
            if (step_g != nullptr) step_g[at] = g;  // (deferred norms)
          }
        }
        publish_state<RecurrencePath::Block>(now, static_cast<float*>(nullptr), nullptr, 0u, j, b, u, R, H, d);
        if (s == 0) dz_first[b * H + u] = d;
      });
      double* phase_sums = unit_sums + parity * kUnitsPerPass * kSamples;
      if (norms && s >= 0) {
        // The unit group's sums per sample (zero on the projection warps), read after the step's
        // barrier; this parity is written again two steps later.
        cta.sum_over_unit_group(g_sq);
        if (cta.computes && cta.holds_sample_sums()) {
          SIMT_UNROLL
          for (int k = 0; k < kOwned; ++k) {
            phase_sums[cta.role.unit_in_pass * kSamples + cta.first_sample + k] = g_sq[k];
          }
        }
      }
      if (s >= 0) {  // (step -1 only hands down dy_0: the loop ends without a barrier)
        load_operands(s, -1);
        lane.move(-1);
        __syncthreads();
        const int64_t j = threadIdx.x, b = cta.place.sample_begin + j;
        if (norms && j < kSamples && b < B && s < sample_length(a.lengths, b, B, T)) {
          a.step_sq[(layer * T + s) * B + b] = cta_sample_sum<kSamples>(phase_sums, tiling.units_per_pass, j);
        }
      }
    }
  };
  if constexpr (kPlain) {
    if (a.truncation.cuts()) {
      run(std::true_type{});
      return;
    }
  }
  run(std::false_type{});
}

// The backward of the Cluster path's layer stack (forward_cluster_stack_kernel's launch shape and
// clusters) in one launch, the mirror of its forward: a CTA of layer l holds its units' rows of
// W_hh^T (the carry) against the layer's dz rows, and of the layer above's W_ih^T against that
// layer's dz rows (its output gradient dy^l_t = W_ih^{l+1 T} dz^{l+1}_t, times layer l's dropout
// mask; the top layer reads dy), two dot products on one tiling, so that truncation scales the
// carry alone. A wavefront from the top: at step w layer l is at time t = T - 1 - w + (L - 1 -
// l), one step after the layer above, whose dz^{l+1}_t it received at the end of step w - 1.
// Each CTA's slice of dz^l goes into its layer's other CTAs and into the layer below's CTAs'
// above rows; one cluster barrier per step. Truncation as each layer's own backward (stream
// 2 l). Recorded norms as the Cluster path's layer kernel sums them: each lane's g^2, its unit
// group's butterfly, the CTA's unit groups in order after the step's barrier, then the layer's
// CTAs in rank order by its first CTA, which gathers their sums in its shared memory by
// distributed shared memory and writes the step's norm after the next barrier.
//
// Arguments: BackwardStackArgs as backward_stack_kernel's (w_stacked [L,2H,H] per layer W_hh^T,
// then its W_ih^T; dy [T,B,H] the top layer's; out, dz [L,T,B,H]; dz_first, dh_n [L,B,H];
// dropout_masks [L-1,T,B,H] or null; step_sq [L,T,B] or null; dy_tagged unused, null). Grid,
// tiling and kPasses as for forward_cluster_stack_kernel, shared memory
// SharedLayout<float>::make(2 * padded_row(H), tiling, Cluster, true).bytes for both (the 2 x
// padded_row(H) columns hold the two kinds of rows side by side: [U][half] each, then two pairs
// of state buffers; then the norm sums: unit_sums, and cta_sums [3][P][S] of the layer's CTAs).
// kPlain as for backward_recurrence_kernel (step loop at 1 sample and 1 pass, sm_90: 865 -> 435
// static instructions).
template <int kSamples, int kPasses, bool kPlain = false>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads, kPersistentMinBlocksPerSm)
    backward_cluster_stack_kernel(BackwardStackArgs a, RecurrenceTiling tiling) {
  check_plain_call<kPlain>(a);
  using Cta = RecurrenceCta<float, kSamples, RecurrencePath::Cluster, kPasses>;
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, L = a.layers;
  const int64_t half = padded_row(H, vec_size<float>());
  const ClusterStackPlace at = cluster_stack_place(tiling, L);
  const int64_t layer = at.layer, sequence = T * B * H, state = B * H, delay = L - 1 - layer;
  const bool top = layer == L - 1;
  const bool norms = !kPlain && a.step_sq != nullptr;  // uniform over the launch
  SIMT_DYNAMIC_SHARED(float, smem);
  // The forward's layout, its rows and state buffers each split in two of `half` columns: the
  // layer's own (W_hh^T, dz^l) and the layer above's (W_ih^{l+1 T}, dz^{l+1}).
  const SharedLayout<float> whole = SharedLayout<float>::make(2 * half, tiling, RecurrencePath::Cluster, true);
  SharedLayout<float> own_layout = whole, above_layout = whole;
  own_layout.row = above_layout.row = half;
  above_layout.weights = whole.weights + int64_t(tiling.units_per_cta) * half;
  above_layout.states = whole.states + 2 * kSamples * half;
  Cta cta(smem, own_layout, tiling, a.shape, H, at.block);
  const Cta above(smem, above_layout, tiling, a.shape, H, at.block);
  cta.check_compiled_passes();
  constexpr int kOwned = Cta::kOwned;
  load_cluster_stack_rows_transposed(a.w_stacked, cta.weights, above.weights, layer, L, cta.place.unit_begin,
                                     cta.units, H, half);
  for (int64_t i = threadIdx.x; i < 4 * kSamples * half; i += blockDim.x) cta.states[i] = 0.0f;  // dz_T = 0
  __syncthreads();
  StepBarrier<RecurrencePath::Cluster> barrier(tiling, cta.place, nullptr, nullptr, 0, false);
  // Norms: per step parity the unit groups' sums (unit_sums [2][kUnitsPerPass][S]), per step
  // modulo 3 the layer's CTAs' sums in its first CTA (cta_sums [3][P][S]: written after the
  // step's barrier, read after the next one, rewritten three steps later).
  double* unit_sums = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + whole.unit_sums_offset);
  double* cta_sums = reinterpret_cast<double*>(reinterpret_cast<unsigned char*>(smem) + whole.cta_sums_offset);
  const int64_t per_layer = tiling.ctas_per_group;
  const unsigned gatherer = static_cast<unsigned>(layer * per_layer);  // the layer's first CTA (cluster rank)
  // The first CTA's norm of the layer's step `done` (wavefront step), from its CTAs' sums. Threads j < S.
  auto finish_norms = [&](int64_t done) {
    const int64_t j = threadIdx.x, b = cta.place.sample_begin + j, t = T - 1 - done + delay;
    if (at.layer_rank != 0 || j >= kSamples || b >= B || t < 0 || t >= sample_length(a.lengths, b, B, T)) return;
    double sum = 0.0;
    for (int64_t r = 0; r < per_layer; ++r) sum += cta_sums[((done % 3) * per_layer + r) * kSamples + j];
    a.step_sq[(layer * T + t) * B + b] = sum;
  };
  barrier.start();
  const float* out = a.out + layer * sequence;
  float* dz = a.dz + layer * sequence;
  float* step_g = a.step_g != nullptr ? a.step_g + layer * sequence : nullptr;  // (the plain copy's only)
  // The CTA's dz outputs, and the layer's norms by its first CTA, zero past each sample's end,
  // before the steps, which write only valid ones.
  zero_past_lengths(dz, a.lengths, a.shape, cta.place.sample_begin, cta.place.sample_begin + kSamples,
                    cta.place.unit_begin, cta.place.unit_end);
  if (norms && at.layer_rank == 0) {
    zero_norms_past_lengths(a.step_sq + layer * T * B, a.lengths, a.shape, cta.place.sample_begin,
                            cta.place.sample_begin + kSamples);
  }
  const float* dh_n = a.dh_n + layer * state;
  float* dz_first = a.dz_first + layer * state;
  const float* masks = a.dropout_masks != nullptr && !top ? a.dropout_masks + layer * sequence : nullptr;
  // (as in backward_recurrence_kernel; the layer's drawn scales [T,B], or null)
  const float* drawn = a.drawn_scales != nullptr ? a.drawn_scales + layer * T * B : nullptr;
  std::conditional_t<kPlain, PeriodicCut, WidePeriodicCut> periodic(drawn == nullptr ? a.truncation.every : 0,
                                                                    T + delay);  // (t + 1 at w = 0)
  PhaseClock<false> clock(nullptr, nullptr);
  const SampleRows<kOwned> lane_rows(a.lengths, cta.place.sample_begin + cta.first_sample, a.shape, false);
  LaneOutputs<Cta::kBatches, kOwned> lane(cta, lane_rows, T - 1 + delay);  // at time t of step 0
  // The lane's saved h_t, dy_t (the top layer) and mask (with dropout), read one step ahead.
  float h[Cta::kBatches][kOwned] = {}, dy[Cta::kBatches][kOwned] = {}, mask[Cta::kBatches][kOwned] = {};
  // dz_t (and the plain copy's g_t for deferred norms), stored after the step's barrier.
  float dz_out[Cta::kBatches][kOwned] = {}, g_out[Cta::kBatches][kOwned] = {};
  float from_above[Cta::kBatches][kOwned] = {};
  auto load_operands = [&](int64_t t, int64_t ahead) {  // time t + ahead's (the lane at time t)
    if (t + ahead < 0) return;
    lane.for_each_valid(cta, t, ahead, [&](int batch, int k, int64_t offset) {
      h[batch][k] = out[offset];
      if (top) dy[batch][k] = a.dy[offset];
      if (masks != nullptr) mask[batch][k] = masks[offset];
    });
  };
  // The steps; `truncates` as in backward_stack_kernel.
  auto run = [&](auto truncates) {
    constexpr bool kTruncates = decltype(truncates)::value;
    const float* step_drawn = kPlain && !kTruncates ? nullptr : drawn;  // (null in the plain copy's other steps)
    load_operands(T - 1 + delay, 0);
    for (int64_t w = 0; w < T + L - 1; ++w) {
      const int64_t t = T - 1 - w + delay;
      // (the edge into step t + 1)
      const bool cut_later = (!kPlain || kTruncates) && periodic.cut(t + 1, a.truncation.every);
      float* own_now = cta.states + (w % 2) * kSamples * half;
      float* own_next = cta.states + (1 - w % 2) * kSamples * half;
      const float* above_now = above.states + (w % 2) * kSamples * half;
      float* above_next = above.states + (1 - w % 2) * kSamples * half;
      if (!top) {
        above.template for_each_output<false>(above_now, clock,
                              [&](int batch, int k, int64_t, float total) { from_above[batch][k] = total; });
      }
      // The edge into step t + 1 of each of the lane's samples, before the dot products (whose
      // time a drawn scale's load overlaps).
      float edge[kOwned];
      stack_edge_scales(edge, t + 1, lane.length, cta.place.sample_begin + cta.first_sample, B, step_drawn, cut_later);
      double g_sq[kOwned] = {};  // this lane's outputs of each sample (norms)
      cta.template for_each_output<false>(own_now, clock, [&](int batch, int k, int64_t u, float carry) {
        const int64_t j = cta.first_sample + k, b = cta.place.sample_begin + j;
        if (b >= B || t >= T || t < 0) return;  // (before its first step dz_{t+1} stays zero; after t = 0, done)
        float d = 0.0f;  // a sample past its length passes no gradient on
        if (t < lane.length[k]) {
          const float output_gradient = top ? dy[batch][k] : masks != nullptr ? from_above[batch][k] * mask[batch][k]
                                                                              : from_above[batch][k];
          const float g = backward_gradient<true>(dh_n, H, t, lane.length[k], b, u, output_gradient, carry, edge[k]);
          if (norms) g_sq[k] += static_cast<double>(g) * static_cast<double>(g);
          d = g * slope_runtime(a.activation, h[batch][k]);
          dz_out[batch][k] = d;
          if constexpr (kPlain) g_out[batch][k] = g;
        }
        own_next[j * half + u] = d;
        if (t == 0) dz_first[b * H + u] = d;
      });
      double* phase_sums = unit_sums + (w % 2) * kUnitsPerPass * kSamples;
      if (norms) {  // the unit group's sums per sample, read after the step's barrier
        cta.sum_over_unit_group(g_sq);
        if (cta.computes && cta.holds_sample_sums()) {
          SIMT_UNROLL
          for (int k = 0; k < kOwned; ++k) {
            phase_sums[cta.role.unit_in_pass * kSamples + cta.first_sample + k] = g_sq[k];
          }
        }
      }
      share_cluster_stack_slice<kSamples>(own_next, own_next, above_next, layer - 1, at, cta.place, tiling, H, half,
                                          half);
      barrier.arrive();
      load_operands(t, -1);  // (after the arrival: StepBarrier::arrive)
      barrier.wait();
      if (t >= 0 && t < T) {  // step w's dz_t (stored after the barrier: Cta::kStoresAfterBarrier)
        lane.for_each_valid(cta, t, 0, [&](int batch, int k, int64_t offset) {
          dz[offset] = dz_out[batch][k];
          if constexpr (kPlain) {
            if (step_g != nullptr) step_g[offset] = g_out[batch][k];
          }
        });
      }
      if (norms) {
        // The CTA's sums of step w into the layer's first CTA, which adds them up after the next
        // barrier, as it now does those of step w - 1.
        const int64_t j = threadIdx.x;
        if (j < kSamples && t >= 0 && t < T) {
          const double sum = cta_sample_sum<kSamples>(phase_sums, tiling.units_per_pass, j);
          const int64_t slot = ((w % 3) * per_layer + at.layer_rank) * kSamples + j;
          if (at.layer_rank == 0) {
            cta_sums[slot] = sum;
          } else {
            simt::cluster_map_shared(cta_sums, gatherer)[slot] = sum;
          }
        }
        if (w > 0) finish_norms(w - 1);
      }
      lane.move(-1);
    }
  };
  if constexpr (kPlain) {
    if (a.truncation.cuts()) {
      run(std::true_type{});
      return;  // (the plain copy records no norms)
    }
  }
  run(std::false_type{});
  if (norms) {  // the last step's sums are complete after one more barrier
    barrier.arrive();
    barrier.wait();
    finish_norms(T + L - 2);
  }
}

// Stepwise path, processing step s: the epilogue of the backward step after the cuBLAS
// product carry = dz_{s+1} W_hh. One CTA per sample b (grid = B, kRecurrenceThreads threads);
// thread i takes units i, i + blockDim.x, ... in order and the CTA sums g^2 in a fixed tree.
//   carry [B,H] read; dz_now [B,H] written: dz at step s (zero past the sample's length),
//   the next step's product operand; the other arguments as in BackwardRecurrenceArgs.
template <typename scalar_t>
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kRecurrenceThreads)
    backward_step_epilogue_kernel(BackwardRecurrenceArgs<scalar_t> a, const scalar_t* carry, scalar_t* dz_now,
                                  int64_t s) {
  SIMT_SHARED(double[kRecurrenceThreads / kWarp], warp_sums);
  check_drawn_scales(a);
  const int64_t B = a.shape.batch, H = a.shape.hidden, T = a.shape.steps;
  const int64_t b = blockIdx.x;
  const int64_t length = sample_length(a.lengths, b, B, T);
  const int64_t t = step_time(s, length, a.reverse);
  const scalar_t edge =
      s + 1 >= length             ? scalar_t(0)
      : a.drawn_scales != nullptr ? a.drawn_scales[(s + 1) * B + b]
                                  : static_cast<scalar_t>(edge_scale(a.truncation.periodic_part(), s + 1, b));
  double g_sq = 0.0;
  for (int64_t u = threadIdx.x; u < H; u += blockDim.x) {
    scalar_t d = scalar_t(0);
    if (s < length) {
      const int64_t at = time_major_offset(t, b, u, B, H);
      const scalar_t g = backward_gradient(a.dh_n, H, s, length, b, u, a.dy[at], carry[b * H + u], edge);
      g_sq += static_cast<double>(g) * static_cast<double>(g);
      d = g * slope_runtime(a.activation, a.out[at]);
      a.dz[at] = d;
    } else {
      a.dz[time_major_offset(s, b, u, B, H)] = scalar_t(0);  // (time s is past the sample's end)
    }
    dz_now[b * H + u] = d;
    if (s == 0) a.dz_first[b * H + u] = d;
  }
  if (a.step_sq == nullptr) return;  // uniform over the CTA
  if (s >= length) {
    if (threadIdx.x == 0) a.step_sq[s * B + b] = 0.0;  // (time s is past the sample's end)
    return;
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) g_sq += __shfl_xor_sync(kFullMask, g_sq, offset);
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  if (threadIdx.x % kWarp == 0) warp_sums[warp] = g_sq;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) sum += warp_sums[w];
    a.step_sq[t * B + b] = sum;
  }
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
