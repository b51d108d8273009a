// simt_emulator.h — the g++ side of simt.cuh: CUDA's kernel-facing primitives on the CPU.
//
// Every CUDA thread of a launch runs as a fiber on the calling OS thread
// (simt_emulator.cpp). Blocking primitives (__syncthreads, warp ops, grid and cluster sync) record
// what the thread waits for and switch to the launch's scheduler, which resumes threads
// in forward, reverse or seeded-shuffle order between barriers and turns divergence and
// deadlock into errors that name block, thread, operation and file:line.
// Include simt.cuh, not this file.
#pragma once

#if defined(__CUDACC__)
#error "simt_emulator.h is for g++; nvcc uses simt_cuda.cuh"
#endif

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace simt {

namespace emu {

// The part of an emulated thread's state that kernels read through the builtins.
struct ThreadHead {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The emulated thread running on this OS thread (null outside a kernel). __thread, not
// thread_local: no dynamic initialisation, so reads need no TLS wrapper call.
extern __thread ThreadHead* current_thread;

[[noreturn]] void outside_kernel(const char* what);

inline const ThreadHead& head(const char* what) {
  ThreadHead* t = current_thread;
  if (t == nullptr) outside_kernel(what);
  return *t;
}

enum class WarpOp : uint8_t { Sync, Shfl, ShflUp, ShflDown, ShflXor, Ballot };

// Blocking primitives, implemented in simt_emulator.cpp.
void syncthreads(const std::source_location& where);
uint64_t warp_exchange(WarpOp op, unsigned mask, uint64_t value, int param, int width,
                       const std::source_location& where);
void grid_sync(const std::source_location& where);
void cluster_sync(const std::source_location& where);
void cluster_arrive(const std::source_location& where);
void cluster_wait(const std::source_location& where);
void publish_flag(unsigned* flag, unsigned value, const std::source_location& where);
void wait_flag(const unsigned* flag, unsigned at_least, const std::source_location& where);
unsigned long long wait_word_tag(const unsigned long long* word, unsigned tag, const std::source_location& where);
unsigned cluster_rank(const std::source_location& where);
unsigned cluster_size(const std::source_location& where);
void* cluster_map_shared(const void* local, unsigned rank, const std::source_location& where);
void mbarrier_init(unsigned long long* bar, unsigned arrivals, const std::source_location& where);
void mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes, const std::source_location& where);
void mbarrier_wait(unsigned long long* bar, unsigned parity, const std::source_location& where);
void store_async(void* local_dst, unsigned rank, const void* value, std::size_t bytes, unsigned long long* local_bar,
                 const std::source_location& where);
void* block_static_shared(const void* key, std::size_t bytes, std::size_t align, const std::source_location& where);
void copy_async(void* dst, const void* src, std::size_t bytes, const std::source_location& where);
void cross_block_access(const void* p, std::size_t bytes, bool write, const std::source_location& where);
void commit_async(const std::source_location& where);
void wait_async(unsigned pending, const std::source_location& where);
void* block_dynamic_shared(const std::source_location& where);
[[noreturn]] void kernel_check_failed(const char* condition, const std::string& message,
                                      const std::source_location& where);

// Plain: blocks one after another. Cooperative: all blocks interleaved (grid_sync).
// Cluster: the blocks of one cluster interleaved, clusters one after another.
enum class LaunchKind : uint8_t { Plain, Cooperative, Cluster };

// Type-erased launch: run_launch calls invoke(bound) once per emulated thread.
struct LaunchRequest {
  const void* kernel;
  void (*invoke)(void* bound);
  void* bound;
  dim3 grid;
  dim3 block;
  std::size_t dynamic_smem;
  LaunchKind kind;
  unsigned cluster_size;  // blocks per cluster along x; 1 unless kind == Cluster
  std::source_location where;
};
void run_launch(const LaunchRequest& request);

template <class T>
uint64_t to_bits(T value) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t),
                "warp shuffles move trivially copyable values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <class T>
T from_bits(uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// ---- Builtins and intrinsics, spelled as in CUDA (brought to global scope below) ----

constexpr int warpSize = 32;

inline void __syncthreads(std::source_location where = std::source_location::current()) { syncthreads(where); }

inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location where = std::source_location::current()) {
  warp_exchange(WarpOp::Sync, mask, 0, 0, warpSize, where);
}

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
              std::source_location where = std::source_location::current()) {
  return from_bits<T>(warp_exchange(WarpOp::Shfl, mask, to_bits(var), src_lane, width, where));
}

