// Host side of the CUDA kernels' backend: the path planner, the launches, and the forward
// and backward recurrences the host layer (host_layer.h) calls. Shared verbatim by the CUDA
// build (csrc/cuda/elman_cuda.cu: backend "cuda", CUDA tensors, real device) and the emulated
// build (csrc/simt/elman_emulated.cpp: backend "emulated", CPU tensors, the SIMT emulator's
// device), so the tests execute the very planner and kernels a GPU runs.
//
// The planner enumerates, for the device and the layer's H, B and dtype, every launch shape
// of every path (recurrence_paths.cuh) that fits (shared memory, registers, co-residency,
// cluster support), predicts its time per step with the cost model
// (recurrence_cost_model.h) and takes the fastest; a forced path that cannot run the shape is
// refused with the limit it exceeds, before anything is launched.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cuda/elman_gradients_kernel.cuh"
#include "cuda/elman_kernel_list.h"
#include "cuda/elman_norms_kernel.cuh"
#include "cuda/recurrence_cost_model.h"
#include "host_layer.h"

namespace rnn_fused::kernels {

inline const char* path_name(RecurrencePath p) {
  switch (p) {
    case RecurrencePath::Block: return "block";
    case RecurrencePath::Cluster: return "cluster";
    case RecurrencePath::Grid: return "grid";
    case RecurrencePath::Stepwise: return "stepwise";
  }
  return "?";
}

inline std::optional<RecurrencePath> parse_path(const std::string& name) {
  for (RecurrencePath p : {RecurrencePath::Block, RecurrencePath::Cluster, RecurrencePath::Grid,
                           RecurrencePath::Stepwise}) {
    if (name == path_name(p)) return p;
  }
  return std::nullopt;
}

// What the planner chose for one recurrence, or why a path cannot run the shape.
struct RecurrencePlan {
  RecurrencePath path = RecurrencePath::Stepwise;
  bool feasible = false;
  RecurrenceTiling tiling;
  int64_t grid = 0;              // CTAs (persistent paths) or epilogue blocks (stepwise)
  int64_t cluster = 1;           // CTAs per thread-block cluster (cluster path)
  int64_t shared_mem_bytes = 0;  // dynamic shared memory per CTA
  int64_t blocks_per_sm = 0;     // co-resident CTAs per SM at that shared memory
  int64_t waves = 1;             // times the groups take turns (1: all co-resident)
  int compiled_passes = 0;       // the passes its kernels are compiled for (compiled_passes_of; 0: at run time)
  // The Block path's lane-row step (elman_lane_rows_kernel.cuh): a thread per hidden unit,
  // block_threads of them, instead of the general kernels' kRecurrenceThreads.
  bool lane_rows = false;
  int64_t block_threads = kRecurrenceThreads;
  int64_t ctas_per_sm = 1;  // (lane rows) CTAs that share an SM at once, as the cost model priced them
  double us_per_step = 0.0;      // the cost model's prediction
  std::string reason;            // why this shape, or the limit it exceeds
};

SIMT_BEGIN_WORLD

// The cost model prices the pieces the Grid path stages a single chunk in.
static_assert(RecurrenceCta<float, 1, RecurrencePath::Grid>::kStagePieces == cost::kGridStagePieces);
static_assert(kTaggedWordsAtOnce == cost::kTaggedWordsAtOnce && kRecurrenceThreads == cost::kGridThreads);

// Registers per thread of the kernels launched beside the persistent ones (the persistent
// kernels' own: elman_kernel_list.h), for the emulator's occupancy model.
constexpr int kEpilogueKernelRegisters = 40;
constexpr int kShortGradientKernelRegisters = 80;  // ptxas unrolls its dot loops: 80 on sm_80, 64 on sm_90
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, forward_step_epilogue_kernel<float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, forward_step_epilogue_kernel<double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, backward_step_epilogue_kernel<float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, backward_step_epilogue_kernel<double>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, edge_scale_table_kernel<float>);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, edge_scale_table_kernel<double>);
SIMT_KERNEL_ATTRIBUTES(kShortGradientThreads, kShortGradientKernelRegisters, short_gradients_kernel);
SIMT_KERNEL_ATTRIBUTES(kRecurrenceThreads, kEpilogueKernelRegisters, step_norms_kernel);

// Calls f(kernel) with the lane-row kernel for (direction, samples, the vectors of H's rows,
// norms); false where none is compiled (lane_rows_compiled).
template <class F>
bool with_lane_rows_kernel(bool backward, int64_t samples, int64_t hidden, bool norms, F&& f) {
  auto with_vectors = [&](auto samples_constant, auto vectors_constant) {
    constexpr int S = decltype(samples_constant)::value, V = decltype(vectors_constant)::value;
    if constexpr (S == 1 || V <= 16) {
      if (!backward) {
        f(forward_lane_rows_kernel<S, V>);
      } else if (norms) {
        f(backward_lane_rows_kernel<S, V, true>);
      } else {
        f(backward_lane_rows_kernel<S, V, false>);
      }
      return true;
    } else {
      return false;
    }
  };
  auto with_samples = [&](auto samples_constant) {
    switch (lane_row_vectors(hidden)) {
      case 8: return with_vectors(samples_constant, std::integral_constant<int, 8>{});
      case 16: return with_vectors(samples_constant, std::integral_constant<int, 16>{});
      default: return with_vectors(samples_constant, std::integral_constant<int, 32>{});
    }
  };
  if (!lane_rows_compiled(samples, hidden)) return false;
  return samples == 1 ? with_samples(std::integral_constant<int, 1>{}) : with_samples(std::integral_constant<int, 2>{});
}

// The passes the kernel of a launch shape is compiled for (compiled_passes; the Block path's
// layer stack, whose CTAs hold 2H rows: stack_compiled_passes; 0: at run time, as always where
// `forced` says so).
inline int compiled_passes_of(RecurrencePath path, const RecurrenceTiling& tiling, int64_t hidden, bool fp64,
                              const ForcedTiling& forced, bool block_stack = false) {
  if (forced.run_time_passes) return 0;
  const int64_t chunk_iterations = chunk_iterations_of(hidden, fp64);
  const int64_t passes = (int64_t(tiling.units_per_cta) + tiling.units_per_pass - 1) / tiling.units_per_pass;
  if (block_stack) return stack_compiled_passes(passes, chunk_iterations, tiling.samples);
  return compiled_passes(path, passes, chunk_iterations, fp64, tiling.samples);
}

// Calls f(std::integral_constant<int, S>{}) for a kernel's samples per group S (1, 2, 4 or 8);
// false for another count.
template <class F>
bool with_samples_constant(int64_t samples, F&& f) {
  switch (samples) {
    case 1: return f(std::integral_constant<int, 1>{});
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: return false;
  }
}

// Calls f(std::integral_constant<int, P>{}) for compiled passes P in 0 .. kMax (kMax <= 8); false
// past kMax.
template <int kMax, int P = 0, class F>
bool with_passes_constant(int passes, F&& f) {
  static_assert(kMax >= 0 && kMax <= kMaxCompiledClusterPasses, "a compiled pass count of some path");
  if constexpr (P > kMax) {
    return false;
  } else {
    if (passes == P) {
      f(std::integral_constant<int, P>{});
      return true;
    }
    return with_passes_constant<kMax, P + 1>(passes, f);
  }
}

// The most passes the float32 kernels of `path` with S samples per chunk are compiled for.
template <RecurrencePath kPath, int S>
inline constexpr int kMaxCompiledPasses =
    kPath == RecurrencePath::Block     ? (S <= kSplitMaxSamples ? kMaxPasses : kRegisterPasses)  // (split weights)
    : kPath == RecurrencePath::Cluster ? max_compiled_cluster_passes(S)
                                       : 0;
// The same for the layer stack's kernels of `path` (stack_compiled_passes on the Block path).
template <RecurrencePath kPath, int S>
inline constexpr int kMaxCompiledStackPasses =
    kPath == RecurrencePath::Block ? (S <= kStackRegisterMaxSamples ? kMaxPasses : kRegisterPasses)
                                   : kMaxCompiledPasses<kPath, S>;

// Calls f(kernel) with the persistent kernel for (direction, samples, path, compiled passes,
// compiled iterations): the one switch from a plan to a template instantiation. plain_backward:
// a backward of full BPTT without recorded norms, which takes the kernel compiled without them
// where one exists (backward_recurrence_kernel's kPlain: the kernels compiled for their passes).
// The planner sizes occupancy on the general kernel: the plain one runs a subset of its code,
// and its registers fit as many CTAs per SM (make resource-usage fails where they would not).
// iterations: compiled_iterations of the launch shape (0: the passes'), kClusterSplitIterations
// for the Cluster path's split kernels, kClusterRowIterations for those with every row in registers.
template <typename scalar_t, RecurrencePath kPath, class F>
void with_persistent_kernel(bool backward, int64_t samples, int passes, F&& f, bool plain_backward = false,
                            int iterations = 0) {
  constexpr bool kFloat = std::is_same_v<scalar_t, float>;
  bool split = false;  // the Cluster path's split kernels
  const bool found = with_samples_constant(samples, [&](auto samples_constant) {
    constexpr int S = decltype(samples_constant)::value;
    return with_passes_constant<kFloat ? kMaxCompiledPasses<kPath, S> : 0>(passes, [&](auto passes_constant) {
      constexpr int P = decltype(passes_constant)::value;
      auto with_iterations = [&](auto iterations_constant) {
        constexpr int I = decltype(iterations_constant)::value;
        if (!backward) {
          f(forward_recurrence_kernel<scalar_t, S, kPath, P, I>);
        } else if constexpr (P > 0) {
          if (plain_backward) {
            f(backward_recurrence_kernel<scalar_t, S, kPath, P, true, I>);
          } else {
            f(backward_recurrence_kernel<scalar_t, S, kPath, P, false, I>);
          }
        } else {
          f(backward_recurrence_kernel<scalar_t, S, kPath, P>);
        }
      };
      if constexpr (kFloat && kPath == RecurrencePath::Cluster && S <= kClusterSplitMaxSamples &&
                    P == kClusterSplitPasses) {
        if (iterations == kClusterSplitIterations) {
          split = true;
          with_iterations(std::integral_constant<int, kClusterSplitIterations>{});
          return;
        }
      }
      if constexpr (kFloat && kPath == RecurrencePath::Cluster && cluster_rows_in_registers(P, kClusterRowIterations,
                                                                                            false, S)) {
        if (iterations == kClusterRowIterations) {
          split = true;
          with_iterations(std::integral_constant<int, kClusterRowIterations>{});
          return;
        }
      }
      with_iterations(std::integral_constant<int, P>{});
    });
  });
  TORCH_CHECK(found && (iterations == 0 || iterations == passes || split), "rnn_fused: no ", path_name(kPath),
              " recurrence kernel for ", samples, " samples per group compiled for ", passes, " passes and ",
              iterations, " chunk iterations");
}

template <typename scalar_t, class F>
void with_persistent_kernel(RecurrencePath path, bool backward, int64_t samples, int passes, F&& f,
                            bool plain_backward = false, int iterations = 0) {
  switch (path) {
    case RecurrencePath::Block:
      with_persistent_kernel<scalar_t, RecurrencePath::Block>(backward, samples, passes, f, plain_backward, iterations);
      break;
    case RecurrencePath::Cluster:
      with_persistent_kernel<scalar_t, RecurrencePath::Cluster>(backward, samples, passes, f, plain_backward,
                                                                iterations);
      break;
    case RecurrencePath::Grid:
      with_persistent_kernel<scalar_t, RecurrencePath::Grid>(backward, samples, passes, f, plain_backward, iterations);
      break;
    default: TORCH_CHECK(false, "rnn_fused: path '", path_name(path), "' has no persistent kernel");
  }
}

// What the planner needs to know about the layer.
struct PlanRequest {
  int64_t hidden = 0;
  int64_t batch = 0;
  bool backward = false;
  bool fp64 = false;
  ForcedTiling forced;  // what the plan must take (plan_candidates reads it once per query)
  // Recurrences running side by side on the device (LayerOptions::side_by_side): this one is
  // planned for 1/side_by_side of its SMs (and of the clusters that fit at once).
  int64_t side_by_side = 1;
  // A CTA of the Block path's layer stack (stack_plan: 2H rows over H columns), whose weights
  // are in registers where stack_compiled_passes compiles its kernels.
  bool block_stack = false;
  // A CTA of the Cluster path's layer stack (stack_plan's Cluster path), whose kernels read every
  // weight row from shared memory (they never split them: cluster_weights_split is the layer
  // kernels').
  bool cluster_stack = false;
};

inline std::string shape_text(const PlanRequest& r) {
  return "hidden_size=" + std::to_string(r.hidden) + ", batch_size=" + std::to_string(r.batch) + " in " +
         (r.fp64 ? "float64" : "float32") + (r.backward ? " (backward)" : " (forward)") +
         (r.side_by_side > 1 ? ", one of " + std::to_string(r.side_by_side) + " side by side," : "");
}

// The passes whose weight rows a CTA of this launch shape holds in registers
// (cost::StepWork::register_passes): all of them where they fit, the first
// held_register_passes where its kernel splits them, a fraction of the one pass where it holds
// part of its rows (the Cluster path's split at 2 and 4 samples: 24 or 20 of the rows' 25-32 chunk
// iterations). (The model prices a kernel forced to read its passes at run time as the compiled
// one, as it did when it was fitted.)
inline double register_passes_of(RecurrencePath path, const RecurrenceTiling& tiling, int64_t passes,
                                  int64_t chunk_iterations, bool fp64, bool block_stack, bool cluster_stack) {
  if (block_stack) return stack_compiled_passes(passes, chunk_iterations, tiling.samples) > 0 ? passes : 0;
  if (cluster_stack) return 0;
  if (weights_in_registers(path, passes, chunk_iterations, fp64)) return passes;
  if (!split_weights(path, passes, chunk_iterations, fp64, tiling.samples)) return 0;
  const int64_t held = held_register_passes(path, passes, chunk_iterations, tiling.samples);
  const int64_t held_iterations = held_register_iterations(
      path, compiled_iterations(path, passes, chunk_iterations, fp64, tiling.samples), tiling.samples);
  return held_iterations < chunk_iterations ? double(held * held_iterations) / double(chunk_iterations) : double(held);
}

