// A time loop split over torch's threads, in one of two ways:
// - by samples (TeamSplit::Rows): each thread runs the whole loop for its own rows of the batch.
//   The samples of a batch never meet, so the threads never wait for each other; each reads all
//   of W_hh every step.
// - by hidden units (TeamSplit::Units): each thread owns a slice of the units for the whole
//   loop, computes its slice of every step's product and epilogue, and waits for the other
//   slices before the next step (one barrier per step, the state double buffered so that no
//   thread overwrites a state row another still reads). For batches too small to share out.
//
// Each entry of a product is one dot product over the whole state row either way (BLAS sees a
// narrower or shorter matrix, not a shorter sum), but BLAS may sum it in another order for
// another shape, so the last bits can change with the team (tests/test_cpu_team.py).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "cpu/blas.h"

namespace rnn_fused::cpu {

// Measured on the 2-core development CPU (float32, 2026-12-01; a stand-alone loop of MKL's sgemm
// and an epilogue, then the loops themselves):
// - split by units, two threads were 1.5x faster than one at 8 x 128^2 multiply-adds per step
//   (2^17), 1.1-1.2x at 16 x 64^2 (2^16) and no faster at 8 x 64^2: the barrier's two
//   cache-line trips between cores (a few hundred ns) cost more than half a smaller step;
// - split by rows, with 4 rows or more per thread, as fast as by units from 2^16 on
//   (0.94-1.47x of it) and 1.2-3.9x faster than by units below (a step's fixed costs, the BLAS
//   call's and the epilogue's, are paid on both threads at once without a barrier); with 2 rows
//   per thread no faster than one thread.
constexpr int64_t kUnitsStepMacs = int64_t(1) << 16;  // fewest multiply-adds per step split by units
constexpr int64_t kRowsLoopMacs = int64_t(1) << 18;   // fewest multiply-adds per loop split by rows
constexpr int64_t kMinRowsPerThread = 4;
// W_hh of H >= this many units does not fit a core's L2 (512 KB here): split by units, so that
// each thread reads only its rows of it.
constexpr int64_t kRowsMaxHidden = 512;
// A unit slice's fewest multiply-adds per step and its units' multiple: BLAS's float kernels
// tile the output in blocks of 8-16 units.
constexpr int64_t kSliceMinMacs = int64_t(1) << 15;
constexpr int64_t kSliceUnitMultiple = 16;

enum class TeamSplit { Units = 1, Rows = 2 };

// How a time loop runs: on `threads` threads (1: the calling thread alone), split by `split`.
struct TeamPlan {
  int64_t threads = 1;
  TeamSplit split = TeamSplit::Units;
};

// A team forced by rnn_fused::set_cpu_loop_team (launch_plan.forced_cpu_loop_team): threads 0
// leave the choice to team_plan; split 0 leaves the split to it. Process-wide; for tests and
// timing.
inline std::atomic<int64_t> forced_loop_threads{0};
inline std::atomic<int> forced_loop_split{0};

// The team a time loop of this shape runs on, by the rules above: torch's threads, at most one
// per 4 rows (by rows) or per 2^15 multiply-adds of a step and per 16 units (by units). One
// thread inside a parallel region (a bidirectional layer's directions, each on a thread of the
// team already) and where torch's threads are not an OpenMP team that runs every task at once
// (a barrier would wait for a task queued behind it). A forced team holds whatever the loop's
// size and torch's threads (more threads than the OpenMP team has: a thread then owns several
// slices), capped at one thread per row or per block of 16 units.
inline TeamPlan team_plan(int64_t steps, int64_t batch, int64_t hidden) {
#if AT_PARALLEL_OPENMP
  if (at::in_parallel_region()) return {};
  const int64_t blocks = (hidden + kSliceUnitMultiple - 1) / kSliceUnitMultiple;
  const int64_t forced = forced_loop_threads.load(std::memory_order_relaxed);
  const int forced_split = forced_loop_split.load(std::memory_order_relaxed);
  const bool by_rows = forced_split != 0 ? forced_split == int(TeamSplit::Rows)
                                         : batch >= 2 * kMinRowsPerThread && hidden < kRowsMaxHidden;
  const TeamSplit split = by_rows ? TeamSplit::Rows : TeamSplit::Units;
  const int64_t most = by_rows ? batch : blocks;
  if (forced > 0) return {std::max<int64_t>(1, std::min(forced, most)), split};
  const int64_t step_macs = batch * hidden * hidden;
  if (by_rows ? steps * step_macs < kRowsLoopMacs : step_macs < kUnitsStepMacs) return {};
  at::internal::lazy_init_num_threads();
  const int64_t limit = by_rows ? batch / kMinRowsPerThread : std::min(blocks, step_macs / kSliceMinMacs);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), limit);
  return threads > 1 ? TeamPlan{threads, split} : TeamPlan{};
#else
  (void)steps;
  (void)batch;
  (void)hidden;
  return {};
#endif
}

