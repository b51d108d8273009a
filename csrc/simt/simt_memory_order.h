// simt_memory_order.h — the emulator's check of the order between blocks' accesses to global
// memory (g++ only, internal to csrc/simt; used by simt_emulator.cpp).
//
// The emulator runs one thread at a time, so its memory is sequentially consistent: a kernel
// whose blocks hand values to each other through global memory gets the right result here
// even where nothing orders a write before another block's read, and a GPU may return the
// old value. For the accesses kernels make through simt::store_cross_block,
// simt::load_cross_block and simt::copy_async_16 this checker follows the order that CUDA's
// memory model does promise, and reports any conflicting pair of accesses (a write and a
// later read, write or read-then-write of the same word by another thread) not ordered by it:
//  - in one block: one thread's accesses by program order; different threads' by a
//    block-wide barrier between them (__syncthreads, or a grid or cluster barrier);
//  - between blocks: a grid barrier (cooperative launch) or a cluster barrier (the cluster's
//    blocks) orders all that came before it before all that follows; a release
//    (simt::publish_flag) orders what its thread did before it, and what its block did before a
//    block-wide barrier preceding it, before what the thread that acquires the flag
//    (simt::wait_flag) does after, and what its block does after a later block-wide barrier.
//    Such orders compose through further releases and acquires.
// Blocks of a plain launch, and of different clusters, are not co-resident: nothing orders
// their accesses to each other's words. A flag's values are assumed to come from
// simt::publish_flag once anyone waits for them (a plain store may initialise it before a
// barrier); a wait acquires the earliest release whose value satisfied it (the load may have
// seen no later one). A block's knowledge of another block's releases is kept as the latest
// release it acquired (with what that release knew), which is exact for releases made by one
// thread of a block, or separated by barriers, as in this project. Words are 4 bytes: the
// accessors take 4- and 8-byte types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace simt::emu {

// Who makes an access, release or acquire: the block's linear index in the grid, the thread's
// linear index in the block, and the block-wide barriers the block has passed.
struct Actor {
  unsigned long long block = 0;
  unsigned thread = 0;
  uint64_t phase = 0;
};

class MemoryOrder {
 public:
  // Which blocks of a launch run at the same time, so that a barrier or a flag can order their
  // accesses: none (a plain launch), all (cooperative), those of one cluster (cluster launch:
  // clusters of cluster_size consecutive blocks along x).
  enum class Residency { None, Grid, Cluster };
  // A new launch of `blocks` blocks, grid_x along x.
  void begin_launch(unsigned long long blocks, unsigned grid_x, Residency residency, unsigned cluster_size);

  // A block-wide barrier of `block` completed: what its threads acquired before now holds for
  // all of them.
  void block_barrier(unsigned long long block);
  // A grid barrier, or a cluster's barrier, completed over `blocks`, each with the phase it
  // had when its threads arrived: everything before it is ordered before everything after.
  void collective_barrier(const std::vector<Actor>& blocks);
  // simt::publish_flag by `who` of `value` to `flag` (just before the store), and
  // simt::wait_flag by `who`, satisfied (the flag reached `at_least`).
  void release(const Actor& who, const void* flag, unsigned value);
  void acquire(const Actor& who, const void* flag, unsigned at_least);

  // An access of `bytes` bytes at `p` by `who` through `op` at file:line. check_read: "", or
  // the error for a read not ordered after the word's last write by another thread; the read
  // is then recorded with record_read, for words not yet tracked too where track_new
  // (simt::load_cross_block: a later write must follow it; a copy reads weights and inputs no
  // block writes, and tracking them would cost for nothing). A copy's read is recorded in
  // flight when issued (no write of the word may come before its wait) and completed by
  // complete_read at the wait. write: "", or the error for a write not ordered after the word's
  // last write and the reads since; then records it.
  std::string check_read(const Actor& who, const void* p, std::size_t bytes) const;
  void record_read(const Actor& who, const void* p, std::size_t bytes, const char* op, const char* file,
                   unsigned line, bool track_new, bool in_flight = false);
  void complete_read(const Actor& who, const void* p, std::size_t bytes);
  std::string write(const Actor& who, const void* p, std::size_t bytes, const char* op, const char* file,
                    unsigned line);

  // For error messages: (x,y,z) of a block or thread index.
  using Describe = std::string (*)(unsigned long long block, unsigned thread, const void* context);
  void set_describer(Describe describe, const void* context) {
    describe_ = describe;
    describe_context_ = context;
  }

 private:
  struct Access {
    unsigned long long block = 0;
    unsigned thread = 0;
    uint64_t phase = 0;
    uint32_t releases = 0;  // the block's releases before the access
    bool in_flight = false;  // a copy's read, issued and not yet waited for
    const char* op = nullptr;
    const char* file = nullptr;
    unsigned line = 0;
  };
  struct Word {
    bool written = false;
    Access write;
    std::vector<Access> reads;  // since the write
  };
  struct Release {
    unsigned thread = 0;
    uint64_t phase = 0;
    bool whole_block = false;     // a grid or cluster barrier: after every thread of the block
    std::vector<uint32_t> knows;  // [slots]: the latest release of each co-resident block ordered before it
  };
  struct Acquired {
    unsigned thread;  // in the acquiring block; its block learns it at its next barrier
    unsigned long long from;
    uint32_t epoch;
  };
  struct BlockState {
    std::vector<Release> releases;  // epoch e is releases[e - 1]
    std::vector<uint32_t> known;    // [slots] (empty: none): releases every thread of the block follows
    std::vector<Acquired> pending;  // acquired by single threads since the block's last barrier
  };

  BlockState& state(unsigned long long block);
  bool co_resident(unsigned long long a, unsigned long long b) const;
  // Where a block's releases are counted in the knowledge vectors of the blocks co-resident
  // with it: its index in the grid, or its rank in its cluster.
  std::size_t slot(unsigned long long block) const;
  uint32_t releases_of(unsigned long long block) const;
  // The latest release of block `x` that `who` follows.
  uint32_t knowledge(const Actor& who, unsigned long long x) const;
  void learn(std::vector<uint32_t>& known, unsigned long long from, uint32_t epoch) const;
  // Whether `earlier` (an access by another thread) is ordered before an access by `who` now.
  bool ordered(const Access& earlier, const Actor& who) const;
  // The error for an access (`access`: "reads" or "writes") of the word at `a` by `who` that
  // `earlier` (which `verb`: "wrote" or "read" it) is not ordered before.
  std::string unordered(const char* access, std::uintptr_t a, const char* verb, const Access& earlier,
                        const Actor& who) const;
  std::string describe(unsigned long long block, unsigned thread) const;

  bool active_ = false;  // set by the first access: until then no access needs ordering
  bool tracks_releases_ = false;  // some blocks are co-resident
  Residency residency_ = Residency::None;
  unsigned grid_x_ = 1, cluster_size_ = 1;
  unsigned long long blocks_ = 0;
  std::vector<BlockState> states_;  // [blocks] when co-resident and active
  std::size_t slots_ = 0;  // knowledge vector length: the grid's blocks, or a cluster's
  struct FlagRelease {
    unsigned value;
    unsigned long long block;
    uint32_t epoch;
  };
  std::unordered_map<const void*, std::vector<FlagRelease>> flag_releases_;  // in release order
  std::unordered_map<std::uintptr_t, Word> words_;
  Describe describe_ = nullptr;
  const void* describe_context_ = nullptr;
};

}  // namespace simt::emu
