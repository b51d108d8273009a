// How the host layer splits dW_hh = sum_t dz_t^T h_{t-1} into chunk products
// (elman_gemms.h sum_of_outer_products), and so how many launches it makes on a GPU
// (cuda/recurrence_cost_model.h dw_hh_launches): one home for both. Plain C++, no ATen.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace rnn_fused {

// S steps of B rows of a [S,B,H] pair summed into [H,H]:
//   steps_per_chunk: the steps of one chunk product (steps_per_chunk * B rows);
//   full: the chunks of steps_per_chunk steps (the S - full * steps_per_chunk steps left are
//         one product more);
//   group: full chunks per batched product (> 1), or 0: one product and one add per chunk.
struct OuterProductChunks {
  int64_t steps_per_chunk = 1, full = 0, group = 0;
};

// The ATen calls (kernel launches on a GPU) sum_of_outer_products makes for `c`: per batched
// product a bmm and a sum, an add for each after the first, and a product and an add for
// the steps left; unbatched, a product per chunk and an add for each after the first.
inline int64_t outer_product_launches(const OuterProductChunks& c, int64_t S) {
  if (S <= 0) return 0;
  const bool rest = c.full * c.steps_per_chunk < S;
  if (c.group > 1) {
    const int64_t groups = (c.full + c.group - 1) / c.group;
    return 2 * groups + (groups - 1) + (rest ? 2 : 0);
  }
  const int64_t chunks = c.full + (rest ? 1 : 0);
  return 2 * chunks - 1;
}

// Chunks of `steps` steps, batched: a batched product's [group,H,H] partials stay within the
// memory of one [S,B,H] operand (group 0 where not two chunks fit).
inline OuterProductChunks batched_chunks(int64_t S, int64_t B, int64_t H, int64_t steps) {
  OuterProductChunks c;
  c.steps_per_chunk = steps;
  c.full = S / steps;
  c.group = std::min(c.full, S * B / H);
  if (c.group < 2) c.group = 0;
  return c;
}

// About sqrt(S) chunks of about sqrt(S) steps (the chunks the first kernels had; unbatched, a
// product and an add each).
inline int64_t sqrt_chunk_steps(int64_t S) {
  const int64_t chunks = std::max<int64_t>(1, std::lround(std::sqrt(double(S))));
  return (S + chunks - 1) / chunks;
}

// A sum of at most this many rows is one product. Chunks would cost a launch per product and
// per add on a GPU (3 chunks, 5 launches, at T = 11, B = 3: the backward's host time there) and
// a BLAS call and an add each on the CPU (the sum alone took 28.8-112 us at 30-64 rows in 3-8
// chunks, 17.5-27.4 us in one product, on the 2-core development CPU), against a rounding error
// that stays small at this length: simulated in float32 (benchmarks/dw_hh_chunk_error.py),
// 1.0-1.5e-7 for one product of 30-64 rows against 0.75-0.9e-7 for the chunks (cuDNN's worst
// relative error at T = 11, B = 3, H = 48 measured 5.1e-6 on the H200).
inline constexpr int64_t kOneProductRows = 64;

// A product sums its rows in one chain and the chunks' partials are summed in another, so the
// rounding error grows with the longer of the two. Chunks of sqrt(S) steps make a chain of
// sqrt(S) * B rows: at T = 1000, B = 32 the H200 measured the worst error 1.7x the first
// kernels' (which made one product per chunk, each of which cuBLAS may split along K), and a
// float32 simulation of the two chains puts dW_hh's error there (docs/benchmarks.md).
// Batched (the GPU kernels' backends, and the CPU at small H), the chunks are the shortest
// from the balanced sqrt(S / B) steps
// (sqrt(S * B) rows, as many chunks) up to sqrt(S) that make no more launches than chunks of
// sqrt(S) steps would. Unbatched, or where not two chunks fit: sqrt(S) steps. At most
// kOneProductRows rows: one product.
inline OuterProductChunks outer_product_chunks(int64_t S, int64_t B, int64_t H, bool batched) {
  OuterProductChunks c;
  if (S <= 0 || B <= 0 || H <= 0) return c;
  if (S * B <= kOneProductRows) {
    c.steps_per_chunk = S;
    c.full = 1;
    return c;
  }
  const int64_t sqrt_steps = sqrt_chunk_steps(S);
  if (batched) {
    const OuterProductChunks wide = batched_chunks(S, B, H, sqrt_steps);
    if (wide.group > 1) {
      const int64_t launches = outer_product_launches(wide, S);
      const int64_t balanced = std::max<int64_t>(1, std::lround(std::sqrt(double(S) / double(B))));
      for (int64_t steps = std::min(balanced, sqrt_steps); steps < sqrt_steps; ++steps) {
        const OuterProductChunks narrow = batched_chunks(S, B, H, steps);
        if (narrow.group > 1 && outer_product_launches(narrow, S) <= launches) return narrow;
      }
      return wide;
    }
  }
  c.steps_per_chunk = sqrt_steps;
  c.full = S / sqrt_steps;
  return c;
}

}  // namespace rnn_fused
