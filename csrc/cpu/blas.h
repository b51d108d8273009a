// Direct BLAS for the per-step matrix products of the CPU time loops.
//
// libtorch_cpu exports the Fortran BLAS symbols of the BLAS it links (MKL on x86
// wheels). They are declared weak: a torch build without them falls back to
// at::mm_out, which is correct but pays a dispatcher call per step.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

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

// While alive, BLAS calls from this thread run single-threaded (where the BLAS allows it).
// A per-step product of a few hundred thousand multiply-adds costs less than handing it
// to a second thread and joining it, once per time step.
class SingleThreadedBlas {
 public:
  explicit SingleThreadedBlas(bool enable) : active_(enable && MKL_Set_Num_Threads_Local != nullptr) {
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

// Per-step products below this many multiply-adds run single-threaded.
constexpr int64_t kParallelStepMacs = int64_t(1) << 20;

inline bool have_direct_blas() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Row-major C[rows, n] = A[rows, k] @ op(W), W row-major; op(W) = W^T if transpose_w
// (W is [n, k]) else W (W is [k, n]). BLAS is column-major, so it computes C^T.
template <typename scalar_t>
inline void matmul_rows(const scalar_t* a, const scalar_t* w, scalar_t* c, int64_t rows, int64_t n,
                        int64_t k, bool transpose_w) {
  if (rows == 0 || n == 0) return;
  if (have_direct_blas()) {
    const char ta = transpose_w ? 'T' : 'N', tb = 'N';
    const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(k);
    const int lda = static_cast<int>(transpose_w ? k : n), ldb = static_cast<int>(k), ldc = m_;
    const scalar_t one = 1, zero = 0;
    if constexpr (std::is_same_v<scalar_t, float>) {
      sgemm_(&ta, &tb, &m_, &n_, &k_, &one, w, &lda, a, &ldb, &zero, c, &ldc);
    } else {
      dgemm_(&ta, &tb, &m_, &n_, &k_, &one, w, &lda, a, &ldb, &zero, c, &ldc);
    }
    return;
  }
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  at::Tensor a_t = at::from_blob(const_cast<scalar_t*>(a), {rows, k}, options);
  at::Tensor w_t = transpose_w ? at::from_blob(const_cast<scalar_t*>(w), {n, k}, options).t()
                               : at::from_blob(const_cast<scalar_t*>(w), {k, n}, options);
  at::Tensor c_t = at::from_blob(c, {rows, n}, options);
  at::mm_out(c_t, a_t, w_t);
}

}  // namespace rnn_fused::cpu
