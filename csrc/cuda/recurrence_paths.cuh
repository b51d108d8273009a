// What the persistent recurrence kernels of the three on-chip paths share: where a CTA sits
// (its sample group and its slice of the hidden units), its shared-memory layout, the loads
// before the time loop, and how a step's new state reaches every CTA that needs it.
//
// Paths (the planner in elman_launch.h picks one per call with the cost model of
// recurrence_cost_model.h):
//  - Block:   one CTA per sample group holds all of W_hh; the state is exchanged in its own
//             shared memory; one __syncthreads per step.
//  - Cluster: a thread-block cluster of C CTAs per sample group, each holding a slice of
//             W_hh's rows; each CTA writes its new state slice into every CTA's shared memory
//             through distributed shared memory; one cluster barrier per step.
//  - Grid:    a cooperative grid of groups x C CTAs; new state slices go through a global
//             buffer [2,B,H]; after the grid barrier each CTA stages its group's state rows
//             into shared memory with 16-byte asynchronous copies (stage_rows_async),
//             overlapped with the compute of the previous chunk or of the rows' earlier pieces.
// The fourth path, Stepwise (a cuBLAS product and an epilogue launch per step), has no
// persistent kernel and shares only the epilogue arithmetic.
#pragma once

#include <cstdint>

#include "cuda/kernel_common.cuh"

