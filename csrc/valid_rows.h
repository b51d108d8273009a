// The rows of a time-major [T,B,*] batch that hold valid steps (t < lengths[b]), for the
// host's whole-sequence GEMMs (elman_gemms.h): where a product costs its multiply-adds (the
// CPU backend), multiplying only those rows does the work torch.nn.RNN does on a
// PackedSequence (N rows, the sum of the lengths) instead of the padded batch's T*B.
// CPU tensors: the indices are built on the host from the lengths' host copy.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <ATen/record_function.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

namespace rnn_fused {

// The multiply-adds the valid rows' GEMMs must save per element they copy: the rows past the
// lengths are (T*B - N) * I * H multiply-adds of the input projection (of dX and dW_ih alike),
// against a gather and a scatter of N * (I + H) elements. Measured on the 2-core development CPU
// (2026-12-07, float32, packed batches; docs/benchmarks.md, packed sequences on the CPU): at
// this ratio the two ways took about the same time (I = H = 64 and 128 at 55% and 71% valid
// rows; I = H = 256 and 512 at 80-88%), below it the copies cost more (I = H = 32, I = 128 and
// H = 16), above it the valid rows alone were up to 1.27x faster (I = H = 512 at 54%).
inline constexpr int64_t kValidRowsMultiplyAddsPerCopy = 32;

// The valid rows' products run in pieces of at most this many rows: each gathered operand and
// product stays a piece's size (the whole N rows' copies at once raised the peak memory of a
// packed 100, 64, 256, 512 forward+backward from 54 to 78 MB, nn.RNN's 33), and each entry sums
// at most this many rows in one chain before the pieces' partial sums are added, as dW_hh's
// chunks do (elman_gemms.h).
inline constexpr int64_t kValidRowsPieceRows = 1024;

inline int64_t valid_row_count(const std::vector<int64_t>& lengths) {
  return std::accumulate(lengths.begin(), lengths.end(), int64_t(0));
}

// Whether the host's GEMMs multiply only the valid rows of a [T,B,I] -> [T,B,H] layer:
// lengths given on the host (empty: none, or given on a GPU), the backend's products not
// launch-bound (the CPU: on a GPU each gather and scatter is a launch more), and the
// multiply-adds saved worth the copies (kValidRowsMultiplyAddsPerCopy).
inline bool multiplies_valid_rows_only(int64_t steps, int64_t batch, int64_t input_size, int64_t hidden,
                                       const std::vector<int64_t>& lengths, bool launch_bound) {
  if (launch_bound || lengths.empty()) return false;
  const int64_t valid = valid_row_count(lengths);
  return (steps * batch - valid) * input_size * hidden >= kValidRowsMultiplyAddsPerCopy * valid * (input_size + hidden);
}

// int64 [N]: the rows t * B + b of the valid steps, by time then sample (with non-increasing
// lengths, a PackedSequence's order of its data).
inline at::Tensor valid_row_index(int64_t steps, const std::vector<int64_t>& lengths) {
  const int64_t batch = static_cast<int64_t>(lengths.size());
  at::Tensor index = at::empty({valid_row_count(lengths)}, at::TensorOptions().dtype(at::kLong));
  int64_t* out = index.data_ptr<int64_t>();
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t b = 0; b < batch; ++b) {
      if (t < lengths[static_cast<size_t>(b)]) *out++ = t * batch + b;
    }
  }
  return index;
}

// A PackedSequence's layout, from its batch_sizes [T] (int64 on the CPU, non-increasing, >= 0):
// step t holds batch_sizes[t] rows from step_rows[t] on, the first samples of the batch; sample
// b's length is the count of steps with b < batch_sizes[t]. Checked before anything is read.
struct PackedLayout {
  int64_t steps = 0, batch = 0, rows = 0;  // T, B = batch_sizes[0], N = their sum
  std::vector<int64_t> step_rows;          // [T]
  std::vector<int64_t> lengths;            // [B], non-increasing
};

// what: the op's name for the messages. data [N,F] is checked against the layout's N.
inline PackedLayout packed_layout(const char* what, const at::Tensor& data, const at::Tensor& batch_sizes) {
  TORCH_CHECK_VALUE(batch_sizes.device().is_cpu() && batch_sizes.scalar_type() == at::kLong &&
                        batch_sizes.dim() == 1 && batch_sizes.numel() >= 1,
                    what, ": batch_sizes must be a non-empty 1-D int64 CPU tensor, got a ", batch_sizes.scalar_type(),
                    " tensor of shape ", batch_sizes.sizes(), " on ", batch_sizes.device());
  TORCH_CHECK_VALUE(data.dim() == 2, what, ": data must be 2-D [N, F], got ", data.dim(), "-D");
  const at::Tensor sizes = batch_sizes.contiguous();
  const int64_t* per_step = sizes.const_data_ptr<int64_t>();
  PackedLayout layout{.steps = sizes.numel(), .batch = per_step[0]};
  layout.step_rows.resize(static_cast<size_t>(layout.steps));
  for (int64_t t = 0; t < layout.steps; ++t) {
    TORCH_CHECK_VALUE(per_step[t] >= 0 && per_step[t] <= (t == 0 ? layout.batch : per_step[t - 1]), what,
                      ": batch_sizes must be non-increasing and >= 0, got batch_sizes[", t, "] = ", per_step[t],
                      (t == 0 ? "" : " after "), (t == 0 ? std::string() : std::to_string(per_step[t - 1])));
    layout.step_rows[t] = layout.rows;
    layout.rows += per_step[t];
  }
  TORCH_CHECK_VALUE(data.size(0) == layout.rows, what, ": data has ", data.size(0), " rows, batch_sizes sum to ",
                    layout.rows);
  layout.lengths.assign(static_cast<size_t>(layout.batch), 0);
  for (int64_t t = 0; t < layout.steps; ++t) {
    for (int64_t b = 0; b < per_step[t]; ++b) ++layout.lengths[b];
  }
  return layout;
}

