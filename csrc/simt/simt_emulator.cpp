// simt_emulator.cpp — the CPU runtime behind simt_emulator.h.
//
// A launch runs every CUDA thread as a fiber (simt_fiber.h) on the calling OS thread.
// A fiber runs until it blocks (barrier, warp op, grid sync) or exits; the scheduler then
// resumes the runnable fibers in the configured order (forward, reverse, seeded shuffle)
// and, when nothing is runnable, releases a complete barrier or reports divergence or
// deadlock as an error. Non-cooperative launches run their blocks one after another;
// cooperative launches run all blocks interleaved so grid_sync can be honoured; cluster
// launches run the blocks of one cluster interleaved (cluster_sync, distributed shared
// memory) and clusters one after another. Within a cooperative grid or a cluster the
// scheduler runs one block at a time as far as it gets (through its own __syncthreads)
// before switching to the next in schedule order, so a block runs ahead of the others
// exactly where only a grid_sync or cluster_sync would stop it, and a missing one changes
// results between schedules.
// Built with AddressSanitizer, fiber switches are annotated so ASan follows the stacks,
// and each shared-memory variable is its own heap allocation so out-of-bounds shared
// accesses are reported.
#include "simt/simt.cuh"

#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <new>
#include <random>
#include <unordered_map>
#include <vector>

#include "simt/simt_fiber.h"
#include "simt/simt_memory_order.h"

namespace simt {
namespace emu {

__thread ThreadHead* current_thread = nullptr;

namespace {

using namespace fiber;

// ---------------------------------------------------------------------------------------
// Launch state.

enum class Wait : uint8_t { Ready, Barrier, Warp, Grid, Cluster, Flag, Exited };

struct Launch;
struct Block;
struct Cluster;

// An asynchronous copy issued and not yet performed (copy_async).
struct AsyncCopy {
  void* dst;
  const void* src;
  std::size_t bytes;
  std::source_location where;  // where it was issued
};

// A store_async issued into a block's shared memory and not yet performed. A GPU performs it
// at some time between its issue and the completion of the receiving mbarrier's phase that
// counts its bytes; the emulator takes the latest under the forward schedule (a read before
// the mbarrier wait sees the old contents), the earliest under the reverse one (a store into
// memory its owner still reads lands at once), and either at random under the shuffled ones:
// both kinds of misordered exchange give results that differ between schedules.
struct AsyncStore {
  void* dst;
  unsigned char bytes[16];
  std::size_t size;
};

// An mbarrier (simt::mbarrier_init) in a block's shared memory, keyed by its address: arrivals
// and transaction bytes still expected by the phase in progress, the phases completed, and the
// asynchronous stores whose bytes the phase counted.
struct MBarrier {
  Block* block = nullptr;
  unsigned arrivals = 0;  // per phase (mbarrier_init)
  unsigned pending = 0;   // arrivals the phase in progress still waits for
  int64_t tx = 0;         // bytes it still waits for (negative: bytes that came before their expect_tx)
  uint64_t phase = 0;     // phases completed
  uint64_t visible_after = 0;  // the cluster barrier count at init: other blocks use it after one more
  std::source_location init_where;
  std::vector<AsyncStore> stores;
};

struct Fiber : ThreadHead {
  Context ctx;
  Stack stack;
  Launch* launch = nullptr;
  Block* block = nullptr;
  unsigned index = 0;   // position in the session (block-major), the schedule's sort key
  unsigned linear = 0;  // linear thread index in the block
  Wait wait = Wait::Ready;
  std::source_location where;  // call site of the primitive it waits at
  WarpOp op = WarpOp::Sync;
  unsigned mask = 0;
  uint64_t value = 0;
  int param = 0;
  int width = 32;
  uint64_t result = 0;
  const void* flag = nullptr;  // Wait::Flag: the flag (unsigned) it waits on to reach `value`, or
  bool tagged_word = false;     // the tagged word (unsigned long long) whose tag must equal `value`
  bool mbarrier = false;        // or the mbarrier whose phase of parity `value` must complete
  // Arrived at its cluster's barrier (cluster_arrive, or cluster_sync) and not yet past its wait:
  // where, and the cluster's completed barriers then (the wait passes once that count grew).
  bool cluster_arrived = false;
  bool split_wait = false;  // Wait::Cluster: at cluster_wait (else at cluster_sync)
  std::source_location arrived_where;
  uint64_t arrived_phase = 0;
  void* fake_stack = nullptr;  // ASan's fake stack of this fiber while switched out
  std::vector<AsyncCopy> open_copies;             // issued since the last commit_async
  std::deque<std::vector<AsyncCopy>> copy_groups;  // committed, oldest first, not yet waited for
};

struct SharedVar {
  const void* key;
  void* ptr;
  std::size_t bytes;
  std::size_t align;
};

// Another block of the cluster obtained this block's shared memory through
// cluster_map_shared since the last cluster_sync.
struct Mapping {
  const Fiber* by;
  std::source_location where;
};

struct Block {
  uint3 idx{0, 0, 0};
  unsigned long long linear = 0;  // index in the grid
  uint64_t phase = 0;             // block-wide barriers (__syncthreads, grid, cluster) completed
  Fiber* fibers = nullptr;
  unsigned nthreads = 0;
  unsigned at_barrier = 0;
  unsigned exited = 0;
  std::vector<Fiber*> ready;  // runnable threads of this block
  Cluster* cluster = nullptr;
  unsigned rank = 0;  // in the cluster
  std::vector<Mapping> mapped_by;  // at most one entry per other block
  std::vector<SharedVar> statics;
  std::size_t static_bytes = 0;
  void* dynamic = nullptr;
  std::size_t dynamic_bytes = 0;

