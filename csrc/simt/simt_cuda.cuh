// simt_cuda.cuh — the nvcc side of simt.cuh: real CUDA behind the emulator's spellings.
// Launches go to the current PyTorch stream and are checked; device properties and
// occupancy come from the CUDA runtime. Only light c10/cuda headers, so a .cu file that
// includes a kernel header stays cheap to compile. Include simt.cuh, not this file.
#pragma once

#if !defined(__CUDACC__)
#error "simt_cuda.cuh is for nvcc; include simt/simt.cuh"
#endif

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#define SIMT_GLOBAL __global__
#define SIMT_DEVICE __device__
#define SIMT_HOST_DEVICE __host__ __device__
#define SIMT_LAUNCH_BOUNDS(...) __launch_bounds__(__VA_ARGS__)
#define SIMT_UNROLL _Pragma("unroll")
#define SIMT_UNROLL_2 _Pragma("unroll 2")
#define SIMT_NO_UNROLL _Pragma("unroll 1")
#define SIMT_NOINLINE __noinline__

// Static shared memory: SIMT_SHARED(float[32][33], tile);
#define SIMT_SHARED(T, name) __shared__ ::std::type_identity_t<T> name
// The launch's dynamic shared memory as a T*: SIMT_DYNAMIC_SHARED(float, buffer);
#define SIMT_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char simt_dynamic_shared_[]; \
  T* name = reinterpret_cast<T*>(simt_dynamic_shared_)

// Register estimate and launch bounds for the emulator; nvcc reports the real numbers.
#define SIMT_KERNEL_ATTRIBUTES(max_threads, regs_per_thread, ...) \
  static_assert((max_threads) > 0 && (regs_per_thread) > 0, "SIMT_KERNEL_ATTRIBUTES")

// Device-side assertion: prints the coordinates and traps (the launch fails with
// cudaErrorLaunchFailure / illegal instruction on the next synchronising call).
#define SIMT_KERNEL_CHECK(cond, msg)                                                                  \
  do {                                                                                                \
    if (!(cond)) {                                                                                    \
      printf("%s:%d: SIMT_KERNEL_CHECK(%s) failed in block (%u,%u,%u) thread (%u,%u,%u): %s\n",       \
             __FILE__, __LINE__, #cond, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, \
             threadIdx.z, msg);                                                                       \
      __trap();                                                                                       \
    }                                                                                                 \
  } while (0)

// Thread-block clusters exist from compute capability 9.0. The cluster primitives compile
// for older targets too (the library is built for sm_80 and sm_90) and trap there; the host
// never launches a cluster kernel on such a device (launch_cluster refuses it).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SIMT_HAS_CLUSTERS 1
#else
#define SIMT_HAS_CLUSTERS 0
#define SIMT_NO_CLUSTERS_TRAP(op)                                                                               \
  do {                                                                                                          \
    printf("%s:%d: %s needs compute capability 9.0 (thread-block clusters); block (%u,%u,%u) thread (%u,%u,%u) " \
           "runs code compiled for an older architecture\n",                                                   \
           __FILE__, __LINE__, op, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);  \
    __trap();                                                                                                   \
  } while (0)
#endif

namespace simt {
SIMT_BEGIN_WORLD

// Asynchronous 16-byte copy global -> shared (cp.async, compute capability >= 8.0; a plain
// copy below), grouped by commit_async, waited for by wait_async<N>() (at most N groups of this
// thread still pending). Other threads see the data after the wait and a barrier.
template <class T>
__device__ inline void copy_async_16(T* dst_shared, const T* src_global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src_global) : "memory");
#else
  *reinterpret_cast<uint4*>(dst_shared) = *reinterpret_cast<const uint4*>(src_global);
#endif
}
// The same for one 4- or 8-byte scalar (cp.async.ca, through L1: the only sizes below 16 bytes
// it takes).
template <class T>
__device__ inline void copy_async_scalar(T* dst_shared, const T* src_global) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_shared));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(src_global), "n"(sizeof(T)) : "memory");
#else
  *dst_shared = *src_global;
