// A time loop's steps split over torch's threads: each thread owns a slice of the hidden
// units for the whole loop, computes its slice of every step's product and epilogue, and
// waits for the other slices before the next step (one barrier per step, the state double
// buffered so that no thread overwrites a state row another still reads).
//
// Every unit's value is computed by the same arithmetic whatever the slicing: the epilogues
// are elementwise and each product's entry is one dot product over the whole state row (BLAS
// sees a narrower matrix, not a shorter sum). tests/test_cpu_team.py checks the results bit for
// bit against one thread.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#include "cpu/blas.h"

namespace rnn_fused::cpu {

// Steps of fewer multiply-adds (batch x H^2) run on one thread: the barrier's two cache-line
// trips between cores (a few hundred ns) cost more than half such a step. Measured on the
// 2-core development CPU (float32, 2026-12-01): two threads 1.5x faster at 8 x 128^2 (2^17),
// 1.1-1.2x at 16 x 64^2 (2^16), no faster at 8 x 64^2.
constexpr int64_t kTeamStepMacs = int64_t(1) << 16;
// A slice's fewest multiply-adds per step and its units' multiple: BLAS's float kernels tile
// the output in blocks of 8-16 units, and a slice of whole blocks keeps its products on the
// kernels the whole matrix would use.
constexpr int64_t kSliceMinMacs = int64_t(1) << 15;
constexpr int64_t kSliceUnitMultiple = 16;

// Threads forced by rnn_fused::set_cpu_loop_threads (launch_plan.forced_cpu_loop_threads): 0
// leaves the choice to team_threads. Process-wide; for tests and timing.
inline std::atomic<int64_t> forced_loop_threads{0};

// The threads a time loop of this shape runs on: 1 below kTeamStepMacs, when torch has one
// thread, inside a parallel region (a bidirectional layer's directions, each on a thread of
// the team already), or where torch's threads are not an OpenMP team that runs every task at
// once (the barrier would wait for a task queued behind it); never more than the units' blocks.
// A forced count holds whatever the step's size and torch's threads (more threads than the
// team has: a thread then owns several slices).
inline int64_t team_threads(int64_t batch, int64_t hidden) {
#if AT_PARALLEL_OPENMP
  if (at::in_parallel_region()) return 1;
  const int64_t by_units = (hidden + kSliceUnitMultiple - 1) / kSliceUnitMultiple;
  const int64_t forced = forced_loop_threads.load(std::memory_order_relaxed);
  if (forced > 0) return std::max<int64_t>(1, std::min(forced, by_units));
  const int64_t step_macs = batch * hidden * hidden;
  if (step_macs < kTeamStepMacs) return 1;
  at::internal::lazy_init_num_threads();
  return std::max<int64_t>(1, std::min({int64_t(at::get_num_threads()), by_units, step_macs / kSliceMinMacs}));
#else
  (void)batch;
  (void)hidden;
  return 1;
#endif
}

// Units [begin, end) of a slice.
struct UnitRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Counts the slices that finished each step. A thread that owns n slices arrives with n;
// the step is over when every slice of it has arrived. Counting slices rather than threads
// leaves it correct however ATen hands the slices to threads.
class StepBarrier {
 public:
  explicit StepBarrier(int64_t slices) : slices_(slices) {}

  // Processing step `step` (0, 1, ... in the loop's order) is done for `owned` slices; returns
  // when it is done for all. Spins briefly, then yields the core: a thread of the team may be
  // descheduled (more threads than cores), and spinning against it would only delay it.
  void arrive_and_wait(int64_t step, int64_t owned) {
    if (owned == slices_) return;  // one thread owns every slice
    arrived_.fetch_add(owned, std::memory_order_acq_rel);
    const int64_t target = (step + 1) * slices_;
    for (int spins = 0; arrived_.load(std::memory_order_acquire) < target; ++spins) {
      if (spins < kSpins) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kSpins = 1 << 14;
  const int64_t slices_;
  alignas(64) std::atomic<int64_t> arrived_{0};
};

// Slice `slice` of H units on `threads` threads: a balanced share of the units' whole
// kSliceUnitMultiple blocks (the last block may be short). None is empty: threads never
// exceeds the blocks.
inline UnitRange slice_units(int64_t hidden, int64_t threads, int64_t slice) {
  const int64_t blocks = (hidden + kSliceUnitMultiple - 1) / kSliceUnitMultiple;
  const auto start = [&](int64_t i) { return std::min(hidden, i * blocks / threads * kSliceUnitMultiple); };
  return {start(slice), start(slice + 1)};
}

// One thread's share of a team: its units (the union of its slices, which are consecutive),
// its first slice and how many it owns. Slice indices are fixed by the team's size, so `first`
// names the thread's partial results (of sums over its units) whatever ATen's partition.
struct TeamShare {
  UnitRange units;
  int64_t first = 0, count = 1;
};

// Runs body(share, barrier) on `threads` threads of the calling thread's OpenMP team, each
// with its own units; one thread runs body(all units) when threads is 1. The body must not
// throw: a thread that left the loop would leave the others waiting at the barrier. BLAS runs
// single-threaded inside (the team is the parallelism), with the caller's thread-local state
// (grad mode, dispatch exclusions).
template <typename Body>
void run_on_team(int64_t hidden, int64_t threads, const Body& body) {
  if (threads <= 1) {
    const SingleThreadedBlas serial(/*on_calling_thread=*/!at::in_parallel_region());
    StepBarrier barrier(1);
    body(TeamShare{UnitRange{0, hidden}, 0, 1}, barrier);
    return;
  }
  StepBarrier barrier(threads);
  const at::ThreadLocalState state;
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard guard(state);
    const SingleThreadedBlas serial(/*on_calling_thread=*/false);  // parallel_for initialised the caller
    const UnitRange units{slice_units(hidden, threads, first).begin, slice_units(hidden, threads, last - 1).end};
    body(TeamShare{units, first, last - first}, barrier);
  });
}

}  // namespace rnn_fused::cpu