  Block() = default;
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  ~Block() {
    for (const SharedVar& v : statics) {
      unpoison(v.ptr, v.bytes);
      ::operator delete(v.ptr, std::align_val_t(v.align));
    }
    if (dynamic != nullptr) {
      unpoison(dynamic, dynamic_bytes);
      ::operator delete(dynamic, std::align_val_t(16));
    }
  }
  static void unpoison(void* p, std::size_t bytes) {
#if SIMT_ASAN
    __asan_unpoison_memory_region(p, bytes);
#else
    (void)p, (void)bytes;
#endif
  }
};

// The blocks of one thread-block cluster (one block per cluster outside cluster launches).
struct Cluster {
  Block* blocks = nullptr;
  unsigned size = 0;      // blocks
  unsigned nthreads = 0;  // threads over all its blocks
  unsigned arrived = 0;     // threads arrived at the current barrier (cluster_arrive or cluster_sync)
  unsigned at_barrier = 0;  // of them, threads waiting (cluster_wait or cluster_sync)
  unsigned exited = 0;
  uint64_t phase = 0;       // barriers completed
};

struct Launch {
  LaunchRequest req;
  DeviceProperties props;
  KernelAttributes attrs;
  std::string kernel_name;
  unsigned threads_per_block = 0;
  std::vector<Fiber> fibers;
  std::vector<Block> blocks;
  std::vector<Cluster> clusters;
  std::size_t ready = 0;  // runnable threads over all blocks
  std::vector<Fiber*> batch;
  std::size_t exited = 0;
  std::size_t at_grid = 0;
  std::vector<Fiber*> flag_waiters;  // threads at wait_flag, wait_word_tag and mbarrier_wait
  std::unordered_map<const void*, MBarrier> mbarriers;  // of the session's blocks, by address
  MemoryOrder order;                 // of the blocks' accesses to each other's global memory
  std::size_t max_static_bytes = 0;
  Context scheduler;
  Schedule mode = Schedule::Forward;
  std::mt19937_64 rng;
  bool failed = false;
  std::string error;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack_bottom = nullptr;
  std::size_t scheduler_stack_size = 0;
};

// An error raised by a primitive inside a kernel (its message already names the
// operation and file:line); the fiber adds block and thread coordinates.
struct KernelFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string site(const std::source_location& w) { return detail::format_site(w); }

std::string coords(const Fiber& f) {
  return "block " + detail::format_dim(f.block_idx) + " thread " + detail::format_dim(f.thread_idx);
}

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Shfl: return "__shfl_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::Ballot: return "__ballot_sync";
  }
  return "warp op";
}

std::string pointer_text(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

// Whether a flag holding `held` has reached `target` (wait_flag's test: counters may wrap).
bool flag_reached(unsigned held, unsigned target) { return static_cast<int>(held - target) >= 0; }

unsigned word_tag(unsigned long long word) { return static_cast<unsigned>(word >> 32); }

// A tagged word awaited for `tag` that carries a later one was overwritten before it was read
// (the exchange's protocol broken): what the error says, or "" if it was not.
std::string overwritten(const unsigned long long* word, unsigned tag) {
  const unsigned held = word_tag(*word);
  if (!flag_reached(held, tag + 1)) return "";
  return "waits for tag " + std::to_string(tag) + " of the word at " + pointer_text(word) +
         ", which was overwritten with tag " + std::to_string(held) + " before it read it";
}

// A waiting thread's condition holds.
bool wait_satisfied(const Fiber& f) {
  if (f.mbarrier) return (f.launch->mbarriers.at(f.flag).phase & 1u) != f.value;
  if (f.tagged_word) return word_tag(*static_cast<const unsigned long long*>(f.flag)) == f.value;
  return flag_reached(*static_cast<const unsigned*>(f.flag), static_cast<unsigned>(f.value));
}

// What a thread is doing, for error messages.
std::string describe(const Fiber& f) {
  switch (f.wait) {
    case Wait::Ready: return "is runnable";
    case Wait::Exited: return "has exited";
    case Wait::Barrier: return "waits at __syncthreads (" + site(f.where) + ")";
    case Wait::Grid: return "waits at simt::grid_sync (" + site(f.where) + ")";
    case Wait::Cluster:
      return std::string("waits at ") + (f.split_wait ? "simt::cluster_wait" : "simt::cluster_sync") + " (" +
             site(f.where) + ")";
    case Wait::Flag:
      if (f.mbarrier) {
        const MBarrier& m = f.launch->mbarriers.at(f.flag);
        return "waits at simt::mbarrier_wait (" + site(f.where) + ") for the phase of parity " + std::to_string(f.value) +
               " of the mbarrier at " + pointer_text(f.flag) + " (initialised at " + site(m.init_where) + "; " +
               std::to_string(m.pending) + " of " + std::to_string(m.arrivals) + " arrivals and " +
               std::to_string(m.tx) + " bytes still expected)";
      }
      if (f.tagged_word) {
        return "waits at simt::wait_word_tag (" + site(f.where) + ") for the word at " + pointer_text(f.flag) +
               " to carry tag " + std::to_string(f.value) + " (it carries " +
               std::to_string(word_tag(*static_cast<const unsigned long long*>(f.flag))) + ")";
      }
      return "waits at simt::wait_flag (" + site(f.where) + ") for the flag at " + pointer_text(f.flag) +
             " to reach " + std::to_string(f.value) + " (it holds " +
             std::to_string(*static_cast<const unsigned*>(f.flag)) + ")";
    case Wait::Warp:
      return std::string("waits at ") + op_name(f.op) + " (" + site(f.where) + ") with mask " + hex(f.mask);
  }
  return "?";
}

// ---------------------------------------------------------------------------------------
// Stack overflow: a fiber running into its guard page gets SIGSEGV. While a launch runs,
// a handler on an alternate signal stack recognises the guard page, prints which emulated
// thread overflowed, and hands the signal back to the previous handler (the process still
// dies: the kernel cannot continue). Not installed under ASan, which reports it itself.
// The SIGSEGV disposition is process wide: the first running launch installs the
// handler and the last one restores the previous handler.
std::mutex segv_mutex;
int segv_users = 0;
struct sigaction previous_segv_action;
thread_local char overflow_message[512];

void on_segv(int, siginfo_t* info, void* context) {
  const auto* f = static_cast<const Fiber*>(current_thread);
  const auto* addr = static_cast<const char*>(info->si_addr);
  const char* sp = nullptr;
#if defined(__x86_64__)
  sp = reinterpret_cast<const char*>(static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_RSP]);
#else
  (void)context;
#endif
  // A large frame can move the stack pointer past the guard page before the first access.
  const bool overflow =
      f != nullptr && ((addr >= f->stack.mapping && addr < f->stack.base) || (sp != nullptr && sp < f->stack.base));
  if (overflow) {
    const int n = std::snprintf(
        overflow_message, sizeof overflow_message,
        "simt: stack overflow (%zu KiB fiber stack) in block (%u,%u,%u) thread (%u,%u,%u) of the kernel launched at "
        "%s:%u\n",
        f->stack.bytes >> 10, f->block_idx.x, f->block_idx.y, f->block_idx.z, f->thread_idx.x, f->thread_idx.y,
        f->thread_idx.z, f->launch->req.where.file_name(), static_cast<unsigned>(f->launch->req.where.line()));
    if (n > 0) {
      [[maybe_unused]] ssize_t written = write(2, overflow_message, static_cast<std::size_t>(n));
    }
  }
  // Returning re-executes the faulting access, which now reaches the previous handler.
  sigaction(SIGSEGV, &previous_segv_action, nullptr);
}

struct OverflowHandler {
  bool installed = false;
  bool own_altstack = false;
  stack_t previous_altstack{};
  OverflowHandler() {
#if !SIMT_ASAN
    static thread_local std::vector<char> altstack(64 * 1024);
    if (sigaltstack(nullptr, &previous_altstack) != 0) return;
    if (previous_altstack.ss_flags & SS_DISABLE) {
      stack_t ss{};
      ss.ss_sp = altstack.data();
      ss.ss_size = altstack.size();
      if (sigaltstack(&ss, nullptr) != 0) return;
      own_altstack = true;
    }
    struct sigaction action {};
    action.sa_sigaction = &on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    std::lock_guard<std::mutex> lock(segv_mutex);
    installed = segv_users > 0 || sigaction(SIGSEGV, &action, &previous_segv_action) == 0;
    if (installed) segv_users++;
#endif
  }
  ~OverflowHandler() {
    if (installed) {
      std::lock_guard<std::mutex> lock(segv_mutex);
      if (--segv_users == 0) sigaction(SIGSEGV, &previous_segv_action, nullptr);
    }
    if (own_altstack) {
      stack_t ss{};
      ss.ss_flags = SS_DISABLE;
      sigaltstack(&ss, nullptr);
    }
  }
};

std::string launch_suffix(const Launch& L) {
  std::string s = "; kernel " + L.kernel_name + " launched at " + site(L.req.where) + " with grid " +
                  detail::format_dim(L.req.grid) + ", block " + detail::format_dim(L.req.block);
  if (L.req.kind == LaunchKind::Cluster) s += ", cluster size " + std::to_string(L.req.cluster_size);
  return s;
}

void fail(Launch& L, const std::string& message) {
  if (L.failed) return;
  L.failed = true;
  L.error = "simt: " + message + launch_suffix(L);
}

thread_local Launch* active_launch = nullptr;

Actor actor_of(const Fiber& f) { return Actor{f.block->linear, f.linear, f.block->phase}; }

Fiber* running_fiber(const char* what) {
  auto* f = static_cast<Fiber*>(current_thread);
  if (f == nullptr) outside_kernel(what);
  return f;
}

[[noreturn]] void fault(const char* op, const std::source_location& where, const std::string& why) {
  throw KernelFault(std::string(op) + " at " + site(where) + ": " + why);
}

// Switch from a fiber back to the scheduler; returns when the scheduler resumes it.
void yield(Fiber* f) {
  Launch& L = *f->launch;
  asan_start(&f->fake_stack, L.scheduler_stack_bottom, L.scheduler_stack_size);
  switch_context(f->ctx, L.scheduler);
  asan_finish(f->fake_stack, nullptr, nullptr);
}

// The last thread of `b` (`last`) has exited: its shared memory is gone. Other blocks of
// the cluster that mapped it since the last cluster_sync may still access it (CUDA: every
// distributed shared memory access must complete before the owner exits).
void block_exited(Launch& L, Block& b, const Fiber& last) {
  for (auto it = L.mbarriers.begin(); it != L.mbarriers.end();) {
    const MBarrier& m = it->second;
    if (m.block != &b) {
      ++it;
      continue;
    }
    if (m.tx != 0 || !m.stores.empty() || m.pending != m.arrivals) {
      fail(L, "block " + detail::format_dim(b.idx) + " (cluster rank " + std::to_string(b.rank) + ") exited (its last thread, " +
                  coords(last) + ", returned) with a phase of its mbarrier at " + pointer_text(it->first) +
                  " (initialised at " + site(m.init_where) + ") in progress: " + std::to_string(m.pending) + " of " +
                  std::to_string(m.arrivals) + " arrivals and " + std::to_string(m.tx) +
                  " bytes still expected: asynchronous stores or arrivals it never waited for");
      return;
    }
    it = L.mbarriers.erase(it);
  }
  if (!b.mapped_by.empty()) {
    const Mapping& m = b.mapped_by.front();
    fail(L, "block " + detail::format_dim(b.idx) + " (cluster rank " + std::to_string(b.rank) + ") exited (its last thread, " +
                coords(last) + ", returned) while block " + detail::format_dim(m.by->block_idx) +
                " may still access its shared memory (" + coords(*m.by) + " mapped it with simt::cluster_map_shared at " +
                site(m.where) + " after the last cluster_sync): cluster_sync before exit");
    return;
  }
  if (b.cluster->size == 1) return;
  // Later accesses through pointers mapped before the last cluster_sync read NaN, and the
  // ASan build reports them.
  auto retire = [](void* p, std::size_t bytes) {
    std::memset(p, 0xff, bytes);
#if SIMT_ASAN
    __asan_poison_memory_region(p, bytes);
#endif
  };
  for (const SharedVar& v : b.statics) retire(v.ptr, v.bytes);
  retire(b.dynamic, b.dynamic_bytes);
}

void fiber_main(void* arg) {
  auto* f = static_cast<Fiber*>(arg);
  Launch& L = *f->launch;
  asan_finish(nullptr, &L.scheduler_stack_bottom, &L.scheduler_stack_size);
  try {
    L.req.invoke(L.req.bound);
  } catch (const KernelFault& e) {
    fail(L, std::string(e.what()) + " [" + coords(*f) + "]");
  } catch (const std::exception& e) {
    fail(L, "exception in kernel at " + coords(*f) + ": " + e.what());
  } catch (...) {
    fail(L, "unknown exception in kernel at " + coords(*f));
  }
  if (!f->open_copies.empty() || !f->copy_groups.empty()) {
    const AsyncCopy& first = f->copy_groups.empty() ? f->open_copies.front() : f->copy_groups.front().front();
    fail(L, std::string(first.bytes == 16 ? "simt::copy_async_16" : "simt::copy_async_scalar") + " at " + site(first.where) + ": thread " + coords(*f) +
                " exited with asynchronous copies it never waited for (" + std::to_string(f->copy_groups.size()) +
                " committed group(s), " + std::to_string(f->open_copies.size()) +
                " uncommitted): simt::wait_async<0>() before they are read or the thread exits");
  }
  if (f->cluster_arrived && !L.failed) {
    fail(L, "cluster barrier divergence: " + coords(*f) + " exited after simt::cluster_arrive at " +
                site(f->arrived_where) + " without its simt::cluster_wait");
  }
  f->wait = Wait::Exited;
  f->block->exited++;
  f->block->cluster->exited++;
  L.exited++;
  if (f->block->exited == f->block->nthreads) block_exited(L, *f->block, *f);
  asan_start(nullptr, L.scheduler_stack_bottom, L.scheduler_stack_size);
  switch_context(f->ctx, L.scheduler);
  __builtin_trap();  // a finished fiber is never resumed
}

void resume(Launch& L, Fiber* f) {
  current_thread = f;
  asan_start(&L.scheduler_fake_stack, f->stack.base, f->stack.bytes);
  switch_context(L.scheduler, f->ctx);
  asan_finish(L.scheduler_fake_stack, nullptr, nullptr);
  current_thread = nullptr;
}

void make_ready(Launch& L, Fiber* f) {
  f->wait = Wait::Ready;
  f->block->ready.push_back(f);
  L.ready++;
}

bool same_site(const std::source_location& a, const std::source_location& b) {
  return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

[[noreturn]] void throw_failure(Launch& L) { throw Error(L.error); }

// Nothing is runnable and not every thread has exited: name one waiting thread and the
// thread it waits for.
void diagnose_deadlock(Launch& L) {
  for (Fiber& f : L.fibers) {
    if (f.wait == Wait::Exited || f.wait == Wait::Ready) continue;
    const Fiber* other = nullptr;
    if (f.wait == Wait::Warp) {
      const unsigned base = f.linear & ~31u;
      for (unsigned l = 0; l < 32 && other == nullptr; ++l) {
        if ((f.mask >> l & 1u) && f.block->fibers[base + l].wait != Wait::Warp) other = &f.block->fibers[base + l];
      }
    } else if (f.wait == Wait::Barrier) {
      for (unsigned t = 0; t < f.block->nthreads && other == nullptr; ++t) {
        if (f.block->fibers[t].wait != Wait::Barrier) other = &f.block->fibers[t];
      }
    } else if (f.wait == Wait::Cluster) {
      const Cluster& c = *f.block->cluster;
      for (unsigned b = 0; b < c.size && other == nullptr; ++b) {
        for (unsigned t = 0; t < c.blocks[b].nthreads && other == nullptr; ++t) {
          if (c.blocks[b].fibers[t].wait != Wait::Cluster) other = &c.blocks[b].fibers[t];
        }
      }
    } else if (f.wait == Wait::Flag) {
      // No thread that can still run publishes it (every runnable thread has run).
      const char* why = f.mbarrier ? "; no thread that can still run arrives on it or stores to it"
                        : L.req.kind == LaunchKind::Plain
                            ? "; a plain launch runs its blocks one after another (a GPU does not promise them "
                              "co-resident either): wait only for flags of blocks of a cooperative launch or of "
                              "the same cluster"
                            : "; no thread that can still run publishes it";
      fail(L, "deadlock: " + coords(f) + " " + describe(f) + why);
      return;
    } else {
      for (const Fiber& g : L.fibers) {
        if (g.wait != Wait::Grid) {
          other = &g;
          break;
        }
      }
    }
    if (other == nullptr) continue;
    const char* kind = "deadlock: ";
    if (other->wait == Wait::Exited && f.wait == Wait::Barrier) kind = "barrier divergence: ";
    if (other->wait == Wait::Exited && f.wait == Wait::Cluster) kind = "cluster barrier divergence: ";
    fail(L, kind + coords(f) + " " + describe(f) + ", but " + coords(*other) + " " + describe(*other));
    return;
  }
  fail(L, "deadlock: no thread can make progress");
}

// Checks a barrier that every live thread has reached (`visit(fn)` calls fn on each of its
// threads): none exited, all that wait there at the same call site (a thread past a cluster
// barrier's arrival and not yet at its wait counts as reached). Marks the launch failed otherwise.
template <class Visit>
bool barrier_consistent(Launch& L, Visit visit, Wait kind, const char* what) {
  const Fiber* first = nullptr;
  visit([&](Fiber& g) {
    if (first == nullptr && g.wait == kind) first = &g;
  });
  visit([&](Fiber& g) {
    if (L.failed) return;
    if (g.wait == Wait::Exited) {
      fail(L, std::string(what) + " divergence: " + coords(*first) + " " + describe(*first) + ", but " + coords(g) +
                  " has exited");
    } else if (g.wait == kind && !same_site(g.where, first->where)) {
      fail(L, std::string(what) + " divergence: " + coords(*first) + " " + describe(*first) + ", but " + coords(g) +
                  " " + describe(g));
    }
  });
  return !L.failed;
}

// Releases the block's __syncthreads if every live thread waits there.
bool release_block_barrier(Launch& L, Block& b) {
  if (b.at_barrier == 0 || b.at_barrier + b.exited != b.nthreads) return false;
  auto visit = [&b](auto&& fn) {
    for (unsigned t = 0; t < b.nthreads; ++t) fn(b.fibers[t]);
  };
  if (!barrier_consistent(L, visit, Wait::Barrier, "barrier")) return false;
  visit([&L](Fiber& g) { make_ready(L, &g); });
  b.at_barrier = 0;
  L.order.block_barrier(b.linear);
  b.phase++;
  return true;
}

// Releases the cluster's barrier once every live thread of its blocks has arrived
// (cluster_arrive or cluster_sync) and one of them waits: the waiting threads run on, the
// others pass their cluster_wait when they reach it. The blocks' distributed shared memory
// accesses before their arrival are then ordered before what follows the barrier (none may
// come between a thread's arrival and its wait: refuse_inside_split_barrier). Every live thread
// arrived at one call site, and waits at one.
bool release_cluster_barrier(Launch& L, Cluster& c) {
  if (c.at_barrier == 0 || c.arrived + c.exited != c.nthreads) return false;
  auto visit = [&c](auto&& fn) {
    for (unsigned b = 0; b < c.size; ++b) {
      for (unsigned t = 0; t < c.blocks[b].nthreads; ++t) fn(c.blocks[b].fibers[t]);
    }
  };
  if (!barrier_consistent(L, visit, Wait::Cluster, "cluster barrier")) return false;
  const Fiber* first = nullptr;
  visit([&](Fiber& g) {
    if (L.failed || g.wait == Wait::Exited) return;
    if (first == nullptr) first = &g;
    if (!same_site(g.arrived_where, first->arrived_where)) {
      fail(L, "cluster barrier divergence: " + coords(*first) + " arrived at simt::cluster_arrive (" +
                  site(first->arrived_where) + "), but " + coords(g) + " at " + site(g.arrived_where));
    }
  });
  if (L.failed) return false;
  visit([&L](Fiber& g) {
    if (g.wait != Wait::Cluster) return;
    g.cluster_arrived = false;
    make_ready(L, &g);
  });
  for (unsigned b = 0; b < c.size; ++b) c.blocks[b].mapped_by.clear();
  c.arrived = 0;
  c.at_barrier = 0;
  c.phase++;
  std::vector<Actor> members;
  for (unsigned b = 0; b < c.size; ++b) members.push_back(Actor{c.blocks[b].linear, 0, c.blocks[b].phase});
  L.order.collective_barrier(members);
  for (unsigned b = 0; b < c.size; ++b) c.blocks[b].phase++;
  return true;
}

// Makes the threads whose flag has reached its target runnable again.
bool release_flag_waiters(Launch& L) {
  bool released = false;
  std::erase_if(L.flag_waiters, [&](Fiber* f) {
    const std::string broken =
        f->tagged_word ? overwritten(static_cast<const unsigned long long*>(f->flag), static_cast<unsigned>(f->value)) : "";
    if (!broken.empty()) {
      fail(L, "simt::wait_word_tag at " + site(f->where) + ": " + coords(*f) + " " + broken);
      return false;
    }
    if (!wait_satisfied(*f)) return false;
    // Recorded now, as the release that satisfied it (MemoryOrder::acquire takes the earliest).
    if (!f->tagged_word && !f->mbarrier) L.order.acquire(actor_of(*f), f->flag, static_cast<unsigned>(f->value));
    f->flag = nullptr;
    f->mbarrier = false;
    make_ready(L, f);
    released = true;
    return true;
  });
  return released;
}

// Releases complete barriers (block barriers first, then cluster barriers, then the grid
// barrier). Returns false when every thread has exited; on divergence or deadlock marks
// the launch failed.
bool resolve(Launch& L) {
  if (L.exited == L.fibers.size()) return false;
  bool released = false;
  for (Block& b : L.blocks) {
    released = release_block_barrier(L, b) || released;
    if (L.failed) return true;
  }
  if (released) return true;
  released = release_flag_waiters(L);
  if (released || L.failed) return true;
  for (Cluster& c : L.clusters) {
    released = release_cluster_barrier(L, c) || released;
    if (L.failed) return true;
  }
  if (released) return true;
  if (L.at_grid > 0 && L.at_grid + L.exited == L.fibers.size()) {
    if (L.exited > 0) {
      const Fiber* waiting = nullptr;
      const Fiber* gone = nullptr;
      for (const Fiber& f : L.fibers) {
        if (f.wait == Wait::Grid && waiting == nullptr) waiting = &f;
        if (f.wait == Wait::Exited && gone == nullptr) gone = &f;
      }
      fail(L, "grid barrier divergence: " + coords(*waiting) + " " + describe(*waiting) + ", but " + coords(*gone) +
                  " has exited");
      return true;
    }
    for (Fiber& f : L.fibers) make_ready(L, &f);
    L.at_grid = 0;
    std::vector<Actor> members;
    for (const Block& b : L.blocks) members.push_back(Actor{b.linear, 0, b.phase});
    L.order.collective_barrier(members);
    for (Block& b : L.blocks) b.phase++;
    return true;
  }
  diagnose_deadlock(L);
  return true;
}

void order_batch(Launch& L) {
  auto& r = L.batch;
  switch (L.mode) {
    case Schedule::Forward:
      std::sort(r.begin(), r.end(), [](const Fiber* a, const Fiber* b) { return a->index < b->index; });
      break;
    case Schedule::Reverse:
      std::sort(r.begin(), r.end(), [](const Fiber* a, const Fiber* b) { return a->index > b->index; });
      break;
    case Schedule::Shuffle:
      std::sort(r.begin(), r.end(), [](const Fiber* a, const Fiber* b) { return a->index < b->index; });
      std::shuffle(r.begin(), r.end(), L.rng);
      break;
  }
}

uint3 unflatten(unsigned long long i, dim3 d) {
  return uint3{static_cast<unsigned>(i % d.x), static_cast<unsigned>((i / d.x) % d.y),
               static_cast<unsigned>(i / (static_cast<unsigned long long>(d.x) * d.y))};
}

void* allocate_shared(std::size_t bytes, std::size_t align) {
  void* p = ::operator new(bytes, std::align_val_t(align));
  std::memset(p, 0xff, bytes);  // poison: NaN for float, double, half and bfloat16
  return p;
}

// The block whose threads run next in a cooperative or cluster session: the lowest
// (forward) or highest (reverse) block with runnable threads, or a random one (shuffle).
Block* pick_block(Launch& L) {
  Block* chosen = nullptr;
  unsigned candidates = 0;
  for (Block& b : L.blocks) {
    if (b.ready.empty()) continue;
    ++candidates;
    if (L.mode == Schedule::Forward && chosen != nullptr) continue;
    if (L.mode == Schedule::Shuffle && L.rng() % candidates != 0) continue;  // reservoir sampling
    chosen = &b;
  }
  return chosen;
}

// Runs a set of blocks that are co-resident (one block, the whole cooperative grid, or
// one cluster; block_ids in cluster-rank order).
void run_session(Launch& L, const std::vector<unsigned long long>& block_ids) {
  const unsigned T = L.threads_per_block;
  const unsigned per_cluster = L.req.kind == LaunchKind::Cluster ? L.req.cluster_size : 1;
  L.blocks.clear();
  L.fibers.clear();
  L.clusters.clear();
  L.blocks = std::vector<Block>(block_ids.size());
  L.fibers = std::vector<Fiber>(block_ids.size() * T);
  L.clusters = std::vector<Cluster>(block_ids.size() / per_cluster);
  L.ready = 0;
  L.exited = 0;
  L.at_grid = 0;
  L.flag_waiters.clear();
  L.mbarriers.clear();
  struct StackReturn {
    Launch& L;
    ~StackReturn() {
      for (Fiber& f : L.fibers) {
        if (f.stack.mapping != nullptr) release_stack(f.stack);
        f.stack = Stack{};
      }
    }
  } stack_return{L};
  for (std::size_t b = 0; b < block_ids.size(); ++b) {
    Block& blk = L.blocks[b];
    blk.idx = unflatten(block_ids[b], L.req.grid);
    blk.linear = block_ids[b];
    blk.fibers = &L.fibers[b * T];
    blk.nthreads = T;
    blk.dynamic_bytes = L.req.dynamic_smem;
    blk.dynamic = allocate_shared(L.req.dynamic_smem, 16);
    Cluster& cluster = L.clusters[b / per_cluster];
    if (b % per_cluster == 0) cluster.blocks = &blk;
    cluster.size++;
    cluster.nthreads += T;
    blk.cluster = &cluster;
    blk.rank = static_cast<unsigned>(b % per_cluster);
    for (unsigned t = 0; t < T; ++t) {
      Fiber& f = blk.fibers[t];
      f.thread_idx = unflatten(t, L.req.block);
      f.block_idx = blk.idx;
      f.block_dim = L.req.block;
      f.grid_dim = L.req.grid;
      f.launch = &L;
      f.block = &blk;
      f.index = static_cast<unsigned>(b * T + t);
      f.linear = t;
      f.stack = acquire_stack();
      make_context(f.ctx, f.stack, &fiber_main, &f);
      make_ready(L, &f);
    }
  }
  while (true) {
    if (L.ready == 0 && !resolve(L)) break;
    if (L.failed) throw_failure(L);
    L.batch.clear();
    Block* focus = nullptr;
    if (L.req.kind != LaunchKind::Plain) {
      // One block at a time, released from its own barriers at once (see the file comment).
      focus = pick_block(L);
      L.batch.swap(focus->ready);
    } else {
      for (Block& b : L.blocks) {
        L.batch.insert(L.batch.end(), b.ready.begin(), b.ready.end());
        b.ready.clear();
      }
    }
    L.ready -= L.batch.size();
    order_batch(L);
    for (Fiber* f : L.batch) {
      resume(L, f);
      if (L.failed) throw_failure(L);
    }
    if (focus != nullptr) {
      release_block_barrier(L, *focus);
      if (L.failed) throw_failure(L);
    }
  }
  for (const Block& blk : L.blocks) L.max_static_bytes = std::max(L.max_static_bytes, blk.static_bytes);
}

// ---------------------------------------------------------------------------------------
// Global configuration: device properties, schedule, kernel registry.

std::mutex config_mutex;
DeviceProperties emulated_props;
Schedule schedule_mode_value = Schedule::Forward;
uint64_t schedule_seed_value = 0;
uint64_t launches_since_schedule_set = 0;

// The names of the kernels launched while recording (record_launches), in launch order.
bool recording_launches = false;
std::vector<std::string> launch_log;

struct KernelEntry {
  KernelAttributes attrs;
  std::string name;
};
std::unordered_map<const void*, KernelEntry>& kernel_registry() {
  static std::unordered_map<const void*, KernelEntry> registry;
  return registry;
}

KernelEntry lookup_kernel(const void* kernel) {
  std::lock_guard<std::mutex> lock(config_mutex);
  auto it = kernel_registry().find(kernel);
  if (it != kernel_registry().end()) return it->second;
  char name[48];
  std::snprintf(name, sizeof name, "<kernel %p>", kernel);
  return KernelEntry{KernelAttributes{}, name};
}

}  // namespace

[[noreturn]] void outside_kernel(const char* what) {
  throw Error(std::string("simt: ") + what + " used outside an emulated kernel");
}

void syncthreads(const std::source_location& where) {
  Fiber* f = running_fiber("__syncthreads");
  f->wait = Wait::Barrier;
  f->where = where;
  f->block->at_barrier++;
  yield(f);
}

void grid_sync(const std::source_location& where) {
  Fiber* f = running_fiber("simt::grid_sync");
  if (f->launch->req.kind != LaunchKind::Cooperative) {
    fault("simt::grid_sync", where, "the kernel was not launched with simt::launch_cooperative");
  }
  f->wait = Wait::Grid;
  f->where = where;
  f->launch->at_grid++;
  yield(f);
}

void publish_flag(unsigned* flag, unsigned value, const std::source_location& where) {
  Fiber* f = running_fiber("simt::publish_flag");
  if (flag == nullptr) fault("simt::publish_flag", where, "the flag is a null pointer");
  f->launch->order.release(actor_of(*f), flag, value);
  *flag = value;
}

// A thread's wait at wait_flag or wait_word_tag: it sleeps until its condition holds (resolve).
void wait_on(Fiber* f, const void* address, bool tagged_word, unsigned value, const std::source_location& where,
             bool mbarrier = false) {
  f->wait = Wait::Flag;
  f->where = where;
  f->flag = address;
  f->tagged_word = tagged_word;
  f->mbarrier = mbarrier;
  f->value = value;
  f->launch->flag_waiters.push_back(f);
  yield(f);
}

void wait_flag(const unsigned* flag, unsigned at_least, const std::source_location& where) {
  Fiber* f = running_fiber("simt::wait_flag");
  if (flag == nullptr) fault("simt::wait_flag", where, "the flag is a null pointer");
  if (flag_reached(*flag, at_least)) {
    f->launch->order.acquire(actor_of(*f), flag, at_least);
    return;
  }
  wait_on(f, flag, false, at_least, where);  // (release_flag_waiters records the acquire)
}

unsigned long long wait_word_tag(const unsigned long long* word, unsigned tag, const std::source_location& where) {
  Fiber* f = running_fiber("simt::wait_word_tag");
  if (word == nullptr) fault("simt::wait_word_tag", where, "the word is a null pointer");
  if (word_tag(*word) == tag) return *word;
  std::string broken = overwritten(word, tag);
  if (!broken.empty()) fault("simt::wait_word_tag", where, broken);
  wait_on(f, word, true, tag, where);
  // Other threads ran between the release and this resume: the word must still carry the tag.
  broken = overwritten(word, tag);
  if (!broken.empty()) fault("simt::wait_word_tag", where, broken);
  return *word;
}

uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int param, int width,
                       const std::source_location& where) {
  const char* name = op_name(op);
  Fiber* f = running_fiber(name);
  Block& b = *f->block;
  const unsigned lane = f->linear & 31u;
  const unsigned base = f->linear & ~31u;
  const unsigned lanes = std::min(32u, b.nthreads - base);
  const unsigned existing = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  if (!(mask >> lane & 1u)) fault(name, where, "mask " + hex(mask) + " excludes the calling lane " + std::to_string(lane));
  if (mask & ~existing) {
    const unsigned l = static_cast<unsigned>(__builtin_ctz(mask & ~existing));
    fault(name, where, "mask " + hex(mask) + " names inactive lane " + std::to_string(l) + " (warp " +
                           std::to_string(base / 32) + " of the block has " + std::to_string(lanes) + " threads)");
  }
  if (op != WarpOp::Sync && op != WarpOp::Ballot && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
    fault(name, where, "width " + std::to_string(width) + " is not a power of two in [1, 32]");
  }
  bool complete = true;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u) || l == lane) continue;
    const Fiber& g = b.fibers[base + l];
    if (g.wait == Wait::Exited) {
      fault(name, where, "mask " + hex(mask) + " names inactive lane " + std::to_string(l) + ", which has exited");
    }
    if (g.wait == Wait::Warp && (g.op != op || g.mask != mask)) {
      fault(name, where, "mask " + hex(mask) + " names lane " + std::to_string(l) + ", which " + describe(g) +
                             " (the lanes of a warp op must call the same op with the same mask)");
    }
    if (g.wait != Wait::Warp) complete = false;
  }
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->param = param;
  f->width = width;
  f->where = where;
  if (!complete) {
    f->wait = Wait::Warp;
    yield(f);
    return f->result;
  }
  // Last lane to arrive: compute every lane's result and wake the others.
  const auto w = static_cast<unsigned>(width);
  uint64_t ballot = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if ((mask >> l & 1u) && b.fibers[base + l].value != 0) ballot |= uint64_t{1} << l;
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& g = b.fibers[base + l];
    const unsigned segment = l & ~(w - 1);
    unsigned src = l;
    switch (op) {
      case WarpOp::Sync:
      case WarpOp::Ballot:
        break;
      case WarpOp::Shfl:
        src = segment + (static_cast<unsigned>(param) & (w - 1));
        break;
      case WarpOp::ShflUp:
        src = (l - segment) >= static_cast<unsigned>(param) ? l - static_cast<unsigned>(param) : l;
        break;
      case WarpOp::ShflDown:
        src = (l - segment) + static_cast<unsigned>(param) < w ? l + static_cast<unsigned>(param) : l;
        break;
      case WarpOp::ShflXor:
        src = l ^ static_cast<unsigned>(param);
        if (src >= segment + w) src = l;  // later segments read their own value, as in CUDA
        break;
    }
    if (!(mask >> src & 1u)) {
      fault(name, where, "lane " + std::to_string(l) + " reads lane " + std::to_string(src) + ", which is not in mask " +
                             hex(mask) + " (undefined in CUDA)");
    }
    g.result = op == WarpOp::Ballot ? ballot : b.fibers[base + src].value;
  }
  for (unsigned l = 0; l < 32; ++l) {
    if ((mask >> l & 1u) && l != lane) make_ready(*f->launch, &b.fibers[base + l]);
  }
  f->wait = Wait::Ready;
  return f->result;
}

