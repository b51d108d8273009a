// Device helpers shared by the recurrence kernels of every path (block, cluster, grid,
// stepwise): the thread mapping, 16-byte vector loads from shared memory, the per-unit dot
// products against the state rows, the 8-lane reduce-scatter, and the activation.
// Compiled by nvcc (CUDA) and by g++ (SIMT emulation; docs/simt.md).
//
// Thread mapping of a CTA (kRecurrenceThreads threads): 8 consecutive lanes ("a unit
// group") share one hidden unit u and split its dot products over k: lane q of the group
// takes the 16-byte chunks q, q + 8, q + 16, ... of the weight row and of every state row.
// A warp therefore covers 4 units, a CTA 32 units per pass; a CTA owning more units has
// several passes. Each lane keeps a register tile of accumulators, kPassBatch passes (units)
// x kSamples samples: every state chunk loaded from shared memory feeds kPassBatch units and
// every weight chunk kSamples samples, and the passes of a batch are independent, so their
// multiply-add chains, reduce-scatters and epilogues overlap instead of running one after
// the other (one CTA per SM leaves 2 warps per scheduler: latency is hidden by this
// instruction-level parallelism, not by other warps). The group's 8 partial sums of a unit
// are combined by a reduce-scatter over the lane bits that leaves each sample's total in one
// lane: the epilogues of a unit's samples run on different lanes side by side.
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
// Passes computed together: a tile of at most 16 accumulators per lane (8 units at 1 sample,
// 4 at 4, 2 at 8).
SIMT_HOST_DEVICE constexpr int pass_batch(int samples) { return 16 / samples < kMaxPasses ? 16 / samples : kMaxPasses; }
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
  int unit_in_pass;  // 0 .. kUnitsPerPass-1: the unit group
  int q;             // 0 .. 7: lane in the unit group, its k chunks
};

SIMT_DEVICE __forceinline__ LaneRole lane_role() {
  const int t = static_cast<int>(threadIdx.x);
  return {t / kUnitLanes, t % kUnitLanes};
}

// acc[i][j] = sum over the lane's k chunks of w_rows[i][k] * states[j * row_stride + k], for
// the first `used` rows (the rest are left at zero) and the kSamples state rows. Rows in
// shared memory, 16-byte aligned, padded with zeros to `chunks` whole chunks. Each
// accumulator takes its chunks in order, so the result is the same on every run and does not
// depend on kUnits. `used` must be uniform over the warp.
template <typename scalar_t, int kUnits, int kSamples>
SIMT_DEVICE __forceinline__ void unit_dots(const scalar_t* const (&w_rows)[kUnits], int used, const scalar_t* states,
                                           int64_t row_stride, int chunks, int q, scalar_t (&acc)[kUnits][kSamples]) {
  constexpr int kVec = vec_size<scalar_t>();
  SIMT_UNROLL
  for (int i = 0; i < kUnits; ++i) {
    SIMT_UNROLL
    for (int j = 0; j < kSamples; ++j) acc[i][j] = scalar_t(0);
  }
  for (int c = q; c < chunks; c += kUnitLanes) {
    Vec16<scalar_t> h[kSamples];
    SIMT_UNROLL
    for (int j = 0; j < kSamples; ++j) h[j] = load_vec(states + j * row_stride + c * kVec);
    SIMT_UNROLL
    for (int i = 0; i < kUnits; ++i) {
      if (i < used) {
        const Vec16<scalar_t> w = load_vec(w_rows[i] + c * kVec);
        SIMT_UNROLL
        for (int j = 0; j < kSamples; ++j) {
          SIMT_UNROLL
          for (int e = 0; e < kVec; ++e) acc[i][j] += w.v[e] * h[j].v[e];
        }
      }
    }
  }
}

// The 8 lanes of a unit group hold partial sums acc[0..kSamples) of the same kSamples
// outputs. Reduce-scatter over lane bits 4, 2, 1: while a lane holds more than one value it
// keeps half of them (the upper half if its bit is set), adds the partner's copy of that
// half, and sends the other half; once it holds one value the remaining bits are summed as a
// butterfly. Afterwards acc[0] of lane q is the total of sample owned_sample(q); kSamples <= 8.
// Fixed pairing and order: bitwise reproducible. Every lane of the warp must call it.
template <typename scalar_t, int kSamples>
SIMT_DEVICE __forceinline__ void reduce_scatter_unit(scalar_t (&acc)[kSamples], int q) {
  static_assert(kSamples == 1 || kSamples == 2 || kSamples == 4 || kSamples == 8, "kSamples: 1, 2, 4 or 8");
  SIMT_UNROLL
  for (int level = 0; level < 3; ++level) {
    const int bit = kUnitLanes >> (level + 1);  // 4, 2, 1
    const int held = kSamples >> level;         // values held before this level (when >= 2)
    if (held >= 2) {
      const bool upper = (q & bit) != 0;
      SIMT_UNROLL
      for (int i = 0; i < kSamples / 2; ++i) {
        if (i < held / 2) {
          const scalar_t send = upper ? acc[i] : acc[i + held / 2];
          const scalar_t keep = upper ? acc[i + held / 2] : acc[i];
          acc[i] = keep + __shfl_xor_sync(kFullMask, send, bit);
        }
      }
    } else {
      acc[0] += __shfl_xor_sync(kFullMask, acc[0], bit);
    }
  }
}

// The sample whose total lane q holds after reduce_scatter_unit, and whether q is the one
// lane that owns it (the others hold copies).
template <int kSamples>
SIMT_HOST_DEVICE constexpr int owned_sample(int q) {
  // Halving levels consume lane bits 4, 2, 1 in turn while more than one value is held.
  int sample = 0;
  int held = kSamples;
  for (int bit = 4; bit >= 1 && held >= 2; bit >>= 1) {
    held /= 2;
    if (q & bit) sample += held;
  }
  return sample;
}

template <int kSamples>
SIMT_HOST_DEVICE constexpr bool owns_sample(int q) {
  // Bits not used for halving must be 0: kSamples = 8 uses bits 4,2,1; 4 uses 4,2; 2 uses 4.
  const int halving_bits = kSamples == 8 ? 7 : kSamples == 4 ? 6 : kSamples == 2 ? 4 : 0;
  return (q & ~halving_bits) == 0;
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