// The cost model's time per step for one launch shape of `path`, and its parts (the planner's
// figure for the shape, and what rnn_fused::step_cost reports for a shape a GPU ran).
// `tiling.ctas_per_group` is the cluster size on the Cluster path.
inline cost::StepTerms predicted_step_terms(const cost::Constants& model, RecurrencePath path, const PlanRequest& r,
                                            const RecurrenceTiling& tiling, int64_t waves) {
  if (path == RecurrencePath::Stepwise) {
    const double us = cost::stepwise_step_us(model, r.batch, r.hidden, r.fp64);
    return {.compute = us, .total = us};
  }
  const int scalar_bytes = r.fp64 ? 8 : 4;
  const int64_t vec = 16 / scalar_bytes;
  const int64_t chunk_iterations = (padded_row(r.hidden, vec) / vec + kUnitLanes - 1) / kUnitLanes;
  const int64_t passes = (int64_t(tiling.units_per_cta) + tiling.units_per_pass - 1) / tiling.units_per_pass;
  cost::StepWork work{.samples = tiling.samples,
                      .warps = tiling.units_per_pass * kUnitLanes / kWarp,
                      .passes = passes,
                      .chunk_iterations = chunk_iterations,
                      .vector = vec,
                      .fp64 = r.fp64,
                      .pass_batch = pass_batch(tiling.samples, scalar_bytes),
                      .outputs_per_lane = outputs_per_lane(tiling.samples, scalar_bytes),
                      .register_passes = register_passes_of(path, tiling, passes, chunk_iterations, r.fp64,
                                                            r.block_stack, r.cluster_stack)};
  if (tiling.tiled_dots != 0) {
    // The tiled dot products in the model's terms: each round of up to 8 warps' tiles a batch of
    // tiled_units passes of one unit per lane, over the row's chunks split 32 ways. (The Cluster
    // path's exchange keeps its slice: the units of the 8-lane mapping's passes.)
    work.slice_units = passes * tiling.units_per_pass;
    const int64_t tile_units = tiled_units(tiling.samples), warps = kRecurrenceThreads / kWarp;
    const int64_t tiles = (int64_t(tiling.units_per_cta) + tile_units - 1) / tile_units;
    work.warps = std::min(tiles, warps);
    work.passes = (tiles + warps - 1) / warps * tile_units;
    work.pass_batch = tile_units;
    work.chunk_iterations = (padded_row(r.hidden, vec) / vec + kWarp - 1) / kWarp;
    work.outputs_per_lane = 1;
    work.tile_lanes = kWarp;
    // The Cluster path's split kernels in the tile's layout: 20 of the 64 chunks of a lane's 8
    // rows in registers (kTiledSplitFirstChunks and kTiledSplitLastChunks), as whole rows of it.
    if (work.register_passes > 0) {
      work.register_passes = double(kTiledSplitHalfRows * (kTiledSplitFirstChunks + kTiledSplitLastChunks)) / double(work.chunk_iterations);
    }
  }
  switch (path) {
    case RecurrencePath::Grid:
      return cost::grid_step_terms(model, work, r.hidden, scalar_bytes, tiling.chunks, tiling.step_sync);
    case RecurrencePath::Cluster:
      return cost::cluster_step_terms(model, work, tiling.ctas_per_group, waves, tiling.step_sync);
    default: return cost::block_step_terms(model, work, waves);
  }
}

inline double predicted_step_us(const cost::Constants& model, RecurrencePath path, const PlanRequest& r,
                                const RecurrenceTiling& tiling, int64_t waves) {
  return predicted_step_terms(model, path, r, tiling, waves).total;
}

// The CTAs of `groups` sample groups that share an SM at once, spread over `sm_count` SMs, up to
// `blocks_per_sm` on one (the lane-row step's independent CTAs).
inline int64_t lane_rows_ctas_per_sm(int64_t groups, int64_t sm_count, int64_t blocks_per_sm) {
  return std::clamp<int64_t>((groups + sm_count - 1) / sm_count, 1, std::max<int64_t>(blocks_per_sm, 1));
}

// The lane-row step's time (cost::lane_rows_step_terms) for `samples` per CTA, `ctas_per_sm` CTAs
// sharing an SM's four schedulers.
inline cost::StepTerms lane_rows_terms(const cost::Constants& model, const PlanRequest& r, int64_t samples,
                                       int64_t ctas_per_sm, int64_t waves) {
  const double warps_per_scheduler = double(lane_rows_threads(r.hidden) / kWarp * ctas_per_sm) / 4.0;
  return cost::lane_rows_step_terms(model, samples, lane_row_vectors(r.hidden), warps_per_scheduler, waves);
}

// How a plan's reason says the steps hand over their state ("" for the path's barrier).
inline std::string step_sync_text(StepSync sync) {
  switch (sync) {
    case StepSync::FlagBarrier: return ", steps end in a flag barrier over the group's CTAs";
    case StepSync::TaggedExchange: return ", the state exchanged in tagged words, no step barrier";
    case StepSync::AsyncExchange:
      return ", the state exchanged by asynchronous stores counted by mbarriers, no cluster barrier";
    default: return "";
  }
}

// How a plan's Grid or Cluster steps hand over their state (the barrier on the other paths).
inline StepSync step_sync_of(const RecurrencePlan& plan) {
  return plan.path == RecurrencePath::Grid || plan.path == RecurrencePath::Cluster
             ? static_cast<StepSync>(plan.tiling.step_sync)
             : StepSync::GridBarrier;
}

// Whether the Block path runs a request with the lane-row kernels (elman_lane_rows_kernel.cuh):
// where the forced tiling asks for them (lane_rows_step), for float32 layers (not a stack's CTA)
// of H <= 128 at the samples per CTA they are compiled for (lane_rows_compiled), unless it also
// asks for what only the general kernels have (run_time_passes, 16 units per pass). Not the
// planner's own choice: on the H200 (2026-12-04) they measured no faster than the general
// kernels forward and slower backward (docs/benchmarks.md).
template <typename scalar_t>
bool lane_rows_apply(const PlanRequest& r) {
  return r.forced.lane_rows_step && std::is_same_v<scalar_t, float> && !r.block_stack && !r.cluster_stack &&
         r.hidden <= kLaneRowsMaxHidden && !r.forced.run_time_passes &&
         r.forced.units_per_pass != kUnitsPerPassOptions[1] &&
         (r.forced.samples == 0 || lane_rows_compiled(r.forced.samples, r.hidden));
}

// The Block path's best lane-row launch over the samples per CTA its kernels are compiled for
// (lane_rows_compiled; the forced count where one is), or an infeasible plan.
inline RecurrencePlan plan_lane_rows(const PlanRequest& r) {
  const simt::DeviceProperties props = simt::device_properties();
  const int64_t sm_count = props.sm_count / r.side_by_side;
  const int64_t threads = lane_rows_threads(r.hidden);
  RecurrencePlan best;
  best.path = RecurrencePath::Block;
  best.reason = "no lane-row kernel fits";
  if (sm_count < 1) {
    best.reason = "1/" + std::to_string(r.side_by_side) + " of " + std::to_string(props.sm_count) + " SMs is no SM";
    return best;
  }
  for (int64_t samples : {1, 2}) {
    if (r.forced.samples != 0 && samples != r.forced.samples) continue;
    if (!lane_rows_compiled(samples, r.hidden)) continue;
    if (r.forced.samples == 0 && samples > 1 && samples / 2 >= r.batch) break;  // more rows than samples: wasted work
    const int64_t groups = (r.batch + samples - 1) / samples;
    const int64_t smem = lane_rows_shared_bytes(samples, lane_row_vectors(r.hidden));
    int occupancy = 0;
    // (the backward with norms: its registers bound the copy without them)
    with_lane_rows_kernel(r.backward, samples, r.hidden, r.backward, [&](auto kernel) {
      occupancy = simt::max_active_blocks_per_sm(kernel, static_cast<int>(threads), static_cast<std::size_t>(smem));
    });
    if (occupancy < 1) continue;
    // Independent CTAs: those that do not fit at once run after the others (waves).
    const int64_t resident = int64_t(occupancy) * sm_count;
    const int64_t waves = (groups + resident - 1) / resident;
    const int64_t ctas_per_sm = lane_rows_ctas_per_sm(groups, sm_count, occupancy);
    const double us = lane_rows_terms(cost::kH200, r, samples, ctas_per_sm, waves).total;
    if (best.feasible && us >= best.us_per_step) continue;
    best.feasible = true;
    best.tiling = RecurrenceTiling{.samples = static_cast<int32_t>(samples),
                                   .chunks = 1,
                                   .groups = static_cast<int32_t>(groups),
                                   .ctas_per_group = 1,
                                   .units_per_cta = static_cast<int32_t>(r.hidden),
                                   .units_per_pass = kUnitsPerPassOptions[0],
                                   .step_sync = 0};
    best.grid = groups;
    best.shared_mem_bytes = smem;
    best.blocks_per_sm = occupancy;
    best.waves = waves;
    best.compiled_passes = 0;
    best.lane_rows = true;
    best.block_threads = threads;
    best.ctas_per_sm = ctas_per_sm;
    best.us_per_step = us;
    best.reason = std::to_string(groups) + " sample group(s) of " + std::to_string(samples) + " x 1 CTA of " +
                  std::to_string(threads) + " threads, one lane per hidden unit with its weight row in registers "
                  "(the lane-row step), " + std::to_string(smem) + " bytes of shared memory each" +
                  (waves > 1 ? ", in " + std::to_string(waves) + " waves" : "");
  }
  return best;
}