namespace {

// Block b's instance of the static shared variable `key`, allocated on first use (by one of
// b's threads, or by another block of the cluster mapping it).
void* static_shared(const Launch& L, Block& b, const void* key, std::size_t bytes, std::size_t align,
                    const char* op, const std::source_location& where) {
  for (const SharedVar& v : b.statics) {
    if (v.key == key) return v.ptr;
  }
  if (static_cast<int64_t>(b.static_bytes + bytes + b.dynamic_bytes) > L.props.shared_mem_per_block_optin) {
    fault(op, where, "static (" + std::to_string(b.static_bytes + bytes) + " bytes) + dynamic (" +
                         std::to_string(b.dynamic_bytes) + " bytes) shared memory exceeds the per-block limit " +
                         std::to_string(L.props.shared_mem_per_block_optin) + " bytes");
  }
  void* p = allocate_shared(bytes, std::max<std::size_t>(align, 16));
  b.statics.push_back(SharedVar{key, p, bytes, std::max<std::size_t>(align, 16)});
  b.static_bytes += bytes;
  return p;
}

// The cluster primitives exist from compute capability 9.0 (the nvcc build traps below it).
Fiber* cluster_fiber(const char* op, const std::source_location& where) {
  Fiber* f = running_fiber(op);
  const DeviceProperties& p = f->launch->props;
  if (!detail::has_clusters(p)) {
    fault(op, where, "thread-block clusters need compute capability 9.0; the emulated device has " +
                         detail::format_compute_capability(p) + " (a GPU build for it traps here)");
  }
  return f;
}

// Between a thread's cluster_arrive and its cluster_wait the barrier orders none of its accesses
// to other blocks' memory: the emulator refuses them there rather than order them wrongly.
void refuse_inside_split_barrier(const Fiber* f, const char* op, const std::source_location& where) {
  if (f->cluster_arrived) {
    fault(op, where, "called between simt::cluster_arrive (" + site(f->arrived_where) +
                         ") and simt::cluster_wait, where the cluster barrier orders no access to another block's "
                         "memory: before the arrival or after the wait");
  }
}

bool points_into(const void* p, const void* base, std::size_t bytes) {
  const auto* c = static_cast<const char*>(p);
  const auto* b = static_cast<const char*>(base);
  return c >= b && c <= b + bytes;  // one past the end is a valid pointer too
}

}  // namespace

