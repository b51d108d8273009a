// The cost model the recurrence planner chooses paths with (csrc/cuda/elman_launch.h), in
// microseconds. Pure arithmetic on sizes and the constants below; no torch, no CUDA.
//
// Two sets of constants (struct Constants below):
// - kFirstKernels: measured on an NVIDIA H200 (132 SMs, CUDA 13.0, driver 580.159, 2026-11-30;
//   docs/benchmarks.md#gpu-measured) or fitted to the first kernels' times there. The
//   reference models (the first grid kernel, cuDNN's per-step GEMMs) were fitted with these,
//   and tests/test_cost_model.py holds them to those measurements: within 30% at every row.
// - kH200, what the planner prices with: the same with every per-step constant refitted
//   (rnn-fused fit-model) to the run of `make gpu-check` of 2026-12-04 10:54 UTC on an H200
//   (fitted_h200; before it, to the run of 2026-11-30 22:56 UTC). Under them the model's choice
//   among the launch shapes autotuning timed there is within 3% of the measured fastest
//   (geometric mean over 44 recurrences; 17% with the 2026-11-30 fit),
//   tests/test_planner_measured.py.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "outer_product_chunks.h"
#include "recurrence_math.h"

namespace rnn_fused::cost {

struct Constants {
  // Measured (docs/benchmarks.md, synchronisation floors): one barrier, 256 threads per block.
  double block_barrier_us = 0.016;
  double cluster_barrier_us[17] = {0, 0, 0.187, 0.190, 0.195, 0.198, 0.200, 0.203, 0.205,
                                   0.204, 0.203, 0.201, 0.200, 0.198, 0.197, 0.195, 0.193};  // by CTAs; 2/4/8/16 measured
  double grid_barrier_us = 0.97;
  // The Grid path's flag barrier over a sample group's CTAs (simt::flag_barrier: a release
  // store per CTA, an acquire spin per awaited CTA, no atomic read-modify-write). Here the grid
  // barrier's cost (it had not run then); kH200 holds its measured fit.
  double flag_barrier_us = 0.97;
  // With the tagged exchange (no barrier), the wait of a step's staging for the last
  // producer's words beyond one L2 load: a store's way to L2 and the CTAs' skew. As
  // flag_barrier_us.
  double tagged_exchange_us = 0.97;
  // The Cluster path with the asynchronous exchange (StepSync::AsyncExchange: no cluster
  // barrier), the wait of a CTA for the last of the other CTAs' stores after its own epilogue.
  // The largest cluster barrier of the table here (it had not run then); kH200 holds its fit.
  double async_exchange_us = 0.205;
  // A layer stack's step beyond the model's step of its CTAs (elman_launch.h stack_plan): the
  // hand-over of each layer's new state to the layer above, through tagged words in global
  // memory (the Block path's stack) or through distributed shared memory and a barrier over
  // every layer's CTAs (the Cluster path's). No stack ran on the first kernels: 0 here; kH200
  // holds what fit-model fitted to the stack rows of gpu-check (fit_model.stack_steps).
  double block_stack_wait_us = 0;
  double cluster_stack_wait_us = 0;
  double launch_us = 5.0;  // an empty kernel launch in a stream loop
  // Arithmetic: about 60 TFLOP/s of float32 FFMA over 132 SMs (docs/benchmarks.md).
  double fma_per_sm_per_us = 60e12 / 2 / 132 / 1e6;
  double fp64_fma_fraction = 0.5;  // H100/H200 float64 FMA rate relative to float32
  double clock_per_us = 1980;      // SM clock (H200 boost), to turn cycle counts into time
  // Shared memory: one 128-byte wavefront per clock per SM (the architecture's bandwidth).
  double smem_wavefronts_per_us = 1980;
  // The wavefronts of one warp's load of a 16-byte state chunk per lane. The warp's 4 unit
  // groups read the same 128 bytes, but shared memory returns at most 128 bytes per clock to
  // the warp's lanes, broadcast or not: 512 bytes, 4 wavefronts (the architecture's figure).
  double state_load_wavefronts = 4;
  // Fitted to the first grid kernel's measured times (tests/test_cost_model.py): a dependent
  // load from L2 in the middle of a step, and the serialized per-sample epilogue around it.
  double l2_dependent_load_us = 0.22;
  double l2_bytes_per_sm_per_us = 75e3;  // assumed: ~10 TB/s of L2 reads over 132 SMs
  // Device memory, read: what a copy of a tensor larger than L2 moves per microsecond in each
  // direction (an H200 read 4245 GB/s: gpu-check's probe, 2026-12-04). Prices the copies of a
  // batch split into launches (rnn_fused.launch_plan.batch_pieces).
  double memory_bytes_per_us = 4.245e6;
  // Whole-sequence GEMMs (cuBLAS, TF32 off) and per-op overhead, fitted to the same rows.
  double gemm_tflops = 40.0;
  double op_fixed_us = 96.0;
  // Latencies in SM cycles of the step's pieces (architecture figures, not measured here).
  double fma_latency_cycles = 4;
  double smem_latency_cycles = 30;
  double shuffle_latency_cycles = 25;
  double epilogue_cycles = 60;        // activation, mask, stores of one output
  double remote_store_cycles = 8;     // issue cost of one distributed-shared-memory store (a 16-byte vector)
  // Estimated, not measured: the issue slots one output per lane adds to a scheduler (its 2
  // warps x about 40 instructions of reduce-scatter share and epilogue), overlapped with the
  // batch's other outputs.
  double output_issue_cycles = 80;
  // Counted, not measured: the instructions of a chunk iteration of the dot products besides
  // its loads and multiply-adds, in the sm_90 machine code of the kernels
  // (benchmarks/sass_dot_loop.txt; the loop unrolled by 2, compiled per number of units in the
  // batch): one address instruction per shared-memory load and about one for the loop (over the
  // kernels' loops, other instructions - loads: 0.7 on average in float32, 0.15 in float64,
  // within 2.5 everywhere).
  double address_instructions_per_load = 1;
  double loop_instructions = 1;
};

inline constexpr Constants kFirstKernels{};

// The per-step constants refitted (rnn-fused fit-model) to the H200 run of `make gpu-check` of
// 2026-12-04 10:54 UTC (benchmarks/h200_2026-12-04/: the kernels of f623b1f; 1581 measured
// steps, parts of steps and autotuning rows of every path, tile and step synchronisation).
// The barrier constants are fitted, not the barriers' floors: they include the wait for the
// slowest warp and CTA (grid 3.2 us where one grid.sync() measured 0.97). The asynchronous
// exchange of the Cluster path ran for the first time there and fitted 0.18 us, against 0.26-0.48
// for the cluster barrier it replaces: the planner takes it now. The issue
// constants (output_issue_cycles, address_instructions_per_load, loop_instructions) stand for
// the integer and branch instructions around the dot products (the 2026-11-30 fit had put most
// of them in output_issue_cycles, 1440); smem_latency_cycles (73) takes up the exposed latency
// of a step's first loads. The model's order against that run's autotuning:
// tests/test_planner_measured.py. gemm_tflops and clock_per_us are kept; launch_us and
// op_fixed_us were measured by the run's probes (10.5 us per ATen launch under torch 2.11).
inline constexpr Constants fitted_h200() {
  Constants c{};
  c.block_barrier_us = 0.0373575;
  c.grid_barrier_us = 3.21332;
  c.flag_barrier_us = 3.22866;
  c.tagged_exchange_us = 2.14116;
  c.async_exchange_us = 0.177958;
  c.launch_us = 10.5481;
  c.fma_per_sm_per_us = 225271;
  c.smem_wavefronts_per_us = 2420.03;
  c.l2_dependent_load_us = 0.0163697;
  c.l2_bytes_per_sm_per_us = 61211.6;
  c.op_fixed_us = 45.273;
  c.fma_latency_cycles = 21.6843;
  c.smem_latency_cycles = 73.411;
  c.shuffle_latency_cycles = 25;
  c.epilogue_cycles = 60;
  c.remote_store_cycles = 4.68839;
  c.output_issue_cycles = 340.496;
  c.address_instructions_per_load = 4.24682;
  c.loop_instructions = 9.51427;
  for (double& barrier : c.cluster_barrier_us) barrier *= 1.752 * 1.374;  // fitted scale of the measured table
  // The layer stacks' waits, fitted (fit_model.stack_steps) to the stack rows of both H200 runs
  // of 2026-12-04 (tests/data/h200_stack_rows_2026-12-04.json: 4 block-path and 3 cluster-path
  // stacks, T >= 300): measured steps of 0.80-1.0 us and 3.3-3.8 us where the model's steps of
  // their CTAs were 0.33-0.42 and 1.1-1.5.
  c.block_stack_wait_us = 0.575101;
  c.cluster_stack_wait_us = 2.13086;
  return c;
}
inline constexpr Constants kH200 = fitted_h200();

// The scalar constants by name, for refitting the model to a GPU's measurements without a
// rebuild (rnn_fused/tools/fit_model.py, through the op rnn_fused::step_cost).
// "cluster_barrier_scale" is a pseudo-constant: a factor applied to the whole
// cluster_barrier_us table (1 = as measured).
struct NamedConstant {
  const char* name;
  double Constants::*member;
};
inline constexpr NamedConstant kNamedConstants[] = {
    {"block_barrier_us", &Constants::block_barrier_us},
    {"grid_barrier_us", &Constants::grid_barrier_us},
    {"flag_barrier_us", &Constants::flag_barrier_us},
    {"tagged_exchange_us", &Constants::tagged_exchange_us},
    {"async_exchange_us", &Constants::async_exchange_us},
    {"block_stack_wait_us", &Constants::block_stack_wait_us},
    {"cluster_stack_wait_us", &Constants::cluster_stack_wait_us},
    {"launch_us", &Constants::launch_us},
    {"fma_per_sm_per_us", &Constants::fma_per_sm_per_us},
    {"fp64_fma_fraction", &Constants::fp64_fma_fraction},
    {"clock_per_us", &Constants::clock_per_us},
    {"smem_wavefronts_per_us", &Constants::smem_wavefronts_per_us},
    {"state_load_wavefronts", &Constants::state_load_wavefronts},
    {"l2_dependent_load_us", &Constants::l2_dependent_load_us},
    {"l2_bytes_per_sm_per_us", &Constants::l2_bytes_per_sm_per_us},
    {"memory_bytes_per_us", &Constants::memory_bytes_per_us},
    {"gemm_tflops", &Constants::gemm_tflops},
    {"op_fixed_us", &Constants::op_fixed_us},
    {"fma_latency_cycles", &Constants::fma_latency_cycles},
    {"smem_latency_cycles", &Constants::smem_latency_cycles},
    {"shuffle_latency_cycles", &Constants::shuffle_latency_cycles},
    {"epilogue_cycles", &Constants::epilogue_cycles},
    {"remote_store_cycles", &Constants::remote_store_cycles},
    {"output_issue_cycles", &Constants::output_issue_cycles},
    {"address_instructions_per_load", &Constants::address_instructions_per_load},
    {"loop_instructions", &Constants::loop_instructions},
};
inline constexpr const char* kClusterBarrierScale = "cluster_barrier_scale";

// Sets the named constant of `c` to `value`; false (nothing set) for an unknown name.
inline bool set_constant(Constants& c, const std::string& name, double value) {
  if (name == kClusterBarrierScale) {
    for (double& barrier : c.cluster_barrier_us) barrier *= value;
    return true;
  }
  for (const NamedConstant& named : kNamedConstants) {
    if (name == named.name) {
      c.*named.member = value;
      return true;
    }
  }
  return false;
}

inline double gemm_us(const Constants& c, double m, double n, double k) {
  return 2.0 * m * n * k / (c.gemm_tflops * 1e6) + c.launch_us;
}

// What one CTA does per step on the persistent paths (kernel_common.cuh's mapping): `warps`
// warps compute `passes` passes of 4 * warps units, `pass_batch` at a time; each lane keeps
// pass_batch x kSamples accumulators over chunk_iterations 16-byte chunks, and after each
// batch's reduce-scatter finishes outputs_per_lane of them.
struct StepWork {
  int64_t samples;           // kSamples
  int64_t warps;             // computing warps: units_per_pass / 4 (8 or 4)
  int64_t passes;            // ceil(units per CTA / units_per_pass)
  int64_t chunk_iterations;  // ceil(ceil(H / vector) / 8)
  int64_t vector;            // scalars per 16-byte chunk: 4 (float32) or 2 (float64)
  bool fp64;
  int64_t pass_batch;        // pass_batch(kSamples, scalar bytes): passes computed together
  int64_t outputs_per_lane;  // outputs_per_lane(kSamples, scalar bytes): epilogues per lane and batch
  // Passes whose weight rows a lane holds in registers (no weight loads for them): all where
  // they fit (weights_fit_registers), the first held_register_passes where the kernel splits
  // them (split_weights: the rest from shared memory), a fraction of one where it holds part
  // of its rows (the Cluster path's split at 2 and 4 samples), else 0.
  double register_passes;
  // Lanes that split a tile's columns and reduce its sums: 8 (a unit group), or 32 for the Grid
  // path's tiled dot products (kernel_common.cuh add_tile_dots: a warp's tile of pass_batch
  // units x samples, a 5-level reduce-scatter of one value per lane, then the totals through
  // shared memory and a block barrier before the epilogues).
  int64_t tile_lanes = 8;
  // The CTA's units as the Cluster path's exchange counts them (passes x units per pass); 0:
  // passes x 4 x warps, the same where each lane of a unit group owns a unit of every pass.
  int64_t slice_units = 0;
};

// The tiled dot products' loop (kernel_common.cuh add_tile_dots, not unrolled): the instructions
// per iteration beside its loads and multiply-adds, counted in the sm_90 SASS at 4 and 8 samples
// (benchmarks/sass_dot_loop.txt: "168 = 12 LDS + 128 FMA + 28 other").
constexpr double kTiledLoopOtherInstructions = 28;

// Compute, reduction and epilogue of one CTA's step, in microseconds: the slowest of the
// multiply-add throughput, the dependent chains and the instruction issue followed by the
// shared-memory wavefronts, plus each batch's reduce-scatter and epilogues (latency-bound for
// one output per lane, issue-bound for more).
inline double cta_step_compute_us(const Constants& c, const StepWork& w) {
  const int64_t batches = (w.passes + w.pass_batch - 1) / w.pass_batch;
  // Issue: 4 schedulers per SM, one instruction each per cycle, every computing warp's loop
  // instructions on one of them. Per warp, chunk iteration and batch: the state and weight
  // loads (none for the passes in registers) with their address instructions, the multiply-adds,
  // and the loop's own (none where some weights are in registers: those dot products are
  // unrolled whole, kernel_common.cuh register_unit_dots, and their loads, of the state and of
  // any weight rows in shared memory, take immediate offsets). A scheduler with a single warp
  // also waits for the loads that the unrolled loop issues ahead of its first multiply-add,
  // every second iteration.
  const double warps_per_scheduler = double(w.warps) / 4.0;
  const bool unrolled = w.register_passes > 0;
  double issue_cycles = 0.0;
  for (int64_t batch = 0; batch < batches; ++batch) {
    const int64_t first = batch * w.pass_batch;
    const int64_t used = std::min(w.pass_batch, w.passes - first);
    const double shared_rows = double(used) - std::clamp(w.register_passes - double(first), 0.0, double(used));
    const double loads = double(w.samples + shared_rows);
    const double other = unrolled             ? 0.0
                         : w.tile_lanes > 8 ? kTiledLoopOtherInstructions
                                            : loads * c.address_instructions_per_load + c.loop_instructions;
    const double instructions = loads + double(used * w.samples * w.vector) + other;
    const double exposed = warps_per_scheduler < 2.0 ? c.smem_latency_cycles / 2.0 : 0.0;
    issue_cycles += double(w.chunk_iterations) * (warps_per_scheduler * instructions + exposed);
  }
  const double issue = issue_cycles / c.clock_per_us;
  const double fmas_per_thread = double(w.passes) * w.chunk_iterations * w.vector * w.samples;
  const double fma_rate = c.fma_per_sm_per_us * (w.fp64 ? c.fp64_fma_fraction : 1.0);
  const double warps = double(w.warps);
  const double throughput = 32.0 * warps * fmas_per_thread / fma_rate;
  // Per warp and chunk: a weight load spans 4 units (4 wavefronts) for each pass whose
  // weights are not in registers; each state load, once per batch of passes, is one 128-byte
  // row segment shared by the warp's 4 unit groups (state_load_wavefronts), and every
  // computing warp loads it.
  const double weight_wavefronts = 4.0 * (double(w.passes) - w.register_passes);
  const double wavefronts =
      warps * w.chunk_iterations * (weight_wavefronts + double(batches) * w.samples * c.state_load_wavefronts);
  const double shared = wavefronts / c.smem_wavefronts_per_us;
  const double chain_cycles = double(batches) * (w.chunk_iterations * w.vector * c.fma_latency_cycles + c.smem_latency_cycles);
  const double chain = chain_cycles / c.clock_per_us;
  const double levels = std::log2(double(w.tile_lanes));
  // The tiled reduce-scatter's shuffles, selects and adds (3 per value a level sends), issued by
  // every computing warp of a scheduler.
  const double reduce_issue =
      w.tile_lanes > 8 ? warps_per_scheduler * 3.0 * double(w.pass_batch * w.samples - 1) : 0.0;
  const double tail_cycles =
      double(batches) * std::max(levels * c.shuffle_latency_cycles + c.epilogue_cycles + reduce_issue,
                                 w.outputs_per_lane * c.output_issue_cycles);
  const double totals_barrier = w.tile_lanes > 8 ? c.block_barrier_us : 0.0;
  // With 1-2 warps per scheduler the loads of a chunk iteration are issued ahead of its
  // multiply-adds and these wait for their data: the wavefronts add to the issue rather than
  // overlap it (the H200's measured steps, refitted: docs/benchmarks.md).
  return std::max({throughput, chain, issue + shared}) + tail_cycles / c.clock_per_us + totals_barrier;
}

// Per step of the three persistent paths (waves: how many times the groups' CTAs must take
// turns because not all fit on the device at once). The operands a step's epilogues read from
// global memory (XW_t; dy_t and h_t) cost nothing here: the kernels read them ahead, into L1
// 4 steps ahead on the block path, whose steps are the shortest (3 steps of the shortest
// planned one, 0.107 us, exceed l2_dependent_load_us), and into registers one step ahead, or
// as a chunk's dot products start (RecurrenceCta::kOperandL1Steps; tests/test_cost_model.py
// checks the planner's steps against these spans).

// A step's time and the parts of it that step-phase timing measures apart (recurrence_paths.cuh
// StepPhase): staging state rows from global memory (Grid), compute (dot products, epilogues,
// publishing the state), the step's barrier. total is the model's time per step; the three
// parts add up to it (up to rounding).
struct StepTerms {
  double stage = 0.0, compute = 0.0, barrier = 0.0, total = 0.0;
};

inline StepTerms block_step_terms(const Constants& c, const StepWork& w, int64_t waves) {
  const double compute = cta_step_compute_us(c, w);
  return {.stage = 0.0,
          .compute = waves * compute,
          .barrier = waves * c.block_barrier_us,
          .total = waves * (compute + c.block_barrier_us)};
}

// The Block path's lane-row step (elman_lane_rows_kernel.cuh), from its instruction counts plus
// a wait measured on the H200 (kLaneRowsWaitCycles): per warp and step, samples x
// vectors 16-byte state loads and 4 x that many multiply-adds plus about
// kLaneRowsOtherInstructions per sample (sums, activation, stores, the next step's operands),
// issued by a scheduler that `warps_per_scheduler` warps share; the longest dependent chain
// is a state load, one accumulator's `vectors` multiply-adds and two additions. Then one
// output's epilogue (epilogue_cycles) and the barrier; the same both ways, as for the general
// kernels (step_cost prices a shape without its direction). The counts alone gave 205 cycles of
// compute at H = 64, one sample (0.14 us a step); the H200 (2026-12-04, H = 64, B = 8) took about
// 535 forward (0.307 us a step timed directly) and 840 backward (0.576 us under the phase clock,
// 0.46 scaled as the general kernels' phase-clock step to their direct one): kLaneRowsWaitCycles
// is the mean of the differences, a wait the counts do not explain (the step's operand loads
// from L2 are the suspect: docs/benchmarks.md).
inline constexpr double kLaneRowsOtherInstructions = 40;
inline constexpr double kLaneRowsWaitCycles = 480;
inline constexpr double kFmaDependentCycles = 4;  // (the architecture's figure)
inline StepTerms lane_rows_step_terms(const Constants& c, int64_t samples, int64_t vectors, double warps_per_scheduler,
                                      int64_t waves) {
  const double per_warp = double(samples * vectors) * 5.0 + kLaneRowsOtherInstructions * double(samples);
  const double issue = std::max(1.0, warps_per_scheduler) * per_warp;
  const double chain = c.smem_latency_cycles + (double(vectors) + 2.0) * kFmaDependentCycles;
  const double compute = (std::max(issue, chain) + c.epilogue_cycles + kLaneRowsWaitCycles) / c.clock_per_us;
  return {.stage = 0.0,
          .compute = waves * compute,
          .barrier = waves * c.block_barrier_us,
          .total = waves * (compute + c.block_barrier_us)};
}

// Cluster: after the epilogues a block barrier, then the CTA's threads copy its slice of the new
// state (samples x about passes x units per pass scalars, in 16-byte vectors) into the C - 1
// other CTAs (RecurrenceCta::share_slice), each thread its share of the remote stores; then the
// cluster barrier, or with the asynchronous exchange (step_sync 3) the wait for the other CTAs'
// stores.
inline StepTerms cluster_step_terms(const Constants& c, const StepWork& w, int64_t cluster, int64_t waves,
                                    int32_t step_sync = 0) {
  constexpr int64_t kThreads = 256;  // kRecurrenceThreads
  const int64_t units = w.slice_units > 0 ? w.slice_units : w.passes * 4 * w.warps;
  const int64_t slice_vectors = w.samples * ((units + w.vector - 1) / w.vector);
  const int64_t stores_per_thread = (slice_vectors * (cluster - 1) + kThreads - 1) / kThreads;
  const double exchange_cycles = double(stores_per_thread) * c.remote_store_cycles;
  const double compute = cta_step_compute_us(c, w) + c.block_barrier_us + exchange_cycles / c.clock_per_us;
  const double barrier = step_sync == 3 ? c.async_exchange_us
                                        : c.cluster_barrier_us[std::min<int64_t>(std::max<int64_t>(cluster, 2), 16)];
  return {.stage = 0.0, .compute = waves * compute, .barrier = waves * barrier, .total = waves * (compute + barrier)};
}

// Grid: each CTA computes `chunks` chunks of samples in turn, then one grid barrier, or a flag
// barrier over its group's CTAs (step_sync 1). With the tagged exchange (step_sync 2) there is
// no barrier: each chunk's rows (8-byte words, twice the bytes) are staged before it is
// computed, the first word after tagged_exchange_us. A chunk's
// state rows (samples x H scalars) come from L2 by asynchronous copies. With several chunks
// each next chunk's rows arrive while the current one is computed: the first chunk's staging
// is exposed, and a later chunk costs the slower of its compute (plus the copies'
// shared-memory writes) and its staging. With one chunk the rows arrive in `pieces` pieces
// along H and the first batch of passes computes on each as it lands: exposed are the load
// latency, the first piece, any piece that takes longer to arrive than the one before takes to
// compute, and a block barrier per piece.
constexpr int64_t kGridStagePieces = 4;  // RecurrenceCta::kStagePieces
// The tagged exchange's words a thread loads before it checks any (stage_rows_tagged): a chunk's
// S x H words take ceil(S x H / (256 x 8)) dependent rounds of loads.
constexpr int64_t kTaggedWordsAtOnce = 8;
constexpr int64_t kGridThreads = 256;  // kRecurrenceThreads

inline StepTerms grid_step_terms(const Constants& c, const StepWork& w, int64_t hidden, int64_t scalar_bytes,
                                 int64_t chunks, int32_t step_sync = 0) {
  const double barrier = step_sync == 1 ? c.flag_barrier_us : c.grid_barrier_us;
  const double rows_bytes = double(w.samples) * hidden * scalar_bytes;
  const double copy = rows_bytes / c.l2_bytes_per_sm_per_us;
  const double compute = cta_step_compute_us(c, w);
  if (step_sync == 2) {
    const double rounds = std::ceil(double(w.samples) * hidden / double(kGridThreads * kTaggedWordsAtOnce));
    // A chunk's words: the slower of their rounds of dependent loads and their bytes (8 per value).
    const double chunk_stage = std::max(rounds * c.l2_dependent_load_us, c.l2_dependent_load_us + 2.0 * copy);
    const double stage = c.tagged_exchange_us + chunk_stage;  // (later chunks: written long before)
    return {.stage = stage + double(chunks - 1) * chunk_stage,
            .compute = double(chunks) * compute,
            .barrier = 0.0,
            .total = stage + double(chunks - 1) * chunk_stage + double(chunks) * compute};
  }
  if (chunks == 1) {
    const double pieces = double(kGridStagePieces);
    const int64_t batches = (w.passes + w.pass_batch - 1) / w.pass_batch;
    const double piece_compute = compute / double(batches) / pieces;
    const double exposed = c.l2_dependent_load_us + copy / pieces +
                           (pieces - 1) * std::max(0.0, copy / pieces - piece_compute) + pieces * c.block_barrier_us;
    return {.stage = exposed, .compute = compute, .barrier = barrier,
            .total = exposed + compute + barrier};
  }
  const double stage = c.l2_dependent_load_us + copy;
  const double overlapped = compute + rows_bytes / 128.0 / c.smem_wavefronts_per_us;
  const double later = double(chunks - 1);
  // The wait for a later chunk's rows is what its staging takes beyond the chunk before.
  return {.stage = stage + later * std::max(0.0, stage - overlapped),
          .compute = compute + later * overlapped,
          .barrier = barrier,
          .total = stage + compute + later * std::max(overlapped, stage) + barrier};
}

// Stepwise: a cuBLAS product [B,H] x [H,H] and an epilogue launch per step (two launches).
inline double stepwise_step_us(const Constants& c, int64_t batch, int64_t hidden, bool fp64) {
  const double rate = fp64 ? c.gemm_tflops * c.fp64_fma_fraction : c.gemm_tflops;
  return 2 * c.launch_us + 2.0 * batch * hidden * hidden / (rate * 1e6);
}

// The layer's whole-sequence work around the recurrence, as the host layer runs it: the input
// projection before the forward; dX, dW_ih, dW_hh (sqrt(T) chunk products) and the small
// reductions after the backward; plus the op's fixed overhead.
inline double forward_gemms_us(const Constants& c, int64_t steps, int64_t batch, int64_t input, int64_t hidden) {
  return gemm_us(c, double(steps) * batch, hidden, input) + c.op_fixed_us;
}

// The Block path's general forward kernel can project its sample group's input itself before
// its first step (elman_forward_kernel.cuh project_input: T S H I multiply-adds on one CTA,
// two loads from L1 each, priced at a quarter of an SM's multiply-add rate; predicted, not
// measured). That saves the host's bias sum and GEMM, two launches: at short shapes the GPU
// waits for the host, and each launch is about launch_us of host time. It is taken only where
// it costs under a quarter of a launch, so that a call the GPU bounds (whose launches hide
// behind the recurrence) loses at most that much.
inline constexpr double kProjectionFmaRateFraction = 0.25;
inline constexpr double kProjectionLaunchFraction = 0.25;
inline double kernel_projection_us(const Constants& c, int64_t steps, int64_t samples, int64_t input,
                                   int64_t hidden) {
  return double(steps) * samples * input * hidden / (c.fma_per_sm_per_us * kProjectionFmaRateFraction);
}
inline bool kernel_projects_input(const Constants& c, int64_t steps, int64_t samples, int64_t input, int64_t hidden) {
  return kernel_projection_us(c, steps, samples, input, hidden) < kProjectionLaunchFraction * c.launch_us;
}
// forward_gemms_us of a layer whose kernel projects the input: the op's fixed cost and the
// projection inside the kernel.
inline double forward_without_gemm_us(const Constants& c, int64_t steps, int64_t samples, int64_t input,
                                      int64_t hidden) {
  return kernel_projection_us(c, steps, samples, input, hidden) + c.op_fixed_us;
}

// A short layer's backward can make its whole-sequence gradients (dX, h_0's, dW_ih, dW_hh, the
// biases') in one launch of its own (elman_gradients_kernel.cuh) instead of the host's three to
// five: a thread per output, each a sum of `terms` products (the rows T B, or H for dX and h_0's
// gradient) in float64. Priced as the kernel's projection is, at the float64 rate: the
// multiply-adds of a CTA's threads at a quarter of an SM's float64 rate, one such time per wave
// of CTAs over the SMs (predicted, not measured). Taken where that is under a quarter of a
// launch (kProjectionLaunchFraction) and the host would make dW_hh in one product too (rows <=
// kOneProductRows): its sums are then as long as the GEMMs', and a call the GPU bounds loses at
// most a quarter of a launch. The waves are counted on the H200's 132 SMs, whose rate the
// constants hold, on every device: the choice depends on the call alone. x, hx, w_ih, w_hh,
// bias: the gradients asked for.
inline constexpr int64_t kGradientKernelSms = 132;
inline constexpr int64_t kGradientKernelThreads = 256;  // kShortGradientThreads
inline double kernel_gradients_us(const Constants& c, const LayerShape& s, bool x, bool hx, bool w_ih, bool w_hh,
                                  bool bias) {
  const int64_t outputs = whole_sequence_gradient_outputs(s, x, hx, w_ih, w_hh, bias);
  const int64_t ctas = (outputs + kGradientKernelThreads - 1) / kGradientKernelThreads;
  const int64_t waves = (ctas + kGradientKernelSms - 1) / kGradientKernelSms;
  const int64_t terms = std::max(s.steps * s.batch, s.hidden);
  return double(waves) * kGradientKernelThreads * terms /
         (c.fma_per_sm_per_us * c.fp64_fma_fraction * kProjectionFmaRateFraction);
}
inline bool kernel_makes_gradients(const Constants& c, const LayerShape& s, bool x, bool hx, bool w_ih, bool w_hh,
                                   bool bias) {
  const int64_t rows = s.steps * s.batch;
  return rows >= 1 && rows <= kOneProductRows && s.hidden >= 1 &&
         whole_sequence_gradient_outputs(s, x, hx, w_ih, w_hh, bias) > 0 &&
         kernel_gradients_us(c, s, x, hx, w_ih, w_hh, bias) < kProjectionLaunchFraction * c.launch_us;
}

// backward_gemms_us of a layer whose backward makes its gradients in the gradients kernel (dX,
// dW_ih, dW_hh and the biases', as backward_gemms_us prices them): the kernel, its launch and the
// op's fixed cost.
inline double backward_without_gemms_us(const Constants& c, const LayerShape& s) {
  return kernel_gradients_us(c, s, true, false, true, true, true) + c.launch_us + c.op_fixed_us;
}

// dW_hh is a two-level sum over chunks of steps (elman_gemms.h sum_of_outer_products, over
// the T - 1 steps after the first): on the GPU batched products and a sum each, the launches
// outer_product_launches counts (the first kernels made a product and an add per chunk of
// about sqrt(T) steps: legacy_dw_hh_launches).
inline double dw_hh_launches(int64_t steps, int64_t batch, int64_t hidden) {
  const int64_t pairs = steps - 1;
  return double(outer_product_launches(outer_product_chunks(pairs, batch, hidden, true), pairs));
}
inline double legacy_dw_hh_launches(int64_t steps) { return 4.0 * std::sqrt(double(steps)); }

inline double backward_gemms_us(const Constants& c, int64_t steps, int64_t batch, int64_t input, int64_t hidden,
                                double dw_hh_chunk_launches) {
  const double rows = double(steps) * batch;
  return gemm_us(c, rows, input, hidden) + gemm_us(c, hidden, input, rows) + gemm_us(c, hidden, hidden, rows) +
         dw_hh_chunk_launches * c.launch_us + c.op_fixed_us;
}

// ---- Reference models (not paths rnn_fused runs) ----------------------------------------

// The first grid kernel (commit 54a1037): H/4 blocks of 4 units, a warp per (unit, 4
// samples) work item reading h_{t-1} from L2 in a dependent loop of H/32 iterations, the 4
// epilogues of an item serialized, one grid barrier per step. Per-step constants fitted to
// its measured times (tests/test_cost_model.py); the shared constants above come with them.
struct LegacyFit {
  double forward_fixed_us = 0.226, forward_item_us = 0.091, forward_epilogue_us = 0.336, forward_iteration_us = 0.22;
  double backward_fixed_us = 0.131, backward_item_us = 0.30, backward_epilogue_us = 0.60,
         backward_iteration_us = 0.12;
};
inline constexpr LegacyFit kLegacyFit{};

inline double legacy_grid_step_us(const Constants& c, int64_t batch, int64_t hidden, bool backward) {
  const LegacyFit& f = kLegacyFit;
  const int64_t items = 4 * ((batch + 3) / 4);  // 4 units per block x sample groups of 4
  const int64_t per_warp = (items + 7) / 8;
  const double iterations = double((hidden + 31) / 32);
  const double samples = double(std::min<int64_t>(batch, 4));
  if (!backward) {
    return c.grid_barrier_us + f.forward_fixed_us +
           per_warp * (f.forward_item_us + samples * f.forward_epilogue_us + iterations * f.forward_iteration_us);
  }
  return c.grid_barrier_us + f.backward_fixed_us +
         per_warp * (f.backward_item_us + samples * f.backward_epilogue_us + iterations * f.backward_iteration_us);
}

// cuDNN where it runs one GEMM per step (H >= 512 in the measured profiles): a split-K SIMT
// SGEMM launch and element-wise launches per step; the GEMM's rate grows with the batch and
// saturates. Fitted to the measured rows with H >= 512 (within 30% of each).
struct CudnnFit {
  double max_tflops = 17.3, half_rate_batch = 11.6;
  double forward_launches = 2.09, backward_launches = 4.0;
  double fixed_us = 105.8;
};
inline constexpr CudnnFit kCudnnFit{};

inline double cudnn_gemm_step_us(const Constants& c, int64_t batch, int64_t hidden, bool backward) {
  const CudnnFit& f = kCudnnFit;
  const double rate_tflops = f.max_tflops * batch / (batch + f.half_rate_batch);
  const double launches = backward ? f.backward_launches : f.forward_launches;
  return launches * c.launch_us + 2.0 * batch * hidden * hidden / (rate_tflops * 1e6);
}

}  // namespace rnn_fused::cost
