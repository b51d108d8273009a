// simt_memory_order.cpp — the order between blocks' accesses to global memory
// (simt_memory_order.h), checked for the SIMT emulator.
#include "simt/simt_memory_order.h"

#include <algorithm>
#include <cstdio>

namespace simt::emu {

namespace {

// Accesses are tracked per 4-byte word: a float32 value, half of a float64 one, a quarter
// of a 16-byte copy.
constexpr std::uintptr_t kWordBytes = 4;

std::uintptr_t first_word(const void* p) { return reinterpret_cast<std::uintptr_t>(p) & ~(kWordBytes - 1); }

std::string address_text(std::uintptr_t a) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", reinterpret_cast<const void*>(a));
  return buf;
}

}  // namespace

void MemoryOrder::begin_launch(unsigned long long blocks, unsigned grid_x, Residency residency,
                               unsigned cluster_size) {
  active_ = false;
  residency_ = residency;
  tracks_releases_ = residency != Residency::None;
  grid_x_ = grid_x;
  cluster_size_ = cluster_size;
  blocks_ = blocks;
  slots_ = residency == Residency::Cluster ? cluster_size : blocks;
  states_.clear();
  flag_releases_.clear();
  words_.clear();
}

MemoryOrder::BlockState& MemoryOrder::state(unsigned long long block) { return states_[block]; }

bool MemoryOrder::co_resident(unsigned long long a, unsigned long long b) const {
  switch (residency_) {
    case Residency::None: return a == b;
    case Residency::Grid: return true;
    case Residency::Cluster:
      return a / grid_x_ == b / grid_x_ && (a % grid_x_) / cluster_size_ == (b % grid_x_) / cluster_size_;
  }
  return false;
}

std::size_t MemoryOrder::slot(unsigned long long block) const {
  return residency_ == Residency::Cluster ? (block % grid_x_) % cluster_size_ : block;
}

uint32_t MemoryOrder::releases_of(unsigned long long block) const {
  return tracks_releases_ && active_ ? static_cast<uint32_t>(states_[block].releases.size()) : 0;
}

void MemoryOrder::learn(std::vector<uint32_t>& known, unsigned long long from, uint32_t epoch) const {
  if (known.empty()) known.assign(slots_, 0);
  known[slot(from)] = std::max(known[slot(from)], epoch);
  const std::vector<uint32_t>& through = states_[from].releases[epoch - 1].knows;
  for (std::size_t x = 0; x < through.size(); ++x) known[x] = std::max(known[x], through[x]);
}

void MemoryOrder::block_barrier(unsigned long long block) {
  if (!active_ || !tracks_releases_) return;
  BlockState& s = state(block);
  for (const Acquired& a : s.pending) learn(s.known, a.from, a.epoch);
  s.pending.clear();
}

void MemoryOrder::collective_barrier(const std::vector<Actor>& blocks) {
  if (!active_ || !tracks_releases_) return;
  // After it every member follows every member's release at the barrier, and all any member
  // followed before it.
  std::vector<uint32_t> all(slots_, 0);
  for (const Actor& a : blocks) {
    block_barrier(a.block);
    BlockState& s = state(a.block);
    s.releases.push_back(Release{.thread = 0, .phase = a.phase, .whole_block = true, .knows = s.known});
    for (std::size_t x = 0; x < s.known.size(); ++x) all[x] = std::max(all[x], s.known[x]);
  }
  for (const Actor& a : blocks) all[slot(a.block)] = static_cast<uint32_t>(state(a.block).releases.size());
  for (const Actor& a : blocks) state(a.block).known = all;
}

void MemoryOrder::release(const Actor& who, const void* flag, unsigned value) {
  if (!active_ || !tracks_releases_) return;
  BlockState& s = state(who.block);
  Release r{.thread = who.thread, .phase = who.phase, .whole_block = false, .knows = s.known};
  for (const Acquired& a : s.pending) {
    if (a.thread == who.thread) learn(r.knows, a.from, a.epoch);
  }
  s.releases.push_back(std::move(r));
  flag_releases_[flag].push_back({value, who.block, static_cast<uint32_t>(s.releases.size())});
}

void MemoryOrder::acquire(const Actor& who, const void* flag, unsigned at_least) {
  if (!active_ || !tracks_releases_) return;
  const auto it = flag_releases_.find(flag);
  if (it == flag_releases_.end()) return;
  // The earliest release that satisfies the wait: its load may have seen no later one.
  for (const FlagRelease& r : it->second) {
    if (static_cast<int>(r.value - at_least) >= 0) {
      state(who.block).pending.push_back(Acquired{who.thread, r.block, r.epoch});
      return;
    }
  }
}

uint32_t MemoryOrder::knowledge(const Actor& who, unsigned long long x) const {
  if (!tracks_releases_ || !active_) return 0;
  const BlockState& s = states_[who.block];
  uint32_t k = s.known.empty() ? 0 : s.known[slot(x)];
  for (const Acquired& a : s.pending) {
    if (a.thread != who.thread) continue;
    if (a.from == x) {
      k = std::max(k, a.epoch);
    } else {
      const std::vector<uint32_t>& through = states_[a.from].releases[a.epoch - 1].knows;
      if (!through.empty()) k = std::max(k, through[slot(x)]);
    }
  }
  return k;
}