namespace rnn_fused::kernels {

enum class RecurrencePath : int32_t { Block = 0, Cluster = 1, Grid = 2, Stepwise = 3 };

// How the CTAs of a Grid or Cluster path hand a step's state to the next step
// (RecurrenceTiling::step_sync). The Block path has one way (__syncthreads: 0).
enum class StepSync : int32_t {
  GridBarrier = 0,     // Grid: the plain exchange buffer, then simt::grid_sync; Cluster: the cluster barrier
  FlagBarrier = 1,     // Grid: the plain exchange buffer, then simt::flag_barrier over the sample group's CTAs
  TaggedExchange = 2,  // Grid, no barrier: each value travels with its step's tag in one 8-byte word
                       // (simt::tag_word; float32 only), and a reader waits for the tag
  AsyncExchange = 3,   // Cluster, no cluster barrier: each CTA's slice goes into the others' shared
                       // memory by asynchronous stores (simt::store_async) that an mbarrier per
                       // state buffer counts; a CTA waits on its own mbarrier
};
inline constexpr int64_t kStepSyncs = 4;

// Whether a path can end its steps with `sync`.
SIMT_HOST_DEVICE constexpr bool step_sync_allowed(RecurrencePath path, StepSync sync, bool fp64) {
  switch (sync) {
    case StepSync::GridBarrier: return true;
    case StepSync::FlagBarrier: return path == RecurrencePath::Grid;
    case StepSync::TaggedExchange: return path == RecurrencePath::Grid && !fp64;
    case StepSync::AsyncExchange: return path == RecurrencePath::Cluster;
  }
  return false;
}

// The path a step synchronisation other than the barrier belongs to.
SIMT_HOST_DEVICE constexpr RecurrencePath step_sync_path(StepSync sync) {
  return sync == StepSync::AsyncExchange ? RecurrencePath::Cluster : RecurrencePath::Grid;
}

// Whether a forced step synchronisation (forced_tiling's code, -1: none) binds `path`'s plans:
// the barrier (0) binds the Grid and Cluster paths, another code the path it belongs to; the
// other paths choose their own.
SIMT_HOST_DEVICE constexpr bool sync_forced_on(RecurrencePath path, int64_t forced) {
  if (forced < 0 || path == RecurrencePath::Block || path == RecurrencePath::Stepwise) return false;
  return forced == 0 || step_sync_path(StepSync(forced)) == path;
}

// The launch shape the planner chose; the same for the forward and backward kernels.
struct RecurrenceTiling {
  int32_t samples = 1;         // S: samples per chunk, the kernel's kSamples (1, 2, 4 or 8)
  int32_t chunks = 1;          // sample chunks of S a CTA computes in turn each step (Grid path; else 1)
  int32_t groups = 1;          // sample groups of S * chunks samples: ceil(B / (S * chunks))
  int32_t ctas_per_group = 1;  // C: CTAs that split a group's hidden units
  int32_t units_per_cta = 0;   // U: hidden units per CTA (the last CTA of a group may own fewer)
  int32_t units_per_pass = 32; // 32 (every warp computes) or 16 (warps 0-3): kUnitsPerPassOptions
  int32_t step_sync = 0;       // Grid path: a StepSync (else 0)
  int32_t tiled_dots = 0;      // Grid and Cluster paths: 1 = the tiled dot products (kernel_common.cuh add_tile_dots)
  int32_t operand_ring = 0;    // Block path: 1 = the step operands through shared memory (OperandRing)
};

// The Block path's operand ring (RecurrenceTiling::operand_ring, OperandRing): the steps ahead
// a lane's operands are copied, and the operands per step it holds room for (the backward's two).
inline constexpr int kOperandRingSteps = 4;  // (a power of 2: the slot is step & (steps - 1))
inline constexpr int kOperandRingOperands = 2;
SIMT_HOST_DEVICE constexpr int64_t operand_ring_scalars(const RecurrenceTiling& t) {
  return t.operand_ring == 0 ? 0
                             : int64_t(kOperandRingSteps) * kOperandRingOperands * t.samples * int64_t(t.units_per_cta);
}

// Whether a launch of `path` can take the tiled dot products (RecurrenceTiling::tiled_dots), a
// warp's tile of tiled_units(S) x S values, one per lane: float32, the Grid path's kernels at 4 or
// 8 samples per chunk, the Cluster path's at 4 (those with every weight row in shared memory, and
// its split kernels at H = 769-1024 with their held rows in the tile's layout: kTiledSplit). The
// Cluster path's 8-sample kernels are left out: their registers (up to 246 on sm_90 without the
// tile, benchmarks/nvcc_resource_usage.txt) leave no room for a second dot-product mapping.
SIMT_HOST_DEVICE constexpr bool tiled_dots_allowed(RecurrencePath path, bool fp64, int64_t samples) {
  if (fp64) return false;
  if (path == RecurrencePath::Grid) return samples == 4 || samples == 8;
  return path == RecurrencePath::Cluster && samples == 4;
}
// The tiled dot products' totals in shared memory: one per unit and sample, the units rounded
// up to whole tiles (RecurrenceCta::for_each_tiled_output); 0 without them.
SIMT_HOST_DEVICE constexpr int64_t tile_totals_of(const RecurrenceTiling& t) {
  if (t.tiled_dots == 0) return 0;
  const int64_t units = tiled_units(t.samples);
  return (int64_t(t.units_per_cta) + units - 1) / units * units * t.samples;
}

// The Cluster path's split kernels at 4 samples with the tiled dot products
// (RecurrenceCta::kTiledSplit): a lane holds, in the same 20 registers of 16-byte chunks as the
// 8-lane split's, the chunks l, l + 32, l + 64 of its warp's tile's first 4 rows (columns below
// kTiledSplitFirstColumn) and l, l + 32 of its last 4 (below kTiledSplitLastColumn); shared
// memory holds the rest of every row: the last 4 rows of each tile at `weights`
// ([tiles x 4][R - 256]), the first 4 at `held_tails` ([tiles x 4][R - 384]); at 64 units a CTA
// 45,056 floats, as many as the 8-lane split's.
inline constexpr int kTiledSplitTileRows = 8;             // tiled_units(4)
inline constexpr int kTiledSplitHalfRows = kTiledSplitTileRows / 2;  // the first rows (First*), then the last (Last*)
inline constexpr int kTiledSplitFirstChunks = 3, kTiledSplitLastChunks = 2;  // chunk iterations of 32 lanes
inline constexpr int64_t kTiledSplitFirstColumn = kTiledSplitFirstChunks * kWarp * 4;  // 384
inline constexpr int64_t kTiledSplitLastColumn = kTiledSplitLastChunks * kWarp * 4;    // 256

SIMT_BEGIN_WORLD

// The CTA's sample group and its rank among the group's CTAs (block index = group * C + rank).
struct CtaPlace {
  int64_t group;
  int64_t rank;
  int64_t unit_begin, unit_end;  // the CTA's hidden units [unit_begin, unit_end)
  int64_t sample_begin;          // the group's first sample
};

// `rows`: the weight rows the CTAs of a group split (H; 2H in the layer stack's kernel, whose
// CTAs also hold the next layer's W_ih); `block`: the CTA's index among one layer's CTAs.
SIMT_DEVICE __forceinline__ CtaPlace cta_place(const RecurrenceTiling& tiling, int64_t rows, int64_t block) {
  const int64_t group = block / tiling.ctas_per_group, rank = block % tiling.ctas_per_group;
  const int64_t begin = rank * tiling.units_per_cta;
  const int64_t end = begin + tiling.units_per_cta < rows ? begin + tiling.units_per_cta : rows;
  return {group, rank, begin, end, group * int64_t(tiling.samples) * tiling.chunks};
}

// Whether a CTA of `path` holds its weight rows in registers (kernel_common.cuh
// weights_fit_registers): only the Block path's kernels have the registers for them.
SIMT_HOST_DEVICE constexpr bool weights_in_registers(RecurrencePath path, int64_t passes, int64_t chunk_iterations,
                                                     bool fp64) {
  return path == RecurrencePath::Block && weights_fit_registers(passes, chunk_iterations, fp64);
}
// Whether a CTA of `path` splits its weight rows between registers and shared memory
// (kernel_common.cuh weights_split, cluster_weights_split): the Block path's kernels at
// H = 129..256, the Cluster path's at H = 769..1024; and the Cluster path's at H = 129..256
// (cluster_rows_in_registers), a split whose passes are all in registers: the split kernels'
// code (rows read from global memory into registers once per launch, padded over compiled
// chunk iterations) with no row left in shared memory.
SIMT_HOST_DEVICE constexpr bool split_weights(RecurrencePath path, int64_t passes, int64_t chunk_iterations, bool fp64,
                                              int64_t samples) {
  return path == RecurrencePath::Block ? weights_split(passes, chunk_iterations, fp64, samples)
         : path == RecurrencePath::Cluster
             ? cluster_weights_split(passes, chunk_iterations, fp64, samples) ||
                   cluster_rows_in_registers(passes, chunk_iterations, fp64, samples)
             : false;
}
// The passes whose weight rows a split CTA holds in registers: split_register_passes on the
// Block path (whole rows); on the Cluster path the first one (cluster_weights_split), or all
// (cluster_rows_in_registers).
SIMT_HOST_DEVICE constexpr int held_register_passes(RecurrencePath path, int64_t passes, int64_t chunk_iterations,
                                                    int64_t samples) {
  return path != RecurrencePath::Cluster ? split_register_passes(passes, chunk_iterations, samples)
         : cluster_rows_in_registers(passes, chunk_iterations, false, samples) ? static_cast<int>(passes)
                                                                               : 1;
}
// The chunk iterations of those rows in registers, of the `iterations` a kernel is compiled for:
// all of them, but on the Cluster path at 2 and 4 samples cluster_split_held_iterations (the rows'
// tails in shared memory).
SIMT_HOST_DEVICE constexpr int held_register_iterations(RecurrencePath path, int iterations, int64_t samples) {
  return path == RecurrencePath::Cluster && cluster_split_held_iterations(samples) < iterations
             ? cluster_split_held_iterations(samples)
             : iterations;
}
// The chunk iterations of a dot product over rows of `hidden` scalars (16-byte chunks, 8 lanes).
SIMT_HOST_DEVICE constexpr int64_t chunk_iterations_of(int64_t hidden, bool fp64) {
  const int64_t vec = fp64 ? 2 : 4;
  return ((hidden + vec - 1) / vec + 7) / 8;
}

// The layer stack's kernels (forward_stack_kernel, backward_stack_kernel): at most this many
// layers per launch, and the tag of a word one layer hands the next (simt::tag_word; the
// words start at zero and each is stored once).
inline constexpr int kMaxStackLayers = 16;
inline constexpr unsigned kStackTag = 1;
// A stack lane's operand that the neighbouring layer hands over in tagged words (`words` [T,B,H],
// null: `value`, read from its own tensor): the word read ahead, or, where that did not carry the
// tag yet, the word at `at` waited for.
SIMT_DEVICE __forceinline__ float handed_operand(float value, unsigned long long word, const unsigned long long* words,
                                                 int64_t at) {
  if (words == nullptr) return value;
  if (simt::word_tag(word) != kStackTag) word = simt::wait_word_tag(words + at, kStackTag);
  return simt::word_value(word);
}
// A stack CTA's state buffers beyond the Block path's two: the state times its layer's
// dropout mask (current and next step), which the next layer's projection reads. Always
// reserved (at most 8 samples x 128 units x 2 x 4 bytes), used with dropout between layers.
inline constexpr int64_t kStackStateBuffers = 2;

// A stack kernel's CTA rows: each pass of units_per_pass rows holds half of them for its
// layer's recurrence (rows of W_hh, or W_hh^T) and half for the other layer's projection
// (W_ih^{l+1}, or W_ih^T), units in order, so that the warps computing the first half of a pass
// run only recurrence epilogues and the others only projection epilogues (a pass's unit groups
// lie on consecutive warps: lane_role), instead of every warp both. Rows past H are zero and
// their results dropped.
struct StackRow {
  bool projection;  // the other layer's projection (else the recurrence)
  int64_t unit;     // its unit: a row of W_hh (W_hh^T) or of W_ih (W_ih^T)
};
SIMT_HOST_DEVICE constexpr StackRow stack_row(int64_t row, int64_t units_per_pass) {
  const int64_t half = units_per_pass / 2, in_pass = row % units_per_pass;
  return {in_pass >= half, row / units_per_pass * half + in_pass % half};
}
// The rows of a stack CTA for hidden size H: whole passes, half of each for either kind.
SIMT_HOST_DEVICE constexpr int64_t stack_rows(int64_t hidden, int64_t units_per_pass) {
  return 2 * ((2 * hidden + units_per_pass - 1) / units_per_pass) * (units_per_pass / 2);
}
// The chunk iterations of a stack CTA compiled for kPasses passes: its rows' dot products run
// over H columns, ceil(H / 32) iterations, while its passes are ceil(2H / units per pass) >=
// ceil(H / 16): half the passes (rounded up) bound them, where a layer's passes bound its
// iterations (compiled_passes). 0 for a kernel that reads its passes at run time.
SIMT_HOST_DEVICE constexpr int stack_iterations(int passes) { return (passes + 1) / 2; }

// rows [count][R] (shared) = the stack CTA's rows (stack_row) of source [2H,H]: rows 0..H-1 its
// layer's recurrence weight, H..2H-1 the projection's; zero-padded past H, and zero for units
// past H. All threads call it.
template <typename scalar_t>
SIMT_DEVICE void load_stack_rows(const scalar_t* source, scalar_t* rows, int64_t count, int64_t units_per_pass,
                                 int64_t hidden, int64_t row) {
  for (int64_t i = threadIdx.x; i < count * row; i += blockDim.x) {
    const int64_t k = i % row;
    const StackRow at = stack_row(i / row, units_per_pass);
    rows[i] = at.unit < hidden && k < hidden ? source[((at.projection ? hidden : 0) + at.unit) * hidden + k]
                                             : scalar_t(0);
  }
}

// A stack kernel's CTA: its layer, and its index among the layer's CTAs (block index = layer x
// groups + group: one CTA per sample group and layer).
struct StackPlace {
  int64_t layer;
  int64_t block;
  bool top, bottom;  // the last layer, the first
};
SIMT_DEVICE __forceinline__ StackPlace stack_place(const RecurrenceTiling& tiling, int64_t layers) {
  const int64_t layer = int64_t(blockIdx.x) / tiling.groups;
  return {layer, int64_t(blockIdx.x) % tiling.groups, layer == layers - 1, layer == 0};
}

// The layer stack on the Cluster path (forward_cluster_stack_kernel): one thread-block cluster
// of L x P CTAs per sample group, P per layer, every layer computing in every step of a
// wavefront (layer l at time t = step - l). A CTA of layer l owns units [unit_begin, unit_end)
// of that layer; its rows are [W_ih^l | W_hh^l] (layer 0: [0 | W_hh^0], its input projection
// coming from one GEMM before the launch), 2 x half columns, half = padded_row(H), and its
// state rows [h^{l-1} | h^l] per sample, so that one dot product over the whole row gives
// W_ih^l h^{l-1}_t + W_hh^l h^l_{t-1}.
struct ClusterStackPlace {
  int64_t layer;
  int64_t layer_rank;  // among the layer's P CTAs
  int64_t block;       // the CTA's index among one layer's CTAs of every group: group x P + layer_rank
};
SIMT_DEVICE __forceinline__ ClusterStackPlace cluster_stack_place(const RecurrenceTiling& tiling, int64_t layers) {
  const int64_t cluster = layers * tiling.ctas_per_group;
  const int64_t within = int64_t(blockIdx.x) % cluster;
  return {within / tiling.ctas_per_group, within % tiling.ctas_per_group,
          int64_t(blockIdx.x) / cluster * tiling.ctas_per_group + within % tiling.ctas_per_group};
}

// rows [count][2 half] (shared) = units [first, first + count) of layer `layer`'s [W_ih | W_hh]
// from the stack's w_stacked [L,2H,H] (layer l's W_hh is block l's first H rows, its W_ih block
// l - 1's last H rows), zero-padded past H in each half; layer 0's first half zero. All threads
// call it.
SIMT_DEVICE void load_cluster_stack_rows(const float* w_stacked, float* rows, int64_t layer, int64_t first,
                                         int64_t count, int64_t hidden, int64_t half) {
  const int64_t row = 2 * half;
  for (int64_t i = threadIdx.x; i < count * row; i += blockDim.x) {
    const int64_t u = first + i / row, k = i % row;
    float w = 0.0f;
    if (k < half) {
      if (layer > 0 && k < hidden) w = w_stacked[((layer - 1) * 2 * hidden + hidden + u) * hidden + k];
    } else if (k - half < hidden) {
      w = w_stacked[(layer * 2 * hidden + u) * hidden + k - half];
    }
    rows[i] = w;
  }
}

// The backward's rows (backward_cluster_stack_kernel): `own` [count][half] (shared) = units
// [first, first + count) of layer `layer`'s W_hh^T, `above` [count][half] = the same units of the
// layer above's W_ih^T (zeros for the top layer), from the stack backward's w_stacked [L,2H,H]
// (block l: W_hh^T of layer l, then its W_ih^T), zero-padded past H. All threads call it.
SIMT_DEVICE void load_cluster_stack_rows_transposed(const float* w_stacked, float* own, float* above, int64_t layer,
                                                    int64_t layers, int64_t first, int64_t count, int64_t hidden,
                                                    int64_t half) {
  for (int64_t i = threadIdx.x; i < count * half; i += blockDim.x) {
    const int64_t u = first + i / half, k = i % half;
    own[i] = k < hidden ? w_stacked[(layer * 2 * hidden + u) * hidden + k] : 0.0f;
    above[i] = k < hidden && layer + 1 < layers ? w_stacked[((layer + 1) * 2 * hidden + hidden + u) * hidden + k]
                                                : 0.0f;
  }
}

// After a step's epilogues wrote the CTA's slice of its layer's new state (units [unit_begin,
// unit_end) of each sample's row in `own`, rows `row` apart, each a half of padded_row(H)
// starting at the pointer): the slice into the same place of the layer's other CTAs (their
// recurrence), and from `from_adjacent` (the same place of other rows: the state times its
// dropout mask, or `own` itself) into `to_adjacent` of every CTA of layer `adjacent` (the next
// layer's input in the forward, the layer below's in the backward; -1: none), through
// distributed shared memory: 16-byte vectors where the slice starts and ends on whole vectors
// (the slice that ends at H runs on into the half's zero padding), else scalars, the (piece,
// destination) pairs split over the CTA's threads. Every CTA's layout is the same, so a place
// in this CTA names the same place in the others. Costs a __syncthreads; the cluster barrier
// that ends the step orders the stores.
template <int kSamples>
SIMT_DEVICE void share_cluster_stack_slice(float* own, const float* from_adjacent, float* to_adjacent,
                                           int64_t adjacent, const ClusterStackPlace& at, const CtaPlace& place,
                                           const RecurrenceTiling& tiling, int64_t hidden, int64_t half, int64_t row) {
  __syncthreads();
  constexpr int kVec = vec_size<float>();
  // 32-bit index arithmetic (a slice has at most 8 x 448 pieces, a row 896 scalars), the
  // thread's (destination, piece) pairs stepped rather than divided out each time: a 64-bit
  // division is a call of about a hundred instructions in the SASS, and this runs every step.
  const int per_layer = tiling.ctas_per_group;
  const int begin = static_cast<int>(place.unit_begin);
  const int end = place.unit_end >= hidden ? static_cast<int>(half) : static_cast<int>(place.unit_end);
  const bool vectors = begin % kVec == 0 && end % kVec == 0;
  const int width = vectors ? kVec : 1;
  const int per_row = (end - begin) / width, pieces = kSamples * per_row;
  const int destinations = per_layer - 1 + (adjacent >= 0 ? per_layer : 0);
  const int stride = static_cast<int>(blockDim.x);
  int d = static_cast<int>(threadIdx.x) / pieces, piece = static_cast<int>(threadIdx.x) % pieces;
  while (d < destinations) {
    const int j = piece / per_row;
    const int64_t offset = int64_t(j) * row + begin + (piece - j * per_row) * width;
    int rank;
    const float* source = own;
    float* target = own;
    if (d < per_layer - 1) {  // the layer's other CTAs
      rank = static_cast<int>(at.layer) * per_layer + (d < at.layer_rank ? d : d + 1);
    } else {  // the adjacent layer's CTAs
      rank = static_cast<int>(adjacent) * per_layer + d - (per_layer - 1);
      source = from_adjacent;
      target = to_adjacent;
    }
    if (vectors) {
      *reinterpret_cast<Vec16<float>*>(simt::cluster_map_shared(target + offset, static_cast<unsigned>(rank))) =
          load_vec(source + offset);
    } else {
      *simt::cluster_map_shared(target + offset, static_cast<unsigned>(rank)) = source[offset];
    }
    piece += stride;
    while (piece >= pieces) {
      piece -= pieces;
      ++d;
    }
  }
}

// The passes a persistent kernel is compiled for (its kPasses), so that its step is
// straight-line code around the dot products: the batches and the units of each known to the
// compiler, no branch on them and no empty pass in the reduce-scatter (sm_90 SASS:
// benchmarks/sass_dot_loop.txt). Float32 only, where a CTA's steps are short:
//  - the Block path where the weight rows are held in registers (H <= 128): 1 to 4 passes,
//    the chunk iterations then known too (a chunk iteration never outnumbers the passes there:
//    ceil(H / 32) iterations, ceil(H / units per pass) >= that passes, so kPasses bounds both);
//    and where they are split between registers and shared memory (H = 129..256 at one
//    sample per chunk): 5 to 8 passes;
//  - the Cluster path at 1 to 8 passes with up to 4 samples per chunk, 1 to 4 with 8 (whose
//    tile unrolled over more passes spills: benchmarks/nvcc_resource_usage.txt), its chunk
//    iterations read at run time (up to 1024 columns): every slice of up to 128 units at 16 per
//    pass, 256 at 32 (a bidirectional layer's half-device plans, 2 CTAs of 100-128 units, too);
//    at H = 769-1024 (two passes of 32 at one sample per chunk) its kernels that split their
//    weights (cluster_weights_split), compiled for kClusterSplitIterations chunk iterations too,
//    and at H = 129-256 (1-2 passes at one sample) those that hold every row in registers
//    (cluster_rows_in_registers), compiled for kClusterRowIterations.
// Else 0: the count is read at run time.
SIMT_HOST_DEVICE constexpr int max_compiled_cluster_passes(int64_t samples) { return samples >= 8 ? 4 : 8; }
inline constexpr int kMaxCompiledClusterPasses = max_compiled_cluster_passes(1);  // (over every sample count)
SIMT_HOST_DEVICE constexpr int compiled_passes(RecurrencePath path, int64_t passes, int64_t chunk_iterations,
                                               bool fp64, int64_t samples) {
  if (weights_in_registers(path, passes, chunk_iterations, fp64) ||
      split_weights(path, passes, chunk_iterations, fp64, samples)) {
    return static_cast<int>(passes);
  }
  if (path == RecurrencePath::Cluster && !fp64 && passes <= max_compiled_cluster_passes(samples)) {
    return static_cast<int>(passes);
  }
  return 0;
}

// The chunk iterations a kernel compiled for `passes` (compiled_passes) holds in registers:
// its kIterations (RecurrenceCta), kClusterSplitIterations where the Cluster path splits its
// weights (kClusterRowIterations where it holds all its passes), else its passes.
SIMT_HOST_DEVICE constexpr int compiled_iterations(RecurrencePath path, int64_t passes, int64_t chunk_iterations,
                                                   bool fp64, int64_t samples) {
  if (path == RecurrencePath::Cluster && split_weights(path, passes, chunk_iterations, fp64, samples)) {
    return cluster_rows_in_registers(passes, chunk_iterations, fp64, samples) ? kClusterRowIterations
                                                                              : kClusterSplitIterations;
  }
  return static_cast<int>(passes);
}

// The passes the layer stack's Block kernels (forward_stack_kernel, backward_stack_kernel) are
// compiled for, given their CTA's passes over 2H rows and the chunk iterations of H: 1 to 4 as
// on the Block path; and at up to kStackRegisterMaxSamples samples per chunk 5 to 8
// (H = 65-128), whose 2H rows of 3-4 chunk iterations all fit the split kernels'
// kSplitRegisterChunks (8 x 4 at H = 128): the stack CTA stages them in shared memory and
// holds every pass in registers. 0: at run time. (ptxas at 2 samples: 171-250 registers, no
// spills, sm_80 and sm_90; at 4 the sm_80 backward of 8 passes spilled.)
inline constexpr int kStackRegisterMaxSamples = 2;
SIMT_HOST_DEVICE constexpr int stack_compiled_passes(int64_t passes, int64_t chunk_iterations, int64_t samples) {
  if (weights_fit_registers(passes, chunk_iterations, false)) return static_cast<int>(passes);
  if (samples <= kStackRegisterMaxSamples && passes > kRegisterPasses && passes <= kMaxPasses &&
      chunk_iterations <= stack_iterations(static_cast<int>(passes))) {
    return static_cast<int>(passes);
  }
  return 0;
}
static_assert(kMaxPasses * stack_iterations(kMaxPasses) <= kSplitRegisterChunks,
              "a stack CTA's rows fit its registers");

// The paths that keep the whole state of a group in each CTA's shared memory (two buffers,
// current and next step); the Grid path stages one chunk of rows at a time from global memory.
constexpr bool state_in_shared(RecurrencePath p) { return p != RecurrencePath::Grid; }

// Buffers of state rows in shared memory: current and next step (Block, Cluster); on the Grid
// path one chunk's, or two where a CTA takes several chunks per step, so that the next
// chunk's rows are copied in while the current one is computed.
SIMT_HOST_DEVICE constexpr int64_t state_buffers(RecurrencePath p, int64_t chunks) {
  return state_in_shared(p) || chunks > 1 ? 2 : 1;
}

// The phases of a step that step-phase timing tells apart (rnn_fused::recurrence_step_phases).
enum StepPhase : int {
  kStagePhase = 0,    // Grid: the chunk's state rows from global memory into shared memory
  kComputePhase = 1,  // dot products, reduce-scatter, epilogues, publishing the new state
  kBarrierPhase = 2,  // the step's barrier, waiting for the slowest warp or CTA included
  kStepPhases = 3
};

// Dynamic shared memory of a persistent kernel, in scalars of the compute type:
//   weights [U][R]      the CTA's rows of W_hh (forward) or of W_hh^T (backward), zero-padded
//   states  [n][S][R]   state rows: n = state_buffers(path, chunks): 2 (current and next
//                       step) on the Block and Cluster paths; on the Grid path 1 (the chunk
//                       being computed), 2 with several chunks (and the next one's); plus
//                       extra_buffers (the layer stack's masked state: kStackStateBuffers)
//   tile_totals [U'][S] the tiled dot products (Grid, Cluster): each output's total, U' = U rounded
//                       up to whole tiles (tile_totals_of; else none)
// with R = padded_row(H) (on the kernels with weight rows in registers the span of their compiled
// chunk iterations: 32 float32 columns a pass on the Block path, 1024 on the Cluster path's split
// kernels; whole_rows); then, for the backward with norms recorded, in doubles:
//   unit_sums [2][kUnitsPerPass][S]  per phase parity, unit group and sample: sum of g^2
//                                    (the first units_per_pass unit groups written)
//   cta_sums  [3][C][S]              Cluster path: the group's CTA sums, gathered in rank 0
// then, in long longs, the step-phase clock's running sums (PhaseClock):
//   phase_running [kStepPhases + 1]
// and last, on the Cluster path with StepSync::AsyncExchange, one mbarrier per state buffer:
//   exchange_arrivals [2]            (StepBarrier)
// This is all of a persistent kernel's shared memory (it declares no static shared memory),
// so `bytes` is what the planner checks against the device's per-block limit, exactly.
template <typename scalar_t>
struct SharedLayout {
  int64_t row;                // R
  int64_t weights;            // offsets in scalars
  int64_t held_tails;         // the tails of the rows held in registers in part (RecurrenceCta::kHeldTails)
  int64_t states;
  int64_t tile_totals;        // (tile_totals_of)
  int64_t operand_ring;       // (operand_ring_scalars)
  int64_t tail_row;           // scalars of one held row's tail (0: none)
  int64_t unit_sums_offset;   // byte offsets of the double arrays (16-byte aligned)
  int64_t cta_sums_offset;
  int64_t phase_offset;       // byte offset of phase_running (8-byte aligned)
  int64_t arrivals_offset;    // byte offset of exchange_arrivals (8-byte aligned; none: bytes)
  int64_t bytes;              // total