// The best launch shape of a persistent path (kPath) over samples per group and CTAs per
// group, or an infeasible plan whose reason names the limit. The Block path takes the lane-row
// kernels where they apply (lane_rows_apply).
template <typename scalar_t, RecurrencePath kPath>
RecurrencePlan plan_persistent(const PlanRequest& r) {
  if constexpr (kPath == RecurrencePath::Block) {
    if (lane_rows_apply<scalar_t>(r)) {
      RecurrencePlan lane = plan_lane_rows(r);
      if (lane.feasible) return lane;
    }
  }
  const simt::DeviceProperties props = simt::device_properties();
  const cost::Constants& model = cost::kH200;
  RecurrencePlan best;
  best.path = kPath;
  std::string limit;
  if (kPath == RecurrencePath::Grid && !props.cooperative_launch) {
    best.reason = "the device does not support cooperative launches";
    return best;
  }
  if (kPath == RecurrencePath::Cluster && props.compute_capability_major < 9) {
    best.reason = "thread-block clusters need compute capability 9.0, the device has " +
                  std::to_string(props.compute_capability_major) + "." + std::to_string(props.compute_capability_minor);
    return best;
  }
  if (kPath == RecurrencePath::Block && r.hidden > kMaxUnitsPerCta) {
    best.reason = "one CTA owns at most " + std::to_string(kMaxUnitsPerCta) + " hidden units";
    return best;
  }
  // The SMs this recurrence may take: all, or its share beside the others running with it.
  const int64_t sm_count = props.sm_count / r.side_by_side;
  if (sm_count < 1) {
    best.reason = "1/" + std::to_string(r.side_by_side) + " of " + std::to_string(props.sm_count) + " SMs is no SM";
    return best;
  }
  if (kPath == RecurrencePath::Grid && r.side_by_side > 1) {
    // (Its CTAs must all be resident at once, which another kernel on the device can delay.)
    best.reason = "a cooperative grid is planned for the whole device, not beside another recurrence";
    return best;
  }
  // Units per CTA: whole passes of 32 (and a few smaller slices for tiny hidden sizes per SM).
  // Each is tried with every computing-warp count (units per pass) allowed, at most as many
  // units as that count's passes hold.
  std::vector<int64_t> unit_options;
  if (kPath == RecurrencePath::Block) {
    unit_options = {r.hidden};
  } else if (kPath == RecurrencePath::Cluster) {
    // 2 .. 16 CTAs per cluster, each owning the same number of units but possibly the last;
    // rounded up to whole 16-byte vectors where the cluster keeps its CTA count, so that every
    // slice starts on a vector and share_slice copies vectors (the passes stay the same: the
    // units per pass are whole vectors).
    const int64_t vec = r.fp64 ? 2 : 4;
    for (int64_t cluster = 2; cluster <= simt::detail::kMaxClusterSize && cluster <= r.hidden; ++cluster) {
      int64_t units = (r.hidden + cluster - 1) / cluster;
      const int64_t whole = (units + vec - 1) / vec * vec;
      if ((r.hidden + whole - 1) / whole == cluster) units = whole;
      if ((r.hidden + units - 1) / units == cluster && units <= kMaxUnitsPerCta) unit_options.push_back(units);
    }
    if (unit_options.empty()) {
      best.reason = "a cluster of at most " + std::to_string(simt::detail::kMaxClusterSize) + " CTAs of at most " +
                    std::to_string(kMaxUnitsPerCta) + " units each cannot hold " + std::to_string(r.hidden) + " units";
      return best;
    }
  } else {
    for (int64_t units : {256, 224, 192, 160, 128, 96, 64, 48, 32, 16, 8}) {
      if (units < r.hidden) unit_options.push_back(units);
    }
    if (r.hidden <= kMaxUnitsPerCta) unit_options.push_back(r.hidden);
  }
  struct Slice {
    int64_t units;
    int per_pass;
  };
  std::vector<Slice> slices;
  const ForcedTiling& forced = r.forced;
  // The Grid and Cluster paths' ways to end a step (StepSync), each priced by the model with
  // its cost measured on an H200 (recurrence_cost_model.h), or the forced one where it is one of
  // the path's (a forced one of another path leaves the choice to the model); the barrier first,
  // which a tie keeps. The tagged exchange carries float32 state only. The Block path has its
  // own barrier.
  std::vector<int32_t> step_syncs = {int32_t(StepSync::GridBarrier)};
  if (sync_forced_on(kPath, forced.step_sync)) {
    if (!step_sync_allowed(kPath, StepSync(forced.step_sync), r.fp64)) {
      best.reason = "the tagged exchange carries float32 state only";
      return best;
    }
    step_syncs = {int32_t(forced.step_sync)};
  } else {
    for (int32_t sync = 1; sync < int32_t(kStepSyncs); ++sync) {
      if (step_sync_allowed(kPath, StepSync(sync), r.fp64)) step_syncs.push_back(sync);
    }
  }
  for (int64_t units : unit_options) {
    for (int per_pass : kUnitsPerPassOptions) {
      if (forced.units_per_pass != 0 && per_pass != forced.units_per_pass) continue;
      if (units <= max_units_per_cta(per_pass)) {
        slices.push_back({units, per_pass});
      } else {
        limit = std::to_string(units) + " units per CTA exceed the " + std::to_string(max_units_per_cta(per_pass)) +
                " that " + std::to_string(kMaxPasses) + " passes of " + std::to_string(per_pass) + " units hold";
      }
    }
  }
  std::vector<std::pair<Slice, int32_t>> slice_syncs;
  for (const Slice& slice : slices) {
    for (const int32_t step_sync : step_syncs) slice_syncs.emplace_back(slice, step_sync);
  }
  // The Grid and Cluster paths' tiled dot products where forced (not yet the planner's own choice).
  const bool tiled = (kPath == RecurrencePath::Grid || kPath == RecurrencePath::Cluster) && forced.tiled_dots;
  // The Block path's operand ring where forced (RecurrenceTiling::operand_ring; opt-in).
  const bool ring = kPath == RecurrencePath::Block && forced.operand_ring;
  if (tiled && r.fp64) {
    best.reason = "the tiled dot products run float32 only";
    return best;
  }
  for (int64_t samples : {1, 2, 4, 8}) {
    if (forced.samples != 0 && samples != forced.samples) continue;
    if (tiled && !tiled_dots_allowed(kPath, r.fp64, samples)) {
      // (said where nothing else rules the shape out: a sample count tried after this one may)
      if (limit.empty() || forced.samples != 0) {
        limit = std::string("the ") + (kPath == RecurrencePath::Grid ? "grid" : "cluster") +
                " path's tiled dot products take " + (kPath == RecurrencePath::Grid ? "4 or 8" : "4") +
                " samples per chunk, not " + std::to_string(samples);
      }
      continue;
    }
    if (forced.samples == 0 && samples > 1 && samples / 2 >= r.batch && !(tiled && samples == 4)) {
      break;  // more rows than samples: wasted work
    }
    const int64_t sample_chunks = (r.batch + samples - 1) / samples;
    for (const auto& [slice, step_sync] : slice_syncs) {
      const int64_t units = slice.units;
      const int per_pass = slice.per_pass;
      const int64_t ctas = (r.hidden + units - 1) / units;
      RecurrenceTiling tiling{.samples = static_cast<int32_t>(samples),
                              .chunks = 1,
                              .groups = static_cast<int32_t>(sample_chunks),
                              .ctas_per_group = static_cast<int32_t>(ctas),
                              .units_per_cta = static_cast<int32_t>(units),
                              .units_per_pass = per_pass,
                              .step_sync = step_sync,
                              .tiled_dots = tiled ? 1 : 0,
                              .operand_ring = ring ? 1 : 0};
      const int passes = compiled_passes_of(kPath, tiling, r.hidden, r.fp64, r.forced);
      const int iterations = compiled_iterations(kPath, passes, chunk_iterations_of(r.hidden, r.fp64), r.fp64, samples);
      const int64_t register_rows = SharedLayout<scalar_t>::register_rows(r.hidden, tiling, kPath, passes);
      const SharedLayout<scalar_t> layout =
          SharedLayout<scalar_t>::make(r.hidden, tiling, kPath, r.backward, 0, passes, iterations);
      int64_t smem = layout.bytes;
      if (smem > props.shared_mem_per_block_optin) {
        limit = "a CTA needs " + std::to_string(smem) + " bytes of shared memory (" +
                std::to_string(units - register_rows) + " rows of W_hh and the state rows of " +
                std::to_string(samples) + " samples), more than shared_mem_per_block_optin = " +
                std::to_string(props.shared_mem_per_block_optin);
        continue;
      }
      int occupancy = 0, clusters = 0;
      with_persistent_kernel<scalar_t, kPath>(r.backward, samples, passes, [&](auto kernel) {
        occupancy = simt::max_active_blocks_per_sm(kernel, kRecurrenceThreads, static_cast<std::size_t>(smem));
        if (kPath == RecurrencePath::Cluster) {
          if (ctas > simt::detail::kPortableClusterSize) simt::allow_nonportable_cluster_size(kernel);
          clusters = simt::max_active_clusters(kernel, kRecurrenceThreads, static_cast<std::size_t>(smem),
                                               static_cast<unsigned>(ctas));
        }
      }, false, iterations);
      if (occupancy < 1) {
        limit = "a CTA with " + std::to_string(smem) + " bytes of shared memory does not fit on an SM";
        continue;
      }
      clusters = static_cast<int>(int64_t(clusters) / r.side_by_side);  // (a share of those that fit at once)
      if (kPath == RecurrencePath::Cluster && clusters < 1) {
        limit = "no cluster of " + std::to_string(ctas) + " CTAs with " + std::to_string(smem) +
                " bytes of shared memory each fits on " +
                (r.side_by_side > 1 ? "1/" + std::to_string(r.side_by_side) + " of " : std::string()) + "the device";
        continue;
      }
      const int64_t resident = int64_t(occupancy) * sm_count;
      int64_t waves = 1;
      if (kPath == RecurrencePath::Cluster) {
        waves = (int64_t(tiling.groups) + clusters - 1) / clusters;
      } else if (kPath == RecurrencePath::Grid) {
        // A cooperative grid must be co-resident: groups take several chunks of samples each.
        const int64_t max_groups = resident / ctas;
        if (max_groups < 1) {
          limit = std::to_string(ctas) + " CTAs of " + std::to_string(units) + " units exceed the " +
                  std::to_string(resident) + " that can be co-resident for a cooperative launch";
          continue;
        }
        tiling.chunks = static_cast<int32_t>((sample_chunks + max_groups - 1) / max_groups);
        tiling.groups = static_cast<int32_t>((sample_chunks + tiling.chunks - 1) / tiling.chunks);
        if (tiling.chunks > 1) {
          // Several chunks per CTA: a second buffer of state rows, filled while the first is read.
          smem = SharedLayout<scalar_t>::make(r.hidden, tiling, kPath, r.backward, 0, passes, iterations).bytes;
          if (smem > props.shared_mem_per_block_optin) {
            limit = "a CTA taking " + std::to_string(tiling.chunks) + " chunks per step needs " + std::to_string(smem) +
                    " bytes of shared memory (" + std::to_string(units) + " rows of W_hh and two buffers of " +
                    std::to_string(samples) + " state rows), more than shared_mem_per_block_optin = " +
                    std::to_string(props.shared_mem_per_block_optin);
            continue;
          }
          with_persistent_kernel<scalar_t, kPath>(r.backward, samples, passes, [&](auto kernel) {
            occupancy = simt::max_active_blocks_per_sm(kernel, kRecurrenceThreads, static_cast<std::size_t>(smem));
          }, false, iterations);
          const int64_t groups_at_once = int64_t(occupancy) * sm_count / ctas;
          if (groups_at_once < 1) {
            limit = std::to_string(ctas) + " CTAs of " + std::to_string(units) + " units with two buffers of state "
                    "rows exceed what can be co-resident for a cooperative launch";
            continue;
          }
          tiling.chunks = static_cast<int32_t>((sample_chunks + groups_at_once - 1) / groups_at_once);
          tiling.groups = static_cast<int32_t>((sample_chunks + tiling.chunks - 1) / tiling.chunks);
        }
      } else {
        waves = (int64_t(tiling.groups) * ctas + resident - 1) / resident;
      }
      const int64_t ctas_total = int64_t(tiling.groups) * ctas;
      const int64_t groups = tiling.groups;
      const double us = predicted_step_us(model, kPath, r, tiling, waves);
      if (best.feasible && us >= best.us_per_step) continue;
      best.feasible = true;
      best.tiling = tiling;
      best.grid = ctas_total;
      best.cluster = kPath == RecurrencePath::Cluster ? ctas : 1;
      best.shared_mem_bytes = smem;
      best.blocks_per_sm = occupancy;
      best.waves = waves;
      best.compiled_passes = passes;
      best.us_per_step = us;
      best.reason = std::to_string(groups) + " sample group(s) of " +
                    (tiling.chunks > 1 ? std::to_string(tiling.chunks) + " chunks of " : std::string()) +
                    std::to_string(samples) + " x " + std::to_string(ctas) + " CTA(s) of " + std::to_string(units) +
                    " units, " + std::to_string(smem) + " bytes of shared memory each" +
                    (tiled ? ", tiled dot products (a warp's columns over " + std::to_string(tiled_units(samples)) +
                                 " units x " + std::to_string(samples) + " samples)"
                     : per_pass != kUnitsPerPass
                         ? ", dot products on " + std::to_string(per_pass * kUnitLanes / kWarp) + " warps (" +
                               std::to_string(per_pass) + " units per pass)"
                         : "") +
                    (tiled && register_rows > 0
                         ? ", each tile's first " + std::to_string(kTiledSplitHalfRows) +
                               " rows in registers up to column " + std::to_string(kTiledSplitFirstColumn) +
                               " and its last " + std::to_string(kTiledSplitHalfRows) + " up to " +
                               std::to_string(kTiledSplitLastColumn) + ", the rest in shared memory"
                     : (kPath == RecurrencePath::Block && passes > 0) || register_rows > 0
                         ? register_rows > 0 && register_rows < units
                               ? ", the weight rows of " + std::to_string(register_rows / kUnitsPerPass) +
                                     (register_rows > kUnitsPerPass ? " passes" : " pass") + " in registers" +
                                     (layout.tail_row > 0
                                          ? " up to column " + std::to_string(layout.row - layout.tail_row)
                                          : std::string()) +
                                     ", the others in shared memory"
                               : ", weight rows in registers"
                         : "") +
                    (passes > 0 ? ", the step compiled for its " + std::to_string(passes) + " pass(es)" : "") +
                    step_sync_text(static_cast<StepSync>(step_sync)) +
                    (ring ? ", each lane's step operands " + std::to_string(kOperandRingSteps) +
                                " steps ahead in shared memory"
                          : "") +
                    (waves > 1 ? ", in " + std::to_string(waves) + " waves" : "");
    }
  }
  if (!best.feasible) best.reason = limit;
  return best;
}

template <typename scalar_t>
RecurrencePlan plan_stepwise(const PlanRequest& r) {
  RecurrencePlan plan;
  plan.path = RecurrencePath::Stepwise;
  plan.feasible = true;
  plan.grid = r.backward ? r.batch : std::min<int64_t>((r.batch * r.hidden + kRecurrenceThreads - 1) / kRecurrenceThreads,
                                                        int64_t(simt::device_properties().sm_count) * 8);
  plan.grid = std::max<int64_t>(plan.grid, 1);
  plan.us_per_step = predicted_step_us(cost::kH200, RecurrencePath::Stepwise, r, plan.tiling, 1);
  plan.reason = "a cuBLAS product and an epilogue launch per step";
  return plan;
}

// What a plan depends on: the device's properties, the request and the forced tiling.
template <typename scalar_t>
std::string plan_key(const PlanRequest& r) {
  const simt::DeviceProperties d = simt::device_properties();
  std::string key;
  for (int64_t v : {int64_t(d.sm_count), int64_t(d.sms_per_gpc), int64_t(d.compute_capability_major),
                    int64_t(d.max_threads_per_sm), int64_t(d.max_blocks_per_sm),
                    d.shared_mem_per_block_optin, d.shared_mem_per_sm, d.reserved_shared_mem_per_block,
                    int64_t(d.regs_per_block), int64_t(d.regs_per_sm), int64_t(d.cooperative_launch), r.hidden, r.batch,
                    int64_t(r.backward), int64_t(sizeof(scalar_t)), r.forced.samples, r.forced.units_per_pass,
                    r.forced.step_sync, int64_t(r.forced.run_time_passes), int64_t(r.forced.lane_rows_step),
                    int64_t(r.forced.tiled_dots), int64_t(r.forced.operand_ring), r.side_by_side}) {
    key += std::to_string(v) + ",";
  }
  return key;
}

// Every path's best shape, in the order block, cluster, grid, stepwise. Planning queries the
// occupancy of dozens of launch shapes, so the result is kept per (device properties, request).
template <typename scalar_t>
std::vector<RecurrencePlan> plan_candidates(const PlanRequest& request) {
  PlanRequest r = request;
  r.forced = forced_tiling();
  const std::string key = plan_key<scalar_t>(r);
  static std::mutex mutex;
  static std::unordered_map<std::string, std::vector<RecurrencePlan>> cache;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  std::vector<RecurrencePlan> candidates = {plan_persistent<scalar_t, RecurrencePath::Block>(r),
                                            plan_persistent<scalar_t, RecurrencePath::Cluster>(r),
                                            plan_persistent<scalar_t, RecurrencePath::Grid>(r),
                                            plan_stepwise<scalar_t>(r)};
  const std::lock_guard<std::mutex> lock(mutex);
  cache.emplace(key, candidates);
  return candidates;
}

// Where a timed recurrence writes its step phases: [CTAs, 3] int64 zeros in `phase_cycles`
// (null when the call is not timed). The op that times (recurrence_step_phases in ops.cpp)
// refuses the Stepwise path, which has no persistent kernel, before anything runs.
inline int64_t* phase_cycles_pointer(at::Tensor* phase_cycles, const RecurrencePlan& plan,
                                     const at::TensorOptions& options) {
  if (phase_cycles == nullptr) return nullptr;
  TORCH_INTERNAL_ASSERT(plan.path != RecurrencePath::Stepwise, "step phases of the stepwise path were asked for");
  *phase_cycles = at::zeros({plan.grid, kStepPhases}, options.dtype(at::kLong));
  return phase_cycles->data_ptr<int64_t>();
}

inline const int64_t* lengths_pointer(const LayerForwardCall& call) {
  const std::optional<at::Tensor>& lengths = call.valid_lengths.on_device;
  return lengths.has_value() ? lengths->data_ptr<int64_t>() : nullptr;
}