#endif
}
__device__ inline void commit_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int kPending>
__device__ inline void wait_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Global memory that other blocks of the launch access during it: plain accesses here (the
// emulator checks their order against the other blocks'; simt.cuh).
template <class T>
__device__ __forceinline__ void store_cross_block(T* p, std::type_identity_t<T> value) {
  *p = value;
}
template <class T>
__device__ __forceinline__ T load_cross_block(const T* p) {
  return *p;
}

// Brings the line of global memory holding *p into this SM's L1 ahead of a load (a hint: no
// register waits for it, and nothing faults).
__device__ inline void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p)); }

// Grid-wide barrier of a cooperative launch.
__device__ inline void grid_sync() { cooperative_groups::this_grid().sync(); }

// Flags in global memory between co-resident blocks (a cooperative launch, or one cluster).
// publish_flag: a release store at device scope: what this thread wrote before, and what its
// block wrote before a __syncthreads that precedes it, is visible to any thread whose
// wait_flag saw the value. wait_flag: spins with acquire loads at device scope until the flag
// has reached `at_least` (a counter that may wrap: compared by signed difference).
// A spin that has not ended after kMaxPolls polls (seconds on an H200; a step takes
// microseconds) waits for a producer that will never come: the kernel reports it and traps,
// so the launch fails with an error instead of hanging the process.
constexpr unsigned kMaxPolls = 1u << 22;
__device__ __noinline__ inline void spin_timed_out(const char* op, const void* address, unsigned target, unsigned held) {
  printf("%s: the spin on %p for %u (it holds %u) did not end after %u polls in block (%u,%u,%u) thread (%u,%u,%u): "
         "its producer never arrived\n",
         op, address, target, held, kMaxPolls, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
         threadIdx.z);
  __trap();
}

__device__ inline void publish_flag(unsigned* flag, unsigned value) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(flag), "r"(value) : "memory");
}
__device__ inline void wait_flag(const unsigned* flag, unsigned at_least) {
  unsigned held, polls = 0;
  while (true) {
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(held) : "l"(flag) : "memory");
    if (static_cast<int>(held - at_least) >= 0) return;
    if (++polls == kMaxPolls) spin_timed_out("simt::wait_flag", flag, at_least, held);
  }
}

// Tagged words (simt.cuh): relaxed 8-byte stores and loads at device scope (single-copy atomic,
// served by L2, not by a stale L1 line); wait_word_tag spins until the word carries `tag`.
__device__ inline void store_relaxed(unsigned long long* word, unsigned long long value) {
  asm volatile("st.relaxed.gpu.global.u64 [%0], %1;\n" ::"l"(word), "l"(value) : "memory");
}
__device__ inline unsigned long long load_relaxed(const unsigned long long* word) {
  unsigned long long value;
  asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];\n" : "=l"(value) : "l"(word) : "memory");
  return value;
}
__device__ inline unsigned long long wait_word_tag(const unsigned long long* word, unsigned tag) {
  unsigned polls = 0;
  while (true) {
    const unsigned long long value = load_relaxed(word);
    if (static_cast<unsigned>(value >> 32) == tag) return value;
    if (++polls == kMaxPolls) spin_timed_out("simt::wait_word_tag", word, tag, static_cast<unsigned>(value >> 32));
  }
}