  // extra_buffers: more state buffers after the path's (the layer stack's kernels: 2, the
  // state with dropout's mask applied, which the next layer's projection reads).
  // compiled_passes: the kernel's kPasses (compiled_passes; 0: read at run time); a kernel that
  // splits its weights (split_weights) keeps only the rows past its register passes here, and
  // their tails past its registers' chunk iterations where it holds part of them (its
  // kIterations, compiled_iterations, a compile-time constant in the kernels: the tail's
  // arithmetic then folds away where there is none, which kept the other kernels' step loops
  // as they were, sm_90 SASS).
  SIMT_HOST_DEVICE static SharedLayout make(int64_t hidden, const RecurrenceTiling& t, RecurrencePath path,
                                            bool with_norms, int64_t extra_buffers = 0, int compiled_passes = 0,
                                            int compiled_iterations = 0) {
    SharedLayout l{};
    l.row = whole_rows(path, compiled_passes, compiled_iterations)
                ? int64_t(compiled_iterations) * kUnitLanes * vec_size<scalar_t>()
                : padded_row(hidden, vec_size<scalar_t>());
    l.weights = 0;
    const int64_t held = register_rows(hidden, t, path, compiled_passes);
    l.held_tails = (int64_t(t.units_per_cta) - held) * l.row;
    l.tail_row = held > 0 ? held_row_tail(l.row, t, path, compiled_iterations) : 0;
    l.states = l.held_tails + held * l.tail_row;
    if (held > 0 && t.tiled_dots != 0) {  // the Cluster split's tiled layout (RecurrenceCta::kTiledSplit)
      const int64_t rows = (int64_t(t.units_per_cta) + kTiledSplitTileRows - 1) / kTiledSplitTileRows * kTiledSplitHalfRows;
      l.held_tails = rows * (l.row - kTiledSplitLastColumn);
      l.states = l.held_tails + rows * (l.row - kTiledSplitFirstColumn);
    }
    const int64_t buffers = state_buffers(path, t.chunks) + extra_buffers;
    l.tile_totals = l.states + buffers * int64_t(t.samples) * l.row;
    l.operand_ring = l.tile_totals + tile_totals_of(t);
    const int64_t scalar_bytes = (l.operand_ring + operand_ring_scalars(t)) * int64_t(sizeof(scalar_t));
    l.unit_sums_offset = (scalar_bytes + 15) / 16 * 16;
    const int64_t unit_sums = with_norms ? 2 * int64_t(kUnitsPerPass) * t.samples : 0;
    l.cta_sums_offset = l.unit_sums_offset + unit_sums * int64_t(sizeof(double));
    const int64_t cta_sums = with_norms && path == RecurrencePath::Cluster ? 3 * int64_t(t.ctas_per_group) * t.samples : 0;
    l.phase_offset = l.cta_sums_offset + cta_sums * int64_t(sizeof(double));
    l.arrivals_offset = l.phase_offset + (kStepPhases + 1) * int64_t(sizeof(long long));
    const bool arrivals = path == RecurrencePath::Cluster && t.step_sync == int32_t(StepSync::AsyncExchange);
    l.bytes = l.arrivals_offset + (arrivals ? 2 * int64_t(sizeof(unsigned long long)) : 0);
    return l;
  }

  // The CTA's weight rows held in registers and not in shared memory: those of its first
  // split_register_passes passes where the kernel splits its weights (all of them at
  // H = 129-160), else none.
  SIMT_HOST_DEVICE static int64_t register_rows(int64_t hidden, const RecurrenceTiling& t, RecurrencePath path,
                                                int compiled_passes) {
    constexpr bool kFp64 = sizeof(scalar_t) == 8;
    const bool split = compiled_passes > 0 &&
                       split_weights(path, compiled_passes, chunk_iterations_of(hidden, kFp64), kFp64, t.samples);
    if (!split) return 0;
    const int64_t passes_held =
        held_register_passes(path, compiled_passes, chunk_iterations_of(hidden, kFp64), t.samples);
    const int64_t held = passes_held * kUnitsPerPass;  // (RecurrenceCta::kFirstSharedUnit)
    return held < t.units_per_cta ? held : t.units_per_cta;
  }

  // Rows padded with zeros over all the chunk iterations the kernel is compiled for
  // (RecurrenceCta::kWholeRows): the kernels with weight rows in registers (the Block path's and
  // the layer stack's compiled for their passes, the Cluster path's split ones, compiled for
  // more iterations than passes), whose dot products then load every iteration's chunks without
  // testing a lane for the row's end. Of the kernel's compile-time constants only: in a kernel
  // that holds no register rows a row length decided at run time took a few dozen instructions
  // per step (sm_90 SASS, the cluster path's 2-pass kernels).
  SIMT_HOST_DEVICE static constexpr bool whole_rows(RecurrencePath path, int compiled_passes, int compiled_iterations) {
    return compiled_passes > 0 && (path == RecurrencePath::Block ||
                                   (path == RecurrencePath::Cluster && compiled_iterations > compiled_passes));
  }

  // The scalars of a held row past the chunk iterations in registers, kept in shared memory
  // (to the end of the padded row of `row` scalars), of a kernel holding `iterations` chunk
  // iterations: the Cluster path's split at 2 and 4 samples. (RecurrenceCta::kHeldTails, kTailBegin)
  SIMT_HOST_DEVICE static int64_t held_row_tail(int64_t row, const RecurrenceTiling& t, RecurrencePath path,
                                                int iterations) {
    constexpr int64_t kVec = vec_size<scalar_t>();
    const int held_iterations = held_register_iterations(path, iterations, t.samples);
    return held_iterations < iterations ? row - int64_t(held_iterations) * kUnitLanes * kVec : 0;
  }

  SIMT_DEVICE long long* phase_running(scalar_t* smem) const {
    return reinterpret_cast<long long*>(reinterpret_cast<unsigned char*>(smem) + phase_offset);
  }
  // The mbarriers of StepSync::AsyncExchange, or null where the layout has none.
  SIMT_DEVICE unsigned long long* exchange_arrivals(scalar_t* smem) const {
    return arrivals_offset == bytes ? nullptr
                                    : reinterpret_cast<unsigned long long*>(reinterpret_cast<unsigned char*>(smem) +
                                                                            arrivals_offset);
  }
};

// rows [row_count][R] (shared) = source rows [first, first + row_count) of a [*, H] matrix,
// zero-padded past H; rows at or past `rows_available` are all zeros. All threads call it.
template <typename scalar_t>
SIMT_DEVICE void load_padded_rows(const scalar_t* source, scalar_t* rows, int64_t first, int64_t row_count,
                                  int64_t rows_available, int64_t hidden, int64_t row) {
  const int64_t total = row_count * row;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t r = i / row, k = i % row;
    rows[i] = (first + r < rows_available && k < hidden) ? source[(first + r) * hidden + k] : scalar_t(0);
  }
}

// Valid steps of sample b (all T without lengths, 0 for a padding sample past B).
SIMT_DEVICE __forceinline__ int64_t sample_length(const int64_t* lengths, int64_t b, int64_t batch, int64_t steps) {
  if (b >= batch) return 0;
  return lengths != nullptr ? lengths[b] : steps;
}

// Zero at the steps t >= lengths[b] past each sample's end, for samples [sample_begin,
// sample_end) and units [unit_begin, unit_end) of a time-major [T,B,H] tensor (`values`: a
// recurrence's output or dz), so that every entry is written and the host clears nothing. A
// persistent kernel's CTA calls it before its time loop for the outputs it owns, all threads
// (nothing reads these entries during the launch; XW_t there is never read): written inside
// the loop instead, a store per frozen step, the zeros cost the step loops up to 25 registers
// (sm_90, the lane-row forward; 448 kernels 3.2 more on average) and some kernels a CTA per SM.
template <typename scalar_t>
SIMT_DEVICE void zero_past_lengths(scalar_t* values, const int64_t* lengths, const LayerShape& shape,
                                   int64_t sample_begin, int64_t sample_end, int64_t unit_begin, int64_t unit_end) {
  if (lengths == nullptr) return;
  const int64_t B = shape.batch, H = shape.hidden;
  // (a step's units across the threads: no index division, whose 64-bit routine took a grid
  // kernel at 254 registers over the limit)
  for (int64_t b = sample_begin; b < sample_end && b < B; ++b) {
    for (int64_t t = lengths[b]; t < shape.steps; ++t) {
      scalar_t* row = values + time_major_offset(t, b, 0, B, H);
      for (int64_t u = unit_begin + threadIdx.x; u < unit_end; u += blockDim.x) row[u] = scalar_t(0);
    }
  }
}

// step_sq [T,B] zero past each sample's end for samples [sample_begin, sample_end) (the norms'
// companion of zero_past_lengths: one CTA per sample group calls it, all threads).
SIMT_DEVICE __forceinline__ void zero_norms_past_lengths(double* step_sq, const int64_t* lengths, const LayerShape& shape,
                                                       int64_t sample_begin, int64_t sample_end) {
  if (lengths == nullptr || step_sq == nullptr) return;
  const int64_t B = shape.batch;
  for (int64_t b = sample_begin; b < sample_end && b < B; ++b) {
    for (int64_t t = lengths[b] + threadIdx.x; t < shape.steps; t += blockDim.x) step_sq[t * B + b] = 0.0;
  }
}

// A lane's kOwned consecutive samples (from sample `first`) in the time-major [T,B,H] tensors
// the epilogues read and write (out, dy, dz): each sample's valid steps, and the offset of its
// unit 0 at processing step 0, so that unit u's offset at step s is origin[k] + u + shift(s)
// (= time_major_offset(step_time(s, length, reverse), b, u, B, H) wherever s < length): one
// add per use, and one multiply per step for all of them, instead of the whole product chain
// per output (Nsight Compute counted about 75 index instructions per warp and step in the
// block path's step at H = 64 before). With one chunk of samples per step the lane's samples
// never change, so the kernels build this once per launch.
template <int kOwned>
struct SampleRows {
  int64_t length[kOwned];  // valid steps; 0 past the batch
  int64_t origin[kOwned];  // time (length - 1 in reverse, else 0) * B * H + b * H
  int64_t time_stride;     // B * H, negated in reverse: one processing step's move

  SIMT_DEVICE SampleRows(const int64_t* lengths, int64_t first, LayerShape shape, bool reverse)
      : time_stride(reverse ? -shape.batch * shape.hidden : shape.batch * shape.hidden) {
    SIMT_UNROLL
    for (int k = 0; k < kOwned; ++k) {
      const int64_t b = first + k;
      length[k] = sample_length(lengths, b, shape.batch, shape.steps);
      origin[k] = (reverse ? length[k] - 1 : 0) * shape.batch * shape.hidden + b * shape.hidden;
    }
  }

  SIMT_DEVICE __forceinline__ int64_t shift(int64_t s) const { return s * time_stride; }
};

// With one chunk of samples per step (every path but the Grid path with several chunks), the
// outputs a lane owns are the same every step: their offsets in the time-major [T,B,H]
// tensors at the current processing step, moved one step at a time (an add per output and
// step, where SampleRows costs a multiply per step and an add per use; kept in registers,
// nothing to recompute: in sm_90 SASS nvcc rebuilt SampleRows' origins from the lengths every
// step, about 30 instructions per use).
struct SameUnit {
  SIMT_DEVICE int64_t operator()(int64_t u) const { return u; }
};

template <int kBatches, int kOwned>
struct LaneOutputs {
  int64_t at[kBatches][kOwned];  // offset of output (batch, k) at the current step; unowned: unused
  int64_t length[kOwned];        // valid steps of the lane's samples
  int64_t time_stride;           // one processing step's move (SampleRows::time_stride)