template <typename scalar_t, class Args>
void launch_persistent(const RecurrencePlan& plan, bool backward, const Args& args) {
  // (Host time of a short layer: the profiler's scopes name the launch, the plan and the GEMMs.)
  RECORD_USER_SCOPE("rnn_fused::launch");
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (plan.lane_rows) {
      bool norms = false;
      if constexpr (std::is_same_v<Args, BackwardRecurrenceArgs<float>>) norms = args.step_sq != nullptr;
      const bool found = with_lane_rows_kernel(backward, plan.tiling.samples, args.shape.hidden, norms, [&](auto kernel) {
        if constexpr (std::is_invocable_v<decltype(kernel), Args>) {
          simt::launch(kernel, static_cast<unsigned>(plan.grid), dim3(static_cast<unsigned>(plan.block_threads)),
                       static_cast<std::size_t>(plan.shared_mem_bytes), args);
        }
      });
      TORCH_CHECK(found, "rnn_fused: no lane-row kernel for ", plan.tiling.samples, " samples and hidden size ",
                  args.shape.hidden);
      return;
    }
  }
  // (Only the kernels that compile the tiled dot products take a launch shape with them.)
  TORCH_INTERNAL_ASSERT(plan.tiling.tiled_dots == 0 ||
                            tiled_dots_allowed(plan.path, std::is_same_v<scalar_t, double>, plan.tiling.samples),
                        "rnn_fused: a tiled launch shape for a kernel without tiled dot products");
  const dim3 block(kRecurrenceThreads);
  bool plain_backward = false;
  if constexpr (std::is_same_v<Args, BackwardRecurrenceArgs<scalar_t>>) {
    plain_backward = plain_backward_call(args);
  }
  constexpr bool kFp64 = std::is_same_v<scalar_t, double>;
  const int iterations = compiled_iterations(plan.path, plan.compiled_passes,
                                             chunk_iterations_of(args.shape.hidden, kFp64), kFp64, plan.tiling.samples);
  with_persistent_kernel<scalar_t>(plan.path, backward, plan.tiling.samples, plan.compiled_passes, [&](auto kernel) {
    using Kernel = decltype(kernel);
    if constexpr (std::is_invocable_v<Kernel, Args, RecurrenceTiling>) {
      const auto grid = static_cast<unsigned>(plan.grid);
      const auto smem = static_cast<std::size_t>(plan.shared_mem_bytes);
      if (plan.path == RecurrencePath::Grid) {
        simt::launch_cooperative(kernel, grid, block, smem, args, plan.tiling);
      } else if (plan.path == RecurrencePath::Cluster) {
        // (The planner allowed it for the general kernel it sized; a plain backward launches another.)
        if (plan.cluster > simt::detail::kPortableClusterSize) simt::allow_nonportable_cluster_size(kernel);
        simt::launch_cluster(kernel, grid, block, smem, static_cast<unsigned>(plan.cluster), args, plan.tiling);
      } else {
        simt::launch(kernel, grid, block, smem, args, plan.tiling);
      }
    }
  }, plain_backward, iterations);
}

// The Grid and Stepwise paths exchange the state through global memory: [2,B,H], by parity
// of the step. The Stepwise path's products read slot `first_slot` first: it holds `first`, or
// zeros where that is undefined; the Grid kernels read the first state from `first` itself (a
// launch fewer). Every other slot is written before it is read. The other paths need none (an
// undefined tensor).
inline at::Tensor exchange_buffer(const RecurrencePlan& plan, const LayerShape& shape, const at::TensorOptions& options,
                                  int64_t first_slot, const at::Tensor& first) {
  if (plan.path != RecurrencePath::Grid && plan.path != RecurrencePath::Stepwise) return {};
  if (step_sync_of(plan) == StepSync::TaggedExchange) return {};  // (the tagged words instead)
  at::Tensor exchange = at::empty({2, shape.batch, shape.hidden}, options);
  if (plan.path == RecurrencePath::Grid) return exchange;
  if (first.defined()) {
    exchange[first_slot].copy_(first);
  } else {
    exchange[first_slot].zero_();
  }
  return exchange;
}

// The Grid path's step-barrier flags where its steps end in a flag barrier (also with the tagged
// exchange where the backward exchanges norm partials): [CTAs] int32 (the kernels read them as
// unsigned and zero them first); else an undefined tensor.
inline at::Tensor step_flags_buffer(const RecurrencePlan& plan, const at::TensorOptions& options,
                                    bool exchanges_norms) {
  const StepSync sync = step_sync_of(plan);
  if (sync != StepSync::FlagBarrier && !(sync == StepSync::TaggedExchange && exchanges_norms)) return {};
  return at::empty({plan.grid}, options.dtype(at::kInt));
}

inline unsigned* step_flags_pointer(const at::Tensor& flags) {
  return flags.defined() ? reinterpret_cast<unsigned*>(flags.data_ptr<int32_t>()) : nullptr;
}

// The tagged exchange's words [2,B,H] (int64; the kernels zero them first), else undefined.
inline at::Tensor tagged_exchange_buffer(const RecurrencePlan& plan, const LayerShape& shape,
                                         const at::TensorOptions& options) {
  if (step_sync_of(plan) != StepSync::TaggedExchange) return {};
  return at::empty({2, shape.batch, shape.hidden}, options.dtype(at::kLong));
}

inline unsigned long long* tagged_words_pointer(const at::Tensor& words) {
  return words.defined() ? reinterpret_cast<unsigned long long*>(words.data_ptr<int64_t>()) : nullptr;
}

// Randomized truncation's edge scales of `layers` layers (layer l's drawn with stream
// truncation.stream + 2 l), drawn on the kernels' device before a backward launch reads them:
// [layers,T,B] in the compute dtype (edge_scale_table_kernel); without randomized truncation an
// undefined tensor (the kernels then cut every K steps themselves, or not at all).
template <typename scalar_t>
at::Tensor drawn_edge_scales(const TruncationParams& truncation, int64_t steps, int64_t batch, int64_t layers,
                             const at::TensorOptions& options) {
  if (!truncation.randomized()) return {};
  at::Tensor scales = at::empty({layers, steps, batch}, options);
  const int64_t total = scales.numel();
  if (total == 0) return scales;
  constexpr int64_t kMaxBlocks = 1024;  // (each thread then takes every grid-th entry)
  const int64_t blocks = std::min((total + kRecurrenceThreads - 1) / kRecurrenceThreads, kMaxBlocks);
  simt::launch(edge_scale_table_kernel<scalar_t>, static_cast<unsigned>(blocks), dim3(kRecurrenceThreads), 0,
               truncation, steps, batch, layers, scales.data_ptr<scalar_t>());
  return scales;
}

template <typename scalar_t>
const scalar_t* drawn_scales_pointer(const at::Tensor& scales) {
  return scales.defined() ? scales.data_ptr<scalar_t>() : nullptr;
}

// Whether a backward that records norms sums them after the launch (step_norms_kernel over the
// g_t its plain copy writes) instead of in its steps: where its kernel has a plain copy
// (`plain_copy`: compiled for its passes, float32) and the call is one the plain copy runs once
// norms leave it (plain_backward_call), unless forced_tiling's norms_in_steps asks for the sums in
// the steps. Priced by nothing: the store per output and step is off the step's path (after the
// barrier on the cluster and grid paths, whose release would wait for it), and the launch costs
// less than the norms' sums in the steps (step_norms_kernel).
inline bool defers_norms(bool plain_copy, const TruncationParams& truncation, int64_t steps) {
  return plain_copy && !forced_tiling().norms_in_steps && plain_backward_truncation(truncation, steps);
}

// defers_norms for a layer's backward on `plan`: the block and cluster paths' kernels compiled
// for their passes have plain copies (float32; not the lane-row step).
template <typename scalar_t>
bool defers_step_norms(const RecurrencePlan& plan, const TruncationParams& truncation, int64_t steps) {
  const bool plain_copy = std::is_same_v<scalar_t, float> && !plan.lane_rows && plan.compiled_passes > 0 &&
                          (plan.path == RecurrencePath::Block || plan.path == RecurrencePath::Cluster);
  return defers_norms(plain_copy, truncation, steps);
}

// step_sq [L,T,B] from the g_t [L,T,B,H] of `layers` layers a plain backward wrote
// (step_norms_kernel).
inline void sum_step_norms(const at::Tensor& step_g, const int64_t* lengths, const LayerShape& shape, int64_t layers,
                           const at::Tensor& step_sq) {
  const int64_t rows = layers * shape.steps * shape.batch;
  if (rows == 0) return;
  constexpr int64_t kWarpsPerCta = kRecurrenceThreads / kWarp, kMaxBlocks = 1024;
  const int64_t blocks = std::min((rows + kWarpsPerCta - 1) / kWarpsPerCta, kMaxBlocks);
  simt::launch(step_norms_kernel, static_cast<unsigned>(blocks), dim3(kRecurrenceThreads), 0,
               static_cast<const float*>(step_g.data_ptr<float>()), lengths, shape, layers,
               step_sq.data_ptr<double>());
}

// Whether the kernel of `plan` projects the layer's input itself (ForwardRecurrenceArgs::x):
// host_layer.h projects_input_in_kernel for its kernels.
inline bool kernel_projects_input(const RecurrencePlan& plan, const LayerShape& shape) {
  return projects_input_in_kernel(plan.path == RecurrencePath::Block && !plan.lane_rows, shape.steps,
                                  plan.tiling.samples, shape.input_size, shape.hidden);
}

// ForwardRecurrenceArgs' x, w_ih, b_ih and b_hh: the projection's operands where the kernel
// makes it (null: none, or no biases).
template <typename scalar_t>
std::array<const scalar_t*, 4> projection_pointers(const InputProjection* projection) {
  if (projection == nullptr) return {nullptr, nullptr, nullptr, nullptr};
  auto optional = [](const std::optional<at::Tensor>& t) { return t.has_value() ? t->data_ptr<scalar_t>() : nullptr; };
  return {projection->x2d.data_ptr<scalar_t>(), projection->w_ih.data_ptr<scalar_t>(), optional(projection->bias_ih),
          optional(projection->bias_hh)};
}

// The forward recurrence of the host layer (host_layer.h) on the launch shape `plan`; returns h_n.
template <typename scalar_t>
at::Tensor forward_recurrence_planned(const ForwardRecurrence& r, const RecurrencePlan& plan) {
  const LayerForwardCall& call = r.call;
  const LayerShape& shape = call.shape;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden;
  const InputProjection* in_kernel = r.projection != nullptr && kernel_projects_input(plan, shape) ? r.projection
                                                                                                  : nullptr;
  if (r.projection != nullptr && in_kernel == nullptr) {
    at::Tensor out2d = r.out.view({T * B, H});
    project_input_on_host(out2d, *r.projection);
  }
  const std::array<const scalar_t*, 4> projection = projection_pointers<scalar_t>(in_kernel);
  at::Tensor h_n = r.h_n.defined() ? r.h_n : at::empty({B, H}, r.out.options());
  at::Tensor exchange = exchange_buffer(plan, shape, r.out.options(), 0, r.h0);  // h0 (or zeros) at step 0
  const at::Tensor flags = step_flags_buffer(plan, r.out.options(), false);
  const at::Tensor tagged = tagged_exchange_buffer(plan, shape, r.out.options());
  const ForwardRecurrenceArgs<scalar_t> args{.w_hh = r.w_hh.data_ptr<scalar_t>(),
                                             .out = r.out.data_ptr<scalar_t>(),
                                             .h0 = r.h0.defined() ? r.h0.data_ptr<scalar_t>() : nullptr,
                                             .h_n = h_n.data_ptr<scalar_t>(),
                                             .exchange = exchange.defined() ? exchange.data_ptr<scalar_t>() : nullptr,
                                             .lengths = lengths_pointer(call),
                                             .shape = shape,
                                             .reverse = call.options.reverse,
                                             .activation = call.options.activation,
                                             .phase_cycles = phase_cycles_pointer(r.phase_cycles, plan, r.out.options()),
                                             .step_flags = step_flags_pointer(flags),
                                             .tagged_exchange = tagged_words_pointer(tagged),
                                             .x = projection[0],
                                             .w_ih = projection[1],
                                             .b_ih = projection[2],
                                             .b_hh = projection[3]};
  if (plan.path == RecurrencePath::Stepwise) {
    // exchange[s % 2] holds h_{s-1}; the product of each step goes to a [B,H] buffer. The
    // views are made once: the host issues two launches per step and must keep ahead of them.
    at::Tensor recurrent = at::empty({B, H}, r.out.options());
    const at::Tensor w_hh_t = r.w_hh.t();
    const std::array<at::Tensor, 2> states = {exchange[0], exchange[1]};
    for (int64_t s = 0; s < T; ++s) {
      const at::Tensor& previous = states[s % 2];
      at::mm_out(recurrent, previous, w_hh_t);
      simt::launch(forward_step_epilogue_kernel<scalar_t>, static_cast<unsigned>(plan.grid), dim3(kRecurrenceThreads),
                   0, args, recurrent.data_ptr<scalar_t>(), previous.data_ptr<scalar_t>(),
                   states[(s + 1) % 2].data_ptr<scalar_t>(), s);
    }
  } else {
    launch_persistent<scalar_t>(plan, false, args);
  }
  return h_n;  // (out is zero past each sample's length: the kernels write every entry)
}