template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 std::source_location where = std::source_location::current()) {
  return from_bits<T>(warp_exchange(WarpOp::ShflUp, mask, to_bits(var), static_cast<int>(delta), width, where));
}

template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   std::source_location where = std::source_location::current()) {
  return from_bits<T>(warp_exchange(WarpOp::ShflDown, mask, to_bits(var), static_cast<int>(delta), width, where));
}

template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
                  std::source_location where = std::source_location::current()) {
  return from_bits<T>(warp_exchange(WarpOp::ShflXor, mask, to_bits(var), lane_mask, width, where));
}

inline unsigned __ballot_sync(unsigned mask, int predicate,
                              std::source_location where = std::source_location::current()) {
  return static_cast<unsigned>(warp_exchange(WarpOp::Ballot, mask, predicate != 0, 0, warpSize, where));
}

inline int __any_sync(unsigned mask, int predicate, std::source_location where = std::source_location::current()) {
  return __ballot_sync(mask, predicate, where) != 0;
}

inline int __all_sync(unsigned mask, int predicate, std::source_location where = std::source_location::current()) {
  return __ballot_sync(mask, predicate, where) == mask;
}

// Atomics. All threads of a launch share one OS thread and switch only inside blocking
// primitives, so a plain read-modify-write is atomic with respect to the other threads.
// old = *address; *address = update(old); returns old.
template <class T, class Update>
T atomic_rmw(T* address, Update update) {
  const T old = *address;
  *address = update(old);
  return old;
}
template <class T>
T atomic_rmw_add(T* address, T value) {
  return atomic_rmw(address, [value](T old) { return old + value; });
}
template <class T>
T atomic_rmw_max(T* address, T value) {
  return atomic_rmw(address, [value](T old) { return value > old ? value : old; });
}
template <class T>
T atomic_rmw_min(T* address, T value) {
  return atomic_rmw(address, [value](T old) { return value < old ? value : old; });
}
template <class T>
T atomic_rmw_exch(T* address, T value) {
  return atomic_rmw(address, [value](T) { return value; });
}
template <class T>
T atomic_rmw_cas(T* address, T compare, T value) {
  return atomic_rmw(address, [compare, value](T old) { return old == compare ? value : old; });
}
inline int atomicAdd(int* a, int v) { return atomic_rmw_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return atomic_rmw_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) { return atomic_rmw_add(a, v); }
inline float atomicAdd(float* a, float v) { return atomic_rmw_add(a, v); }
inline double atomicAdd(double* a, double v) { return atomic_rmw_add(a, v); }
inline int atomicMax(int* a, int v) { return atomic_rmw_max(a, v); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return atomic_rmw_max(a, v); }
inline long long atomicMax(long long* a, long long v) { return atomic_rmw_max(a, v); }
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) { return atomic_rmw_max(a, v); }
inline int atomicMin(int* a, int v) { return atomic_rmw_min(a, v); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return atomic_rmw_min(a, v); }
inline long long atomicMin(long long* a, long long v) { return atomic_rmw_min(a, v); }
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) { return atomic_rmw_min(a, v); }
inline int atomicExch(int* a, int v) { return atomic_rmw_exch(a, v); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return atomic_rmw_exch(a, v); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) { return atomic_rmw_exch(a, v); }
inline float atomicExch(float* a, float v) { return atomic_rmw_exch(a, v); }
inline int atomicCAS(int* a, int c, int v) { return atomic_rmw_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return atomic_rmw_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c, unsigned long long v) {
  return atomic_rmw_cas(a, c, v);
}