  // unit_of(u): the unit of the tensors' last dimension that CTA row u's outputs go to (u itself
  // but in the layer stack's kernels: stack_row).
  template <class Cta, class UnitOf = SameUnit>
  SIMT_DEVICE LaneOutputs(const Cta& cta, const SampleRows<kOwned>& rows, int64_t s, UnitOf unit_of = {})
      : time_stride(rows.time_stride) {
    SIMT_UNROLL
    for (int k = 0; k < kOwned; ++k) {
      length[k] = rows.length[k];
      SIMT_UNROLL
      for (int batch = 0; batch < kBatches; ++batch) at[batch][k] = 0;
    }
    const int64_t shift = rows.shift(s);
    cta.for_each_owned_output(cta.place.sample_begin, [&](int batch, int k, int64_t, int64_t u) {
      at[batch][k] = rows.origin[k] + unit_of(u) + shift;
    });
  }

  // f(batch, k, offset there) for each owned output valid at step s + ahead (s the current step).
  template <class Cta, class F>
  SIMT_DEVICE __forceinline__ void for_each_valid(const Cta& cta, int64_t s, int64_t ahead, F&& f) const {
    const int64_t shift = ahead * time_stride;
    cta.for_each_owned_output(cta.place.sample_begin, [&](int batch, int k, int64_t, int64_t) {
      if (s + ahead < length[k]) f(batch, k, at[batch][k] + shift);
    });
  }

  // To step s + steps.
  SIMT_DEVICE __forceinline__ void move(int steps) {
    const int64_t shift = steps * time_stride;
    SIMT_UNROLL
    for (int batch = 0; batch < kBatches; ++batch) {
      SIMT_UNROLL
      for (int k = 0; k < kOwned; ++k) at[batch][k] += shift;
    }
  }
};

// The Block path's operand ring (RecurrenceTiling::operand_ring; opt-in, forced_tiling's
// operand_ring): a lane's step operands (XW_t forward; dy_t and h_t backward) copied from global
// memory into shared memory kOperandRingSteps steps before the step that reads them
// (simt::copy_async_scalar, one commit group per step), instead of into registers one step
// ahead behind L1 prefetches. What it tests: whether a wait for those loads is what bounds the
// short steps at H <= 128 (about 400 cycles a step that the instruction counts do not explain,
// measured on the H200: docs/benchmarks.md). A lane copies and reads only its own outputs'
// entries, so its own wait orders them: no barrier. Every lane issues and commits a group each
// step (empty where it owns no valid output), so the groups' count is the same in every thread.
template <typename scalar_t, int kBatches, int kOwned>
struct OperandRing {
  scalar_t* slots;                  // [kOperandRingSteps][kOperandRingOperands][S][U] (shared)
  int64_t operand_stride;           // S * U
  int32_t entry[kBatches][kOwned];  // output (batch, k)'s place in an operand's [S][U]

  template <class Cta>
  SIMT_DEVICE OperandRing(const Cta& cta, scalar_t* ring, const RecurrenceTiling& t)
      : slots(ring), operand_stride(int64_t(t.samples) * t.units_per_cta) {
    SIMT_UNROLL
    for (int batch = 0; batch < kBatches; ++batch) {
      SIMT_UNROLL
      for (int k = 0; k < kOwned; ++k) entry[batch][k] = 0;
    }
    cta.for_each_owned_output(cta.place.sample_begin, [&](int batch, int k, int64_t, int64_t u) {
      entry[batch][k] = static_cast<int32_t>((cta.first_sample + k) * int64_t(t.units_per_cta) + u -
                                             cta.place.unit_begin);
    });
  }

  SIMT_DEVICE __forceinline__ scalar_t* at(int64_t step, int operand, int batch, int k) const {
    return slots + ((step & (kOperandRingSteps - 1)) * kOperandRingOperands + operand) * operand_stride +
           entry[batch][k];
  }

  // Copies step s + ahead's operands (the lane at step s) from sources[o] into its slot; commits
  // a group (an empty one for a step before 0).
  template <class Cta, class Lane, int kOperands>
  SIMT_DEVICE __forceinline__ void issue(const Cta& cta, const Lane& lane, int64_t s, int64_t ahead,
                                         const scalar_t* const (&sources)[kOperands]) const {
    static_assert(kOperands <= kOperandRingOperands, "the ring holds kOperandRingOperands operands a step");
    if (s + ahead >= 0) {
      lane.for_each_valid(cta, s, ahead, [&](int batch, int k, int64_t offset) {
        SIMT_UNROLL
        for (int o = 0; o < kOperands; ++o) simt::copy_async_scalar(at(s + ahead, o, batch, k), sources[o] + offset);
      });
    }
    simt::commit_async();
  }

  // Waits for the oldest of the kOperandRingSteps groups in flight (the next step's operands).
  SIMT_DEVICE __forceinline__ void wait_oldest() const { simt::wait_async<kOperandRingSteps - 1>(); }
  // Waits for every group (before the thread exits).
  SIMT_DEVICE __forceinline__ void finish() const { simt::wait_async<0>(); }
};

// The ring where a path's kernels have none (RecurrenceCta::kOperandRing false): nothing.
struct NoOperandRing {
  template <class Cta, class T>
  SIMT_DEVICE NoOperandRing(const Cta&, T*, const RecurrenceTiling&) {}
};

// Grid path: rows [S][R] (shared) = rows [first, first + S) of the global state [B,H] (zero
// past B, all zeros for a null state; the zero padding past H is left as it is) by plain
// scalar loads: stage_rows_async's way for an H that is not a whole number of 16-byte vectors.
// All threads call it; a __syncthreads must follow before the rows are read.
template <typename scalar_t>
SIMT_DEVICE void stage_rows(const scalar_t* exchange, scalar_t* rows, int64_t first, int samples, int64_t batch,
                            int64_t hidden, int64_t row) {
  for (int64_t i = threadIdx.x; i < samples * hidden; i += blockDim.x) {
    const int64_t j = i / hidden, k = i % hidden;
    rows[j * row + k] =
        exchange != nullptr && first + j < batch ? simt::load_cross_block(exchange + (first + j) * hidden + k) : scalar_t(0);
  }
}

// stage_rows with asynchronous 16-byte copies where H is a whole number of vectors (the caller
// commits them and waits before a __syncthreads), for the vectors (16-byte chunks) [begin, end)
// of each row; the zero rows past B are stored at once. Where H is not a whole number of
// vectors, the call with begin = 0 stages the whole rows at once and the others do nothing.
// The rows' source was written before the last grid barrier.
template <typename scalar_t>
SIMT_DEVICE void stage_rows_async(const scalar_t* exchange, scalar_t* rows, int64_t first, int samples,
                                  int64_t batch, int64_t hidden, int64_t row, int64_t begin = 0,
                                  int64_t end = INT64_MAX) {
  constexpr int kVec = vec_size<scalar_t>();
  if (hidden % kVec != 0) {
    if (begin == 0) stage_rows(exchange, rows, first, samples, batch, hidden, row);
    return;
  }
  end = end < hidden / kVec ? end : hidden / kVec;
  const int64_t vectors = end > begin ? end - begin : 0;
  for (int64_t i = threadIdx.x; i < samples * vectors; i += blockDim.x) {
    const int64_t j = i / vectors, c = begin + i % vectors;
    scalar_t* to = rows + j * row + c * kVec;
    if (exchange != nullptr && first + j < batch) {
      simt::copy_async_16(to, exchange + (first + j) * hidden + c * kVec);
    } else {
      *reinterpret_cast<Vec16<scalar_t>*>(to) = Vec16<scalar_t>{};
    }
  }
}

// Words of the tagged exchange a thread loads before it checks any (its registers bound it).
inline constexpr int kTaggedWordsAtOnce = 8;

// Tagged exchange (float32): rows [S][R] (shared) = rows [first, first + S) of the state [B,H]
// in tagged words, each once it carries `tag` (zero past B; the padding past H is left as it
// is). Every word is loaded once before any is waited for, a batch at a time, so the loads'
// latencies overlap; only a word whose producer has not stored it yet is loaded again. All
// threads call it; a __syncthreads must follow before the rows are read.
template <typename scalar_t>
SIMT_DEVICE void stage_rows_tagged(const unsigned long long* tagged, scalar_t* rows, int64_t first, int samples,
                                   int64_t batch, int64_t hidden, int64_t row, unsigned tag) {
  if constexpr (sizeof(scalar_t) != 4) {
    SIMT_KERNEL_CHECK(false, "the tagged exchange carries float32 values only");
  } else {
    constexpr int kWordsAtOnce = kTaggedWordsAtOnce;
    const int64_t total = int64_t(samples) * hidden, stride = int64_t(blockDim.x);
    for (int64_t base = threadIdx.x; base < total; base += kWordsAtOnce * stride) {
      // Word w of the batch is element base + w * stride: (row j[w], unit k[w]), stepped from the
      // first without a division per word.
      int64_t j[kWordsAtOnce], k[kWordsAtOnce];
      j[0] = base / hidden;
      k[0] = base - j[0] * hidden;
      SIMT_UNROLL
      for (int w = 1; w < kWordsAtOnce; ++w) {
        j[w] = j[w - 1];
        k[w] = k[w - 1] + stride;
        while (k[w] >= hidden) {
          k[w] -= hidden;
          ++j[w];
        }
      }
      unsigned long long words[kWordsAtOnce];
      SIMT_UNROLL
      for (int w = 0; w < kWordsAtOnce; ++w) {
        const bool loaded = j[w] < samples && first + j[w] < batch;
        words[w] = loaded ? simt::load_relaxed(tagged + (first + j[w]) * hidden + k[w]) : simt::tag_word(0.0f, tag);
      }
      SIMT_UNROLL
      for (int w = 0; w < kWordsAtOnce; ++w) {
        if (j[w] >= samples) break;
        if (simt::word_tag(words[w]) != tag) words[w] = simt::wait_word_tag(tagged + (first + j[w]) * hidden + k[w], tag);
        rows[j[w] * row + k[w]] = simt::word_value(words[w]);
      }
    }
  }
}

// The new state (h, or dz in the backward) of (sample b, row j of its chunk, unit u) goes where
// the CTAs of the group read it next step: into the CTA's own next buffer (Block, Cluster: the
// Cluster path then copies the CTA's slice of it into the other CTAs' buffers,
// RecurrenceCta::share_slice), or into the global buffer of the next step (Grid): plain, or with a
// tagged exchange (tagged_next non-null) a word carrying `tag`.
template <RecurrencePath kPath, typename scalar_t>
SIMT_DEVICE __forceinline__ void publish_state(scalar_t* next_rows, scalar_t* exchange_next,
                                               unsigned long long* tagged_next, unsigned tag, int64_t j, int64_t b,
                                               int64_t u, int64_t row, int64_t hidden, scalar_t value) {
  if constexpr (kPath == RecurrencePath::Grid) {
    if (tagged_next != nullptr) {
      simt::store_relaxed(tagged_next + b * hidden + u, simt::tag_word(static_cast<float>(value), tag));
    } else {
      simt::store_cross_block(exchange_next + b * hidden + u, value);
    }
  } else {
    next_rows[j * row + u] = value;
  }
}

// What ends a step: the whole new state is where every CTA that reads it next step reads it.
// Block: __syncthreads; Cluster: the cluster barrier; Grid (tiling.step_sync): the grid
// barrier, or a flag barrier over the CTAs of the sample group only, or nothing with a tagged
// exchange (each reader waits for the words it stages). A CTA's rows, and the norm partials its
// group's rank 0 sums, come from its own group, and every CTA of the group has staged a
// chunk's rows of step s before it publishes anything of that chunk at step s + 1 (its flag
// ends the whole step; its tagged words of the chunk at step s + 1 need all of the chunk's at
// step s), so the buffer of step s may be rewritten at step s + 2 (two parities) as after a
// grid barrier. For the tagged exchange this rests on the staging loads being complete when
// their values are stored to shared memory before the __syncthreads that precedes the CTA's
// next stores (the hardware does not let a load observe a store issued after it completed);
// relaxed loads and stores alone form no release/acquire pair, so the PTX memory model by
// itself does not order them. Were it violated, a reader would see a later tag and spin until
// the trap (simt_cuda.cuh), not take a wrong value. The norm partials of a backward with recorded norms
// carry no tag: with a tagged exchange its steps still end in the flag barrier. start() zeroes
// the flags ([CTAs] unsigned; the n-th barrier waits for the value n) and the tagged words
// ([2,B,H]: tags count from 1) before one grid barrier.
//
// Cluster path with StepSync::AsyncExchange (`arrivals`: SharedLayout::exchange_arrivals, the
// CTA's mbarriers, one per state buffer; `bytes_in`: what the other CTAs store into this one each
// step, RecurrenceCta::exchange_bytes_in): no cluster barrier per step. share_slice stores the
// CTA's slice of step k's state into the others by simt::store_async on their mbarrier k % 2
// (step_arrivals()), arrive() is thread 0's arrival on its own with the bytes to expect, wait()
// every thread's wait for that phase. A CTA stores step k + 1's slice only after its wait for
// step k, which needs every other CTA's slice of step k, each stored after a __syncthreads that
// follows all of that CTA's reads of the buffer step k + 1 overwrites: no write lands in a buffer
// still being read, and no step's bytes reach an mbarrier before its phase of step k - 2 has
// completed. Every CTA's slice must be non-empty for that (checked). What else a step's phase
// counts (the backward's norm sums that rank 0 gathers) is arrive()'s `extra_bytes`; a phase of
// extra bytes only is arrive_extra(). finish() ends the launch with a cluster barrier, so that no
// CTA exits while another may still store into it.
template <RecurrencePath kPath>
class StepBarrier {
 public:
  SIMT_DEVICE StepBarrier(const RecurrenceTiling& tiling, const CtaPlace& place, unsigned* flags,
                          unsigned long long* tagged, int64_t tagged_words, bool exchanges_norms,
                          unsigned long long* arrivals = nullptr, unsigned bytes_in = 0)
      : sync_(kPath != RecurrencePath::Block ? static_cast<StepSync>(tiling.step_sync) : StepSync::GridBarrier),
        flags_(sync_ == StepSync::FlagBarrier || (sync_ == StepSync::TaggedExchange && exchanges_norms) ? flags
                                                                                                         : nullptr),
        tagged_(sync_ == StepSync::TaggedExchange ? tagged : nullptr),
        tagged_words_(tagged_words),
        first_(static_cast<unsigned>(place.group * tiling.ctas_per_group)),
        count_(static_cast<unsigned>(tiling.ctas_per_group)),
        arrivals_(sync_ == StepSync::AsyncExchange ? arrivals : nullptr),
        bytes_in_(bytes_in) {
    if constexpr (kPath == RecurrencePath::Cluster) {
      SIMT_KERNEL_CHECK((sync_ == StepSync::AsyncExchange) == (arrivals_ != nullptr),
                        "the asynchronous exchange needs its mbarriers");
    }
  }

