// What the persistent recurrence kernels of the three on-chip paths share: where a CTA sits
// (its sample group and its slice of the hidden units), its shared-memory layout, the loads
// before the time loop, and how a step's new state reaches every CTA that needs it.
//
// Paths (host_layer.h picks one per call; csrc/cuda/recurrence_planner.h says when):
//  - Block:   one CTA per sample group holds all of W_hh; the state is exchanged in its own
//             shared memory; one __syncthreads per step.
//  - Cluster: a thread-block cluster of C CTAs per sample group, each holding a slice of
//             W_hh's rows; each CTA writes its new state slice into every CTA's shared memory
//             through distributed shared memory; one cluster barrier per step.
//  - Grid:    a cooperative grid of groups x C CTAs; new state slices go through a global
//             buffer [2,B,H]; after the grid barrier each CTA stages its group's state rows
//             into shared memory with 16-byte loads.
// The fourth path, Stepwise (a cuBLAS product and an epilogue launch per step), has no
// persistent kernel and shares only the epilogue arithmetic.
#pragma once

#include <cstdint>

#include "cuda/kernel_common.cuh"

namespace rnn_fused::kernels {

enum class RecurrencePath : int32_t { Block = 0, Cluster = 1, Grid = 2, Stepwise = 3 };

// The launch shape the planner chose; the same for the forward and backward kernels.
struct RecurrenceTiling {
  int32_t samples = 1;         // S: samples per chunk, the kernel's kSamples (1, 2, 4 or 8)
  int32_t chunks = 1;          // sample chunks of S a CTA computes in turn each step (Grid path; else 1)
  int32_t groups = 1;          // sample groups of S * chunks samples: ceil(B / (S * chunks))
  int32_t ctas_per_group = 1;  // C: CTAs that split a group's hidden units
  int32_t units_per_cta = 0;   // U: hidden units per CTA (the last CTA of a group may own fewer)
};

SIMT_BEGIN_WORLD

// The CTA's sample group and its rank among the group's CTAs (block index = group * C + rank).
struct CtaPlace {
  int64_t group;
  int64_t rank;
  int64_t unit_begin, unit_end;  // the CTA's hidden units [unit_begin, unit_end)
  int64_t sample_begin;          // the group's first sample
};

SIMT_DEVICE __forceinline__ CtaPlace cta_place(const RecurrenceTiling& tiling, int64_t hidden) {
  const int64_t block = blockIdx.x;
  const int64_t group = block / tiling.ctas_per_group, rank = block % tiling.ctas_per_group;
  const int64_t begin = rank * tiling.units_per_cta;
  const int64_t end = begin + tiling.units_per_cta < hidden ? begin + tiling.units_per_cta : hidden;
  return {group, rank, begin, end, group * int64_t(tiling.samples) * tiling.chunks};
}

// The paths that keep the whole state of a group in each CTA's shared memory (two buffers,
// current and next step); the Grid path stages one chunk of rows at a time from global memory.
constexpr bool state_in_shared(RecurrencePath p) { return p != RecurrencePath::Grid; }

// Dynamic shared memory of a persistent kernel, in scalars of the compute type:
//   weights [U][R]      the CTA's rows of W_hh (forward) or of W_hh^T (backward), zero-padded
//   states  [n][S][R]   state rows: n = 2 (current and next step) on the Block and Cluster
//                       paths, 1 (the chunk being computed) on the Grid path
// with R = padded_row(H); then, for the backward with norms recorded, in doubles:
//   unit_sums [2][kUnitsPerPass][S]  per phase parity, unit group and sample: sum of g^2
//   cta_sums  [3][C][S]              Cluster path: the group's CTA sums, gathered in rank 0
template <typename scalar_t>
struct SharedLayout {
  int64_t row;                // R
  int64_t weights;            // offsets in scalars
  int64_t states;
  int64_t unit_sums_offset;   // byte offsets of the double arrays (16-byte aligned)
  int64_t cta_sums_offset;
  int64_t bytes;              // total