// Thread-block clusters (compute capability 9.0): this block's rank in its cluster, the blocks
// per cluster (1 without a cluster launch), the barrier over every thread of the cluster
// (it also orders distributed shared memory accesses), and the same shared variable as
// `local` in block `rank` of the cluster. Code compiled for older architectures traps.
#if SIMT_HAS_CLUSTERS
__device__ inline unsigned cluster_rank() { return cooperative_groups::this_cluster().block_rank(); }
__device__ inline unsigned cluster_size() { return cooperative_groups::this_cluster().num_blocks(); }
__device__ inline void cluster_sync() { cooperative_groups::this_cluster().sync(); }
// The barrier's two halves: the arrival is the release (on sm_90 a MEMBAR.ALL.GPU that waits
// for this thread's outstanding memory accesses, loads included), the wait the acquire.
__device__ inline void cluster_arrive() { asm volatile("barrier.cluster.arrive.release;\n" ::: "memory"); }
__device__ inline void cluster_wait() { asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory"); }
template <class T>
__device__ inline T* cluster_map_shared(T* local, unsigned rank) {
  return cooperative_groups::this_cluster().map_shared_rank(local, static_cast<int>(rank));
}

// mbarriers in shared memory and asynchronous stores into another block's shared memory that
// complete bytes on that block's mbarrier (st.async): PTX's mbarrier.* and st.async, with
// 32-bit shared-window addresses (mapa for another block's).
__device__ inline unsigned shared_window_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ inline unsigned cluster_window_address(const void* local, unsigned rank) {
  unsigned address;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(address) : "r"(shared_window_address(local)), "r"(rank));
  return address;
}
// Initialises the mbarrier for `arrivals` arrivals per phase; the fence makes it visible to the
// cluster's asynchronous stores once a cluster barrier follows.
__device__ inline void mbarrier_init(unsigned long long* bar, unsigned arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_window_address(bar)), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival on the phase in progress, which then also waits for `bytes` of asynchronous stores.
__device__ inline void mbarrier_arrive_expect_tx(unsigned long long* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_window_address(bar)), "r"(bytes)
               : "memory");
}
// The longest mbarrier_wait before it traps, in nanoseconds of the global timer (not the SM's
// cycle counter, whose reads mark the timed step loops in the machine code): each try_wait may
// suspend the thread for a time of the hardware's choosing, so polls are not counted.
constexpr unsigned long long kMaxWaitNs = 4'000'000'000ull;
__device__ inline unsigned long long global_timer_ns() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(ns));
  return ns;
}
__device__ __noinline__ inline void mbarrier_timed_out(const void* bar, unsigned parity) {
  printf("simt::mbarrier_wait: the phase of parity %u of the mbarrier at %p did not complete in %llu ns in block "
         "(%u,%u,%u) thread (%u,%u,%u): an arrival or asynchronous store it expects never came\n",
         parity, bar, kMaxWaitNs, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  __trap();
}
// Until the phase of parity `parity` has completed; acquire at cluster scope, so the bytes the
// cluster's asynchronous stores completed on it are visible.
__device__ inline void mbarrier_wait(unsigned long long* bar, unsigned parity) {
  const unsigned address = shared_window_address(bar);
  unsigned long long first_miss = 0;
  while (true) {
    unsigned done;
    asm volatile(
        "{\n"
        ".reg .pred complete;\n"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 complete, [%1], %2;\n"
        "selp.u32 %0, 1, 0, complete;\n"
        "}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
    if (done != 0) return;
    const unsigned long long now = global_timer_ns();
    if (first_miss == 0) {
      first_miss = now;
    } else if (now - first_miss > kMaxWaitNs) {
      mbarrier_timed_out(bar, parity);
    }
  }
}
// `value` (4, 8 or 16 bytes) into the variable `local_dst` is in block `rank`'s shared memory,
// completing sizeof(V) bytes on that block's mbarrier at `local_bar`'s place.
template <class T, class V>
__device__ inline void store_async(T* local_dst, unsigned rank, const V& value, unsigned long long* local_bar) {
  static_assert(sizeof(V) == 4 || sizeof(V) == 8 || sizeof(V) == 16, "st.async stores 4, 8 or 16 bytes");
  const unsigned dst = cluster_window_address(local_dst, rank), bar = cluster_window_address(local_bar, rank);
  if constexpr (sizeof(V) == 16) {
    uint4 w;
    __builtin_memcpy(&w, &value, 16);
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(dst),
                 "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w), "r"(bar)
                 : "memory");
  } else if constexpr (sizeof(V) == 8) {
    unsigned long long w;
    __builtin_memcpy(&w, &value, 8);
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b64 [%0], %1, [%2];\n" ::"r"(dst), "l"(w), "r"(bar)
                 : "memory");
  } else {
    unsigned w;
    __builtin_memcpy(&w, &value, 4);
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(dst), "r"(w), "r"(bar)
                 : "memory");
  }
}
#else
__device__ inline unsigned cluster_rank() {
  SIMT_NO_CLUSTERS_TRAP("simt::cluster_rank");
  return 0;
}
__device__ inline unsigned cluster_size() {
  SIMT_NO_CLUSTERS_TRAP("simt::cluster_size");
  return 1;
}
__device__ inline void cluster_sync() { SIMT_NO_CLUSTERS_TRAP("simt::cluster_sync"); }
__device__ inline void cluster_arrive() { SIMT_NO_CLUSTERS_TRAP("simt::cluster_arrive"); }
__device__ inline void cluster_wait() { SIMT_NO_CLUSTERS_TRAP("simt::cluster_wait"); }
template <class T>
__device__ inline T* cluster_map_shared(T* local, unsigned) {
  SIMT_NO_CLUSTERS_TRAP("simt::cluster_map_shared");
  return local;
}
__device__ inline void mbarrier_init(unsigned long long*, unsigned) { SIMT_NO_CLUSTERS_TRAP("simt::mbarrier_init"); }
__device__ inline void mbarrier_arrive_expect_tx(unsigned long long*, unsigned) {
  SIMT_NO_CLUSTERS_TRAP("simt::mbarrier_arrive_expect_tx");
}
__device__ inline void mbarrier_wait(unsigned long long*, unsigned) { SIMT_NO_CLUSTERS_TRAP("simt::mbarrier_wait"); }
template <class T, class V>
__device__ inline void store_async(T*, unsigned, const V&, unsigned long long*) {
  SIMT_NO_CLUSTERS_TRAP("simt::store_async");
}
#endif

