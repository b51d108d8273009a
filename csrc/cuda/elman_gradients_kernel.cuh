// The whole-sequence gradients of a short layer's backward in one launch: what the host layer
// otherwise makes with three to five ATen launches after the recurrence (elman_gemms.h
// whole_sequence_gemms: dX = dz W_ih, h_0's gradient dz_first W_hh, dW_ih = dz^T x,
// dW_hh = sum_t dz_t^T h_{t-1}, the biases' sum of dz). At a short layer each of those is a few
// microseconds of GPU work behind several microseconds of the host's time per launch, so one
// launch instead shortens a host-bound backward (cost::kernel_makes_gradients decides where:
// T B <= 64 rows and a small kernel).
//
// One thread per output element (grid-stride), its sum in a fixed order with fused
// multiply-adds in float64, rounded once to float32: bitwise reproducible run to run, whatever
// the grid, and the same bits in emulation as on a GPU. (In float32, a sum in order of the rows
// rounded worse than the GEMMs' blocked sums where its terms cancel, as a hidden size of 1's
// gradients do. A product of two floats is exact in float64, and the sum's error, under 2^-43 of
// the terms' magnitudes, is far below a float's rounding but for terms that cancel by more than
// 2^19.) Consecutive threads take consecutive columns of one output row, so each term's loads
// are a coalesced row of the column operand and a broadcast element of dz. Float32 only (the
// compute dtype of float32, bfloat16 and float16 layers); the host rounds to the result dtype.
#pragma once

#include <cmath>
#include <cstdint>

#include "recurrence_math.h"
#include "simt/simt.cuh"

namespace rnn_fused::kernels {

// The products' operands and results (row r = t B + b of a [T,B,*] tensor viewed as [T B, *]).
struct ShortGradientArgs {
  const float* dz;        // [T,B,H] read: dz at every step (zero past each sample's length)
  const float* dz_first;  // [B,H]   read: dz at each sample's first processing step
  const float* x;         // [T,B,I] read: the layer's input
  const float* out;       // [T,B,H] read: the saved h_t (zero past each sample's length)
  const float* hx;        // [B,H]   read: h_0, or null (zeros: no h_0 term in dW_hh)
  const float* w_ih;      // [H,I]   read
  const float* w_hh;      // [H,H]   read
  const float* dh_n;      // [B,H]   read: h_n's gradient, or null (zero); an empty sample's grad_hx
  const int64_t* lengths; // [B]     read: valid steps per sample, or null (all T)
  LayerShape shape;       // T, B, I, H
  bool reverse;           // the layer runs from t = T - 1 down: h_{t-1} in processing order is out[t + 1]
  float* grad_x;          // [T,B,I] written, or null (not asked)
  float* grad_hx;         // [B,H]   written, or null
  float* grad_w_ih;       // [H,I]   written, or null
  float* grad_w_hh;       // [H,H]   written, or null
  float* grad_bias;       // [2,H]   written (both rows the same sum), or null
};

SIMT_BEGIN_WORLD

inline constexpr int kShortGradientThreads = 256;  // cost::kGradientKernelThreads prices it

// sum + sum_k a[k a_stride] b[k b_stride] over k < count, by float64 fused multiply-adds in order
// of k.
SIMT_DEVICE __forceinline__ double strided_dot(int64_t count, const float* a, int64_t a_stride, const float* b,
                                               int64_t b_stride, double sum = 0.0) {
  for (int64_t k = 0; k < count; ++k) sum = fma(double(a[k * a_stride]), double(b[k * b_stride]), sum);
  return sum;
}

// Grid: any number of CTAs of kShortGradientThreads threads (the host: one output per thread);
// no shared memory, no barrier.
SIMT_GLOBAL void SIMT_LAUNCH_BOUNDS(kShortGradientThreads) short_gradients_kernel(ShortGradientArgs a) {
  const int64_t T = a.shape.steps, B = a.shape.batch, H = a.shape.hidden, I = a.shape.input_size, rows = T * B;
  const int64_t total = whole_sequence_gradient_outputs(a.shape, a.grad_x != nullptr, a.grad_hx != nullptr,
                                                       a.grad_w_ih != nullptr, a.grad_w_hh != nullptr,
                                                       a.grad_bias != nullptr);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t at = i;  // the output's index within the result it falls in
    // Whether output `at` is one of `result`'s `count` (asked for: not null); else at moves past them.
    const auto falls_in = [&at](const float* result, int64_t count) {
      if (result == nullptr) return false;
      if (at < count) return true;
      at -= count;
      return false;
    };
    if (falls_in(a.grad_x, rows * I)) {  // dX[r, c] = sum_u dz[r, u] W_ih[u, c]
      a.grad_x[at] = float(strided_dot(H, a.dz + at / I * H, 1, a.w_ih + at % I, I));
    } else if (falls_in(a.grad_hx, B * H)) {
      // h_0's gradient: dz_first[b] W_hh; an empty sample's is h_n's (its h_n is h_0)
      const int64_t b = at / H, c = at % H;
      const bool empty = a.lengths != nullptr && a.lengths[b] == 0;
      a.grad_hx[at] = !empty ? float(strided_dot(H, a.dz_first + b * H, 1, a.w_hh + c, H))
                             : a.dh_n != nullptr ? a.dh_n[at] : 0.0f;
    } else if (falls_in(a.grad_w_ih, H * I)) {  // dW_ih[u, c] = sum_r dz[r, u] x[r, c]
      a.grad_w_ih[at] = float(strided_dot(rows, a.dz + at / I, H, a.x + at % I, I));
    } else if (falls_in(a.grad_w_hh, H * H)) {
      // dW_hh[u, c] = sum_b dz_first[b, u] h_0[b, c] (with hx), then the sum over the processing
      // steps after the first of dz_t[b, u] h_{t-1}[b, c], h_{t-1} the neighbouring output in
      // processing order (zero past a sample's end, so those pairs add nothing).
      const int64_t u = at / H, c = at % H;
      const double first = a.hx != nullptr ? strided_dot(B, a.dz_first + u, H, a.hx + c, H) : 0.0;
      const int64_t dz_from = a.reverse ? 0 : B, h_from = a.reverse ? B : 0;
      a.grad_w_hh[at] = float(strided_dot(rows - B, a.dz + dz_from * H + u, H, a.out + h_from * H + c, H, first));
    } else {  // the biases' gradient: sum_r dz[r, u], in both rows
      double sum = 0.0;
      for (int64_t r = 0; r < rows; ++r) sum += double(a.dz[r * H + at]);
      a.grad_bias[at] = float(sum);
      a.grad_bias[H + at] = float(sum);
    }
  }
}

SIMT_END_WORLD
}  // namespace rnn_fused::kernels