// Fences and read-only loads: every emulated thread shares one OS thread and memory is
// coherent, so these are plain operations.
inline void __threadfence() {}
inline void __threadfence_block() {}
template <class T>
T __ldg(const T* p) {
  return *p;
}

// The SM's cycle counter; here the host's steady clock in nanoseconds (monotonic per thread,
// as on the GPU, but it measures the emulator, not a GPU).
inline long long clock64() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Bit intrinsics.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// Device math CUDA has and the C library lacks (tanhf, expf, fmaf come from <cmath>).
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

}  // namespace emu

// An L1 prefetch hint: nothing to do on the CPU but read one byte, so that AddressSanitizer
// (make sanitize) reports an address outside the tensor, which the GPU would silently drop.
inline void prefetch_l1(const void* p) {
  [[maybe_unused]] const volatile unsigned char byte = *static_cast<const volatile unsigned char*>(p);
}

// Grid-wide barrier of a cooperative launch.
inline void grid_sync(std::source_location where = std::source_location::current()) { emu::grid_sync(where); }

// Flags in global memory between co-resident blocks (simt.cuh). A wait that no running thread
// can satisfy is reported as a deadlock, and blocks of a plain launch (run one after another)
// never see each other's flags change, as co-residency is not promised there on a GPU either.
// The release and the acquire order the blocks' cross-block accesses (below).
inline void publish_flag(unsigned* flag, unsigned value, std::source_location where = std::source_location::current()) {
  emu::publish_flag(flag, value, where);
}
inline void wait_flag(const unsigned* flag, unsigned at_least,
                      std::source_location where = std::source_location::current()) {
  emu::wait_flag(flag, at_least, where);
}
// Tagged words (simt.cuh): single-copy atomic 8-byte stores and loads, nothing to order. A wait
// whose word already carries a later tag is an error (the word was overwritten before it was
// read: the protocol's guarantee broken).
inline void store_relaxed(unsigned long long* word, unsigned long long value) { *word = value; }
inline unsigned long long load_relaxed(const unsigned long long* word) { return *word; }
inline unsigned long long wait_word_tag(const unsigned long long* word, unsigned tag,
                                        std::source_location where = std::source_location::current()) {
  return emu::wait_word_tag(word, tag, where);
}

// Global memory that other blocks of the launch access during it (simt.cuh). The emulator's
// memory is sequentially consistent, so the value is always the latest; instead it checks that
// CUDA's memory model orders the access after every conflicting access of another thread
// (simt_memory_order.h) and fails the launch naming both where it does not.
template <class T>
void store_cross_block(T* p, std::type_identity_t<T> value,
                       std::source_location where = std::source_location::current()) {
  static_assert(sizeof(T) % 4 == 0, "the emulator tracks cross-block accesses per 4-byte word");
  emu::cross_block_access(p, sizeof(T), true, where);
  *p = value;
}
template <class T>
T load_cross_block(const T* p, std::source_location where = std::source_location::current()) {
  static_assert(sizeof(T) % 4 == 0, "the emulator tracks cross-block accesses per 4-byte word");
  emu::cross_block_access(p, sizeof(T), false, where);
  return *p;
}