void* block_static_shared(const void* key, std::size_t bytes, std::size_t align, const std::source_location& where) {
  Fiber* f = running_fiber("SIMT_SHARED");
  return static_shared(*f->launch, *f->block, key, bytes, align, "SIMT_SHARED", where);
}

void copy_async(void* dst, const void* src, std::size_t bytes, const std::source_location& where) {
  const char* op = bytes == 16 ? "simt::copy_async_16" : "simt::copy_async_scalar";
  Fiber* f = running_fiber(op);
  const Block& b = *f->block;
  const auto* last = static_cast<const char*>(dst) + bytes - 1;
  bool shared = points_into(dst, b.dynamic, b.dynamic_bytes) && points_into(last + 1, b.dynamic, b.dynamic_bytes);
  for (const SharedVar& v : b.statics) {
    shared = shared || (points_into(dst, v.ptr, v.bytes) && points_into(last + 1, v.ptr, v.bytes));
  }
  if (!shared) fault(op, where, "the destination does not lie within this block's shared memory");
  if (reinterpret_cast<std::uintptr_t>(dst) % bytes != 0 || reinterpret_cast<std::uintptr_t>(src) % bytes != 0) {
    fault(op, where, "a " + std::to_string(bytes) + "-byte copy needs " + std::to_string(bytes) +
                         "-byte aligned source and destination addresses");
  }
  // Ordered after the source's writers when issued; a read in flight until its wait.
  MemoryOrder& order = f->launch->order;
  const std::string unordered = order.check_read(actor_of(*f), src, bytes);
  if (!unordered.empty()) fault(op, where, unordered);
  order.record_read(actor_of(*f), src, bytes, op, where.file_name(), where.line(), /*track_new=*/false,
                    /*in_flight=*/true);
  f->open_copies.push_back(AsyncCopy{dst, src, bytes, where});
}