// dW_hh's pairs among the valid rows: int64 [M] each, the row of dz_t and the row of the state
// the step at t read (h_{t-1}; h_{t+1} for a reverse layer), for every step but each sample's
// first in processing order (whose state is h_0: elman_gemms.h adds that term apart). The
// pairs of the padded batch left out hold a zero dz or a zero state (past a sample's length),
// so they add nothing.
inline std::pair<at::Tensor, at::Tensor> valid_pair_index(int64_t steps, const std::vector<int64_t>& lengths,
                                                          bool reverse) {
  const int64_t batch = static_cast<int64_t>(lengths.size());
  int64_t pairs = 0;
  for (int64_t length : lengths) pairs += length > 1 ? length - 1 : 0;
  const at::TensorOptions options = at::TensorOptions().dtype(at::kLong);
  at::Tensor dz_rows = at::empty({pairs}, options), state_rows = at::empty({pairs}, options);
  int64_t* dz_out = dz_rows.data_ptr<int64_t>();
  int64_t* state_out = state_rows.data_ptr<int64_t>();
  // Forward: dz at t = 1 .. len-1 with h at t - 1. Reverse: dz at t = 0 .. len-2 with h at t + 1.
  for (int64_t t = reverse ? 0 : 1; t < (reverse ? steps - 1 : steps); ++t) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t last = lengths[static_cast<size_t>(b)] - 1;
      if (reverse ? t < last : t <= last) {
        *dz_out++ = t * batch + b;
        *state_out++ = (reverse ? t + 1 : t - 1) * batch + b;
      }
    }
  }
  return {dz_rows, state_rows};
}

// An index [N] in pieces of at most kValidRowsPieceRows (one piece, maybe empty, at least).
inline std::vector<at::Tensor> valid_row_pieces(const at::Tensor& index) { return index.split(kValidRowsPieceRows); }

// The rows' copies, as index_select and index_copy_ make them but faster: a run of consecutive
// rows (with non-increasing lengths, each step's valid rows are one) is one memcpy, and the runs
// are spread over torch's threads. On the development CPU (1205 of 17 x 128 rows of 256 floats, a
// packed batch's) index_copy_ took 132 us, index_select 38-54, a contiguous copy of as many rows
// 26: index_copy_ alone was an eighth of a packed 2-layer forward. Contiguous CPU tensors; every
// index in range (built here, valid_row_index and valid_pair_index). Named to the profiler as
// rnn_fused::gather_rows and rnn_fused::scatter_rows.
// dst [*, F] and src [*, F] as bytes, F row_bytes; rows int64 [N]: with scatter, src row i goes
// to dst row rows[i]; without, dst row i comes from src row rows[i].
inline void copy_rows(char* dst, const char* src, const at::Tensor& rows, size_t row_bytes, bool scatter) {
  const int64_t* index = rows.const_data_ptr<int64_t>();
  // Tasks of 64 KB at least: a thread's start costs about a copy of that size.
  const int64_t grain = std::max<int64_t>(1, int64_t(1 << 16) / std::max<int64_t>(1, int64_t(row_bytes)));
  at::parallel_for(0, rows.numel(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      int64_t j = i + 1;
      while (j < end && index[j] == index[j - 1] + 1) ++j;
      const size_t bytes = size_t(j - i) * row_bytes;
      if (scatter) {
        std::memcpy(dst + size_t(index[i]) * row_bytes, src + size_t(i) * row_bytes, bytes);
      } else {
        std::memcpy(dst + size_t(i) * row_bytes, src + size_t(index[i]) * row_bytes, bytes);
      }
      i = j;
    }
  });
}

// src2d.index_select(0, rows): [N, F].
inline at::Tensor gather_rows(const at::Tensor& src2d, const at::Tensor& rows) {
  RECORD_USER_SCOPE("rnn_fused::gather_rows");
  const at::Tensor src = src2d.contiguous();
  at::Tensor dst = at::empty({rows.numel(), src.size(1)}, src.options());
  copy_rows(static_cast<char*>(dst.data_ptr()), static_cast<const char*>(src.const_data_ptr()), rows,
            size_t(src.size(1)) * src.element_size(), /*scatter=*/false);
  return dst;
}

// dst2d.index_copy_(0, rows, src2d): dst2d contiguous, src2d of its dtype and width.
inline void scatter_rows(at::Tensor& dst2d, const at::Tensor& rows, const at::Tensor& src2d) {
  RECORD_USER_SCOPE("rnn_fused::scatter_rows");
  TORCH_INTERNAL_ASSERT(dst2d.is_contiguous() && src2d.scalar_type() == dst2d.scalar_type() &&
                        src2d.size(0) == rows.numel() && src2d.size(1) == dst2d.size(1));
  const at::Tensor src = src2d.contiguous();
  copy_rows(static_cast<char*>(dst2d.data_ptr()), static_cast<const char*>(src.const_data_ptr()), rows,
            size_t(src.size(1)) * src.element_size(), /*scatter=*/true);
}

}  // namespace rnn_fused