// Asynchronous copies global -> shared (cp.async). The emulator performs a thread's copies
// only when it waits for their group, so a read before the wait (and the barrier that makes
// them visible to other threads) sees the old contents, as it may on a GPU. A copy from words
// written by simt::store_cross_block is checked as simt::load_cross_block is, when issued.
template <class T>
void copy_async_16(T* dst_shared, const T* src_global, std::source_location where = std::source_location::current()) {
  emu::copy_async(dst_shared, src_global, 16, where);
}
template <class T>
void copy_async_scalar(T* dst_shared, const T* src_global,
                       std::source_location where = std::source_location::current()) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cp.async copies 4, 8 or 16 bytes");
  emu::copy_async(dst_shared, src_global, sizeof(T), where);
}
inline void commit_async(std::source_location where = std::source_location::current()) { emu::commit_async(where); }
template <int kPending>
void wait_async(std::source_location where = std::source_location::current()) {
  static_assert(kPending >= 0, "a count of copy groups");
  emu::wait_async(static_cast<unsigned>(kPending), where);
}

// Thread-block clusters (compute capability >= 9.0). A launch without clusters is a grid
// of one-block clusters, as on the GPU.
inline unsigned cluster_rank(std::source_location where = std::source_location::current()) {
  return emu::cluster_rank(where);
}
inline unsigned cluster_size(std::source_location where = std::source_location::current()) {
  return emu::cluster_size(where);
}
// Barrier over every thread of every block of the cluster; makes earlier distributed
// shared memory writes visible to the whole cluster.
inline void cluster_sync(std::source_location where = std::source_location::current()) { emu::cluster_sync(where); }
// cluster_sync in two halves: the arrival releases this thread's earlier distributed shared
// memory writes, the wait returns once every thread of the cluster has arrived. Between them a
// thread may do work that no other block's memory is part of (the emulator refuses
// cluster_map_shared and cross-block accesses there).
inline void cluster_arrive(std::source_location where = std::source_location::current()) { emu::cluster_arrive(where); }
inline void cluster_wait(std::source_location where = std::source_location::current()) { emu::cluster_wait(where); }
// The address of the shared variable `local` points into, in block `rank` of this cluster.
template <class T>
T* cluster_map_shared(T* local, unsigned rank, std::source_location where = std::source_location::current()) {
  return static_cast<T*>(emu::cluster_map_shared(local, rank, where));
}
// mbarriers (simt.cuh). The emulator keeps each one's state beside the launch, keyed by its
// address, and performs a store_async when the phase that counted its bytes completes (the
// latest a GPU may) or at once (the earliest), by schedule (simt_emulator.cpp AsyncStore).
inline void mbarrier_init(unsigned long long* bar, unsigned arrivals,
                          std::source_location where = std::source_location::current()) {
  emu::mbarrier_init(bar, arrivals, where);
}
inline void mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes,
                                      std::source_location where = std::source_location::current()) {
  emu::mbarrier_arrive_expect_tx(bar, bytes, where);
}
inline void mbarrier_wait(unsigned long long* bar, unsigned parity,
                          std::source_location where = std::source_location::current()) {
  emu::mbarrier_wait(bar, parity, where);
}
template <class T, class V>
void store_async(T* local_dst, unsigned rank, const V& value, unsigned long long* local_bar,
                 std::source_location where = std::source_location::current()) {
  static_assert(std::is_trivially_copyable_v<V> && (sizeof(V) == 4 || sizeof(V) == 8 || sizeof(V) == 16),
                "st.async stores 4, 8 or 16 bytes");
  emu::store_async(local_dst, rank, &value, sizeof(V), local_bar, where);
}

}  // namespace simt

using simt::emu::warpSize;
using simt::emu::__syncthreads;
using simt::emu::__syncwarp;
using simt::emu::__shfl_sync;
using simt::emu::__shfl_up_sync;
using simt::emu::__shfl_down_sync;
using simt::emu::__shfl_xor_sync;
using simt::emu::__ballot_sync;
using simt::emu::__any_sync;
using simt::emu::__all_sync;
using simt::emu::atomicAdd;
using simt::emu::atomicMax;
using simt::emu::atomicMin;
using simt::emu::atomicExch;
using simt::emu::atomicCAS;
using simt::emu::__threadfence;
using simt::emu::__threadfence_block;
using simt::emu::__ldg;
using simt::emu::clock64;
using simt::emu::__popc;
using simt::emu::__popcll;
using simt::emu::__ffs;
using simt::emu::__clz;
using simt::emu::rsqrtf;
using simt::emu::rsqrt;
using simt::emu::__fdividef;
using simt::emu::__saturatef;