void commit_async(const std::source_location&) {
  Fiber* f = running_fiber("simt::commit_async");
  f->copy_groups.push_back(std::move(f->open_copies));
  f->open_copies.clear();
}

void wait_async(unsigned pending, const std::source_location&) {
  Fiber* f = running_fiber("simt::wait_async");
  while (f->copy_groups.size() > pending) {
    for (const AsyncCopy& c : f->copy_groups.front()) {
      f->launch->order.complete_read(actor_of(*f), c.src, c.bytes);
      std::memcpy(c.dst, c.src, c.bytes);
    }
    f->copy_groups.pop_front();
  }
}

void cross_block_access(const void* p, std::size_t bytes, bool write, const std::source_location& where) {
  const char* op = write ? "simt::store_cross_block" : "simt::load_cross_block";
  Fiber* f = running_fiber(op);
  if (p == nullptr) fault(op, where, "the address is a null pointer");
  refuse_inside_split_barrier(f, op, where);
  MemoryOrder& order = f->launch->order;
  const Actor who = actor_of(*f);
  std::string unordered;
  if (write) {
    unordered = order.write(who, p, bytes, op, where.file_name(), where.line());
  } else {
    unordered = order.check_read(who, p, bytes);
    if (unordered.empty()) order.record_read(who, p, bytes, op, where.file_name(), where.line(), /*track_new=*/true);
  }
  if (!unordered.empty()) fault(op, where, unordered);
}