bool MemoryOrder::ordered(const Access& earlier, const Actor& who) const {
  if (earlier.block == who.block) return earlier.thread == who.thread || earlier.phase < who.phase;
  if (!co_resident(earlier.block, who.block)) return false;
  const uint32_t known = knowledge(who, earlier.block);
  if (known <= earlier.releases) return false;
  const std::vector<Release>& releases = states_[earlier.block].releases;
  const Release& last = releases[known - 1];
  // A release e after the access that covers it (made by its thread, after a barrier that
  // follows it, or by all threads) and that release `known` follows.
  for (uint32_t e = earlier.releases + 1; e <= known; ++e) {
    const Release& r = releases[e - 1];
    const bool covers = r.whole_block || r.thread == earlier.thread || r.phase > earlier.phase;
    const bool precedes =
        e == known || r.whole_block || last.whole_block || r.thread == last.thread || r.phase < last.phase;
    if (covers && precedes) return true;
  }
  return false;
}

std::string MemoryOrder::describe(unsigned long long block, unsigned thread) const {
  return describe_ != nullptr ? describe_(block, thread, describe_context_)
                              : "block " + std::to_string(block) + " thread " + std::to_string(thread);
}

std::string MemoryOrder::unordered(const char* access, std::uintptr_t a, const char* verb, const Access& earlier,
                                   const Actor& who) const {
  std::string how;
  if (earlier.block == who.block) {
    how = "a __syncthreads must come between them";
  } else if (co_resident(earlier.block, who.block)) {
    how = "a grid or cluster barrier, or a release made after it (simt::publish_flag; after a __syncthreads for other "
          "threads' accesses) that this thread acquired (simt::wait_flag; then a __syncthreads for the block's other "
          "threads) must come between them";
  } else {
    how = "the blocks of a plain launch (or of different clusters) are not co-resident, and nothing orders their "
          "accesses to each other's memory";
  }
  return std::string(access) + " the word at " + address_text(a) + ", which " + describe(earlier.block, earlier.thread) +
         " " + verb + " with " + earlier.op + " at " + earlier.file + ":" + std::to_string(earlier.line) +
         ", and nothing orders that access before this one: " + how;
}

std::string MemoryOrder::check_read(const Actor& who, const void* p, std::size_t bytes) const {
  if (!active_) return "";
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + bytes;
  for (std::uintptr_t a = first_word(p); a < end; a += kWordBytes) {
    const auto it = words_.find(a);
    if (it == words_.end() || !it->second.written) continue;
    const Access& w = it->second.write;
    if (!ordered(w, who)) return unordered("reads", a, "wrote", w, who);
  }
  return "";
}

void MemoryOrder::record_read(const Actor& who, const void* p, std::size_t bytes, const char* op, const char* file,
                              unsigned line, bool track_new, bool in_flight) {
  if (!track_new && !active_) return;
  active_ = true;
  if (tracks_releases_ && states_.empty()) states_.resize(blocks_);
  const Access read{who.block, who.thread, who.phase, releases_of(who.block), in_flight, op, file, line};
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + bytes;
  for (std::uintptr_t a = first_word(p); a < end; a += kWordBytes) {
    const auto it = track_new ? words_.try_emplace(a).first : words_.find(a);
    // (A thread's earlier reads of the word may stay listed: each is ordered before the next
    // write if its later one is, and looking for them would cost a pass over every reader.)
    if (it != words_.end()) it->second.reads.push_back(read);
  }
}

void MemoryOrder::complete_read(const Actor& who, const void* p, std::size_t bytes) {
  if (!active_) return;
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + bytes;
  for (std::uintptr_t a = first_word(p); a < end; a += kWordBytes) {
    const auto it = words_.find(a);
    if (it == words_.end()) continue;
    std::vector<Access>& reads = it->second.reads;
    // The thread's copy in flight, searched from the end, where it usually is. A thread with two
    // copies of one word in flight at once (none of this project's kernels) would have the newer
    // completed first, and a later write would be reported against the older: loud, not silent.
    for (auto r = reads.rbegin(); r != reads.rend(); ++r) {
      if (r->in_flight && r->block == who.block && r->thread == who.thread) {
        r->in_flight = false;
        r->phase = who.phase;
        r->releases = releases_of(who.block);
        break;
      }
    }
  }
}

std::string MemoryOrder::write(const Actor& who, const void* p, std::size_t bytes, const char* op, const char* file,
                               unsigned line) {
  active_ = true;
  if (tracks_releases_ && states_.empty()) states_.resize(blocks_);
  const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(p) + bytes;
  for (std::uintptr_t a = first_word(p); a < end; a += kWordBytes) {
    Word& word = words_[a];
    if (word.written && !ordered(word.write, who)) return unordered("writes", a, "wrote", word.write, who);
    for (const Access& r : word.reads) {
      if (r.in_flight) {
        return "writes the word at " + address_text(a) + ", which " + describe(r.block, r.thread) + " reads with " +
               r.op + " issued at " + r.file + ":" + std::to_string(r.line) +
               " and not yet waited for: the copy may read it at any time until its wait";
      }
      if (!ordered(r, who)) return unordered("writes", a, "read", r, who);
    }
    word.written = true;
    word.write = Access{who.block, who.thread, who.phase, releases_of(who.block), false, op, file, line};
    word.reads.clear();
  }
  return "";
}

}  // namespace simt::emu