// The backward recurrence of the host layer (host_layer.h) on the launch shape `plan`; returns
// dz at each sample's processing step 0.
template <typename scalar_t>
at::Tensor backward_recurrence_planned(const BackwardRecurrence& r, const RecurrencePlan& plan) {
  const LayerForwardCall& call = r.call.forward;
  const LayerShape& shape = call.shape;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden;
  const BackwardOperands& op = r.operands;
  const bool record_norms = r.call.record_norms;
  const bool deferred_norms = record_norms && defers_step_norms<scalar_t>(plan, call.options.truncation, T);
  const bool norms_in_kernel = record_norms && !deferred_norms;
  const at::TensorOptions options = op.out.options();
  at::Tensor dz_first = at::empty({B, H}, options);
  // Step T-1 reads slot T % 2: dz after the last step, zero.
  at::Tensor exchange = exchange_buffer(plan, shape, options, T % 2, at::Tensor());
  const at::Tensor flags = step_flags_buffer(plan, options, norms_in_kernel);
  const at::Tensor tagged = tagged_exchange_buffer(plan, shape, options);
  at::Tensor step_sq, norm_partials, step_g;
  if (record_norms) {
    const at::TensorOptions f64 = options.dtype(at::kDouble);
    // Every entry is written (zero past a sample's length).
    step_sq = at::empty({T, B}, f64);
    if (norms_in_kernel && plan.path == RecurrencePath::Grid) {
      norm_partials = at::empty({3, B, plan.tiling.ctas_per_group}, f64);
    }
    if (deferred_norms) step_g = at::empty({T, B, H}, options);  // (read at valid steps only)
  }
  const at::Tensor drawn = drawn_edge_scales<scalar_t>(call.options.truncation, T, B, 1, options);
  const BackwardRecurrenceArgs<scalar_t> args{
      .w_hh = op.w_hh.data_ptr<scalar_t>(),
      .dy = op.dy.data_ptr<scalar_t>(),
      .dh_n = op.dh_n.defined() ? op.dh_n.data_ptr<scalar_t>() : nullptr,
      .out = op.out.data_ptr<scalar_t>(),
      .dz = r.dz.data_ptr<scalar_t>(),
      .dz_first = dz_first.data_ptr<scalar_t>(),
      .exchange = exchange.defined() ? exchange.data_ptr<scalar_t>() : nullptr,
      .lengths = lengths_pointer(call),
      .shape = shape,
      .reverse = call.options.reverse,
      .activation = call.options.activation,
      .truncation = call.options.truncation,
      .drawn_scales = drawn_scales_pointer<scalar_t>(drawn),
      .step_sq = norms_in_kernel ? step_sq.data_ptr<double>() : nullptr,
      .norm_partials = norm_partials.defined() ? norm_partials.data_ptr<double>() : nullptr,
      .step_g = deferred_norms ? step_g.data_ptr<scalar_t>() : nullptr,
      .phase_cycles = phase_cycles_pointer(r.phase_cycles, plan, options),
      .step_flags = step_flags_pointer(flags),
      .tagged_exchange = tagged_words_pointer(tagged)};
  if (plan.path == RecurrencePath::Stepwise) {
    // exchange[(s + 1) % 2] holds dz at step s+1 (zero before the first step).
    at::Tensor carry = at::empty({B, H}, options);
    const std::array<at::Tensor, 2> states = {exchange[0], exchange[1]};
    for (int64_t s = T - 1; s >= 0; --s) {
      at::mm_out(carry, states[(s + 1) % 2], op.w_hh);
      simt::launch(backward_step_epilogue_kernel<scalar_t>, static_cast<unsigned>(plan.grid),
                   dim3(kRecurrenceThreads), 0, args, carry.data_ptr<scalar_t>(), states[s % 2].data_ptr<scalar_t>(),
                   s);
    }
  } else {
    launch_persistent<scalar_t>(plan, true, args);
  }
  if (deferred_norms) sum_step_norms(step_g, lengths_pointer(call), shape, 1, step_sq);
  if (record_norms) r.step_norms.copy_(step_sq.sqrt_());
  return dz_first;
}

// ---- Autotuning (host_layer.h Autotune) --------------------------------------------------

// Where this world's kernels find their tensors: the current CUDA device, or the CPU (emulated).
inline c10::DeviceType kernel_device_type() {
#if defined(__CUDACC__)
  return c10::DeviceType::CUDA;
#else
  return c10::DeviceType::CPU;
#endif
}

// Which device a measurement was made on.
inline std::string kernel_device_name() {
#if defined(__CUDACC__)
  return "cuda:" + std::to_string(simt::detail::current_device());
#else
  return "emulated";
#endif
}

// The time per step of a recurrence launch on this device, in microseconds, from run_us(n)
// (one run of n steps, timed): the difference between the fastest of kTimedRuns runs of
// kTimedShortSteps + steps steps and the fastest of runs of kTimedShortSteps steps, over `steps`
// (a persistent kernel's launch, or the first steps' staging, is not a step's cost), after a
// warm-up run. The fastest, not the median: what delays a run (another process, the host)
// only ever adds time. Where noise still leaves the difference at or below zero, the longer
// run's time over its steps, launch included (an overestimate, never zero).
inline constexpr int64_t kTimedShortSteps = 2;
template <class RunUs>
double per_step_us(int64_t steps, RunUs&& run_us) {
  constexpr int kTimedRuns = 3;
  const int64_t T = kTimedShortSteps + steps;
  auto fastest_us = [&](int64_t n) {
    double fastest = run_us(n);
    for (int i = 1; i < kTimedRuns; ++i) fastest = std::min(fastest, run_us(n));
    return fastest;
  };
  run_us(kTimedShortSteps);  // warm-up: first launches of the kernels, allocations
  const double short_us = fastest_us(kTimedShortSteps), long_us = fastest_us(T);
  return long_us > short_us ? (long_us - short_us) / double(steps) : long_us / double(T);
}

// The time per step of the launch shape `plan` (per_step_us): the forward from constant inputs
// that keep every value finite (the kernels' time does not depend on the values), or the
// backward through such saved states.
template <typename scalar_t>
double measured_step_us(const RecurrencePlan& plan, const PlanRequest& r, int64_t steps) {
  const at::TensorOptions options =
      at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value).device(kernel_device_type());
  const int64_t B = r.batch, H = r.hidden, T = kTimedShortSteps + steps;
  // Forward: XW_t in, h_t out (in place). Backward: saved h_t, dy_t in; dz_t out.
  const at::Tensor states = at::full({T, B, H}, 0.25, options);
  const at::Tensor w_hh = at::full({H, H}, 0.5 / double(H), options);
  const at::Tensor dy = r.backward ? at::full({T, B, H}, 0.01, options) : states;
  const at::Tensor dz = r.backward ? at::empty({T, B, H}, options) : at::Tensor();
  const at::Tensor dh_n = r.backward ? at::zeros({B, H}, options) : at::Tensor();
  auto run_us = [&](int64_t n) {
    LayerBackwardCall call{};
    call.forward.shape = LayerShape{.steps = n, .batch = B, .input_size = H, .hidden = H};
    const at::Tensor saved = states.narrow(0, 0, n);
    const BackwardOperands operands{.w_hh = w_hh, .out = saved, .dy = dy.narrow(0, 0, n), .dh_n = dh_n};
    return simt::stream_time_us([&] {
      if (r.backward) {
        backward_recurrence_planned<scalar_t>(
            BackwardRecurrence{.call = call, .operands = operands, .dz = dz.narrow(0, 0, n), .step_norms = {}}, plan);
      } else {
        forward_recurrence_planned<scalar_t>(ForwardRecurrence{.call = call.forward, .w_hh = w_hh, .out = saved}, plan);
      }
    });
  };
  return per_step_us(steps, run_us);
}

// The best launch shape of `path` by the model (plan_candidates' entry for it, uncached).
template <typename scalar_t>
RecurrencePlan plan_of_path(RecurrencePath path, const PlanRequest& r) {
  switch (path) {
    case RecurrencePath::Block: return plan_persistent<scalar_t, RecurrencePath::Block>(r);
    case RecurrencePath::Cluster: return plan_persistent<scalar_t, RecurrencePath::Cluster>(r);
    case RecurrencePath::Grid: return plan_persistent<scalar_t, RecurrencePath::Grid>(r);
    default: return plan_stepwise<scalar_t>(r);
  }
}

// What autotuning measured for a request: every launch shape it timed, and per path (in path
// order) the shape timed fastest, or the path's infeasible plan.
struct TunedPaths {
  std::vector<RecurrencePlan> timed;
  std::vector<double> timed_us;
  std::vector<RecurrencePlan> fastest;
  std::vector<double> fastest_us;  // NaN where the path cannot run the shape
};

// The launch shapes autotuning times (r.forced holds the forced tiling): each feasible
// persistent path's best shape by the model for each sample tile the planner considers (1, 2,
// 4, 8 samples per chunk, fewer than twice the batch), each number of units per pass (the
// model's choices between them rest on fitted terms) and, on the Grid path, each step
// synchronisation, and where tiled_dots_allowed (float32; the Grid path at 4 and 8 samples, the
// Cluster path at 4 where its rows are all in shared memory) the tiled dot products too, and on
// the Block path its general kernels with the operand ring too (the planner's model alone takes
// neither: RecurrenceTiling::tiled_dots, ::operand_ring), only the forced ones where they are
// forced; the stepwise path's shape. The rest of the forced tiling holds for every shape timed.
template <typename scalar_t>
std::vector<RecurrencePlan> tuning_shapes(const PlanRequest& r, const std::vector<RecurrencePlan>& candidates) {
  std::vector<RecurrencePlan> shapes;
  for (const RecurrencePlan& c : candidates) {
    if (!c.feasible) continue;
    if (c.path == RecurrencePath::Stepwise) {
      shapes.push_back(c);
      continue;
    }
    // The Block path's general kernels with and without the operand ring (the ring alone where it
    // is forced; neither beside a forced lane-row step, which has no ring).
    const bool rings = c.path == RecurrencePath::Block && !r.forced.lane_rows_step;
    for (int64_t samples : {1, 2, 4, 8}) {
      if (r.forced.samples != 0 ? samples != r.forced.samples : samples > 1 && samples / 2 >= r.batch) continue;
      for (int per_pass : kUnitsPerPassOptions) {
        if (r.forced.units_per_pass != 0 && per_pass != r.forced.units_per_pass) continue;
        for (int64_t sync = 0; sync < kStepSyncs; ++sync) {
          if (!step_sync_allowed(c.path, StepSync(sync), r.fp64)) continue;
          if (sync_forced_on(c.path, r.forced.step_sync) && sync != r.forced.step_sync) continue;
          const bool tiles = tiled_dots_allowed(c.path, r.fp64, samples);
          for (const bool tiled : {false, true}) {
            if (tiled ? !tiles : r.forced.tiled_dots && c.path != RecurrencePath::Block) continue;
            for (const bool ring : {false, true}) {
              if (ring ? !rings : r.forced.operand_ring && c.path == RecurrencePath::Block) continue;
              PlanRequest variant = r;  // (the rest of the forced tiling holds: the lane-row step, run-time passes)
              variant.forced.samples = samples;
              variant.forced.units_per_pass = per_pass;
              variant.forced.step_sync = sync;
              variant.forced.tiled_dots = tiled;
              variant.forced.operand_ring = ring;
              const RecurrencePlan p = plan_of_path<scalar_t>(c.path, variant);
              if (p.feasible) shapes.push_back(p);
            }
          }
        }
      }
    }
  }
  return shapes;
}

// tuning_shapes timed on the device, once per (device, request, forced tiling, steps) and kept
// for the process (the answer points into that store and stays valid); null where autotuning
// is off or a measurement would be needed while the current stream captures a CUDA graph.
template <typename scalar_t>
const TunedPaths* tuned_paths(const PlanRequest& request, const std::vector<RecurrencePlan>& candidates) {
  const Autotune setting = autotune();
  if (!setting.enabled) return nullptr;
  PlanRequest r = request;
  r.forced = forced_tiling();
  const std::string key = plan_key<scalar_t>(r) + std::to_string(setting.steps) + "," + kernel_device_name();
  static std::mutex mutex;
  static std::unordered_map<std::string, TunedPaths> measured;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = measured.find(key);
    if (it != measured.end()) return &it->second;
  }
  if (simt::stream_capturing()) return nullptr;
  simt::synchronize_device();  // time on an idle device (the other direction's work may be queued)
  TunedPaths tuned{.fastest = candidates, .fastest_us = std::vector<double>(candidates.size(), NAN)};
  tuned.timed = tuning_shapes<scalar_t>(r, candidates);
  for (const RecurrencePlan& p : tuned.timed) {
    const double us = measured_step_us<scalar_t>(p, r, setting.steps);
    tuned.timed_us.push_back(us);
    const size_t i = static_cast<size_t>(p.path);
    if (std::isnan(tuned.fastest_us[i]) || us < tuned.fastest_us[i]) {
      tuned.fastest[i] = p;
      tuned.fastest_us[i] = us;
    }
  }
  const std::lock_guard<std::mutex> lock(mutex);
  return &measured.emplace(key, std::move(tuned)).first->second;  // (an element's address survives rehashing)
}

// The plan for `requested` (a path name, or "" for the planner's choice); a forced path
// that cannot run the shape raises ValueError naming the path, the shape and the limit. The
// planner's choice is the fastest feasible launch shape: as measured on the device where
// autotuning is on (tuned_paths), else the fastest path's best shape as the cost model predicts.
template <typename scalar_t>
RecurrencePlan choose_plan_uncached(const PlanRequest& r, const std::string& requested) {
  const std::vector<RecurrencePlan> candidates = plan_candidates<scalar_t>(r);
  if (!requested.empty()) {
    const std::optional<RecurrencePath> path = parse_path(requested);
    TORCH_CHECK_VALUE(path.has_value(), "rnn_fused: path must be 'block', 'cluster', 'grid', 'stepwise' or None, got '",
                      requested, "'");
    const RecurrencePlan& plan = candidates[static_cast<size_t>(*path)];
    TORCH_CHECK_VALUE(plan.feasible, "rnn_fused: path '", requested, "' cannot run ", shape_text(r), " on this device: ",
                      plan.reason);
    RecurrencePlan forced = plan;
    forced.reason = "forced: " + forced.reason;
    return forced;
  }
  const TunedPaths* tuned = tuned_paths<scalar_t>(r, candidates);
  const std::vector<RecurrencePlan>& options = tuned != nullptr ? tuned->fastest : candidates;
  auto us_per_step = [&](size_t i) { return tuned != nullptr ? tuned->fastest_us[i] : options[i].us_per_step; };
  size_t best = static_cast<size_t>(RecurrencePath::Stepwise);  // always feasible
  for (size_t i = 0; i < options.size(); ++i) {
    if (options[i].feasible && us_per_step(i) < us_per_step(best)) best = i;
  }
  RecurrencePlan chosen = options[best];
  const std::string predicted = "predicted " + std::to_string(chosen.us_per_step) + " us per step";
  const std::string why = tuned != nullptr ? "measured " + std::to_string(us_per_step(best)) +
                                                 " us per step, the fastest of " + std::to_string(tuned->timed.size()) +
                                                 " launch shapes timed on this device; " + predicted
                                           : predicted + ", the fastest feasible path";
  chosen.reason = std::string(path_name(chosen.path)) + " (" + why + "): " + chosen.reason;
  return chosen;
}