void* block_dynamic_shared(const std::source_location&) { return running_fiber("SIMT_DYNAMIC_SHARED")->block->dynamic; }

unsigned cluster_rank(const std::source_location& where) { return cluster_fiber("simt::cluster_rank", where)->block->rank; }

unsigned cluster_size(const std::source_location& where) {
  return cluster_fiber("simt::cluster_size", where)->block->cluster->size;
}

// The cluster barrier in two halves (cluster_sync is both at one site). cluster_arrive counts
// the thread in and lets it run on (other threads run first: a schedule may reach the wait
// with the barrier complete or not); cluster_wait sleeps until every live thread of the
// cluster has arrived (release_cluster_barrier), or passes if that happened already.
void arrive_at_cluster_barrier(Fiber* f, const char* op, const std::source_location& where) {
  if (f->cluster_arrived) {
    fault(op, where, "this thread arrived at the cluster barrier at " + site(f->arrived_where) +
                         " and has not waited since: simt::cluster_wait before it arrives again");
  }
  f->cluster_arrived = true;
  f->arrived_where = where;
  f->arrived_phase = f->block->cluster->phase;
  f->block->cluster->arrived++;
}

void wait_at_cluster_barrier(Fiber* f, bool split, const std::source_location& where) {
  Cluster& c = *f->block->cluster;
  if (c.phase > f->arrived_phase) {  // complete since it arrived
    f->cluster_arrived = false;
    make_ready(*f->launch, f);
    yield(f);
    return;
  }
  f->wait = Wait::Cluster;
  f->split_wait = split;
  f->where = where;
  c.at_barrier++;
  yield(f);
}

void cluster_sync(const std::source_location& where) {
  Fiber* f = cluster_fiber("simt::cluster_sync", where);
  arrive_at_cluster_barrier(f, "simt::cluster_sync", where);
  wait_at_cluster_barrier(f, false, where);
}

void cluster_arrive(const std::source_location& where) {
  Fiber* f = cluster_fiber("simt::cluster_arrive", where);
  arrive_at_cluster_barrier(f, "simt::cluster_arrive", where);
  make_ready(*f->launch, f);
  yield(f);
}

void cluster_wait(const std::source_location& where) {
  Fiber* f = cluster_fiber("simt::cluster_wait", where);
  if (!f->cluster_arrived) {
    fault("simt::cluster_wait", where, "this thread has not arrived at the cluster barrier (simt::cluster_arrive) "
                                       "since it last passed one");
  }
  wait_at_cluster_barrier(f, true, where);
}