namespace detail {

// What the runtime answers about a device or a kernel does not change while the process runs,
// and the launch path asks it on every launch (every step on the stepwise path): each answer
// is queried once per key and kept. `make` runs under the lock (queries are rare and short).
template <class Key, class Value, class Make>
Value remembered(const Key& key, Make&& make) {
  static std::mutex mutex;
  static std::map<Key, Value> answers;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = answers.find(key);
  if (it == answers.end()) it = answers.emplace(key, make()).first;
  return it->second;
}

inline int current_device() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

inline DeviceProperties query_device_properties(int device) {
  auto attr = [device](cudaDeviceAttr what) {
    int value = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, what, device));
    return value;
  };
  DeviceProperties p;
  p.sm_count = attr(cudaDevAttrMultiProcessorCount);
  p.sms_per_gpc = 0;  // no attribute says; cudaOccupancyMaxActiveClusters places clusters itself
  p.max_threads_per_block = attr(cudaDevAttrMaxThreadsPerBlock);
  p.max_threads_per_sm = attr(cudaDevAttrMaxThreadsPerMultiProcessor);
  p.max_blocks_per_sm = attr(cudaDevAttrMaxBlocksPerMultiprocessor);
  p.warp_size = attr(cudaDevAttrWarpSize);
  p.shared_mem_per_block = attr(cudaDevAttrMaxSharedMemoryPerBlock);
  p.shared_mem_per_block_optin = attr(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  p.shared_mem_per_sm = attr(cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  p.reserved_shared_mem_per_block = attr(cudaDevAttrReservedSharedMemoryPerBlock);
  p.regs_per_block = attr(cudaDevAttrMaxRegistersPerBlock);
  p.regs_per_sm = attr(cudaDevAttrMaxRegistersPerMultiprocessor);
  p.cooperative_launch = attr(cudaDevAttrCooperativeLaunch) != 0;
  p.compute_capability_major = attr(cudaDevAttrComputeCapabilityMajor);
  p.compute_capability_minor = attr(cudaDevAttrComputeCapabilityMinor);
  return p;
}

}  // namespace detail

// The current device's properties (queried once per device).
inline DeviceProperties device_properties() {
  const int device = detail::current_device();
  return detail::remembered<int, DeviceProperties>(device, [&] { return detail::query_device_properties(device); });
}

namespace detail {

// What allow_nonportable_cluster_size last set per (kernel, device): the one attribute this
// layer changes, laid over the remembered ones.
struct NonportableClusterSizes {
  std::mutex mutex;
  std::map<std::pair<const void*, int>, bool> allowed;
};
inline NonportableClusterSizes& nonportable_cluster_sizes() {
  static NonportableClusterSizes sizes;
  return sizes;
}

}  // namespace detail