  // After each CTA loaded its state buffers: on the Cluster path no CTA may write into a peer's
  // buffers before the peer initialised them; on the Grid path every flag and tagged word is
  // zero before any is published.
  SIMT_DEVICE void start() {
    if constexpr (kPath == RecurrencePath::Cluster) {
      if (arrivals_ != nullptr && threadIdx.x == 0) {
        simt::mbarrier_init(&arrivals_[0], 1);
        simt::mbarrier_init(&arrivals_[1], 1);
      }
      simt::cluster_sync();
    } else if constexpr (kPath == RecurrencePath::Grid) {
      if (flags_ == nullptr && tagged_ == nullptr) return;
      if (flags_ != nullptr && threadIdx.x == 0) flags_[blockIdx.x] = 0u;
      if (tagged_ != nullptr) {
        const int64_t stride = int64_t(gridDim.x) * blockDim.x;
        for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < tagged_words_; i += stride) tagged_[i] = 0;
      }
      simt::grid_sync();
    }
  }

  // The step's barrier is arrive() then wait(). Between them a kernel issues the global loads
  // of the next step's operands: on the Cluster path the arrival is a release, which waits for
  // the thread's outstanding loads too (MEMBAR.ALL.GPU in the sm_90 SASS), so a load issued
  // before it would put its latency from L2 into every step; issued after it, the load's latency
  // overlaps the wait and the next step's dot products. Nothing between them may touch another
  // CTA's memory (the emulator refuses it). On the other paths arrive() does nothing.
  SIMT_DEVICE __forceinline__ void arrive(unsigned extra_bytes = 0) {
    if constexpr (kPath == RecurrencePath::Cluster) {
      if (arrivals_ == nullptr) {
        simt::cluster_arrive();
      } else if (threadIdx.x == 0) {
        simt::mbarrier_arrive_expect_tx(step_arrivals(), bytes_in_ + extra_bytes);
      }
    }
  }

  // Cluster path with the asynchronous exchange: a phase without a state exchange, in which
  // this CTA expects `extra_bytes` (may be 0); wait() ends it as a step's.
  SIMT_DEVICE __forceinline__ void arrive_extra(unsigned extra_bytes) {
    if (threadIdx.x == 0) simt::mbarrier_arrive_expect_tx(step_arrivals(), extra_bytes);
  }

  SIMT_DEVICE __forceinline__ bool async_exchange() const { return arrivals_ != nullptr; }

  SIMT_DEVICE __forceinline__ void wait() {
    if constexpr (kPath == RecurrencePath::Grid) {
      if (flags_ != nullptr) {
        simt::flag_barrier(flags_, first_, count_, ++epoch_);
      } else if (tagged_ == nullptr) {
        simt::grid_sync();
      }
    } else if constexpr (kPath == RecurrencePath::Cluster) {
      if (arrivals_ == nullptr) {
        simt::cluster_wait();
      } else {
        simt::mbarrier_wait(step_arrivals(), (epoch_ / 2) & 1u);
        ++epoch_;
      }
    } else {
      __syncthreads();
    }
  }

  // Cluster path with the asynchronous exchange: the mbarrier of this step's state buffer, on
  // which share_slice's stores complete in the other CTAs (null: the cluster barrier).
  SIMT_DEVICE __forceinline__ unsigned long long* step_arrivals() const {
    return arrivals_ != nullptr ? arrivals_ + (epoch_ & 1u) : nullptr;
  }

  // After the last step.
  SIMT_DEVICE void finish() {
    if constexpr (kPath == RecurrencePath::Cluster) {
      if (arrivals_ != nullptr) simt::cluster_sync();
    }
  }

 private:
  StepSync sync_;
  unsigned* flags_;            // null: no flag barrier
  unsigned long long* tagged_; // null: no tagged exchange
  int64_t tagged_words_;
  unsigned first_, count_;
  unsigned long long* arrivals_;  // null: no asynchronous exchange
  unsigned bytes_in_;
  unsigned epoch_ = 0;  // steps ended (flag barrier: its epochs; asynchronous exchange: the waits)
};

// Step-phase timing of a persistent kernel: thread 0 of each CTA reads the SM's cycle counter
// at every phase boundary and adds the cycles to its CTA's row of `cycles` [CTAs, kStepPhases]
// (global, int64, summed over steps). Its running sums live in shared memory
// (SharedLayout::phase_running), so an untimed launch (cycles null) keeps no register for them
// and only tests a kernel argument. Thread 0's view: time its own warp spends, with the other
// warps' lag counted in the barrier. PhaseClock<false> does nothing: the kernels compiled for
// their passes run their steps with it where the launch is untimed, since there the predicated
// clock code (about 20 instructions per step, issued by every warp) is a tenth of a step.
template <bool kEnabled = true>
class PhaseClock {
 public:
  SIMT_DEVICE explicit PhaseClock(int64_t* cycles, long long* running) : cycles_(cycles), running_(running) {}

  SIMT_DEVICE __forceinline__ bool timing() const { return kEnabled && cycles_ != nullptr && threadIdx.x == 0; }

  // Starts the first phase.
  SIMT_DEVICE void start() {
    if (!timing()) return;
    for (int p = 0; p < kStepPhases; ++p) running_[p] = 0;
    running_[kStepPhases] = clock64();
  }

  // The time since the last boundary belongs to `phase`.
  SIMT_DEVICE __forceinline__ void lap(StepPhase phase) {
    if (!timing()) return;
    const long long now = clock64();
    running_[phase] += now - running_[kStepPhases];
    running_[kStepPhases] = now;
  }

  // This CTA's sums into its row of `cycles`.
  SIMT_DEVICE void store() {
    if (!timing()) return;
    const int64_t cta = int64_t(blockIdx.x);
    for (int p = 0; p < kStepPhases; ++p) cycles_[cta * kStepPhases + p] = running_[p];
  }

 private:
  int64_t* cycles_;
  long long* running_;  // shared [kStepPhases + 1]: the sums, then the last boundary
};

// Runs a persistent kernel's step loop run(clock): the kernels compiled for their passes step
// without the clock's code where the launch is untimed (PhaseClock<false>); the others test
// the argument (cycles null: untimed) every step.
template <int kPasses, class Run>
SIMT_DEVICE __forceinline__ void run_with_phase_clock(int64_t* cycles, long long* running, Run&& run) {
  if constexpr (kPasses > 0) {
    if (cycles == nullptr) {
      run(PhaseClock<false>(nullptr, nullptr));
      return;
    }
  }
  run(PhaseClock<true>(cycles, running));
}

// Cluster path: what a thread copies each step of its CTA's slice of the new state (units
// [unit_begin, unit_end) of each of the kSamples state rows) into the other CTAs of the group
// (RecurrenceCta::share_slice). The slice is cut into pieces, 16-byte vectors where it starts and
// ends on whole vectors (the slice that ends at H runs on to the row's zero padding), else
// scalars. Where the pieces are no more than the CTA's threads (all but slices of several
// samples of 128 units or more), each thread takes one piece and the same `copies` other ranks
// every step, decided once per launch: per step it loads the piece once and stores it `copies`
// times, with no loop over pieces and no division (sm_90 SASS: the copy code a thread runs per
// step about 49 -> 27 instructions at one copy). Otherwise (per_rank > threads) thread t takes
// the pieces t, t + threads, ... to every other rank.
struct SliceCopies {
  int per_rank = 0;        // pieces of the slice (all its rows)
  int pieces_per_row = 1;
  int begin = 0;           // the slice's first unit
  bool vectors = false;
  bool one_piece = false;  // per_rank <= threads: this thread's one piece, `copies` times
  int copies = 0;          // (one_piece) the ranks this thread stores its piece into
  unsigned first_rank = 0, rank_step = 1;  // (one_piece) the first of them (absolute), the step between them
  int offset = 0;          // (one_piece) of the piece in a state buffer, in scalars
};

// What a persistent kernel's CTA knows and does every step, whichever the direction: its
// place, its shared memory, this lane's role, and the loop over chunks and passes that
// computes the unit dot products and hands each owned result to the kernel's epilogue.
// kIterations: the chunk iterations the weight registers hold (kernel_common.cuh
// register_unit_dots), at most kPasses; the layer stack's CTAs, whose rows are 2H, need half
// their passes (stack_iterations); the Cluster path's split kernels (cluster_weights_split)
// kClusterSplitIterations, and those with every row in registers (cluster_rows_in_registers)
// kClusterRowIterations, more than their passes.
template <typename scalar_t, int kSamples, RecurrencePath kPath, int kPasses = 0, int kIterations = kPasses>
struct RecurrenceCta {
  static_assert(kPath != RecurrencePath::Stepwise, "the Stepwise path has no persistent kernel");
  // The layer stack's CTAs (kIterations < kPasses: stack_iterations) stage all their rows in
  // shared memory (load_stack_rows), and the passes in registers are cached from there.
  static constexpr bool kStagedRows = kIterations < kPasses;
  static constexpr bool kClusterSplit = kPath == RecurrencePath::Cluster && kPasses > 0 && kIterations > kPasses;
  static_assert(!kClusterSplit || split_weights(kPath, kPasses, kIterations, sizeof(scalar_t) == 8, kSamples),
                "a Cluster kernel holds registers only where it splits its weights");
  static_assert(kPasses == 0 ||
                    (kStagedRows ? stack_compiled_passes(kPasses, kIterations, kSamples)
                                 : compiled_passes(kPath, kPasses, kIterations, sizeof(scalar_t) == 8, kSamples)) ==
                        kPasses,
                "a fixed pass count only where compiled_passes (stack_compiled_passes) gives one");
  static_assert(kPasses == 0 ? kIterations == 0 : kIterations >= 1 && (kIterations <= kPasses || kClusterSplit),
                "chunk iterations bounded by the passes");
  static constexpr bool kStateInShared = state_in_shared(kPath);
  // The weight rows in registers: the Block path's kernels compiled for their passes, and the
  // Cluster path's split ones; those of more than kRegisterPasses passes, and the Cluster
  // path's, split them (split_weights): the first kHeldPasses passes' rows in registers, the
  // others' in shared memory.
  static constexpr bool kRegisterWeights = kPasses > 0 && (kPath == RecurrencePath::Block || kClusterSplit);
  static constexpr bool kSplitWeights = kRegisterWeights && (kPasses > kRegisterPasses || kClusterSplit);
  // The tiled dot products compiled in (taken where RecurrenceTiling::tiled_dots asks): the Grid
  // path's float32 kernels at 4 or 8 samples and the Cluster path's at 4 with every weight row in
  // shared memory, a warp's tile kTileUnits units x kSamples samples (the Cluster path's split
  // kernels: kTiledSplit below). (The host launches no other
  // kernel with tiled_dots set: launch_persistent asserts it. A device-side check cost the
  // float64 grid backward at 8 samples, at 255 registers, a spill.) The layer stacks' CTAs, of
  // the same type, leave them out (for_each_output's kMayTile).
  static constexpr bool kTiledDots =
      tiled_dots_allowed(kPath, sizeof(scalar_t) == 8, kSamples) && !kRegisterWeights;
  static constexpr int kTileUnits = kTiledDots ? tiled_units(kSamples) : 1;
  // The Cluster path's split kernels at 4 samples take the tiled dot products at run time too
  // (tiling.tiled_dots), with their held registers and shared rows in the tile's layout
  // (kTiledSplitTileRows; for_each_tiled_split_output).
  static constexpr bool kTiledSplit = kClusterSplit && sizeof(scalar_t) == 4 && kSamples == 4;
  static constexpr int kHeldPasses = !kSplitWeights ? kRegisterPasses
                                     : kStagedRows  ? kPasses
                                                    : held_register_passes(kPath, kPasses, kIterations, kSamples);
  static constexpr int kHeldIterations = kRegisterWeights ? held_register_iterations(kPath, kIterations, kSamples) : 1;
  static_assert(!kTiledSplit || (kHeldPasses == 1 && kHeldIterations == kTiledSplitHalfRows * (kTiledSplitFirstChunks +
                                                                                         kTiledSplitLastChunks) &&
                                 kIterations * kUnitLanes == 8 * kWarp),
                "the tiled split holds the 8-lane split's registers, over rows of 8 chunks a lane");
  // The held rows' chunk iterations past the registers' in shared memory (the Cluster path's
  // split at 2 and 4 samples): from column kTailBegin on, held_tail_row.
  static constexpr bool kHeldTails = kRegisterWeights && kHeldIterations < kIterations;
  static constexpr int64_t kTailBegin = int64_t(kHeldIterations) * kUnitLanes * vec_size<scalar_t>();
  static_assert(!kHeldTails || (kClusterSplit && kHeldPasses == 1), "only the Cluster split holds part of a row");
  // The chunk iterations whole on every lane of every row the kernel runs (register_unit_dots):
  // a split layer kernel's rows have more than kRegisterIterations (Block, and the Cluster
  // kernels with every row in registers) or kClusterSplitMinIterations - 1 (the Cluster split)
  // iterations (weights_split, cluster_rows_in_registers, cluster_weights_split).
  static constexpr int kWholeIterations = !kSplitWeights || kStagedRows           ? 0
                                          : kClusterSplit && kIterations > kSplitIterations ? kClusterSplitMinIterations - 1
                                                                                            : kRegisterIterations;
  // The rows of the kernels with weights in registers are padded with zeros over all
  // kIterations (SharedLayout::whole_rows): past kWholeIterations a step loads every chunk and
  // tests each iteration once for the whole warp, not each lane's chunk for the row's end
  // (register_unit_dots).
  static constexpr bool kWholeRows = kRegisterWeights;
  static_assert(kWholeRows == SharedLayout<scalar_t>::whole_rows(kPath, kPasses, kIterations),
                "the shared layout pads the rows of the kernels that hold registers");
  static_assert(!kStagedRows || !kSplitWeights || kHeldPasses == kPasses, "a stack CTA holds all its passes");
  // The CTA's first unit (local) whose weight row is in shared memory, and where weight_row
  // counts from. (A split layer CTA owns more than 128 units, so its passes are of 32: the
  // planner's block path takes 16 at most 128; a Cluster split CTA's passes are of 32 by
  // cluster_weights_split's two passes of up to 64 units.)
  static constexpr int64_t kFirstSharedUnit =
      kSplitWeights && !kStagedRows ? int64_t(kHeldPasses) * kUnitsPerPass : 0;
  static constexpr int kScalarBytes = static_cast<int>(sizeof(scalar_t));
  static constexpr int kBatch = pass_batch(kSamples, kScalarBytes, kPasses);  // passes computed together
  static constexpr int kBatches = ((kPasses > 0 ? kPasses : kMaxPasses) + kBatch - 1) / kBatch;  // at most, per step and chunk
  static constexpr int kTile = kBatch * kSamples;
  static constexpr int kOwned = outputs_per_lane(kSamples, kScalarBytes, kPasses);  // outputs per lane and batch
  // Lane bits of a unit group along which lanes hold copies of the same totals
  // (tile_copy_lanes): only the lane with them clear runs the epilogues.
  static constexpr int kCopyLanes = tile_copy_lanes(kTile);
  // Lane bits of a unit group that pick a lane's samples (those whose place in tile_base is
  // below kSamples); along the others, lanes own the same samples in other passes or are copies.
  static constexpr int kSampleBits = (kTile * 4 / kUnitLanes >= 1 && kTile * 4 / kUnitLanes < kSamples ? 4 : 0) |
                                     (kTile * 2 / kUnitLanes >= 1 && kTile * 2 / kUnitLanes < kSamples ? 2 : 0) |
                                     (kTile / kUnitLanes >= 1 && kTile / kUnitLanes < kSamples ? 1 : 0);