namespace {

// cluster_map_shared's work for the primitive `op` of thread f.
void* map_shared(Fiber* f, const void* local, unsigned rank, const char* op, const std::source_location& where) {
  refuse_inside_split_barrier(f, op, where);
  Block& b = *f->block;
  const Cluster& c = *b.cluster;
  if (rank >= c.size) {
    fault(op, where, "rank " + std::to_string(rank) + " is out of range: the cluster has " + std::to_string(c.size) +
                         " block" + (c.size == 1 ? "" : "s") + " (ranks 0.." + std::to_string(c.size - 1) + ")");
  }
  // Which of this block's shared variables `local` points into, and where.
  const SharedVar* var = nullptr;
  std::size_t offset = 0;
  if (points_into(local, b.dynamic, b.dynamic_bytes)) {
    offset = static_cast<std::size_t>(static_cast<const char*>(local) - static_cast<const char*>(b.dynamic));
  } else {
    for (const SharedVar& v : b.statics) {
      if (points_into(local, v.ptr, v.bytes)) {
        var = &v;
        offset = static_cast<std::size_t>(static_cast<const char*>(local) - static_cast<const char*>(v.ptr));
        break;
      }
    }
    if (var == nullptr) {
      std::string whose = "";
      for (unsigned r = 0; r < c.size; ++r) {
        const Block& o = c.blocks[r];
        bool inside = points_into(local, o.dynamic, o.dynamic_bytes);
        for (const SharedVar& v : o.statics) inside = inside || points_into(local, v.ptr, v.bytes);
        if (inside) whose = " (it points into the shared memory of block " + detail::format_dim(o.idx) + ", cluster rank " +
                            std::to_string(r) + ": map this block's own address)";
      }
      char address[32];
      std::snprintf(address, sizeof address, "%p", local);
      fault(op, where, std::string("pointer ") + address +
                           " does not point into this block's shared memory (a SIMT_SHARED variable or the dynamic "
                           "shared memory)" + whose);
    }
  }
  Block& target = c.blocks[rank];
  if (target.exited == target.nthreads) {
    fault(op, where, "block " + detail::format_dim(target.idx) + " (cluster rank " + std::to_string(rank) +
                         ") has exited: its shared memory is gone (cluster_sync before it exits)");
  }
  char* base = var == nullptr ? static_cast<char*>(target.dynamic)
                              : static_cast<char*>(static_shared(*f->launch, target, var->key, var->bytes, var->align,
                                                                 op, where));
  if (&target != &b) {
    bool known = false;
    for (const Mapping& m : target.mapped_by) known = known || m.by->block == &b;
    if (!known) target.mapped_by.push_back(Mapping{f, where});
  }
  return base + offset;
}

}  // namespace

void* cluster_map_shared(const void* local, unsigned rank, const std::source_location& where) {
  constexpr const char* op = "simt::cluster_map_shared";
  return map_shared(cluster_fiber(op, where), local, rank, op, where);
}

// ---------------------------------------------------------------------------------------
// mbarriers and asynchronous stores into distributed shared memory (st.async).

namespace {

// Whether `p` .. p + bytes lies within one of block b's shared variables (or its dynamic memory).
bool within_shared(const Block& b, const void* p, std::size_t bytes) {
  const char* last = static_cast<const char*>(p) + bytes;
  if (points_into(p, b.dynamic, b.dynamic_bytes) && points_into(last, b.dynamic, b.dynamic_bytes)) return true;
  for (const SharedVar& v : b.statics) {
    if (points_into(p, v.ptr, v.bytes) && points_into(last, v.ptr, v.bytes)) return true;
  }
  return false;
}

MBarrier& find_mbarrier(Launch& L, const void* bar, const char* op, const std::source_location& where) {
  auto it = L.mbarriers.find(bar);
  if (it == L.mbarriers.end()) {
    fault(op, where, "the mbarrier at " + pointer_text(bar) + " was not initialised (simt::mbarrier_init)");
  }
  return it->second;
}

// A phase whose arrivals and bytes are all in completes: its stores land, waiters may pass.
void complete_phases(MBarrier& m) {
  if (m.pending != 0 || m.tx != 0) return;
  for (const AsyncStore& st : m.stores) std::memcpy(st.dst, st.bytes, st.size);
  m.stores.clear();
  m.phase++;
  m.pending = m.arrivals;
}

// The hardware's transaction count holds 20 bits and a sign.
constexpr int64_t kMaxTxCount = (int64_t(1) << 20) - 1;

void check_tx(const MBarrier& m, const void* bar, const char* op, const std::source_location& where) {
  if (m.tx > kMaxTxCount || m.tx < -kMaxTxCount) {
    fault(op, where, "the transaction count of the mbarrier at " + pointer_text(bar) + " is " + std::to_string(m.tx) +
                         " bytes, outside [-(2^20 - 1), 2^20 - 1]");
  }
}

}  // namespace

void mbarrier_init(unsigned long long* bar, unsigned arrivals, const std::source_location& where) {
  constexpr const char* op = "simt::mbarrier_init";
  Fiber* f = running_fiber(op);
  if (!within_shared(*f->block, bar, sizeof *bar)) {
    fault(op, where, "the mbarrier at " + pointer_text(bar) + " does not lie within this block's shared memory");
  }
  if (reinterpret_cast<std::uintptr_t>(bar) % 8 != 0) fault(op, where, "an mbarrier needs an 8-byte aligned address");
  if (arrivals < 1 || arrivals > static_cast<unsigned>(kMaxTxCount)) {
    fault(op, where, "the arrival count is " + std::to_string(arrivals) + ", outside [1, 2^20 - 1]");
  }
  MBarrier& m = f->launch->mbarriers[bar];
  m = MBarrier{};
  m.block = f->block;
  m.arrivals = m.pending = arrivals;
  m.visible_after = f->block->cluster->phase;
  m.init_where = where;
  *bar = 0;  // (the word itself is opaque; the emulator keeps the state)
}

void mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes, const std::source_location& where) {
  constexpr const char* op = "simt::mbarrier_arrive_expect_tx";
  Fiber* f = running_fiber(op);
  MBarrier& m = find_mbarrier(*f->launch, bar, op, where);
  if (m.block != f->block) fault(op, where, "the mbarrier at " + pointer_text(bar) + " belongs to another block");
  m.tx += bytes;
  check_tx(m, bar, op, where);
  m.pending--;
  complete_phases(m);
}

void mbarrier_wait(unsigned long long* bar, unsigned parity, const std::source_location& where) {
  constexpr const char* op = "simt::mbarrier_wait";
  Fiber* f = running_fiber(op);
  MBarrier& m = find_mbarrier(*f->launch, bar, op, where);
  if (m.block != f->block) fault(op, where, "the mbarrier at " + pointer_text(bar) + " belongs to another block");
  if (parity > 1) fault(op, where, "the phase parity is " + std::to_string(parity) + ", not 0 or 1");
  if ((m.phase & 1u) != parity) return;  // the phase of that parity has completed
  wait_on(f, bar, false, parity, where, /*mbarrier=*/true);
}

void store_async(void* local_dst, unsigned rank, const void* value, std::size_t bytes, unsigned long long* local_bar,
                 const std::source_location& where) {
  constexpr const char* op = "simt::store_async";
  Fiber* f = cluster_fiber(op, where);
  if (reinterpret_cast<std::uintptr_t>(local_dst) % bytes != 0) {
    fault(op, where, "a " + std::to_string(bytes) + "-byte store needs a " + std::to_string(bytes) +
                         "-byte aligned address");
  }
  if (!within_shared(*f->block, local_dst, bytes)) {
    fault(op, where, "the " + std::to_string(bytes) + " bytes at " + pointer_text(local_dst) +
                         " do not lie within this block's shared memory");
  }
  void* dst = map_shared(f, local_dst, rank, op, where);
  const void* bar = map_shared(f, local_bar, rank, op, where);
  Launch& L = *f->launch;
  MBarrier& m = find_mbarrier(L, bar, op, where);
  if (m.block != f->block && f->block->cluster->phase <= m.visible_after) {
    fault(op, where, "the mbarrier at " + pointer_text(bar) + " (block " + detail::format_dim(m.block->idx) +
                         ") was initialised at " + site(m.init_where) +
                         " and no cluster_sync has made it visible to this block since");
  }
  const bool at_once = L.mode == Schedule::Reverse || (L.mode == Schedule::Shuffle && (L.rng() & 1u) != 0);
  if (at_once) {
    std::memcpy(dst, value, bytes);
  } else {
    AsyncStore st{dst, {}, bytes};
    std::memcpy(st.bytes, value, bytes);
    m.stores.push_back(st);
  }
  m.tx -= static_cast<int64_t>(bytes);
  check_tx(m, bar, op, where);
  complete_phases(m);
}

void kernel_check_failed(const char* condition, const std::string& message, const std::source_location& where) {
  throw KernelFault("SIMT_KERNEL_CHECK(" + std::string(condition) + ") failed at " + site(where) + ": " + message);
}

bool register_kernel(const void* kernel, const char* name, int max_threads, int regs_per_thread) {
  std::lock_guard<std::mutex> lock(config_mutex);
  KernelEntry& e = kernel_registry()[kernel];
  e.name = name;
  e.attrs.max_threads_per_block = max_threads;
  e.attrs.regs_per_thread = regs_per_thread;
  return true;
}

KernelAttributes kernel_attributes(const void* kernel) { return lookup_kernel(kernel).attrs; }