// The kernel's attributes on the current device (queried once per kernel and device).
template <class... P>
KernelAttributes kernel_attributes(void (*kernel)(P...)) {
  const void* function = reinterpret_cast<const void*>(kernel);
  const int device = detail::current_device();
  KernelAttributes a = detail::remembered<std::pair<const void*, int>, KernelAttributes>({function, device}, [&] {
    cudaFuncAttributes fa{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&fa, function));
    KernelAttributes a;
    a.max_threads_per_block = fa.maxThreadsPerBlock;
    a.regs_per_thread = fa.numRegs;
    a.static_shared_bytes = static_cast<int64_t>(fa.sharedSizeBytes);
    a.nonportable_cluster_size_allowed = fa.nonPortableClusterSizeAllowed != 0;
    return a;
  });
  detail::NonportableClusterSizes& sizes = detail::nonportable_cluster_sizes();
  const std::lock_guard<std::mutex> lock(sizes.mutex);
  const auto set = sizes.allowed.find({function, device});
  if (set != sizes.allowed.end()) a.nonportable_cluster_size_allowed = set->second;
  return a;
}

namespace detail {

// Launches asking for more than the default 48 KB opt in to the larger limit, as the
// emulator assumes (it checks against shared_mem_per_block_optin).
// The attribute is raised only past the largest size this kernel opted in to on the device.
template <class... P>
void opt_in_shared_memory(void (*kernel)(P...), const DeviceProperties& p, const KernelAttributes& a,
                          std::size_t dynamic_smem) {
  if (static_cast<int64_t>(dynamic_smem) + a.static_shared_bytes <= p.shared_mem_per_block) return;
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, std::size_t> opted_in;
  const void* function = reinterpret_cast<const void*>(kernel);
  const std::lock_guard<std::mutex> lock(mutex);
  std::size_t& largest = opted_in[{function, current_device()}];
  if (dynamic_smem <= largest) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(function, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(dynamic_smem)));
  largest = dynamic_smem;
}

// What every launch does first: check the launch against the device and the kernel's
// launch bounds, and opt in to the shared memory it asks for.
template <class... P>
void prepare_launch(void (*kernel)(P...), const DeviceProperties& p, const GridDim& grid, dim3 block,
                    std::size_t dynamic_smem) {
  const KernelAttributes a = kernel_attributes(kernel);
  validate_launch(p, a, grid.dims, block, dynamic_smem, grid.where);
  opt_in_shared_memory(kernel, p, a, dynamic_smem);
}

}  // namespace detail

// cudaOccupancyMaxActiveBlocksPerMultiprocessor (queried once per kernel, device and shape).
template <class... P>
int max_active_blocks_per_sm(void (*kernel)(P...), int block_threads, std::size_t dynamic_smem) {
  const DeviceProperties p = device_properties();
  const KernelAttributes a = kernel_attributes(kernel);
  // A CTA that cannot opt in to that much shared memory does not fit (as in occupancy_model):
  // answered here, since the opt-in itself would fail with "invalid argument".
  if (static_cast<int64_t>(dynamic_smem) + a.static_shared_bytes > p.shared_mem_per_block_optin) return 0;
  detail::opt_in_shared_memory(kernel, p, a, dynamic_smem);
  const void* function = reinterpret_cast<const void*>(kernel);
  return detail::remembered<std::tuple<const void*, int, int, std::size_t>, int>(
      {function, detail::current_device(), block_threads, dynamic_smem}, [&] {
        int blocks = 0;
        C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, function, block_threads, dynamic_smem));
        return blocks;
      });
}

// kernel<<<grid, block, dynamic_smem, current stream>>>(args...), validated and checked.
template <class... P, class... A>
void launch(void (*kernel)(P...), GridDim grid, dim3 block, std::size_t dynamic_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch: wrong number of kernel arguments");
  const DeviceProperties p = device_properties();
  detail::prepare_launch(kernel, p, grid, block, dynamic_smem);
  kernel<<<grid.dims, block, dynamic_smem, c10::cuda::getCurrentCUDAStream()>>>(std::forward<A>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// cudaLaunchCooperativeKernel on the current stream; fails (like CUDA) when the grid
// cannot be co-resident.
template <class... P, class... A>
void launch_cooperative(void (*kernel)(P...), GridDim grid, dim3 block, std::size_t dynamic_smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch_cooperative: wrong number of kernel arguments");
  const DeviceProperties p = device_properties();
  detail::prepare_launch(kernel, p, grid, block, dynamic_smem);
  const int per_sm = max_active_blocks_per_sm(kernel, static_cast<int>(detail::volume(block)), dynamic_smem);
  detail::validate_cooperative(p, per_sm, grid.dims, grid.where);
  std::tuple<std::decay_t<P>...> converted(std::forward<A>(args)...);
  std::apply(
      [&](auto&... values) {
        void* argv[] = {static_cast<void*>(&values)..., nullptr};
        C10_CUDA_CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid.dims, block, argv,
                                                   dynamic_smem, c10::cuda::getCurrentCUDAStream()));
      },
      converted);
}