  RecurrenceTiling tiling;
  int64_t steps, batch, hidden, row;
  int vectors;
  int64_t rows_total;  // weight rows of all the group's CTAs: H, or 2H (forward_stack_kernel)
  CtaPlace place;
  int64_t units;   // this CTA's units
  int units_per_pass;  // tiling.units_per_pass: unit groups that compute
  bool computes;       // this lane's unit group computes (uniform over a warp)
  int passes;          // ceil(units / units_per_pass) (kPasses where fixed)
  LaneRole role;
  int owned_pass;    // the pass of this lane's outputs within every batch
  int first_sample;  // its outputs' samples (rows j of every chunk): first_sample .. + kOwned - 1
  scalar_t* weights;
  scalar_t* held_tails;  // kHeldTails: [kUnitsPerPass][tail_row]
  int64_t tail_row;
  scalar_t* states;
  scalar_t* tile_totals;  // [units rounded up to tiles][kSamples] (kTiledDots with tiling.tiled_dots)
  SliceCopies slice_copies;  // Cluster path (share_slice)
  Vec16<scalar_t> weight_registers[kHeldPasses][kHeldIterations];  // cache_weights(), load_weights()

  // rows: the weight rows the group's CTAs split (H, or 2H for forward_stack_kernel); block:
  // the CTA's index among its layer's CTAs.
  SIMT_DEVICE RecurrenceCta(scalar_t* smem, const SharedLayout<scalar_t>& layout, const RecurrenceTiling& t,
                            const LayerShape& shape, int64_t rows, int64_t block)
      : tiling(t),
        steps(shape.steps),
        batch(shape.batch),
        hidden(shape.hidden),
        row(layout.row),
        vectors(static_cast<int>(layout.row / vec_size<scalar_t>())),
        rows_total(rows),
        place(cta_place(t, rows, block)),
        units(place.unit_end - place.unit_begin),
        units_per_pass(t.units_per_pass),
        computes(lane_role().unit_in_pass < t.units_per_pass),
        passes(kPasses > 0 ? kPasses : static_cast<int>((units + t.units_per_pass - 1) / t.units_per_pass)),
        role(lane_role()),
        owned_pass(tile_base(kSamples, kScalarBytes, role.q, kPasses) / kSamples),
        first_sample(tile_base(kSamples, kScalarBytes, role.q, kPasses) % kSamples),
        weights(smem + layout.weights),
        held_tails(smem + layout.held_tails),
        tail_row(layout.tail_row),
        states(smem + layout.states),
        tile_totals(smem + layout.tile_totals),
        slice_copies(slice_copies_of(place, t.ctas_per_group, shape.hidden, layout.row)) {}

  // The pieces of the slice of a CTA at `place` (SliceCopies: begin, vectors, pieces_per_row, per_rank).
  static SIMT_DEVICE SliceCopies slice_of(const CtaPlace& place, int64_t hidden, int64_t row) {
    constexpr int kVec = vec_size<scalar_t>();
    SliceCopies c;
    const int64_t begin = place.unit_begin;
    const int64_t end = place.unit_end >= hidden ? row : place.unit_end;
    c.vectors = begin % kVec == 0 && end % kVec == 0;
    c.pieces_per_row = static_cast<int>(end > begin ? (end - begin) / (c.vectors ? kVec : 1) : 0);
    c.per_rank = kSamples * c.pieces_per_row;
    c.begin = static_cast<int>(begin);
    return c;
  }

  // With StepSync::AsyncExchange (the layout has its mbarriers), the bytes share_slice stores
  // into this CTA each step from the group's other CTAs, each of whose slices must be non-empty
  // (StepBarrier: the exchange's ordering rests on every CTA storing something each step); else 0.
  SIMT_DEVICE unsigned exchange_bytes_in(const SharedLayout<scalar_t>& layout) const {
    int64_t bytes = 0;
    if (layout.arrivals_offset == layout.bytes) return 0;
    for (int64_t r = 0; r < tiling.ctas_per_group; ++r) {
      if (r == place.rank) continue;
      const SliceCopies other = slice_of(cta_place(tiling, rows_total, place.group * tiling.ctas_per_group + r), hidden, row);
      SIMT_KERNEL_CHECK(other.per_rank > 0, "every CTA of a cluster owns units");
      bytes += int64_t(other.per_rank) * (other.vectors ? 16 : kScalarBytes);
    }
    return static_cast<unsigned>(bytes);
  }

  static SIMT_DEVICE SliceCopies slice_copies_of(const CtaPlace& place, int64_t ctas, int64_t hidden, int64_t row) {
    SliceCopies c;
    if constexpr (kPath == RecurrencePath::Cluster) {
      c = slice_of(place, hidden, row);
      const int threads = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
      const int others = static_cast<int>(ctas) - 1;
      c.one_piece = c.per_rank <= threads;
      if (c.one_piece && c.per_rank > 0) {  // piece t % per_rank to the other ranks t / per_rank, + stride, ...
        const int stride = threads / c.per_rank, first_other = t / c.per_rank;
        // (threads past stride x per_rank copy nothing: their ranks are another thread's)
        c.copies = first_other < stride && first_other < others ? (others - first_other + stride - 1) / stride : 0;
        c.first_rank = static_cast<unsigned>((place.rank + 1 + first_other) % ctas);
        c.rank_step = static_cast<unsigned>(stride % ctas);
        c.offset = static_cast<int>(piece_offset(c, t % c.per_rank, row));
      }
    }
    return c;
  }

  static SIMT_DEVICE __forceinline__ int64_t piece_offset(const SliceCopies& c, int within, int64_t row) {
    const int j = within / (c.pieces_per_row > 0 ? c.pieces_per_row : 1);
    const int piece = within - j * c.pieces_per_row;
    return int64_t(j) * row + c.begin + int64_t(piece) * (c.vectors ? vec_size<scalar_t>() : 1);
  }

  // Cluster path, after the epilogues of a step wrote the CTA's slice of the new state into its
  // own `next` buffer (publish_state): the slice into the same buffer of the group's other CTAs
  // through distributed shared memory, 16-byte vectors split over all the CTA's threads, where
  // each owning lane stored each output into every CTA before (C scalar remote stores per
  // output, with their 64-bit generic addresses: about 6 instructions each in the sm_90 SASS,
  // on the warps that hold the outputs). Plain stores, which the step's cluster barrier orders,
  // or with `arrivals` (StepBarrier::step_arrivals) asynchronous stores that complete on the
  // other CTAs' mbarriers. Costs a __syncthreads. Other paths: nothing.
  SIMT_DEVICE void share_slice(scalar_t* next, unsigned long long* arrivals) const {
    if constexpr (kPath == RecurrencePath::Cluster) {
      __syncthreads();  // the CTA's slice is whole in its own buffer
      const SliceCopies& c = slice_copies;
      if (!c.one_piece) {
        share_many_pieces(next, arrivals);
      } else if (c.copies > 0) {
        if (c.vectors) {
          copy_piece<Vec16<scalar_t>>(next + c.offset, c.first_rank, c.rank_step, c.copies, arrivals);
        } else {
          copy_piece<scalar_t>(next + c.offset, c.first_rank, c.rank_step, c.copies, arrivals);
        }
      }
    }
  }

  // The piece of type Piece (a 16-byte vector or a scalar) at `local` into `copies` >= 1 ranks
  // from `rank` on, `step` apart (mod the cluster's CTAs). Not unrolled: a thread has 1-2 copies at
  // most planned shapes, and unrolled by 4 the copies nearly tripled the cluster step loop's
  // machine code (sm_90 SASS: 342 -> 899 instructions at 1 sample and 1 pass).
  template <typename Piece>
  SIMT_DEVICE __forceinline__ void copy_piece(scalar_t* local, unsigned rank, unsigned step, int copies,
                                              unsigned long long* arrivals) const {
    const unsigned ctas = static_cast<unsigned>(tiling.ctas_per_group);
    const Piece piece = *reinterpret_cast<const Piece*>(local);
    auto store = [&](unsigned to) {
      if (arrivals != nullptr) {
        simt::store_async(local, to, piece, arrivals);
      } else {
        *reinterpret_cast<Piece*>(simt::cluster_map_shared(local, to)) = piece;
      }
    };
    store(rank);  // (copies >= 1; the loop only for the others)
    SIMT_NO_UNROLL
    for (int i = 1; i < copies; ++i) {
      rank += step;
      if (rank >= ctas) rank -= ctas;
      store(rank);
    }
  }

  // share_slice where the slice has more pieces than the CTA has threads (SliceCopies). (Out of
  // line, the call's register saves took 400-848 bytes of stack per thread: ptxas, sm_90.)
  SIMT_DEVICE __forceinline__ void share_many_pieces(scalar_t* next, unsigned long long* arrivals) const {
    const SliceCopies& c = slice_copies;
    const unsigned ctas = static_cast<unsigned>(tiling.ctas_per_group), own = static_cast<unsigned>(place.rank);
    if (ctas < 2) return;  // (no other CTA)
    const unsigned first = own + 1 < ctas ? own + 1 : 0u;
    for (int within = static_cast<int>(threadIdx.x); within < c.per_rank; within += static_cast<int>(blockDim.x)) {
      scalar_t* local = next + piece_offset(c, within, row);
      if (c.vectors) {
        copy_piece<Vec16<scalar_t>>(local, first, 1u, static_cast<int>(ctas) - 1, arrivals);
      } else {
        copy_piece<scalar_t>(local, first, 1u, static_cast<int>(ctas) - 1, arrivals);
      }
    }
  }

  // A kernel compiled for its passes runs only the launch shapes that have them (the host
  // picks it by compiled_passes; a mismatch would drop units silently). The last CTA of a
  // cluster may own fewer units, even a pass fewer: it computes that pass on copies of its last
  // row and drops the results (as lanes past the last unit do).
  SIMT_DEVICE void check_compiled_passes() const {
    if constexpr (kPasses > 0) {
      SIMT_KERNEL_CHECK((tiling.units_per_cta + tiling.units_per_pass - 1) / tiling.units_per_pass == kPasses &&
                            (!kRegisterWeights || (vectors + kUnitLanes - 1) / kUnitLanes <= kIterations) &&
                            vectors >= kWholeIterations * kUnitLanes &&
                            (!kWholeRows || vectors == kIterations * kUnitLanes) &&
                            tail_row == (kHeldTails ? row - kTailBegin : 0) &&
                            (!kSplitWeights || kHeldPasses == kPasses || tiling.units_per_pass == kUnitsPerPass),
                        "the launch shape's passes are not the kernel's kPasses");
    }
  }

  // The CTA's rows of a [rows_total,H] weight into shared memory (zero-padded); with split
  // weights only those past the register passes, the others straight into registers. All
  // threads call it.
  SIMT_DEVICE void load_weights(const scalar_t* w) {
    if constexpr (kTiledSplit) {
      if (tiling.tiled_dots != 0) {
        load_tiled_split(w, false);
        return;
      }
    }
    load_padded_rows(w, weights, place.unit_begin + kFirstSharedUnit, shared_units(), rows_total, hidden, row);
    load_register_rows(w, false);
    load_held_tails(w, false);
  }

  // The 16-byte chunks of a row that hold columns below H (`vectors` past them: zeros).
  SIMT_DEVICE __forceinline__ int hidden_vectors() const {
    return static_cast<int>((hidden + vec_size<scalar_t>() - 1) / vec_size<scalar_t>());
  }