// choose_plan_uncached's answer, kept per (request, forced tiling, path asked for): every layer
// call asks, and building it (the candidates copied, the reason's text formatted) took about
// 14,000 host instructions a call (callgrind, the emulated backend's host path). Not kept under
// autotuning, whose answer its setting and its measurements decide (tuned_paths keeps those);
// a forced path that cannot run the shape raises every time.
template <typename scalar_t>
RecurrencePlan choose_plan(const PlanRequest& r, const std::string& requested) {
  if (autotune().enabled) return choose_plan_uncached<scalar_t>(r, requested);
  PlanRequest keyed = r;
  keyed.forced = forced_tiling();
  const std::string key = plan_key<scalar_t>(keyed) + requested;
  static std::mutex mutex;
  static std::unordered_map<std::string, RecurrencePlan> chosen;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = chosen.find(key);
    if (it != chosen.end()) return it->second;
  }
  RecurrencePlan plan = choose_plan_uncached<scalar_t>(r, requested);
  const std::lock_guard<std::mutex> lock(mutex);
  chosen.emplace(key, plan);
  return plan;
}

// The plan of a call's forward or backward recurrence.
template <typename scalar_t>
RecurrencePlan plan_for(const LayerForwardCall& call, bool backward) {
  RECORD_USER_SCOPE("rnn_fused::plan");
  return choose_plan<scalar_t>(
      {.hidden = call.shape.hidden,
       .batch = call.shape.batch,
       .backward = backward,
       .fp64 = sizeof(scalar_t) == 8,
       .side_by_side = call.options.side_by_side},
      call.options.path);
}

// The forward recurrence of the host layer (host_layer.h); returns h_n.
template <typename scalar_t>
at::Tensor forward_recurrence_typed(const ForwardRecurrence& r) {
  return forward_recurrence_planned<scalar_t>(r, plan_for<scalar_t>(r.call, false));
}

// The backward recurrence of the host layer (host_layer.h); returns dz at each sample's
// processing step 0.
template <typename scalar_t>
at::Tensor backward_recurrence_typed(const BackwardRecurrence& r) {
  return backward_recurrence_planned<scalar_t>(r, plan_for<scalar_t>(r.call.forward, true));
}

inline at::Tensor forward_recurrence(const ForwardRecurrence& r) {
  at::Tensor h_n;
  dispatch_elman(r.out.scalar_type(), r.call.options.activation, [&](auto, auto zero) {
    h_n = forward_recurrence_typed<decltype(zero)>(r);
  });
  return h_n;
}

inline at::Tensor backward_recurrence(const BackwardRecurrence& r) {
  at::Tensor dz_first;
  dispatch_elman(r.operands.out.scalar_type(), r.call.forward.options.activation, [&](auto, auto zero) {
    dz_first = backward_recurrence_typed<decltype(zero)>(r);
  });
  return dz_first;
}

// Calls f(kernel) with the layer stack's kernel of `kPath` (Block: forward_stack_kernel or
// backward_stack_kernel; Cluster: forward_cluster_stack_kernel or backward_cluster_stack_kernel)
// for (samples, compiled passes); plain_backward as for with_persistent_kernel.
template <RecurrencePath kPath, class F>
void with_stack_kernel(bool backward, int64_t samples, int passes, F&& f, bool plain_backward = false) {
  static_assert(kPath == RecurrencePath::Block || kPath == RecurrencePath::Cluster, "the paths with a layer stack");
  constexpr bool kCluster = kPath == RecurrencePath::Cluster;
  const bool found = with_samples_constant(samples, [&](auto samples_constant) {
    constexpr int S = decltype(samples_constant)::value;
    return with_passes_constant<kMaxCompiledStackPasses<kPath, S>>(passes, [&](auto passes_constant) {
      constexpr int P = decltype(passes_constant)::value;
      // (the plain copies exist for compiled passes only)
      constexpr bool kPlainCompiled = P > 0;
      const bool plain = kPlainCompiled && plain_backward;
      if constexpr (kCluster) {
        if (!backward) {
          f(forward_cluster_stack_kernel<S, P>);
        } else if (plain) {
          f(backward_cluster_stack_kernel<S, P, kPlainCompiled>);
        } else {
          f(backward_cluster_stack_kernel<S, P>);
        }
      } else if (!backward) {
        f(forward_stack_kernel<S, P>);
      } else if (plain) {
        f(backward_stack_kernel<S, P, kPlainCompiled>);
      } else {
        f(backward_stack_kernel<S, P>);
      }
    });
  });
  TORCH_CHECK(found, "rnn_fused: no ", kCluster ? "cluster " : "", "layer stack kernel for ", samples,
              " samples per group compiled for ", passes, " passes");
}

// The launch shape of forward_stack_kernel for L layers of H units and B samples (float32): the
// Block path's tilings with stack_rows(H, units per pass) rows per CTA (2H, in whole passes;
// 1, 2, 4 or 8 samples per group, 32 or 16 units per pass, as forced_tiling allows), every CTA
// of every layer co-resident; the fastest by the cost model, which prices its step as a block
// step of that many units (each warp runs one kind of epilogue: stack_row) plus the measured
// hand-over between layers (cost::Constants::block_stack_wait_us). The stack is worth
// it where (T + 1) of its steps are faster than the layers' T steps each on their own forward
// plans (the GEMMs and launches between layers, which the stack also saves, left out of the
// comparison): as the model predicts, or under launch_plan.autotune as measured on the device
// (the stack's step by measured_stack_step_us, a layer's step as its own autotuned plan's;
// once per shape and device in a process; not while the stream captures a CUDA graph).
inline double measured_stack_step_us(const StackPlanReport& plan, const StackPlanQuery& q, int64_t steps);

// stack_plan's Cluster path (forward_cluster_stack_kernel), for hidden sizes whose stack CTA
// would not fit one CTA: per layer P CTAs of U units (P = 1 .. 16 / L, U rounded to whole
// 16-byte vectors where P stays), 1, 2, 4 or 8 samples per group, 32 or 16 units per pass, as
// forced_tiling allows; one cluster of L x P CTAs per group, at least one co-resident (the lower
// of the forward's and the backward's kernel: one plan serves both). Priced as a cluster step of
// U rows of 2 x padded_row(H) columns on L x P CTAs plus the measured hand-over between layers
// (cost::Constants::cluster_stack_wait_us), T + L - 1 of them. Sets `best` to the
// fastest, or its reason to the limit.
inline void plan_cluster_stack(const StackPlanQuery& q, StackPlanReport& best) {
  const simt::DeviceProperties props = simt::device_properties();
  if (props.compute_capability_major < 9) {
    best.reason = "a stack of " + std::to_string(q.hidden) + "-unit layers needs thread-block clusters (compute "
                  "capability 9.0), the device has " + std::to_string(props.compute_capability_major) + "." +
                  std::to_string(props.compute_capability_minor);
    return;
  }
  const ForcedTiling forced = forced_tiling();
  const int64_t half = padded_row(q.hidden, 4), vec = 4;
  std::string limit = "a cluster of at most " + std::to_string(simt::detail::kMaxClusterSize) + " CTAs cannot hold " +
                      std::to_string(q.layers) + " layers of " + std::to_string(q.hidden) + " units";
  for (int64_t per_layer = 1; per_layer * q.layers <= simt::detail::kMaxClusterSize; ++per_layer) {
    int64_t units = (q.hidden + per_layer - 1) / per_layer;
    const int64_t whole = (units + vec - 1) / vec * vec;
    if ((q.hidden + whole - 1) / whole == per_layer) units = whole;
    if ((q.hidden + units - 1) / units != per_layer) continue;
    const int64_t cluster = q.layers * per_layer;
    for (int64_t samples : {1, 2, 4, 8}) {
      if (forced.samples != 0 && samples != forced.samples) continue;
      if (forced.samples == 0 && samples > 1 && samples / 2 >= q.batch) break;
      for (int per_pass : kUnitsPerPassOptions) {
        if (forced.units_per_pass != 0 && per_pass != forced.units_per_pass) continue;
        if (units > max_units_per_cta(per_pass)) continue;
        RecurrenceTiling tiling{.samples = static_cast<int32_t>(samples),
                                .chunks = 1,
                                .groups = static_cast<int32_t>((q.batch + samples - 1) / samples),
                                .ctas_per_group = static_cast<int32_t>(per_layer),
                                .units_per_cta = static_cast<int32_t>(units),
                                .units_per_pass = per_pass};
        // (one size for both kernels: the backward's norm sums included)
        const int64_t smem = SharedLayout<float>::make(2 * half, tiling, RecurrencePath::Cluster, true).bytes;
        if (smem > props.shared_mem_per_block_optin) {
          limit = "a CTA of the stack's cluster needs " + std::to_string(smem) + " bytes of shared memory (" +
                  std::to_string(units) + " rows of [W_ih | W_hh] and the state rows of " + std::to_string(samples) +
                  " samples), more than shared_mem_per_block_optin = " + std::to_string(props.shared_mem_per_block_optin);
          continue;
        }
        int occupancy = INT32_MAX, clusters = INT32_MAX;
        const int passes = compiled_passes_of(RecurrencePath::Cluster, tiling, 2 * half, false, forced);
        for (const bool backward : {false, true}) {
          with_stack_kernel<RecurrencePath::Cluster>(backward, samples, passes, [&](auto kernel) {
            occupancy = std::min(occupancy, simt::max_active_blocks_per_sm(kernel, kRecurrenceThreads,
                                                                           static_cast<std::size_t>(smem)));
            if (cluster > simt::detail::kPortableClusterSize) simt::allow_nonportable_cluster_size(kernel);
            clusters = std::min(clusters, simt::max_active_clusters(kernel, kRecurrenceThreads,
                                                                    static_cast<std::size_t>(smem),
                                                                    static_cast<unsigned>(cluster)));
          });
        }
        if (occupancy < 1 || clusters < 1) {
          limit = "no cluster of " + std::to_string(cluster) + " CTAs with " + std::to_string(smem) +
                  " bytes of shared memory each fits on the device";
          continue;
        }
        const int64_t waves = (int64_t(tiling.groups) + clusters - 1) / clusters;
        RecurrenceTiling priced = tiling;  // (the cluster step's cost counts the cluster's CTAs)
        priced.ctas_per_group = static_cast<int32_t>(cluster);
        const PlanRequest row{.hidden = 2 * half, .batch = q.batch, .cluster_stack = true};
        const double stack_us =
            (predicted_step_us(cost::kH200, RecurrencePath::Cluster, row, priced, waves) +
             cost::kH200.cluster_stack_wait_us) *
            double(q.steps + q.layers - 1);
        if (best.feasible && stack_us >= best.stack_us) continue;
        best = {.feasible = true,
                .stack_us = stack_us,
                .grid = int64_t(tiling.groups) * cluster,
                .samples = samples,
                .units_per_pass = per_pass,
                .shared_mem_bytes = smem,
                .compiled_passes = passes,
                .cluster = cluster,
                .units_per_cta = units,
                .lead_steps = q.layers - 1};
        best.reason = std::to_string(tiling.groups) + " sample group(s) of " + std::to_string(samples) +
                      ", each a cluster of " + std::to_string(q.layers) + " layers x " + std::to_string(per_layer) +
                      " CTA(s) of " + std::to_string(units) + " units with [W_ih | W_hh] rows (" +
                      std::to_string(smem) + " bytes of shared memory each)" +
                      (per_pass != kUnitsPerPass ? ", dot products on " + std::to_string(per_pass * kUnitLanes / kWarp) +
                                                       " warps"
                                                 : "") +
                      (passes > 0 ? ", the step compiled for its " + std::to_string(passes) + " pass(es)" : "") +
                      (waves > 1 ? ", in " + std::to_string(waves) + " waves" : "");
      }
    }
  }
  if (!best.feasible) best.reason = limit;
}