// Lets launch_cluster use 9..16 blocks per cluster for this kernel (persists per kernel).
template <class... P>
void allow_nonportable_cluster_size(void (*kernel)(P...), bool allowed = true) {
  if (!detail::has_clusters(device_properties())) return;  // the attribute does not exist there
  const void* function = reinterpret_cast<const void*>(kernel);
  detail::NonportableClusterSizes& sizes = detail::nonportable_cluster_sizes();
  const std::lock_guard<std::mutex> lock(sizes.mutex);
  const auto key = std::make_pair(function, detail::current_device());
  const auto set = sizes.allowed.find(key);
  if (set != sizes.allowed.end() && set->second == allowed) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(function, cudaFuncAttributeNonPortableClusterSizeAllowed, allowed ? 1 : 0));
  sizes.allowed[key] = allowed;
}

namespace detail {

// The launch configuration of clusters of `cluster_size` blocks along x; `attribute` must
// outlive the configuration.
inline cudaLaunchConfig_t cluster_config(dim3 grid, dim3 block, std::size_t dynamic_smem, unsigned cluster_size,
                                         cudaLaunchAttribute& attribute) {
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = cluster_size;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = dynamic_smem;
  config.stream = c10::cuda::getCurrentCUDAStream();
  config.attrs = &attribute;
  config.numAttrs = 1;
  return config;
}

}  // namespace detail

// Clusters of `cluster_size` blocks that can be co-resident (cudaOccupancyMaxActiveClusters);
// 0 where the device has no clusters or the size is not allowed for this kernel.
template <class... P>
int max_active_clusters(void (*kernel)(P...), int block_threads, std::size_t dynamic_smem, unsigned cluster_size) {
  const DeviceProperties p = device_properties();
  const KernelAttributes a = kernel_attributes(kernel);
  // Answered here rather than by a failing CUDA call, which would leave a pending error.
  if (!detail::cluster_size_problem(p, a, cluster_size).empty()) return 0;
  if (block_threads < 1 || block_threads > a.max_threads_per_block || block_threads > p.max_threads_per_block ||
      static_cast<int64_t>(dynamic_smem) + a.static_shared_bytes > p.shared_mem_per_block_optin) {
    return 0;
  }
  detail::opt_in_shared_memory(kernel, p, a, dynamic_smem);
  const void* function = reinterpret_cast<const void*>(kernel);
  return detail::remembered<std::tuple<const void*, int, int, std::size_t, unsigned>, int>(
      {function, detail::current_device(), block_threads, dynamic_smem, cluster_size}, [&] {
        cudaLaunchAttribute attribute{};
        const cudaLaunchConfig_t config = detail::cluster_config(
            dim3(cluster_size), dim3(static_cast<unsigned>(block_threads)), dynamic_smem, cluster_size, attribute);
        int clusters = 0;
        C10_CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, function, &config));
        return clusters;
      });
}

// cudaLaunchKernelEx with a cluster dimension (cluster_size, 1, 1) on the current stream;
// validated first (detail::validate_cluster), so an unsupported launch fails on the host.
template <class... P, class... A>
void launch_cluster(void (*kernel)(P...), GridDim grid, dim3 block, std::size_t dynamic_smem, unsigned cluster_size,
                    A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "simt::launch_cluster: wrong number of kernel arguments");
  const DeviceProperties p = device_properties();
  const KernelAttributes a = kernel_attributes(kernel);
  detail::validate_launch(p, a, grid.dims, block, dynamic_smem, grid.where);
  const int clusters = max_active_clusters(kernel, static_cast<int>(detail::volume(block)), dynamic_smem, cluster_size);
  detail::validate_cluster(p, a, grid.dims, block, dynamic_smem, cluster_size, clusters, grid.where);
  detail::opt_in_shared_memory(kernel, p, a, dynamic_smem);
  cudaLaunchAttribute attribute{};
  const cudaLaunchConfig_t config = detail::cluster_config(grid.dims, block, dynamic_smem, cluster_size, attribute);
  C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<A>(args)...));
}

