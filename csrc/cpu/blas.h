// Direct BLAS for the per-step matrix products of the CPU time loops.
//
// libtorch_cpu exports the Fortran BLAS symbols of the BLAS it links (MKL on x86
// wheels). They are declared weak: a torch build without them falls back to
// at::mm_out, which is correct but pays a dispatcher call per step.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>

#include "cpu/activation.h"  // RNN_FUSED_SIMD_CLONES

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL: thread count for BLAS calls made by the calling thread; returns the previous value.
int MKL_Set_Num_Threads_Local(int threads) __attribute__((weak));
}

namespace rnn_fused::cpu {

// While alive, BLAS calls from this thread run single-threaded (where the BLAS allows it):
// the time loops' threads each multiply their own slice of a step (step_team.h), where a BLAS
// that split each step's product over threads would fork and join once per step.
class SingleThreadedBlas {
 public:
  // on_calling_thread: the thread that called the op, not a worker of its OpenMP team.
  explicit SingleThreadedBlas(bool on_calling_thread) : active_(MKL_Set_Num_Threads_Local != nullptr) {
    // ATen sizes a thread's OpenMP team at the thread's first parallel region, from MKL's
    // thread count where torch.set_num_threads was never called: first reached in this scope
    // (the loop's parallel_for), it sized the team to 1 for the rest of the thread's life. Not
    // on a team's worker: there it would set the worker's MKL count to torch's for good.
    if (on_calling_thread) at::internal::lazy_init_num_threads();
    if (active_) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (active_) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  bool active_;
  int previous_ = 0;
};

inline bool have_direct_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// y[n] = x[k] @ w[k,n] for one row, w's rows ldw apart: n-wide multiply-adds over the rows of
// w, whose n independent accumulators vectorize. About twice as fast as a BLAS call at the
// hidden sizes of this loop, where the call's fixed cost dominates. Each y[j] is the same sum
// in the same order whatever n and the offset of w (a slice of a wider matrix).
template <typename scalar_t>
inline void vector_matrix_body(const scalar_t* __restrict x, const scalar_t* __restrict w,
                               scalar_t* __restrict y, int64_t k, int64_t n, int64_t ldw) {
  std::fill_n(y, n, scalar_t(0));
  for (int64_t i = 0; i < k; ++i) {
    const scalar_t xi = x[i];
    const scalar_t* __restrict wi = w + i * ldw;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] += xi * wi[j];
  }
}

RNN_FUSED_SIMD_CLONES inline void vector_matrix(const float* x, const float* w, float* y, int64_t k, int64_t n,
                                                int64_t ldw) {
  vector_matrix_body(x, w, y, k, n, ldw);
}
RNN_FUSED_SIMD_CLONES inline void vector_matrix(const double* x, const double* w, double* y, int64_t k,
                                                int64_t n, int64_t ldw) {
  vector_matrix_body(x, w, y, k, n, ldw);
}

// Row-major c[rows,n] = a[rows,k] @ op(w), c's rows ldc apart: w is [k,n] (op = identity) or,
// with w_transposed, [n,k] (op = transpose: a weight [out, in] as stored, as nn.Linear
// multiplies it), its rows ldw apart, so that n columns of a wider matrix can be taken. BLAS is
// column-major, so it computes c^T = op(w)^T a^T, seeing each row-major matrix as its
// transpose. One home for the call and its fallback.
template <typename scalar_t>
inline void blas_rows_product(const scalar_t* a, const scalar_t* w, bool w_transposed, int64_t ldw, scalar_t* c,
                              int64_t ldc, int64_t rows, int64_t n, int64_t k) {
  if (have_direct_blas()) {
    const char transa = w_transposed ? 'T' : 'N', no_transpose = 'N';
    const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
    const int lda = static_cast<int>(ldw), ldb = k_, ldc_ = static_cast<int>(ldc);
    const scalar_t one = 1, zero = 0;
    if constexpr (std::is_same_v<scalar_t, float>) {
      sgemm_(&transa, &no_transpose, &m_, &n_, &k_, &one, w, &lda, a, &ldb, &zero, c, &ldc_);
    } else {
      dgemm_(&transa, &no_transpose, &m_, &n_, &k_, &one, w, &lda, a, &ldb, &zero, c, &ldc_);
    }
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  at::Tensor c_t = at::from_blob(c, {rows, n}, {ldc, 1}, options);
  const at::Tensor w_t = w_transposed ? at::from_blob(const_cast<scalar_t*>(w), {n, k}, {ldw, 1}, options).t()
                                      : at::from_blob(const_cast<scalar_t*>(w), {k, n}, {ldw, 1}, options);
  at::mm_out(c_t, at::from_blob(const_cast<scalar_t*>(a), {rows, k}, options), w_t);
}

// dst[k,n] = src[n,k]^T: src's rows lds apart, dst's n. In tiles of 16 x 16 whose whole ones
// have compile-time bounds, which the compiler unrolls: 0.3-0.7 ns an element on the development
// CPU (H = 64-1024), where element by element down the columns took 0.5-4.6.
template <typename scalar_t>
inline void transpose_into(const scalar_t* __restrict src, int64_t lds, int64_t n, int64_t k,
                           scalar_t* __restrict dst) {
  constexpr int64_t kTile = 16;
  for (int64_t i0 = 0; i0 < n; i0 += kTile) {
    for (int64_t j0 = 0; j0 < k; j0 += kTile) {
      if (i0 + kTile <= n && j0 + kTile <= k) {
        for (int64_t j = 0; j < kTile; ++j) {
          for (int64_t i = 0; i < kTile; ++i) dst[(j0 + j) * n + i0 + i] = src[(i0 + i) * lds + j0 + j];
        }
        continue;
      }
      for (int64_t j = j0; j < std::min(k, j0 + kTile); ++j) {
        for (int64_t i = i0; i < std::min(n, i0 + kTile); ++i) dst[j * n + i] = src[i * lds + j];
      }
    }
  }
}

// Loops of this many products of two rows or more (kCopyMinSteps), or of one row
// (kCopyMinOneRowSteps), multiply by a copy of their weights (StepWeights).
// - The forward's W_hh, transposed in its product: BLAS repacks a transposed operand at every
//   call. Single-threaded on the development CPU (Xeon, AVX-512, 2026-12-07), MKL's sgemm multiplied
//   4-64 rows by W_hh [H,H] as stored 1.2-2.6x slower than by its transposed copy (H = 64-1024; as
//   fast at one row of H = 1024), and the copy costs one to three such products (16 x 16 tiles:
//   1.2 us at H = 64, 116 at 512, 750 at 1024).
// - The backward's columns of W_hh for a thread's units (a split by units): rows H apart, which at
//   H = 1024 (4 KB) fall into the same cache sets. From a contiguous copy of the slice, a product of
//   8-140 rows by 512 of its 1024 columns was 1.2-1.44x faster (1.0-1.1x at H = 256-768), for a
//   copy that costs less than one of them.
// - One row: vector_matrix on the copy was 10-45% faster than BLAS's one-row product at H = 128-1024
//   (2026-11-30, another machine), and the copy costs as much as 15 (H = 128) to 100 (H = 1024) of
//   them; on the Xeon of 2026-12-07 20 one-row steps of H = 1024 took 4.2-5.4 ms with a copy made
//   for them against 1.6-1.8 without.
constexpr int64_t kCopyMinSteps = 8;
constexpr int64_t kCopyMinOneRowSteps = 64;

// Whether a loop whose products have these many rows copies its weights (StepWeights).
inline bool copies_step_weights(int64_t multi_row_products, int64_t one_row_products) {
  return multi_row_products >= kCopyMinSteps || one_row_products >= kCopyMinOneRowSteps;
}

// The weights a time loop multiplies at every step, c[rows,n] = a[rows,k] @ op(w): w [n,k] (op =
// transpose: the forward's W_hh[units] as stored) or [k,n] (op = identity: the backward's
// W_hh[:, units]), its rows ldw apart. With `copy` the calling thread (each thread of a team, its
// own slice) copies op(w) once into a contiguous [k,n] that every product reads: one row by
// vector_matrix, more by BLAS untransposed; otherwise BLAS multiplies w where it lies (one row of
// an untransposed w by vector_matrix).
template <typename scalar_t>
class StepWeights {
 public:
  StepWeights(const scalar_t* w, bool w_transposed, int64_t ldw, int64_t n, int64_t k, bool copy)
      : w_(w), transposed_(w_transposed), ldw_(ldw), n_(n), k_(k) {
    if (copy && n > 0 && k > 0) {
      RECORD_USER_SCOPE("rnn_fused::copy_step_weights");
      copy_ = at::empty({k, n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
      scalar_t* dst = copy_.data_ptr<scalar_t>();
      if (w_transposed) {
        transpose_into(w, ldw, n, k, dst);
      } else {
        for (int64_t row = 0; row < k; ++row) std::copy_n(w + row * ldw, n, dst + row * n);
      }
      w_ = dst;
      transposed_ = false;
      ldw_ = n;
    }
  }

  // c[rows,n] = a[rows,k] @ op(w): a's rows k apart, c's ldc apart.
  void multiply(const scalar_t* a, scalar_t* c, int64_t ldc, int64_t rows) const {
    if (rows == 0 || n_ == 0) return;
    if (rows == 1 && !transposed_) {
      vector_matrix(a, w_, c, k_, n_, ldw_);
      return;
    }
    blas_rows_product(a, w_, transposed_, ldw_, c, ldc, rows, n_, k_);
  }

 private:
  const scalar_t* w_;
  bool transposed_;
  int64_t ldw_, n_, k_;
  at::Tensor copy_;  // op(w) [k,n], or undefined
};

}  // namespace rnn_fused::cpu