// stack_plan's search over launch shapes by the cost model, for one step (q.steps is ignored:
// stack_us and layers_us are those of T = 1). It queries the occupancy of a dozen kernels and
// the layers' plan, so stack_plan keeps its result per (device properties, forced tiling,
// H, B, L): a stack's forward and backward each ask for it on every call.
inline StackPlanReport searched_stack_plan(const StackPlanQuery& query) {
  StackPlanQuery q = query;
  q.steps = 1;
  const simt::DeviceProperties props = simt::device_properties();
  const cost::Constants& model = cost::kH200;
  StackPlanReport best;
  const PlanRequest request{.hidden = q.hidden, .batch = q.batch, .backward = false, .fp64 = false,
                            .forced = forced_tiling()};
  if (q.layers < 2 || q.layers > kMaxStackLayers) {
    best.reason = "a stack launch runs 2 to " + std::to_string(kMaxStackLayers) + " layers, not " +
                  std::to_string(q.layers);
    return best;
  }
  // Where one CTA holds a layer's rows of both kinds (H <= 128) the Block path's stack, else the
  // Cluster path's (forward only).
  const bool one_cta = stack_rows(q.hidden, kUnitsPerPass) <= kMaxUnitsPerCta;
  if (!one_cta) {
    plan_cluster_stack(q, best);
  } else if (!props.cooperative_launch) {
    best.reason = "the device does not support cooperative launches";
    return best;
  }
  std::string limit = one_cta ? "one CTA holds at most " + std::to_string(kMaxUnitsPerCta) +
                                    " weight rows, and a stack's CTA " + std::to_string(stack_rows(q.hidden, kUnitsPerPass)) +
                                    " (its layer's W_hh and the next layer's W_ih, in whole passes)"
                              : best.reason;
  for (int64_t samples : {1, 2, 4, 8}) {
    if (request.forced.samples != 0 && samples != request.forced.samples) continue;
    if (request.forced.samples == 0 && samples > 1 && samples / 2 >= q.batch) break;
    for (int per_pass : kUnitsPerPassOptions) {
      if (request.forced.units_per_pass != 0 && per_pass != request.forced.units_per_pass) continue;
      const int64_t rows = stack_rows(q.hidden, per_pass);
      if (rows > max_units_per_cta(per_pass)) continue;
      const RecurrenceTiling tiling{.samples = static_cast<int32_t>(samples),
                                    .chunks = 1,
                                    .groups = static_cast<int32_t>((q.batch + samples - 1) / samples),
                                    .ctas_per_group = 1,
                                    .units_per_cta = static_cast<int32_t>(rows),
                                    .units_per_pass = per_pass};
      const int passes = compiled_passes_of(RecurrencePath::Block, tiling, q.hidden, false, request.forced, true);
      const int64_t smem = SharedLayout<float>::make(q.hidden, tiling, RecurrencePath::Block, true, kStackStateBuffers,
                                                     passes, stack_iterations(passes))
                               .bytes;
      if (smem > props.shared_mem_per_block_optin) {
        limit = "a stack's CTA needs " + std::to_string(smem) + " bytes of shared memory, more than "
                "shared_mem_per_block_optin = " + std::to_string(props.shared_mem_per_block_optin);
        continue;
      }
      int occupancy = INT32_MAX;  // the lower of the forward's and the backward's kernel
      for (const bool backward : {false, true}) {
        with_stack_kernel<RecurrencePath::Block>(backward, samples, passes, [&](auto kernel) {
          occupancy = std::min(occupancy, simt::max_active_blocks_per_sm(kernel, kRecurrenceThreads,
                                                                         static_cast<std::size_t>(smem)));
        });
      }
      const int64_t ctas = q.layers * tiling.groups;
      if (occupancy < 1 || ctas > int64_t(occupancy) * props.sm_count) {
        limit = std::to_string(ctas) + " CTAs (" + std::to_string(q.layers) + " layers x " +
                std::to_string(tiling.groups) + " sample groups) with " + std::to_string(smem) +
                " bytes of shared memory each cannot all be co-resident";
        continue;
      }
      PlanRequest stack_request = request;
      stack_request.block_stack = true;
      const double us = predicted_step_us(model, RecurrencePath::Block, stack_request, tiling, 1) +
                        model.block_stack_wait_us;
      const double stack_us = us * double(q.steps + 1);
      if (best.feasible && stack_us >= best.stack_us) continue;
      best = {.feasible = true,
              .stack_us = stack_us,
              .grid = ctas,
              .samples = samples,
              .units_per_pass = per_pass,
              .shared_mem_bytes = smem,
              .compiled_passes = passes};
      best.reason = std::to_string(q.layers) + " layers x " + std::to_string(tiling.groups) + " sample group(s) of " +
                    std::to_string(samples) + ", one CTA of " + std::to_string(rows) + " weight rows each (" +
                    std::to_string(smem) + " bytes of shared memory)" +
                    (per_pass != kUnitsPerPass ? ", dot products on " + std::to_string(per_pass * kUnitLanes / kWarp) +
                                                     " warps"
                                               : "") +
                    (passes > 0 ? ", the step compiled for its " + std::to_string(passes) +
                                      " pass(es), every weight row in registers"
                                : "");
    }
  }
  if (!best.feasible) {
    best.reason = limit;
    return best;
  }
  const RecurrencePlan layer = choose_plan<float>(request, "");
  best.layers_us = layer.us_per_step * double(q.layers);
  return best;
}

inline StackPlanReport stack_plan(const StackPlanQuery& q) {
  const PlanRequest request{.hidden = q.hidden, .batch = q.batch, .backward = false, .fp64 = false,
                            .forced = forced_tiling()};
  StackPlanReport best;
  {
    // (choose_plan's layer step is the measured one under autotuning)
    const std::string key = plan_key<float>(request) + std::to_string(q.layers) + "," +
                            std::to_string(int(autotune().enabled));
    static std::mutex mutex;
    static std::unordered_map<std::string, StackPlanReport> searched;
    std::unique_lock<std::mutex> lock(mutex);
    const auto it = searched.find(key);
    if (it != searched.end()) {
      best = it->second;
    } else {
      lock.unlock();  // (not held while the search takes the planner's locks)
      best = searched_stack_plan(q);
      lock.lock();
      searched.emplace(key, best);
    }
  }
  if (!best.feasible) return best;
  // From one step to T: T + lead_steps steps of the stack, T of each layer.
  best.stack_us *= double(q.steps + best.lead_steps) / double(1 + best.lead_steps);
  best.layers_us *= double(q.steps);
  best.faster = best.stack_us < best.layers_us;
  const Autotune setting = autotune();
  if (!setting.enabled) return best;
  const TunedPaths* tuned = tuned_paths<float>(request, plan_candidates<float>(request));
  if (tuned == nullptr) return best;  // (a CUDA graph is being captured: nothing is timed)
  double layer_step_us = INFINITY;
  for (const double us : tuned->fastest_us) {
    if (!std::isnan(us)) layer_step_us = std::min(layer_step_us, us);
  }
  const std::string key = plan_key<float>(request) + std::to_string(q.layers) + "," + std::to_string(best.samples) +
                          "," + std::to_string(best.units_per_pass) + "," + std::to_string(best.cluster) + "," +
                          std::to_string(best.units_per_cta) + "," + std::to_string(setting.steps) + "," +
                          kernel_device_name();
  static std::mutex mutex;
  static std::unordered_map<std::string, double> measured;
  double stack_step_us = 0.0;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = measured.find(key);
    if (it != measured.end()) stack_step_us = it->second;
  }
  if (stack_step_us == 0.0) {
    simt::synchronize_device();  // time on an idle device
    stack_step_us = measured_stack_step_us(best, q, setting.steps);
    const std::lock_guard<std::mutex> lock(mutex);
    measured.emplace(key, stack_step_us);
  }
  best.measured_stack_us = stack_step_us * double(q.steps + best.lead_steps);
  best.measured_layers_us = layer_step_us * double(q.steps) * double(q.layers);
  best.faster = best.measured_stack_us < best.measured_layers_us;
  return best;
}

// The plan of a stack's launch, or ValueError naming the limit (`what`: the op).
inline StackPlanReport feasible_stack_plan(const LayerShape& shape, int64_t layers, const char* what, bool backward) {
  const StackPlanReport plan = stack_plan(
      {.hidden = shape.hidden, .batch = shape.batch, .steps = shape.steps, .layers = layers, .backward = backward});
  TORCH_CHECK_VALUE(plan.feasible, "rnn_fused.", what, ": cannot run ", layers, " layers of hidden_size=", shape.hidden,
                    ", batch_size=", shape.batch, " in one launch on this device: ", plan.reason);
  return plan;
}

// The kernels' tiling: the Block path's stack one CTA of stack_rows per layer and group; the
// Cluster path's one layer's CTAs of a group (forward_cluster_stack_kernel).
inline RecurrenceTiling stack_tiling(const StackPlanReport& plan, const LayerShape& shape, int64_t layers) {
  const bool cluster = plan.cluster > 1;
  return {.samples = static_cast<int32_t>(plan.samples),
          .chunks = 1,
          .groups = static_cast<int32_t>((shape.batch + plan.samples - 1) / plan.samples),
          .ctas_per_group = static_cast<int32_t>(cluster ? plan.cluster / layers : 1),
          .units_per_cta = static_cast<int32_t>(cluster ? plan.units_per_cta
                                                        : stack_rows(shape.hidden, plan.units_per_pass)),
          .units_per_pass = static_cast<int32_t>(plan.units_per_pass)};
}

template <class Args>
void launch_stack(const StackPlanReport& plan, const LayerShape& shape, int64_t layers, bool backward,
                  const Args& args) {
  const RecurrenceTiling tiling = stack_tiling(plan, shape, layers);
  bool plain_backward = false;
  if constexpr (std::is_same_v<Args, BackwardStackArgs>) {
    plain_backward = plain_backward_call(args);
  }
  const int passes = static_cast<int>(plan.compiled_passes);
  if (plan.cluster > 1) {
    with_stack_kernel<RecurrencePath::Cluster>(backward, plan.samples, passes, [&](auto kernel) {
      if constexpr (std::is_invocable_v<decltype(kernel), Args, RecurrenceTiling>) {
        if (plan.cluster > simt::detail::kPortableClusterSize) simt::allow_nonportable_cluster_size(kernel);
        simt::launch_cluster(kernel, static_cast<unsigned>(plan.grid), dim3(kRecurrenceThreads),
                             static_cast<std::size_t>(plan.shared_mem_bytes), static_cast<unsigned>(plan.cluster), args,
                             tiling);
      }
    }, plain_backward);
    return;
  }
  with_stack_kernel<RecurrencePath::Block>(backward, plan.samples, passes, [&](auto kernel) {
    if constexpr (std::is_invocable_v<decltype(kernel), Args, RecurrenceTiling>) {
      simt::launch_cooperative(kernel, static_cast<unsigned>(plan.grid), dim3(kRecurrenceThreads),
                               static_cast<std::size_t>(plan.shared_mem_bytes), args, tiling);
    }
  }, plain_backward);
}

// The stack's forward step on this device (per_step_us) at the launch shape `plan`: L layers
// of constant weights and inputs that keep every value finite, the words cleared in each run as
// forward_stack clears them.
inline double measured_stack_step_us(const StackPlanReport& plan, const StackPlanQuery& q, int64_t steps) {
  const at::TensorOptions options = at::TensorOptions().dtype(at::kFloat).device(kernel_device_type());
  const int64_t B = q.batch, H = q.hidden, L = q.layers;
  const at::Tensor w_stacked = at::full({L, 2 * H, H}, 0.5 / double(H), options);
  const at::Tensor h_n = at::empty({L, B, H}, options);
  std::unordered_map<int64_t, std::pair<at::Tensor, at::Tensor>> runs;  // steps -> (out, words)
  for (const int64_t n : {kTimedShortSteps, kTimedShortSteps + steps}) {
    runs[n] = {at::full({L, n, B, H}, 0.25, options),
               at::empty({plan.cluster > 1 ? 0 : L - 1, n, B, H}, options.dtype(at::kLong))};  // (no words: Cluster)
  }
  return per_step_us(steps, [&](int64_t n) {
    const auto& [out, words] = runs.at(n);
    const LayerShape shape{.steps = n, .batch = B, .input_size = H, .hidden = H};
    const ForwardStackArgs args{.w_stacked = w_stacked.data_ptr<float>(),
                                .bias_next = nullptr,
                                .out = out.data_ptr<float>(),
                                .xw_tagged = reinterpret_cast<unsigned long long*>(words.data_ptr<int64_t>()),
                                .h0 = nullptr,
                                .h_n = h_n.data_ptr<float>(),
                                .lengths = nullptr,
                                .shape = shape,
                                .layers = L,
                                .activation = Activation::Tanh};
    return simt::stream_time_us([&] {
      at::Tensor cleared = words;
      cleared.zero_();
      launch_stack(plan, shape, L, false, args);
    });
  });
}

// The layer stack's forward (host_layer.h ForwardStack) on the plan stack_plan gives; returns h_n.
inline at::Tensor forward_stack(const ForwardStack& r) {
  const LayerShape& shape = r.first.shape;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden, L = r.layers;
  const StackPlanReport plan = feasible_stack_plan(shape, L, "rnn_stack_forward", false);
  const at::TensorOptions options = r.out.options();
  at::Tensor h_n = at::empty({L, B, H}, options);
  const bool cluster = plan.cluster > 1;
  // The Block path's layer l >= 1 input projections in tagged words, zero (untagged) before the
  // launch; the Cluster path's stack computes them in its dot products.
  at::Tensor words = at::zeros({cluster ? 0 : L - 1, T, B, H}, options.dtype(at::kLong));
  const ForwardStackArgs args{.w_stacked = r.w_stacked.data_ptr<float>(),
                              .bias_next = r.bias_next.defined() ? r.bias_next.data_ptr<float>() : nullptr,
                              .out = r.out.data_ptr<float>(),
                              .xw_tagged = cluster ? nullptr : reinterpret_cast<unsigned long long*>(words.data_ptr<int64_t>()),
                              .h0 = r.h0.defined() ? r.h0.data_ptr<float>() : nullptr,
                              .h_n = h_n.data_ptr<float>(),
                              .lengths = lengths_pointer(r.first),
                              .shape = shape,
                              .layers = L,
                              .activation = r.first.options.activation,
                              .dropout_masks = r.dropout_masks.defined() ? r.dropout_masks.data_ptr<float>() : nullptr};
  launch_stack(plan, shape, L, false, args);
  return h_n;
}

// The layer stack's backward recurrences (host_layer.h BackwardStack): fills r.dz and r.dz_first.
inline void backward_stack(const BackwardStack& r) {
  const LayerShape& shape = r.first.shape;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden, L = r.layers;
  const StackPlanReport plan = feasible_stack_plan(shape, L, "rnn_stack_backward", true);
  const bool cluster = plan.cluster > 1;
  // The Block path's layer l < L-1 output gradients in tagged words, zero (untagged) before the
  // launch; the Cluster path's stack sends them through distributed shared memory.
  at::Tensor words = at::zeros({cluster ? 0 : L - 1, T, B, H}, r.dz.options().dtype(at::kLong));
  // Layer l's scales drawn with stream 2 l (layer 0's is 0), as its own backward would draw them.
  const at::Tensor drawn = drawn_edge_scales<float>(r.first.options.truncation, T, B, L, r.dz.options());
  // Recorded norms summed after the launch where the plain copy runs it (defers_norms).
  const bool deferred_norms =
      r.step_sq.defined() && defers_norms(plan.compiled_passes > 0, r.first.options.truncation, T);
  const at::Tensor step_g = deferred_norms ? at::empty({L, T, B, H}, r.dz.options()) : at::Tensor();
  const BackwardStackArgs args{.w_stacked = r.w_stacked.data_ptr<float>(),
                               .dy = r.dy.data_ptr<float>(),
                               .dh_n = r.dh_n.data_ptr<float>(),
                               .out = r.out.data_ptr<float>(),
                               .dz = r.dz.data_ptr<float>(),
                               .dz_first = r.dz_first.data_ptr<float>(),
                               .dy_tagged = cluster ? nullptr : reinterpret_cast<unsigned long long*>(words.data_ptr<int64_t>()),
                               .lengths = lengths_pointer(r.first),
                               .shape = shape,
                               .layers = L,
                               .activation = r.first.options.activation,
                               .truncation = r.first.options.truncation,
                               .dropout_masks = r.dropout_masks.defined() ? r.dropout_masks.data_ptr<float>() : nullptr,
                               .step_sq = r.step_sq.defined() && !deferred_norms ? r.step_sq.data_ptr<double>()
                                                                                  : nullptr,
                               .drawn_scales = drawn_scales_pointer<float>(drawn),
                               .step_g = deferred_norms ? step_g.data_ptr<float>() : nullptr};
  launch_stack(plan, shape, L, true, args);
  if (deferred_norms) sum_step_norms(step_g, lengths_pointer(r.first), shape, L, r.step_sq);
}