// Waits until the device has finished all work queued on it.
inline void synchronize_device() { C10_CUDA_CHECK(cudaDeviceSynchronize()); }

// Whether work queued on the current stream now would be captured into a CUDA graph instead
// of running (nothing can be timed, and nothing waited for, then).
inline bool stream_capturing() {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(), &status));
  return status != cudaStreamCaptureStatusNone;
}

namespace detail {

// The side stream of run_side_by_side on the current device: one per device from torch's pool,
// taken once (per-stream memory pools: a new pool stream per call would spread the caching
// allocator's free blocks over up to 32 streams), or another pool stream when the caller's
// current stream is that one.
inline c10::cuda::CUDAStream side_stream(const c10::cuda::CUDAStream& current) {
  static std::mutex mutex;
  static std::map<c10::DeviceIndex, c10::cuda::CUDAStream> streams;
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = streams.find(current.device_index());
  if (it == streams.end()) {
    it = streams.emplace(current.device_index(), c10::cuda::getStreamFromPool(false, current.device_index())).first;
  }
  return it->second != current ? it->second : c10::cuda::getStreamFromPool(false, current.device_index());
}

}  // namespace detail

// first() on the current stream and, at the same time, second() on a side stream of the current
// device (detail::side_stream): the side stream first waits for the work queued on the current stream
// so far, and the current stream then waits for all of the side stream's. Memory that second()
// allocates comes from the side stream's pool; second() returns the tensors it made that outlive
// it (read by the current stream's later work), whose memory is then also tied to the current
// stream (recordStream), so that freeing them cannot hand it to the side stream's next work
// before that reading is done. Memory allocated before, on the current stream, needs nothing:
// its later reuse there is ordered after the join. Works while the current stream captures a
// CUDA graph (the events fork and join the capture).
template <class First, class Second>
void run_side_by_side(First&& first, Second&& second) {
  const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream();
  const c10::cuda::CUDAStream side = detail::side_stream(current);
  struct Events {
    cudaEvent_t forked = nullptr, joined = nullptr;
    ~Events() {
      if (forked != nullptr) cudaEventDestroy(forked);
      if (joined != nullptr) cudaEventDestroy(joined);
    }
  } events;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&events.forked, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&events.joined, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(events.forked, current));
  C10_CUDA_CHECK(cudaStreamWaitEvent(side, events.forked, 0));
  first();
  {
    const c10::cuda::CUDAStreamGuard on_side(side);
    const auto made = second();
    C10_CUDA_CHECK(cudaEventRecord(events.joined, side));
    for (const auto& tensor : made) {
      if (tensor.defined()) c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(), current);
    }
  }
  C10_CUDA_CHECK(cudaStreamWaitEvent(current, events.joined, 0));
}

// The device time, in microseconds, of the work `queue_work()` puts on the current stream:
// between two events recorded around it. Waits for that work to finish.
template <class F>
double stream_time_us(F&& queue_work) {
  struct Events {
    cudaEvent_t start = nullptr, stop = nullptr;
    ~Events() {
      if (start != nullptr) cudaEventDestroy(start);
      if (stop != nullptr) cudaEventDestroy(stop);
    }
  } events;
  C10_CUDA_CHECK(cudaEventCreate(&events.start));
  C10_CUDA_CHECK(cudaEventCreate(&events.stop));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(cudaEventRecord(events.start, stream));
  queue_work();
  C10_CUDA_CHECK(cudaEventRecord(events.stop, stream));
  C10_CUDA_CHECK(cudaEventSynchronize(events.stop));
  float ms = 0.0f;
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, events.start, events.stop));
  return double(ms) * 1e3;
}

SIMT_END_WORLD
}  // namespace simt