#define threadIdx (::simt::emu::head("threadIdx").thread_idx)
#define blockIdx (::simt::emu::head("blockIdx").block_idx)
#define blockDim (::simt::emu::head("blockDim").block_dim)
#define gridDim (::simt::emu::head("gridDim").grid_dim)

// Static shared memory, one instance per block: SIMT_SHARED(float[32][33], tile);
// The address of a function-local static identifies the declaration.
#define SIMT_SHARED(T, name)                                                                   \
  static const char SIMT_CAT(simt_shared_key_, __LINE__) = 0;                                  \
  ::std::type_identity_t<T>& name = *static_cast<::std::type_identity_t<T>*>(                  \
      ::simt::emu::block_static_shared(&SIMT_CAT(simt_shared_key_, __LINE__), sizeof(T), alignof(T), \
                                       ::std::source_location::current()))

// The launch's dynamic shared memory (one instance per block) as a T*.
#define SIMT_DYNAMIC_SHARED(T, name) \
  T* name = static_cast<T*>(::simt::emu::block_dynamic_shared(::std::source_location::current()))

#define SIMT_KERNEL_CHECK(cond, msg)                                                               \
  do {                                                                                             \
    if (!(cond)) ::simt::emu::kernel_check_failed(#cond, (msg), ::std::source_location::current()); \
  } while (0)

// SIMT_KERNEL_ATTRIBUTES(max_threads, regs_per_thread, kernel): the launch bounds and a
// register estimate the emulator uses for validation and its occupancy model. Place it
// after the kernel's definition, at namespace scope; a template kernel names one
// instantiation per use (the kernel is the last, variadic argument so commas are fine).
#define SIMT_KERNEL_ATTRIBUTES(max_threads, regs_per_thread, ...)                                    \
  [[maybe_unused]] static const bool SIMT_CAT(simt_kernel_attributes_, __COUNTER__) =                  \
      ::simt::emu::register_kernel(reinterpret_cast<const void*>(&__VA_ARGS__), #__VA_ARGS__, (max_threads), \
                                   (regs_per_thread))

namespace simt {

// The emulated device (configurable) and schedule.
DeviceProperties device_properties();
void set_device_properties(const DeviceProperties& p);
void reset_device_properties();
DeviceProperties default_device_properties();

enum class Schedule { Forward, Reverse, Shuffle };
void set_schedule(Schedule mode, uint64_t seed);
Schedule schedule_mode();
uint64_t schedule_seed();

// Cost of one fiber switch (nanoseconds), measured over `switches` switches.
double measure_fiber_switch_ns(int64_t switches);

// Recording of launches: on or off (either clears the record); the names of the kernels
// launched since it was turned on (as SIMT_KERNEL_ATTRIBUTES spells them), in launch order.
void record_launches(bool on);
std::vector<std::string> recorded_launches();

namespace emu {

bool register_kernel(const void* kernel, const char* name, int max_threads, int regs_per_thread);
KernelAttributes kernel_attributes(const void* kernel);
void set_nonportable_cluster_size_allowed(const void* kernel, bool allowed);

template <class... P>
struct BoundKernel {
  void (*fn)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void invoke(void* self) {
    auto* b = static_cast<BoundKernel*>(self);
    std::apply([b](const auto&... a) { b->fn(a...); }, b->args);
  }
};

template <class... P, class... A>
void launch_impl(LaunchKind kind, unsigned cluster_size, void (*kernel)(P...), const GridDim& grid, dim3 block,
                 std::size_t dynamic_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch: wrong number of kernel arguments");
  BoundKernel<P...> bound{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
  LaunchRequest r{reinterpret_cast<const void*>(kernel), &BoundKernel<P...>::invoke, &bound, grid.dims, block,
                  dynamic_smem, kind, cluster_size, grid.where};
  run_launch(r);
}

int max_active_blocks_per_sm(const void* kernel, int block_threads, std::size_t dynamic_smem);
int max_active_clusters(const void* kernel, int block_threads, std::size_t dynamic_smem, unsigned cluster_size);

}  // namespace emu

template <class... P>
KernelAttributes kernel_attributes(void (*kernel)(P...)) {
  return emu::kernel_attributes(reinterpret_cast<const void*>(kernel));
}

template <class... P>
int max_active_blocks_per_sm(void (*kernel)(P...), int block_threads, std::size_t dynamic_smem) {
  return emu::max_active_blocks_per_sm(reinterpret_cast<const void*>(kernel), block_threads, dynamic_smem);
}

// Clusters of `cluster_size` blocks that can be co-resident (the occupancy model of
// detail::cluster_occupancy_model); 0 where the device has no clusters or the size is not allowed.
template <class... P>
int max_active_clusters(void (*kernel)(P...), int block_threads, std::size_t dynamic_smem, unsigned cluster_size) {
  return emu::max_active_clusters(reinterpret_cast<const void*>(kernel), block_threads, dynamic_smem, cluster_size);
}

// Lets launch_cluster use 9..16 blocks per cluster for this kernel (a per-kernel setting
// that persists, like cudaFuncAttributeNonPortableClusterSizeAllowed); allowed=false revokes it.
template <class... P>
void allow_nonportable_cluster_size(void (*kernel)(P...), bool allowed = true) {
  emu::set_nonportable_cluster_size_allowed(reinterpret_cast<const void*>(kernel), allowed);
}

// Runs the grid on the CPU; blocks run one after another (any order is valid for a
// non-cooperative launch, and the schedule picks it).
template <class... P, class... A>
void launch(void (*kernel)(P...), GridDim grid, dim3 block, std::size_t dynamic_smem, A&&... args) {
  emu::launch_impl(emu::LaunchKind::Plain, 1, kernel, grid, block, dynamic_smem, std::forward<A>(args)...);
}

// Runs all blocks of the grid interleaved (they must be co-resident for grid_sync);
// fails like cudaLaunchCooperativeKernel when the grid is larger than the device holds.
template <class... P, class... A>
void launch_cooperative(void (*kernel)(P...), GridDim grid, dim3 block, std::size_t dynamic_smem, A&&... args) {
  emu::launch_impl(emu::LaunchKind::Cooperative, 1, kernel, grid, block, dynamic_smem, std::forward<A>(args)...);
}

// Clusters of `cluster_size` consecutive blocks along x; validated like cudaLaunchKernelEx
// with cudaLaunchAttributeClusterDimension (detail::validate_cluster). The blocks of a
// cluster run interleaved (co-resident, for cluster_sync); clusters run one after another.
template <class... P, class... A>
void launch_cluster(void (*kernel)(P...), GridDim grid, dim3 block, std::size_t dynamic_smem, unsigned cluster_size,
                    A&&... args) {
  emu::launch_impl(emu::LaunchKind::Cluster, cluster_size, kernel, grid, block, dynamic_smem,
                   std::forward<A>(args)...);
}

// Emulated launches run to completion before they return, and there is no graph capture:
// the time of the work is the host's (it says that the timing code runs, not how fast a GPU
// is).
inline bool stream_capturing() { return false; }
inline void synchronize_device() {}

// first(), then second(): emulated work has no streams (each launch runs to completion before
// it returns), so the tensors second() returns need nothing either.
template <class First, class Second>
void run_side_by_side(First&& first, Second&& second) {
  first();
  (void)second();
}

template <class F>
double stream_time_us(F&& queue_work) {
  const auto start = std::chrono::steady_clock::now();
  queue_work();
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace simt