// The registry entry of these kernels (backend "cuda" in elman_cuda.cu, "emulated" in
// elman_emulated.cpp).
// RecurrenceBackend::whole_sequence_gradients: the five gradients of a float32 layer in one
// launch of short_gradients_kernel, where host_layer.h's gradients_in_kernel says so; else
// nullopt (the host's GEMMs).
inline std::optional<std::array<at::Tensor, 5>> whole_sequence_gradients(const WholeSequenceGradients& w) {
  const LayerForwardCall& call = w.call.forward;
  const LayerShape& shape = call.shape;
  const int64_t T = shape.steps, B = shape.batch, H = shape.hidden, I = shape.input_size;
  const std::array<bool, 5>& mask = w.call.output_mask;
  static_assert(kShortGradientThreads == cost::kGradientKernelThreads, "the cost model prices the kernel's CTAs");
  if (!gradients_in_kernel(w.dz.scalar_type(), shape, mask)) return std::nullopt;
  const at::TensorOptions options = w.dz.options();
  const auto result = [&](bool asked, at::IntArrayRef sizes) {
    return asked ? at::empty(sizes, options) : at::empty({0}, options);
  };
  std::array<at::Tensor, 5> grads = {result(mask[0], {T, B, I}), result(mask[1], {B, H}), result(mask[2], {H, I}),
                                     result(mask[3], {H, H}), result(mask[4], {2, H})};
  const auto written = [&](size_t i) { return mask[i] ? grads[i].data_ptr<float>() : nullptr; };
  // (x and hx: float32 copies only where the caller's are not, alive until the launch)
  const at::Tensor x = mask[2] ? w.operands.input.to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor hx = mask[3] && call.hx.has_value() ? call.hx->to(at::kFloat).contiguous() : at::Tensor();
  ShortGradientArgs args{.dz = w.dz.data_ptr<float>(),
                         .dz_first = w.dz_first.data_ptr<float>(),
                         .x = x.defined() ? x.data_ptr<float>() : nullptr,
                         .out = w.operands.out.data_ptr<float>(),
                         .hx = hx.defined() ? hx.data_ptr<float>() : nullptr,
                         .w_ih = w.operands.w_ih.data_ptr<float>(),
                         .w_hh = w.operands.w_hh.data_ptr<float>(),
                         .dh_n = w.operands.dh_n.defined() ? w.operands.dh_n.data_ptr<float>() : nullptr,
                         .lengths = lengths_pointer(call),
                         .shape = shape,
                         .reverse = call.options.reverse,
                         .grad_x = written(0),
                         .grad_hx = written(1),
                         .grad_w_ih = written(2),
                         .grad_w_hh = written(3),
                         .grad_bias = written(4)};
  const int64_t outputs = whole_sequence_gradient_outputs(shape, mask[0], mask[1], mask[2], mask[3], mask[4]);
  const int64_t ctas = (outputs + kShortGradientThreads - 1) / kShortGradientThreads;
  simt::launch(short_gradients_kernel, static_cast<unsigned>(ctas), dim3(kShortGradientThreads), 0, args);
  return grads;
}

inline RecurrenceBackend kernels_backend(const char* name, c10::DeviceType device, bool device_default);

// The plan report of rnn_fused.plan(): the chosen (or forced) plan and every path's best shape.
inline RecurrencePlanReport recurrence_plan(const RecurrencePlanQuery& q) {
  TORCH_CHECK_VALUE(q.hidden > 0, "rnn_fused.plan: hidden_size must be positive, got ", q.hidden);
  TORCH_CHECK_VALUE(q.batch > 0, "rnn_fused.plan: batch_size must be positive, got ", q.batch);
  RecurrencePlanReport report;
  dispatch_elman(q.compute, Activation::Tanh, [&](auto, auto zero) {
    using scalar_t = decltype(zero);
    const PlanRequest request{.hidden = q.hidden, .batch = q.batch, .backward = q.backward,
                              .fp64 = sizeof(scalar_t) == 8, .side_by_side = q.side_by_side};
    auto describe = [&request](const RecurrencePlan& p) {
      return RecurrencePlanReport::Entry{.path = path_name(p.path),
                                         .feasible = p.feasible,
                                         .samples_per_group = p.tiling.samples * p.tiling.chunks,
                                         .samples = p.tiling.samples,
                                         .chunks = p.tiling.chunks,
                                         .groups = p.tiling.groups,
                                         .ctas_per_group = p.tiling.ctas_per_group,
                                         .units_per_cta = p.tiling.units_per_cta,
                                         .units_per_pass =
                                             p.path == RecurrencePath::Stepwise ? 0 : p.tiling.units_per_pass,
                                         .step_sync = p.tiling.step_sync,
                                         .grid = p.grid,
                                         .block_threads = p.block_threads,
                                         .cluster = p.cluster,
                                         .shared_mem_bytes = p.shared_mem_bytes,
                                         .blocks_per_sm = p.blocks_per_sm,
                                         .waves = p.waves,
                                         .compiled_passes = p.compiled_passes,
                                         .us_per_step = p.us_per_step,
                                         .reason = p.reason,
                                         .lane_rows = p.lane_rows,
                                         .ctas_per_sm = p.ctas_per_sm,
                                         .tiled_dots = p.tiling.tiled_dots != 0,
                                         .operand_ring = p.tiling.operand_ring != 0};
    };
    report.chosen = describe(choose_plan<scalar_t>(request, q.path));
    const std::vector<RecurrencePlan> candidates = plan_candidates<scalar_t>(request);
    // A forced path is not tuned; otherwise choose_plan tuned (or autotuning is off).
    const TunedPaths* tuned = q.path.empty() ? tuned_paths<scalar_t>(request, candidates) : nullptr;
    if (tuned == nullptr) {
      for (const RecurrencePlan& p : candidates) report.candidates.push_back(describe(p));
      return;
    }
    for (size_t i = 0; i < tuned->fastest.size(); ++i) {
      report.candidates.push_back(describe(tuned->fastest[i]));
      report.candidates.back().measured_us_per_step = tuned->fastest_us[i];
    }
    for (size_t i = 0; i < tuned->timed.size(); ++i) {
      report.timed.push_back(describe(tuned->timed[i]));
      report.timed.back().measured_us_per_step = tuned->timed_us[i];
    }
    report.chosen.measured_us_per_step = tuned->fastest_us[static_cast<size_t>(*parse_path(report.chosen.path))];
  });
  return report;
}

// rnn_fused::step_cost: predicted_step_terms for a launch shape given by the caller, with the
// named constants replaced: the total or one part (q.term). ValueError for a shape no kernel
// has, an unknown constant or term.
inline double step_cost(const StepCostQuery& q) {
  const std::optional<RecurrencePath> path = parse_path(q.path);
  TORCH_CHECK_VALUE(path.has_value(), "rnn_fused.step_cost: path must be 'block', 'cluster', 'grid' or 'stepwise', got '",
                    q.path, "'");
  TORCH_CHECK_VALUE(q.compute == at::kFloat || q.compute == at::kDouble,
                    "rnn_fused.step_cost: dtype must be float32 or float64 (the compute dtypes), got ", q.compute);
  TORCH_CHECK_VALUE(q.hidden > 0 && q.batch > 0, "rnn_fused.step_cost: hidden and batch must be positive, got ",
                    q.hidden, " and ", q.batch);
  if (*path != RecurrencePath::Stepwise) {  // (the stepwise path's time depends on H and B alone)
    TORCH_CHECK_VALUE(q.samples == 1 || q.samples == 2 || q.samples == 4 || q.samples == 8,
                      "rnn_fused.step_cost: samples must be 1, 2, 4 or 8 (the kernels' register tiles), got ",
                      q.samples);
    TORCH_CHECK_VALUE(q.units_per_pass == kUnitsPerPassOptions[0] || q.units_per_pass == kUnitsPerPassOptions[1],
                      "rnn_fused.step_cost: units_per_pass must be ", kUnitsPerPassOptions[0], " or ",
                      kUnitsPerPassOptions[1], ", got ", q.units_per_pass);
    const int max_units = max_units_per_cta(static_cast<int>(q.units_per_pass));
    TORCH_CHECK_VALUE(q.chunks >= 1 && q.ctas_per_group >= 1 && q.waves >= 1 && q.units_per_cta >= 1 &&
                          q.units_per_cta <= max_units,
                      "rnn_fused.step_cost: needs chunks, ctas_per_group, waves >= 1 and units_per_cta in [1, ",
                      max_units, "], got ", q.chunks, ", ", q.ctas_per_group, ", ", q.waves, ", ", q.units_per_cta);
  }
  TORCH_CHECK_VALUE(q.step_sync >= 0 && q.step_sync < kStepSyncs &&
                        (q.step_sync == 0 || step_sync_path(StepSync(q.step_sync)) == *path),
                    "rnn_fused.step_cost: step_sync must be 0 (the path's barrier), or on path 'grid' 1 (the flag "
                    "barrier) or 2 (the tagged exchange), or on path 'cluster' 3 (the asynchronous exchange), got ",
                    q.step_sync, " on path '", q.path, "'");
  TORCH_CHECK_VALUE(q.constant_names.size() == q.constant_values.size(), "rnn_fused.step_cost: ",
                    q.constant_names.size(), " constant names for ", q.constant_values.size(), " values");
  cost::Constants model = cost::kH200;
  for (size_t i = 0; i < q.constant_names.size(); ++i) {
    const double value = q.constant_values[i];
    // (a wait may be none: the first kernels' set has no stack waits)
    const bool wait = q.constant_names[i].ends_with("_wait_us");
    TORCH_CHECK_VALUE((wait ? value >= 0.0 : value > 0.0) && std::isfinite(value), "rnn_fused.step_cost: constant '",
                      q.constant_names[i], "' must be a ", wait ? "non-negative" : "positive", " finite number, got ",
                      value);
    TORCH_CHECK_VALUE(cost::set_constant(model, q.constant_names[i], value), "rnn_fused.step_cost: unknown constant '",
                      q.constant_names[i], "' (rnn_fused.launch_plan.cost_constants() lists them)");
  }
  TORCH_CHECK_VALUE(!q.block_stack || (*path == RecurrencePath::Block && q.compute == at::kFloat),
                    "rnn_fused.step_cost: block_stack=True prices the Block path's layer stack (float32), got path '",
                    q.path, "' in ", q.compute);
  const PlanRequest request{
      .hidden = q.hidden, .batch = q.batch, .fp64 = q.compute == at::kDouble, .block_stack = q.block_stack};
  const RecurrenceTiling tiling{.samples = static_cast<int32_t>(q.samples),
                                .chunks = static_cast<int32_t>(q.chunks),
                                .groups = 1,
                                .ctas_per_group = static_cast<int32_t>(q.ctas_per_group),
                                .units_per_cta = static_cast<int32_t>(q.units_per_cta),
                                .units_per_pass = static_cast<int32_t>(q.units_per_pass),
                                .step_sync = static_cast<int32_t>(q.step_sync),
                                .tiled_dots = q.tiled_dots ? 1 : 0};
  TORCH_CHECK_VALUE(!q.tiled_dots || tiled_dots_allowed(*path, q.compute == at::kDouble, q.samples),
                    "rnn_fused.step_cost: tiled_dots=True prices the tiled dot products (float32: the grid path's at 4 "
                    "or 8 samples per chunk, the cluster path's at 4), got path '", q.path, "' in ", q.compute,
                    ", samples=", q.samples);
  TORCH_CHECK_VALUE(!q.lane_rows || (*path == RecurrencePath::Block && q.compute == at::kFloat &&
                                      lane_rows_compiled(q.samples, q.hidden)),
                    "rnn_fused.step_cost: lane_rows=True prices the Block path's lane-row step (float32, hidden_size "
                    "<= ", kLaneRowsMaxHidden, ", 1 sample per CTA, or 2 at hidden_size <= 64), got path '", q.path,
                    "' in ", q.compute, ", hidden_size=", q.hidden, ", samples=", q.samples);
  TORCH_CHECK_VALUE(q.ctas_per_sm >= 1, "rnn_fused.step_cost: ctas_per_sm must be at least 1, got ", q.ctas_per_sm);
  const cost::StepTerms terms = q.lane_rows ? lane_rows_terms(model, request, q.samples, q.ctas_per_sm, q.waves)
                                            : predicted_step_terms(model, *path, request, tiling, q.waves);
  if (q.term == "total") return terms.total;
  if (q.term == "stage") return terms.stage;
  if (q.term == "compute") return terms.compute;
  TORCH_CHECK_VALUE(q.term == "barrier", "rnn_fused.step_cost: term must be 'total', 'stage', 'compute' or 'barrier', got '",
                    q.term, "'");
  return terms.barrier;
}

// RecurrenceBackend::side_by_side: the reverse direction's launches on a side stream.
inline void directions_side_by_side(const std::function<void()>& first,
                                    const std::function<std::vector<at::Tensor>()>& second) {
  simt::run_side_by_side(first, second);
}

inline RecurrenceBackend kernels_backend(const char* name, c10::DeviceType device, bool device_default) {
  return RecurrenceBackend{.name = name,
                           .device = device,
                           .device_default = device_default,
                           .forward = &forward_recurrence,
                           .projects_input = true,
                           .backward = &backward_recurrence,
                           .whole_sequence_gradients = &whole_sequence_gradients,
                           .plan = &recurrence_plan,
                           .step_cost = &step_cost,
                           .forward_stack = &forward_stack,
                           .backward_stack = &backward_stack,
                           .stack_plan = &stack_plan,
                           .side_by_side = &directions_side_by_side};
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