  // The CTA's units whose weight rows are in shared memory (all but split weights' held ones).
  SIMT_DEVICE __forceinline__ int64_t shared_units() const {
    return units > kFirstSharedUnit ? units - kFirstSharedUnit : 0;
  }

  // The same for the rows of w^T, read from w itself (the backward's W_hh^T without a
  // transposed copy on the host: a launch and an [H,H] round trip per call). Consecutive
  // threads read consecutive units of one row of w, so the global loads are coalesced; the
  // strided shared-memory stores happen once per launch. All threads call it.
  SIMT_DEVICE void load_weights_transposed(const scalar_t* w) {
    if constexpr (kTiledSplit) {
      if (tiling.tiled_dots != 0) {
        load_tiled_split(w, true);
        return;
      }
    }
    const int64_t count = shared_units();
    const int64_t total = count * row;
    for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
      const int64_t k = i / count, u = place.unit_begin + kFirstSharedUnit + i % count;
      weights[(i % count) * row + k] = (k < hidden && u < hidden) ? w[k * hidden + u] : scalar_t(0);
    }
    load_register_rows(w, true);
    load_held_tails(w, true);
  }

  // kTiledSplit with the tiled dot products: the lane's chunks of its warp's tile rows into
  // registers (weight_registers[0], tiled_split_register), read from global memory once per
  // launch, and the rest of every row of the CTA into the two shared regions (row u of w, or of
  // w^T; rows past the CTA's units zero). All threads call it.
  SIMT_DEVICE void load_tiled_split(const scalar_t* w, bool transposed) {
    if constexpr (kTiledSplit) {
      const int warp = static_cast<int>(threadIdx.x) / kWarp, lane = static_cast<int>(threadIdx.x) % kWarp;
      const int h = static_cast<int>(hidden);  // (32-bit offsets, as load_register_rows)
      SIMT_UNROLL
      for (int i = 0; i < kTiledSplitTileRows; ++i) {
        const int u_local = warp * kTiledSplitTileRows + i, u = static_cast<int>(place.unit_begin) + u_local;
        const bool owned = u_local < units;
        SIMT_UNROLL
        for (int j = 0; j < kTiledSplitFirstChunks; ++j) {  // (a bound known to every compiler)
          if (j >= (i < kTiledSplitHalfRows ? kTiledSplitFirstChunks : kTiledSplitLastChunks)) break;
          Vec16<scalar_t> v{};
          SIMT_UNROLL
          for (int e = 0; e < 4; ++e) {
            const int k = (lane + j * kWarp) * 4 + e;
            if (owned && k < h) v.v[e] = w[transposed ? k * h + u : u * h + k];
          }
          weight_registers[0][tiled_split_register(i, j)] = v;
        }
      }
      const int64_t rows = (units + kTiledSplitTileRows - 1) / kTiledSplitTileRows * kTiledSplitTileRows;
      const int64_t total = rows * row;
      for (int64_t at = threadIdx.x; at < total; at += blockDim.x) {
        // (w^T: consecutive threads read consecutive units of one row of w)
        const int64_t u_local = transposed ? at % rows : at / row, k = transposed ? at / rows : at % row;
        const int i = static_cast<int>(u_local % kTiledSplitTileRows);
        scalar_t* to = tiled_split_row(u_local / kTiledSplitTileRows, i);
        const int64_t begin = i < kTiledSplitHalfRows ? kTiledSplitFirstColumn : kTiledSplitLastColumn;
        if (k < begin) continue;
        const int64_t u = place.unit_begin + u_local;
        to[k] = (u_local < units && k < hidden) ? w[transposed ? k * hidden + u : u * hidden + k] : scalar_t(0);
      }
    }
  }

  // kTiledSplit: the register of weight_registers[0] holding chunk l + 32 j of tile row i.
  static SIMT_HOST_DEVICE constexpr int tiled_split_register(int i, int j) {
    return i < kTiledSplitHalfRows ? i * kTiledSplitFirstChunks + j
                                   : kTiledSplitHalfRows * kTiledSplitFirstChunks + (i - kTiledSplitHalfRows) * kTiledSplitLastChunks + j;
  }
  // kTiledSplit: row i of tile `tile` in shared memory, addressed as the whole row would be (its
  // column k at k, for k past the row's registers; the addresses before never read).
  SIMT_DEVICE __forceinline__ scalar_t* tiled_split_row(int64_t tile, int i) const {
    constexpr int kHalf = kTiledSplitHalfRows;
    return i < kHalf ? held_tails + (tile * kHalf + i) * (row - kTiledSplitFirstColumn) - kTiledSplitFirstColumn
                     : weights + (tile * kHalf + i - kHalf) * (row - kTiledSplitLastColumn) - kTiledSplitLastColumn;
  }

  // kHeldTails: the columns from kTailBegin on of the rows held in registers (row u of w, or
  // of w^T), zero-padded, for the CTA's units among them. Once per launch; with w^T consecutive
  // threads read consecutive units of one row of w, as load_weights_transposed. All threads call it.
  SIMT_DEVICE void load_held_tails(const scalar_t* w, bool transposed) {
    if constexpr (kHeldTails) {
      const int64_t count = units < kFirstSharedUnit ? units : kFirstSharedUnit;
      const int64_t total = count * tail_row;
      for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
        const int64_t r = transposed ? i % count : i / tail_row;
        const int64_t k = kTailBegin + (transposed ? i / count : i % tail_row);
        const int64_t u = place.unit_begin + r;
        held_tails[r * tail_row + k - kTailBegin] =
            (k < hidden && u < hidden) ? w[transposed ? k * hidden + u : u * hidden + k] : scalar_t(0);
      }
    }
  }

  // Split weights: the lane's chunks of its rows in the register passes (cache_weights' share),
  // read from global memory once per launch, since shared memory has no room to stage them:
  // row u of w, or of w^T (column u of w). Else nothing.
  SIMT_DEVICE void load_register_rows(const scalar_t* w, bool transposed) {
    if constexpr (kSplitWeights) {
      constexpr int kVec = vec_size<scalar_t>();
      // 32-bit offsets (H <= 1024 here): with 64-bit ones the transposed loads' addresses took
      // more registers than the kernel has left (sm_80's backward spilled).
      const int h = static_cast<int>(hidden);
      SIMT_UNROLL
      for (int p = 0; p < kHeldPasses; ++p) {
        // (zeros past the CTA's last unit: those lanes' results are dropped)
        const int u = static_cast<int>(place.unit_begin) + role.unit_in_pass + p * units_per_pass;
        const bool owned = computes && u < place.unit_end;
        SIMT_UNROLL
        for (int it = 0; it < kHeldIterations; ++it) {
          Vec16<scalar_t> v{};
          SIMT_UNROLL
          for (int e = 0; e < kVec; ++e) {
            const int k = (role.q + it * kUnitLanes) * kVec + e;
            if (owned && k < h) v.v[e] = w[transposed ? k * h + u : u * h + k];
          }
          weight_registers[p][it] = v;
        }
      }
    }
  }

  // The weight row of this lane's unit in pass p (lanes past the last unit take a copy of the
  // last row: their warp stays whole for the shuffles, and the result is dropped).
  // With split weights, only for passes at or past kHeldPasses. A split cluster CTA may own no
  // unit there (the last CTA of a cluster, a pass fewer: H = 800 on 16 CTAs of 52 units leaves
  // the last 20), and so no row in shared memory: its lanes read the buffer's first row (state
  // rows there) and drop the results.
  SIMT_DEVICE __forceinline__ const scalar_t* weight_row(int p) const {
    const int64_t u_local = role.unit_in_pass + int64_t(p) * units_per_pass;
    const int64_t shared_row = (u_local < units ? u_local : units - 1) - kFirstSharedUnit;
    return weights + (shared_row > 0 ? shared_row : 0) * row;
  }

  // kHeldTails: the tail of this lane's row in held pass p, addressed as the whole row would be
  // (its chunk c at c * vec_size for c >= kHeldIterations * kUnitLanes; the address of column 0
  // lies in the rows before the tails, never read). Lanes past the last unit: the last row's.
  SIMT_DEVICE __forceinline__ const scalar_t* held_tail_row(int p) const {
    const int64_t u_local = role.unit_in_pass + int64_t(p) * units_per_pass;
    return held_tails + (u_local < units ? u_local : units - 1) * tail_row - kTailBegin;
  }

  // In the kernels compiled for their passes, the lane's weight chunks into registers for the
  // whole sequence (read from shared memory every step otherwise). After the barrier that
  // follows load_weights (load_stack_rows). (A split layer CTA: load_weights put them there.)
  SIMT_DEVICE void cache_weights() {
    if constexpr (kRegisterWeights && (!kSplitWeights || kStagedRows)) {
      SIMT_UNROLL
      for (int p = 0; p < kHeldPasses; ++p) {
        SIMT_UNROLL
        for (int it = 0; it < kHeldIterations; ++it) {
          const int c = role.q + it * kUnitLanes;
          Vec16<scalar_t> w{};
          if (p < kPasses && c < vectors) w = load_vec(weight_row(p) + c * vec_size<scalar_t>());
          weight_registers[p][it] = w;
        }
      }
    }
  }

  // A step's operands from global memory (each owned output's XW_t in the forward, dy_t and
  // h_t in the backward) are read ahead of the epilogue that needs them: with one chunk per
  // step, into L1 kOperandL1Steps steps ahead (simt::prefetch_l1: no register is held, so the
  // distance costs nothing) and into registers one step ahead, from L1 then; with several
  // chunks, into registers as each chunk's dot products start. A dependent load from L2 takes
  // about 0.2 us (cost::Constants::l2_dependent_load_us), more than the shortest steps (0.12 us
  // at H = 64): one step ahead alone would leave part of it exposed every step. The L1 reads
  // ahead are issued on the Block path at up to 4 samples per chunk only: the cluster and grid
  // barriers invalidate L1 (their acquire: CCTL.IVALL in the sm_90 SASS), and the planner's
  // steps on those paths, or at 8 samples, take 0.3 us or more (cost model, H100/H200), where
  // one step ahead suffices.
  static constexpr int kOperandL1Steps = 4;
  static constexpr bool kOperandsAheadInL1 = kPath == RecurrencePath::Block && kSamples <= 4;
  // The Block path's kernels can take the operands through shared memory instead (OperandRing).
  static constexpr bool kOperandRing = kPath == RecurrencePath::Block;

  // f(batch, k, b, u) for each output this lane owns in the chunk of samples starting at
  // `first`: sample b = first + first_sample + k (those past the batch left out), unit u.
  template <class F>
  SIMT_DEVICE __forceinline__ void for_each_owned_output(int64_t first, F&& f) const {
    SIMT_UNROLL
    for (int k = 0; k < kOwned; ++k) {
      const int64_t b = first + first_sample + k;
      if (b >= batch) continue;
      for_each_owned_unit([&](int pass_batch_index, int64_t u) { f(pass_batch_index, k, b, u); });
    }
  }

  // f(batch, u) for each batch in which this lane owns outputs, of unit u (the same every
  // step and chunk; the samples are first_sample + k, k < kOwned).
  template <class F>
  SIMT_DEVICE __forceinline__ void for_each_owned_unit(F&& f) const {
    if (!computes || !owns_outputs()) return;
    SIMT_UNROLL
    for (int batch = 0; batch < kBatches; ++batch) {
      const int p = batch * kBatch + owned_pass;
      const int64_t u_local = role.unit_in_pass + int64_t(p) * units_per_pass;
      if (p < passes && u_local < units) f(batch, place.unit_begin + u_local);
    }
  }

  // The step's chunks in turn: the Grid path first stages the chunk's state rows from
  // `exchange_current` ([B,H], global), the next chunk's into the other buffer while this one
  // is computed (with a tagged exchange: from `tagged_current` [B,H] once they carry `tag`,
  // or from exchange_current where tagged_current is null, each chunk's just before it is
  // computed); then body(first, current, next) with the chunk's first sample, its current
  // state rows (shared) and where the Block and Cluster paths write the next ones
  // (`current_parity` picks the buffer); on the Grid path a barrier follows each chunk (its
  // buffer is refilled two chunks later), then after_chunk(first). `clock` times the wait for
  // the staged rows and the rest. `step_arrivals`: the Cluster path's exchange by asynchronous
  // stores (StepBarrier::step_arrivals; null: plain stores before the cluster barrier).
  //
  // With one chunk per step (no next chunk to overlap) the Grid path's rows arrive in
  // kStagePieces pieces along H instead, and for_each_output starts its first batch's dot
  // products on each piece as it lands.
  template <class Body, class AfterChunk, class Clock>
  SIMT_DEVICE void for_each_chunk(const scalar_t* exchange_current, const unsigned long long* tagged_current,
                                  unsigned tag, int64_t current_parity, Body&& body, AfterChunk&& after_chunk,
                                  Clock& clock, unsigned long long* step_arrivals = nullptr) {
    const int64_t chunk_scalars = int64_t(kSamples) * row;
    if constexpr (!kStateInShared) {
      const bool staged_ahead = !tagged_exchange();  // (the tagged exchange stages each chunk in its turn, below)
      if (staged_ahead && tiling.chunks == 1) {
        for (int piece = 0; piece < kStagePieces; ++piece) {
          stage_rows_async(exchange_current, states, place.sample_begin, kSamples, batch, hidden, row,
                           piece_begin(piece), piece_begin(piece + 1));
          simt::commit_async();
        }
      } else if (staged_ahead) {
        stage_rows_async(exchange_current, states, place.sample_begin, kSamples, batch, hidden, row);
        simt::commit_async();
      }
    }
    for (int64_t chunk = 0; chunk < chunk_count(); ++chunk) {
      const int64_t first = place.sample_begin + chunk * kSamples;
      if constexpr (!kStateInShared) {
        if (tagged_exchange()) {
          scalar_t* rows = states + (chunk % 2) * chunk_scalars;
          if (tagged_current != nullptr) {
            stage_rows_tagged(tagged_current, rows, first, kSamples, batch, hidden, row, tag);
          } else {
            stage_rows(exchange_current, rows, first, kSamples, batch, hidden, row);
          }
          __syncthreads();
          clock.lap(kStagePhase);
        } else if (tiling.chunks > 1) {  // (one chunk: for_each_output waits for its pieces)
          if (chunk + 1 < tiling.chunks) {
            stage_rows_async(exchange_current, states + ((chunk + 1) % 2) * chunk_scalars, first + kSamples,
                             kSamples, batch, hidden, row);
            simt::commit_async();
            simt::wait_async<1>();  // this chunk's rows; the next chunk's may still be in flight
          } else {
            simt::wait_async<0>();
          }
          __syncthreads();
          clock.lap(kStagePhase);
        }
      }
      const scalar_t* current =
          kStateInShared ? states + current_parity * chunk_scalars : states + (chunk % 2) * chunk_scalars;
      scalar_t* next = kStateInShared ? states + (1 - current_parity) * chunk_scalars : nullptr;
      body(first, current, next);
      share_slice(next, step_arrivals);
      if constexpr (!kStateInShared) {
        __syncthreads();
        after_chunk(first);
      }
      clock.lap(kComputePhase);
    }
  }

  // Sample chunks per step: 1 wherever the state is in shared memory (tiling.chunks then is 1),
  // so that those paths' kernels compile their one-chunk code only.
  SIMT_DEVICE __forceinline__ int64_t chunk_count() const { return kStateInShared ? 1 : tiling.chunks; }

  // Whether a kernel stores a step's outputs into its global result (h_t into out, dz_s into
  // dz) after the step's barrier rather than in the epilogue, where it has one chunk per step.
  // The cluster and grid barriers release the CTA's writes (MEMBAR.ALL.GPU before the arrive in
  // the sm_90 SASS), which waits until its earlier global stores have landed; no CTA reads those
  // results during the launch, so they need not precede the barrier, and issued after it they
  // land during the next step. (The block path's __syncthreads waits for no global store.)
  static constexpr bool kStoresAfterBarrier = kPath != RecurrencePath::Block;

  // Whether this lane runs the epilogues of the totals it holds (not a copy: kCopyLanes).
  SIMT_DEVICE __forceinline__ bool owns_outputs() const { return (role.q & kCopyLanes) == 0; }

  // Grid path: the state travels in tagged words (StepSync::TaggedExchange), staged a chunk at a
  // time by for_each_chunk, not in pieces.
  SIMT_DEVICE __forceinline__ bool tagged_exchange() const {
    return !kStateInShared && tiling.step_sync == static_cast<int32_t>(StepSync::TaggedExchange);
  }

  // Pieces of a staged chunk (Grid path, one chunk per step): piece p holds the 16-byte
  // chunks [piece_begin(p), piece_begin(p + 1)) of every state row, whole chunk iterations of
  // a unit group (multiples of kUnitLanes), so that dot products split at them add up bitwise
  // as in one pass over the row.
  static constexpr int kStagePieces = 4;
  SIMT_DEVICE __forceinline__ int piece_begin(int piece) const {
    const int iterations = (vectors + kUnitLanes - 1) / kUnitLanes;
    const int begin = iterations * piece / kStagePieces * kUnitLanes;
    return begin < vectors ? begin : vectors;
  }

  // Waits until at most `pending` of this thread's copy groups are in flight.
  SIMT_DEVICE __forceinline__ static void wait_for_copies(int pending) {
    static_assert(kStagePieces == 4, "one case per piece");
    switch (pending) {
      case 0: simt::wait_async<0>(); break;
      case 1: simt::wait_async<1>(); break;
      case 2: simt::wait_async<2>(); break;
      default: simt::wait_async<3>(); break;
    }
  }

  // The chunk's unit dot products against `current`, every pass, kBatch passes at a time;
  // epilogue(batch, k, u, total) for each output this lane owns (unit u, sample
  // first_sample + k), batches in order. The caller skips samples past the batch. Every thread
  // calls it once per chunk (for_each_chunk's body): with one chunk per step on the Grid path
  // the first batch waits for the staged rows piece by piece (a barrier each), `clock` timing
  // the waits as staging. Lanes of the warps that do not compute (units_per_pass 16) only wait
  // and join those barriers. kMayTile = false: the 8-lane mapping whatever the tiling (the
  // Cluster path's layer stack, whose CTAs share this type: the tiled branch, never taken there,
  // would cost its kernels registers).
  template <bool kMayTile = true, class Epilogue, class Clock>
  SIMT_DEVICE __forceinline__ void for_each_output(const scalar_t* current, Clock& clock, Epilogue&& epilogue) const {
    if constexpr (kTiledDots && kMayTile) {
      if (tiling.tiled_dots != 0) {  // (uniform over the launch)
        for_each_tiled_output(current, clock, epilogue);
        return;
      }
    }
    if constexpr (kTiledSplit && kMayTile) {
      if (tiling.tiled_dots != 0) {  // (uniform over the launch)
        for_each_tiled_split_output(current, epilogue);
        return;
      }
    }
    const bool staged_in_pieces = !kStateInShared && tiling.chunks == 1 && !tagged_exchange();  // uniform
    SIMT_UNROLL
    for (int batch = 0; batch < kBatches; ++batch) {
      const int first_pass = batch * kBatch;
      if (first_pass >= passes) break;  // uniform over the CTA
      const int used = passes - first_pass < kBatch ? passes - first_pass : kBatch;
      scalar_t acc[kBatch][kSamples];
      if constexpr (kRegisterWeights) {  // (the Block and Cluster paths: no staging)
        if (!computes) continue;  // uniform over the warp
        const scalar_t* shared_rows[kBatch];  // (split weights: the passes past the registers')
        SIMT_UNROLL
        for (int i = 0; i < kBatch; ++i) {
          shared_rows[i] = kSplitWeights && first_pass + i >= kHeldPasses ? weight_row(first_pass + i)
                           : kHeldTails                                    ? held_tail_row(first_pass + i)
                                                                           : weights;
        }
        with_used_units<kBatch>(used, [&](auto units) {
          register_unit_dots<decltype(units)::value, kIterations, kWholeIterations, kWholeRows>(
              weight_registers, shared_rows, first_pass, current, row, kWholeRows ? hidden_vectors() : vectors, role.q,
              acc);
        });
      } else {
        const scalar_t* rows[kBatch];
        SIMT_UNROLL
        for (int i = 0; i < kBatch; ++i) rows[i] = weight_row(first_pass + i);
        if (staged_in_pieces && batch == 0) {
          zero_tile(acc);
          for (int piece = 0; piece < kStagePieces; ++piece) {
            clock.lap(kComputePhase);
            wait_for_copies(kStagePieces - 1 - piece);
            __syncthreads();
            clock.lap(kStagePhase);
            if (computes) {
              with_used_units<kBatch>(used, [&](auto units) {
                add_unit_dots<decltype(units)::value>(rows, current, row, piece_begin(piece), piece_begin(piece + 1),
                                                      role.q, acc);
              });
            }
          }
        } else if (computes) {
          with_used_units<kBatch>(used, [&](auto units) {
            unit_dots<decltype(units)::value>(rows, current, row, vectors, role.q, acc);
          });
        }
        if (!computes) continue;  // uniform over the warp
      }
      reduce_scatter_tile(acc, role.q);
      const int64_t u_local = role.unit_in_pass + int64_t(first_pass + owned_pass) * units_per_pass;
      if (owned_pass < used && u_local < units && owns_outputs()) {
        SIMT_UNROLL
        for (int k = 0; k < kOwned; ++k) epilogue(batch, k, place.unit_begin + u_local, acc[0][k]);
      }
    }
  }

  // for_each_output with the tiled dot products (kernel_common.cuh add_tile_dots): warp w
  // computes the tiles w, w + 8, ... of kTileUnits units x kSamples samples (all 8 warps, whatever
  // units_per_pass), each lane's total into tile_totals; after a barrier the lanes that own
  // outputs in the 8-lane mapping run the same epilogues in the same order as for_each_output.
  // With one chunk per step staged in pieces, the first round of tiles waits for each piece and
  // takes its columns as it lands (a lane's chunks keep their order: the sums are those of one
  // pass). Every thread calls it once per chunk.
  template <class Epilogue, class Clock>
  SIMT_DEVICE __forceinline__ void for_each_tiled_output(const scalar_t* current, Clock& clock,
                                                         Epilogue&& epilogue) const {
    constexpr int kWarps = kRecurrenceThreads / kWarp;
    const int warp = static_cast<int>(threadIdx.x) / kWarp, lane = static_cast<int>(threadIdx.x) % kWarp;
    const int64_t tiles = (units + kTileUnits - 1) / kTileUnits;
    const bool staged_in_pieces = !kStateInShared && tiling.chunks == 1 && !tagged_exchange();  // uniform
    for (int64_t round = 0; round * kWarps < tiles; ++round) {  // (uniform over the CTA)
      const int64_t tile = round * kWarps + warp;
      const bool computes_tile = tile < tiles;  // uniform over the warp
      const scalar_t* rows[kTileUnits];
      SIMT_UNROLL
      for (int i = 0; i < kTileUnits; ++i) {  // (units past the CTA's last: a copy of its last row, dropped)
        const int64_t u = tile * kTileUnits + i;
        rows[i] = weights + (u < units ? u : units - 1) * row;
      }
      scalar_t acc[kTileUnits][kSamples];
      zero_tile(acc);
      if (staged_in_pieces && round == 0) {
        for (int piece = 0; piece < kStagePieces; ++piece) {
          clock.lap(kComputePhase);
          wait_for_copies(kStagePieces - 1 - piece);
          __syncthreads();
          clock.lap(kStagePhase);
          if (computes_tile) add_tile_dots(rows, current, row, piece_begin(piece), piece_begin(piece + 1), lane, acc);
        }
      } else if (computes_tile) {
        add_tile_dots(rows, current, row, 0, vectors, lane, acc);
      }
      if (computes_tile) tile_totals[tile * kTileValues + lane] = reduce_scatter_warp_tile(acc, lane);
    }
    __syncthreads();  // every tile's totals
    run_tiled_epilogues(epilogue);
  }

  // After the tiles' totals are in tile_totals (and a barrier): the epilogues of the lanes that
  // own outputs in the 8-lane mapping, in its order (for_each_output's).
  template <class Epilogue>
  SIMT_DEVICE __forceinline__ void run_tiled_epilogues(Epilogue&& epilogue) const {
    SIMT_UNROLL
    for (int batch = 0; batch < kBatches; ++batch) {
      const int first_pass = batch * kBatch;
      if (first_pass >= passes) break;  // uniform over the CTA
      const int used = passes - first_pass < kBatch ? passes - first_pass : kBatch;
      const int64_t u_local = role.unit_in_pass + int64_t(first_pass + owned_pass) * units_per_pass;
      if (computes && owned_pass < used && u_local < units && owns_outputs()) {
        SIMT_UNROLL
        for (int k = 0; k < kOwned; ++k) {
          epilogue(batch, k, place.unit_begin + u_local, tile_totals[u_local * kSamples + first_sample + k]);
        }
      }
    }
  }

  // for_each_tiled_output for kTiledSplit: warp w's tile is the CTA's units 8w .. 8w + 7 (one
  // round: 64 units at most), lane l adds chunks l, l + 32, ... of each tile row, from its
  // registers or from shared memory (tiled_split_row), in the order of add_tile_dots, so the
  // sums are the other tiled paths' bit for bit. Every thread calls it once per step.
  template <class Epilogue>
  SIMT_DEVICE __forceinline__ void for_each_tiled_split_output(const scalar_t* current, Epilogue&& epilogue) const {
    if constexpr (kTiledSplit) {
      constexpr int kRows = kTiledSplitTileRows;
      constexpr int kChunkRounds = kIterations * kUnitLanes / kWarp;  // 8: the rows' chunks over 32 lanes
      const int warp = static_cast<int>(threadIdx.x) / kWarp, lane = static_cast<int>(threadIdx.x) % kWarp;
      if (int64_t(warp) * kRows < units) {  // (uniform over the warp)
        scalar_t acc[kRows][kSamples];
        zero_tile(acc);
        const scalar_t* rows[kRows];
        SIMT_UNROLL
        for (int i = 0; i < kRows; ++i) rows[i] = tiled_split_row(warp, i);
        SIMT_UNROLL
        for (int j = 0; j < kChunkRounds; ++j) {
          const int c = lane + j * kWarp;
          Vec16<scalar_t> h[kSamples];
          load_state_chunks(current, row, c, h);
          SIMT_UNROLL
          for (int i = 0; i < kRows; ++i) {
            const bool held = j < (i < kTiledSplitHalfRows ? kTiledSplitFirstChunks : kTiledSplitLastChunks);
            accumulate_chunk(held ? weight_registers[0][tiled_split_register(i, held ? j : 0)]
                                  : load_vec(rows[i] + c * vec_size<scalar_t>()),
                             h, acc[i]);
          }
        }
        tile_totals[warp * kTileValues + lane] = reduce_scatter_warp_tile(acc, lane);
      }
      __syncthreads();  // every tile's totals
      run_tiled_epilogues(epilogue);
    }
  }

  // v[k] (this lane's sums for sample first_sample + k; zero on a copy lane) summed over the
  // lanes of its unit group that own the same samples in other passes, by a butterfly over
  // their lane bits (fixed pairing: bitwise reproducible); every such lane gets the totals, and
  // the lanes that hold one copy of each sample's are those for which holds_sample_sums().
  // All lanes of the warp must call it.
  SIMT_DEVICE __forceinline__ void sum_over_unit_group(double (&v)[kOwned]) const {
    SIMT_UNROLL
    for (int bit = kUnitLanes / 2; bit >= 1; bit /= 2) {
      if ((bit & kSampleBits) != 0) continue;
      SIMT_UNROLL
      for (int k = 0; k < kOwned; ++k) v[k] += __shfl_xor_sync(kFullMask, v[k], bit);
    }
  }
  SIMT_DEVICE __forceinline__ bool holds_sample_sums() const { return (role.q & ~kSampleBits) == 0; }
};

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