  SIMT_HOST_DEVICE static SharedLayout make(int64_t hidden, const RecurrenceTiling& t, RecurrencePath path,
                                            bool with_norms) {
    SharedLayout l{};
    l.row = padded_row(hidden, vec_size<scalar_t>());
    l.weights = 0;
    l.states = int64_t(t.units_per_cta) * l.row;
    const int64_t buffers = state_in_shared(path) ? 2 : 1;
    const int64_t scalar_bytes = (l.states + buffers * int64_t(t.samples) * l.row) * int64_t(sizeof(scalar_t));
    l.unit_sums_offset = (scalar_bytes + 15) / 16 * 16;
    const int64_t unit_sums = with_norms ? 2 * int64_t(kUnitsPerPass) * t.samples : 0;
    l.cta_sums_offset = l.unit_sums_offset + unit_sums * int64_t(sizeof(double));
    const int64_t cta_sums = with_norms && path == RecurrencePath::Cluster ? 3 * int64_t(t.ctas_per_group) * t.samples : 0;
    l.bytes = l.cta_sums_offset + cta_sums * int64_t(sizeof(double));
    return l;
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

// Grid path: rows [S][R] (shared) = rows [first, first + S) of the global state [B,H] (zero
// past B; the zero padding past H is left as it is). 16-byte loads where H is a whole number
// of vectors. All threads call it; a __syncthreads must follow before the rows are read.
template <typename scalar_t>
SIMT_DEVICE void stage_rows(const scalar_t* exchange, scalar_t* rows, int64_t first, int samples, int64_t batch,
                            int64_t hidden, int64_t row) {
  constexpr int kVec = vec_size<scalar_t>();
  if (hidden % kVec == 0) {
    const int64_t vectors = hidden / kVec;
    for (int64_t i = threadIdx.x; i < samples * vectors; i += blockDim.x) {
      const int64_t j = i / vectors, c = i % vectors;
      Vec16<scalar_t> v{};
      if (first + j < batch) v = load_vec(exchange + (first + j) * hidden + c * kVec);
      *reinterpret_cast<Vec16<scalar_t>*>(rows + j * row + c * kVec) = v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < samples * hidden; i += blockDim.x) {
      const int64_t j = i / hidden, k = i % hidden;
      rows[j * row + k] = first + j < batch ? exchange[(first + j) * hidden + k] : scalar_t(0);
    }
  }
}

// The new state (h, or dz in the backward) of (sample b, row j of its chunk, unit u) reaches
// every CTA of the group that reads it next step: its own next buffer (Block), the next
// buffer of each of the cluster's CTAs through distributed shared memory (Cluster), or the
// global buffer of the next step (Grid).
template <RecurrencePath kPath, typename scalar_t>
SIMT_DEVICE __forceinline__ void publish_state(scalar_t* next_rows, scalar_t* exchange_next, int64_t j, int64_t b,
                                               int64_t u, int64_t row, int64_t hidden, int64_t cluster,
                                               scalar_t value) {
  if constexpr (kPath == RecurrencePath::Grid) {
    exchange_next[b * hidden + u] = value;
  } else if constexpr (kPath == RecurrencePath::Cluster) {
    for (int64_t rank = 0; rank < cluster; ++rank) {
      simt::cluster_map_shared(next_rows, static_cast<unsigned>(rank))[j * row + u] = value;
    }
  } else {
    next_rows[j * row + u] = value;
  }
}

// The barrier that ends a step: the whole new state is where every CTA reads it.
template <RecurrencePath kPath>
SIMT_DEVICE __forceinline__ void end_step() {
  if constexpr (kPath == RecurrencePath::Grid) {
    simt::grid_sync();
  } else if constexpr (kPath == RecurrencePath::Cluster) {
    simt::cluster_sync();
  } else {
    __syncthreads();
  }
}

// After each CTA loaded its state buffers: on the Cluster path no CTA may write into a peer's
// buffers before the peer initialised them.
template <RecurrencePath kPath>
SIMT_DEVICE __forceinline__ void start_exchange() {
  if constexpr (kPath == RecurrencePath::Cluster) simt::cluster_sync();
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