void set_nonportable_cluster_size_allowed(const void* kernel, bool allowed) {
  const std::string name = lookup_kernel(kernel).name;
  std::lock_guard<std::mutex> lock(config_mutex);
  KernelEntry& e = kernel_registry()[kernel];
  if (e.name.empty()) e.name = name;
  e.attrs.nonportable_cluster_size_allowed = allowed;
}

int max_active_blocks_per_sm(const void* kernel, int block_threads, std::size_t dynamic_smem) {
  return detail::occupancy_model(device_properties(), kernel_attributes(kernel), block_threads,
                                 static_cast<int64_t>(dynamic_smem));
}

int max_active_clusters(const void* kernel, int block_threads, std::size_t dynamic_smem, unsigned cluster_size) {
  return detail::cluster_occupancy_model(device_properties(), kernel_attributes(kernel), block_threads,
                                         static_cast<int64_t>(dynamic_smem), cluster_size);
}

void run_launch(const LaunchRequest& request) {
  if (current_thread != nullptr || active_launch != nullptr) {
    throw Error("simt: launch at " + site(request.where) + " from inside an emulated kernel (dynamic parallelism is not emulated)");
  }
  Launch L;
  L.req = request;
  L.props = device_properties();
  const KernelEntry entry = lookup_kernel(request.kernel);
  L.attrs = entry.attrs;
  L.kernel_name = entry.name;
  detail::validate_launch(L.props, L.attrs, request.grid, request.block, request.dynamic_smem, request.where);
  {
    std::lock_guard<std::mutex> lock(config_mutex);
    if (recording_launches) launch_log.push_back(entry.name);
  }
  L.threads_per_block = static_cast<unsigned>(detail::volume(request.block));
  const unsigned long long blocks = detail::volume(request.grid);
  if (request.kind == LaunchKind::Cluster) {
    const int clusters = detail::cluster_occupancy_model(L.props, L.attrs, static_cast<int>(L.threads_per_block),
                                                         static_cast<int64_t>(request.dynamic_smem), request.cluster_size);
    detail::validate_cluster(L.props, L.attrs, request.grid, request.block, request.dynamic_smem, request.cluster_size,
                             clusters, request.where);
    if (static_cast<unsigned long long>(request.cluster_size) * L.threads_per_block > max_live_fibers()) {
      throw Error("simt: cluster launch at " + site(request.where) + " needs " +
                  std::to_string(static_cast<unsigned long long>(request.cluster_size) * L.threads_per_block) +
                  " co-resident emulated threads; the emulator holds at most " + std::to_string(max_live_fibers()));
    }
  }
  if (request.kind == LaunchKind::Cooperative) {
    const int per_sm = detail::occupancy_model(L.props, L.attrs, static_cast<int>(L.threads_per_block),
                                               static_cast<int64_t>(request.dynamic_smem));
    detail::validate_cooperative(L.props, per_sm, request.grid, request.where);
    if (blocks * L.threads_per_block > max_live_fibers()) {
      throw Error("simt: cooperative launch at " + site(request.where) + " needs " +
                  std::to_string(blocks * L.threads_per_block) + " co-resident emulated threads; the emulator holds at most " +
                  std::to_string(max_live_fibers()) + " (emulate fewer SMs)");
    }
  }
  uint64_t seed = 0;
  {
    std::lock_guard<std::mutex> lock(config_mutex);
    L.mode = schedule_mode_value;
    seed = schedule_seed_value * 0x9E3779B97F4A7C15ull + launches_since_schedule_set++;
  }
  L.rng.seed(seed);
  L.order.begin_launch(blocks, request.grid.x,
                       request.kind == LaunchKind::Plain         ? MemoryOrder::Residency::None
                       : request.kind == LaunchKind::Cooperative ? MemoryOrder::Residency::Grid
                                                                 : MemoryOrder::Residency::Cluster,
                       request.cluster_size);
  L.order.set_describer(
      [](unsigned long long block, unsigned thread, const void* launch) {
        const LaunchRequest& r = static_cast<const Launch*>(launch)->req;
        return "block " + detail::format_dim(unflatten(block, r.grid)) + " thread " +
               detail::format_dim(unflatten(thread, r.block));
      },
      &L);
  active_launch = &L;
  struct Deactivate {
    ~Deactivate() { active_launch = nullptr; }
  } deactivate;
  const OverflowHandler overflow_handler;

  // Blocks (clusters in a cluster launch) in schedule order.
  const unsigned per_cluster = request.kind == LaunchKind::Cluster ? request.cluster_size : 1;
  const unsigned long long units = blocks / per_cluster;
  std::vector<unsigned long long> order(units);
  for (unsigned long long i = 0; i < units; ++i) order[i] = i;
  if (L.mode == Schedule::Reverse) std::reverse(order.begin(), order.end());
  if (L.mode == Schedule::Shuffle) std::shuffle(order.begin(), order.end(), L.rng);
  if (request.kind == LaunchKind::Cooperative) {
    std::sort(order.begin(), order.end());  // fiber order within the session carries the schedule
    run_session(L, order);
  } else if (request.kind == LaunchKind::Cluster) {
    // Cluster k: blocks x = (k mod clusters along x) * size + rank, for each y and z.
    const unsigned long long along_x = request.grid.x / per_cluster;
    std::vector<unsigned long long> members(per_cluster);
    for (unsigned long long k : order) {
      const unsigned long long first_x = (k % along_x) * per_cluster;
      const unsigned long long row = k / along_x;  // y + grid.y * z
      for (unsigned r = 0; r < per_cluster; ++r) members[r] = first_x + r + request.grid.x * row;
      run_session(L, members);
    }
  } else {
    std::vector<unsigned long long> one(1);
    for (unsigned long long id : order) {
      one[0] = id;
      run_session(L, one);
    }
  }
  std::lock_guard<std::mutex> lock(config_mutex);
  KernelEntry& e = kernel_registry()[request.kernel];
  if (e.name.empty()) e.name = entry.name;
  e.attrs.static_shared_bytes = std::max<int64_t>(e.attrs.static_shared_bytes, static_cast<int64_t>(L.max_static_bytes));
}

}  // namespace emu

// ---------------------------------------------------------------------------------------

DeviceProperties default_device_properties() { return DeviceProperties{}; }

DeviceProperties device_properties() {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  return emu::emulated_props;
}

void set_device_properties(const DeviceProperties& p) {
  auto require = [](bool ok, const char* what) {
    if (!ok) throw Error(std::string("simt: invalid emulated device properties: ") + what);
  };
  require(p.sm_count >= 1, "sm_count must be >= 1");
  require(p.sms_per_gpc >= 0, "sms_per_gpc must be >= 0 (0: clusters placed without GPCs)");
  require(p.warp_size == 32, "warp_size must be 32");
  require(p.max_threads_per_block >= 32 && p.max_threads_per_block <= 1024, "max_threads_per_block must be in [32, 1024]");
  require(p.max_threads_per_sm >= 32, "max_threads_per_sm must be >= 32");
  require(p.max_blocks_per_sm >= 1, "max_blocks_per_sm must be >= 1");
  require(p.shared_mem_per_block >= 0 && p.shared_mem_per_block <= p.shared_mem_per_block_optin,
          "shared_mem_per_block must be in [0, shared_mem_per_block_optin]");
  require(p.shared_mem_per_block_optin <= p.shared_mem_per_sm, "shared_mem_per_block_optin must be <= shared_mem_per_sm");
  require(p.reserved_shared_mem_per_block >= 0, "reserved_shared_mem_per_block must be >= 0");
  require(p.regs_per_block >= 1 && p.regs_per_sm >= p.regs_per_block, "need 1 <= regs_per_block <= regs_per_sm");
  require(p.compute_capability_major >= 1 && p.compute_capability_minor >= 0 && p.compute_capability_minor <= 9,
          "compute capability must be major >= 1, minor in [0, 9]");
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  emu::emulated_props = p;
}

void reset_device_properties() {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  emu::emulated_props = DeviceProperties{};
}

void set_schedule(Schedule mode, uint64_t seed) {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  emu::schedule_mode_value = mode;
  emu::schedule_seed_value = seed;
  emu::launches_since_schedule_set = 0;
}

Schedule schedule_mode() {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  return emu::schedule_mode_value;
}

uint64_t schedule_seed() {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  return emu::schedule_seed_value;
}

void record_launches(bool on) {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  emu::recording_launches = on;
  emu::launch_log.clear();
}

std::vector<std::string> recorded_launches() {
  std::lock_guard<std::mutex> lock(emu::config_mutex);
  return emu::launch_log;
}

}  // namespace simt