// Units [begin, end) of a slice, or rows [begin, end) of a share of the batch.
struct UnitRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// Counts the slices that finished each step. A thread that owns n slices arrives with n;
// the step is over when every slice of it has arrived. Counting slices rather than threads
// leaves it correct however ATen hands the slices to threads.
class StepBarrier {
 public:
  // waits false: the threads share nothing between steps (a split by rows), nothing to wait for.
  StepBarrier(int64_t slices, bool waits) : slices_(waits ? slices : 0) {}

  // Processing step `step` (0, 1, ... in the loop's order) is done for `owned` slices; returns
  // when it is done for all. Spins briefly, then yields the core: a thread of the team may be
  // descheduled (more threads than cores), and spinning against it would only delay it.
  void arrive_and_wait(int64_t step, int64_t owned) {
    if (slices_ == 0 || owned == slices_) return;  // nothing shared, or one thread owns every slice
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

// Share `share` of B rows on `threads` threads: balanced, none empty (threads <= B).
inline UnitRange share_rows(int64_t batch, int64_t threads, int64_t share) {
  return {share * batch / threads, (share + 1) * batch / threads};
}

// The first row of each share of a split by rows, and B last: [threads + 1]. A thread's loop costs
// about the steps of its rows summed, so where the rows' step counts (row_steps [B]: each sample's
// length) differ, the shares hold equal sums of them (a packed batch's rows run from its longest
// sample to its shortest: equal row counts gave the first thread most of the work, 1.5x the
// balanced share with lengths spread evenly). Equal counts otherwise (share_rows), and none empty.
inline std::vector<int64_t> row_share_starts(int64_t batch, int64_t threads, const std::vector<int64_t>* row_steps) {
  std::vector<int64_t> starts(static_cast<size_t>(threads + 1));
  for (int64_t share = 0; share <= threads; ++share) starts[share] = share * batch / threads;
  if (row_steps == nullptr || std::adjacent_find(row_steps->begin(), row_steps->end(),
                                                 std::not_equal_to<int64_t>()) == row_steps->end()) {
    return starts;
  }
  int64_t total = 0;
  for (int64_t steps : *row_steps) total += steps;
  int64_t row = 0, summed = 0;
  for (int64_t share = 1; share < threads; ++share) {
    // The row boundary whose sum before it is nearest the share's part of the total, leaving at
    // least one row to each share on either side.
    const int64_t target = total * share / threads;
    while (row < batch - (threads - share) && (row < starts[share - 1] + 1 || summed < target)) {
      summed += (*row_steps)[row];
      ++row;
    }
    const int64_t last = row > 0 ? (*row_steps)[row - 1] : 0;
    if (row > starts[share - 1] + 1 && summed >= target && summed - target > target - (summed - last)) {
      --row;
      summed -= last;
    }
    starts[share] = row;
  }
  return starts;
}

// One thread's share of a team: its units and rows (all of the other dimension), its first
// unit slice (slices are fixed by the team, so the index names the thread's partial sums over
// its units whatever ATen's partition; 0 when split by rows), and how many slices or row shares
// it owns (consecutive ones: their union is one range).
struct TeamShare {
  UnitRange units, rows;
  int64_t unit_slice = 0, count = 1;
};

// Runs body(share, barrier) on the plan's threads of the calling thread's OpenMP team; the
// calling thread runs body(everything) when the plan has one thread. The body must not throw:
// a thread that left the loop would leave the others waiting at the barrier. BLAS runs
// single-threaded inside (the team is the parallelism), with the caller's thread-local state
// (grad mode, dispatch exclusions).
// row_steps [B] or null: each row's step count, which a split by rows balances (row_share_starts).
template <typename Body>
void run_on_team(const TeamPlan& plan, int64_t batch, int64_t hidden, const std::vector<int64_t>* row_steps,
                 const Body& body) {
  const UnitRange all_units{0, hidden}, all_rows{0, batch};
  if (plan.threads <= 1) {
    const SingleThreadedBlas serial(/*on_calling_thread=*/!at::in_parallel_region());
    StepBarrier barrier(1, /*waits=*/false);
    body(TeamShare{all_units, all_rows}, barrier);
    return;
  }
  const bool by_rows = plan.split == TeamSplit::Rows;
  const std::vector<int64_t> row_starts = by_rows ? row_share_starts(batch, plan.threads, row_steps)
                                                  : std::vector<int64_t>();
  StepBarrier barrier(plan.threads, /*waits=*/!by_rows);
  const at::ThreadLocalState state;
  at::parallel_for(0, plan.threads, 1, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard guard(state);
    const SingleThreadedBlas serial(/*on_calling_thread=*/false);  // parallel_for initialised the caller
    const int64_t count = last - first;
    if (by_rows) {
      const UnitRange rows{row_starts[first], row_starts[last]};
      body(TeamShare{all_units, rows, 0, count}, barrier);
    } else {
      const UnitRange units{slice_units(hidden, plan.threads, first).begin,
                            slice_units(hidden, plan.threads, last - 1).end};
      body(TeamShare{units, all_rows, first, count}, barrier);
    }
  });
}

}  // namespace rnn_fused::cpu
