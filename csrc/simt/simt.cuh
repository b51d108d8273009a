// simt.cuh — the one header every kernel of this project includes.
//
// One kernel source, two worlds: under nvcc (__CUDACC__) this is a thin layer over real
// CUDA (cooperative groups, launches on the current PyTorch stream, real device
// properties and occupancy); under g++ it pulls in the fiber-based emulator
// (simt_emulator.h) that runs every CUDA thread on the CPU with CUDA's semantics, so the
// kernels are executed, not only compiled, on GPU-less development and CI machines.
//
// Kernel-facing spellings (identical in both worlds):
//   SIMT_GLOBAL, SIMT_DEVICE, SIMT_HOST_DEVICE, SIMT_LAUNCH_BOUNDS(n[, min_blocks]), SIMT_UNROLL,
//   SIMT_UNROLL_2 (unroll a loop of unknown trip count by 2), SIMT_NO_UNROLL, SIMT_NOINLINE
//   threadIdx, blockIdx, blockDim, gridDim, warpSize (dim3 / uint3)
//   __syncthreads(), __syncwarp(mask), __shfl_sync / __shfl_xor_sync / __shfl_up_sync /
//   __shfl_down_sync, __ballot_sync, __any_sync, __all_sync
//   SIMT_SHARED(T, name)           static shared memory, e.g. SIMT_SHARED(float[32][33], tile)
//   SIMT_DYNAMIC_SHARED(T, name)   T* name = the launch's dynamic shared memory
//   simt::grid_sync()              cooperative-groups grid-wide barrier
//   simt::publish_flag(flag, v), simt::wait_flag(flag, at_least)   a release store and an
//                                  acquire spin at device scope on an unsigned flag in global
//                                  memory, between co-resident blocks
//   simt::flag_barrier(flags, first, count, epoch)   barrier over blocks [first, first + count)
//                                  of a cooperative launch through one flag per block
//   simt::tag_word(v, tag), simt::word_tag(w), simt::word_value(w)   a float32 value and a step
//                                  tag in one 8-byte word; simt::store_relaxed(word, w),
//                                  simt::load_relaxed(word), simt::wait_word_tag(word, tag)
//                                  (spins until the word carries `tag`, returns it)
//   simt::store_cross_block(p, v), simt::load_cross_block(p)   plain accesses to global memory
//                                  that other blocks of the launch access during it; the emulator
//                                  checks that a grid or cluster barrier or a release/acquire pair
//                                  orders each after the other blocks' conflicting accesses
//   simt::cluster_rank(), simt::cluster_size()   this block's rank in its thread-block cluster
//                                  and the blocks per cluster (1 without a cluster launch)
//   simt::cluster_sync()           barrier over every thread of every block of the cluster
//                                  (orders distributed shared memory accesses)
//   simt::cluster_arrive(), simt::cluster_wait()   cluster_sync in two halves (release, then
//                                  acquire); between them no access to another block's memory
//   simt::cluster_map_shared(p, rank)   the same shared variable in block `rank` of the cluster
//                                  (distributed shared memory); clusters need compute capability 9.0
//   simt::mbarrier_init(bar, arrivals)   an mbarrier (unsigned long long in shared memory) for
//                                  `arrivals` arrivals per phase; other blocks of the cluster may
//                                  use it after the next cluster_sync
//   simt::mbarrier_arrive_expect_tx(bar, bytes)   one arrival on this block's mbarrier, whose
//                                  phase then also waits for `bytes` of asynchronous stores
//   simt::mbarrier_wait(bar, parity)   until the phase of that parity (0, 1, 0, ...) has completed
//                                  (acquire at cluster scope: the stores it counted are visible)
//   simt::store_async(p, rank, value, bar)   `value` (4, 8 or 16 bytes) into the shared variable
//                                  p points to in block `rank`, completing its bytes on that
//                                  block's mbarrier at bar's place (st.async; no barrier needed)
//   atomicAdd, atomicMax, atomicMin, atomicExch, atomicCAS (global and shared memory)
//   tanhf, expf, fmaf, rsqrtf, ...; c10::Half / c10::BFloat16 conversions
//   __ldg, __threadfence (no-ops in emulation), __popc, __ffs, __clz
//   clock64()                      the SM's cycle counter (in emulation the host's steady clock, ns)
//   simt::copy_async_16(dst_shared, src_global), simt::commit_async(), simt::wait_async<N>()
//                                  16-byte asynchronous copies into shared memory (cp.async) in
//                                  groups; wait until at most N of this thread's groups are pending
//   simt::copy_async_scalar(dst_shared, src_global)   the same for one 4- or 8-byte scalar
//   SIMT_KERNEL_CHECK(cond, msg)   device-side assertion (trap on GPU, error in emulation)
// Host-facing (launch planning, shared by both builds):
//   simt::DeviceProperties simt::device_properties()
//   simt::KernelAttributes simt::kernel_attributes(kernel)
//   int simt::max_active_blocks_per_sm(kernel, block_threads, dynamic_smem_bytes)
//   simt::launch(kernel, grid, block, dynamic_smem_bytes, args...)
//   simt::launch_cooperative(kernel, grid, block, dynamic_smem_bytes, args...)
//   simt::launch_cluster(kernel, grid, block, dynamic_smem_bytes, cluster_size, args...)
//     clusters of cluster_size consecutive blocks along x (compute capability >= 9.0)
//   int simt::max_active_clusters(kernel, block_threads, dynamic_smem_bytes, cluster_size)
//   simt::allow_nonportable_cluster_size(kernel[, allowed])  clusters of 9..16 blocks
//   simt::run_side_by_side(first, second)  first() on the current stream, second() at the same
//     time on a side stream (joined back; in emulation one after the other); second() returns
//     the tensors it made that the current stream goes on to use
//   SIMT_KERNEL_ATTRIBUTES(max_threads, regs_per_thread, kernel)  register estimate for
//     the emulator's occupancy model and launch-bounds check (no-op under nvcc, where the
//     compiler's numbers are queried instead).
//   SIMT_BEGIN_WORLD ... SIMT_END_WORLD  wrap kernels and host code compiled in both
//     worlds (a world-specific inline namespace; see below).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <source_location>
#include <stdexcept>
#include <string>
#include <type_traits>

#define SIMT_CAT_IMPL(a, b) a##b
#define SIMT_CAT(a, b) SIMT_CAT_IMPL(a, b)

// Both worlds are linked into one library, and inline functions or templates with the
// same mangled name would be merged by the linker (the CPU op could end up calling the
// CUDA launcher). Code compiled in both worlds therefore lives in a world-specific
// inline namespace: wrap host launch-planning code and kernels in
// SIMT_BEGIN_WORLD ... SIMT_END_WORLD inside your own namespace.
#if defined(__CUDACC__)
#define SIMT_WORLD gpu
#else
#define SIMT_WORLD emulated
#endif
#define SIMT_BEGIN_WORLD inline namespace SIMT_WORLD {
#define SIMT_END_WORLD }

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#else
#include "simt/simt_types.h"
#endif

namespace simt {
SIMT_BEGIN_WORLD

// Errors raised by launch validation and by the emulator. Derives from
// std::runtime_error so that a failing op surfaces as RuntimeError in Python.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The device numbers host launch-planning code may use. Under nvcc they come from the
// current CUDA device; in emulation they are configurable (set_device_properties).
struct DeviceProperties {
  int sm_count = 132;
  // SMs per GPC for the cluster occupancy model (cluster_occupancy_model), the last GPC holding
  // the rest; 0: not modelled (a GPU's own occupancy query answers, so nvcc builds leave it 0).
  int sms_per_gpc = 18;
  int max_threads_per_block = 1024;
  int max_threads_per_sm = 2048;
  int max_blocks_per_sm = 32;
  int warp_size = 32;
  int64_t shared_mem_per_block = 48 * 1024;           // without opt-in
  int64_t shared_mem_per_block_optin = 227 * 1024;    // the most a launch can ask for
  int64_t shared_mem_per_sm = 228 * 1024;
  int64_t reserved_shared_mem_per_block = 1024;       // taken by the runtime per block
  int regs_per_block = 65536;
  int regs_per_sm = 65536;
  bool cooperative_launch = true;
  int compute_capability_major = 9;  // thread-block clusters need 9.0 or newer
  int compute_capability_minor = 0;
};

// Every DeviceProperties field once, in the order the emulator's controls exchange them
// (csrc/simt/simt_ops.cpp; rnn_fused/simt.py checks its own field list against it).
#define SIMT_DEVICE_PROPERTY_FIELDS(X)                                                           \
  X(sm_count) X(sms_per_gpc) X(max_threads_per_block) X(max_threads_per_sm) X(max_blocks_per_sm) \
  X(shared_mem_per_block) X(shared_mem_per_block_optin) X(shared_mem_per_sm)                     \
  X(reserved_shared_mem_per_block) X(regs_per_block) X(regs_per_sm) X(cooperative_launch)        \
  X(compute_capability_major) X(compute_capability_minor)

// Per-kernel numbers from the compiler (nvcc) or from SIMT_KERNEL_ATTRIBUTES (emulation).
struct KernelAttributes {
  int max_threads_per_block = 1024;  // launch bounds
  int regs_per_thread = 32;
  int64_t static_shared_bytes = 0;
  bool nonportable_cluster_size_allowed = false;  // allow_nonportable_cluster_size
};

// Grid argument of the launch helpers: converts implicitly from dim3 or an integer and
// records the call site, so launch errors can name the file:line of the launch.
struct GridDim {
  dim3 dims;
  std::source_location where;
  GridDim(dim3 d, std::source_location w = std::source_location::current()) : dims(d), where(w) {}
  GridDim(unsigned x, std::source_location w = std::source_location::current())
      : dims(x, 1, 1), where(w) {}
};

namespace detail {

inline std::string format_dim(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

inline std::string format_site(const std::source_location& w) {
  return std::string(w.file_name()) + ":" + std::to_string(w.line());
}

inline unsigned long long volume(dim3 d) {
  return static_cast<unsigned long long>(d.x) * d.y * d.z;
}

// Occupancy model used by the emulator (documented in docs/simt.md): the minimum of
// the thread, block-slot, register and shared-memory limits of one SM. Exposed in both
// worlds so tests can check the model itself.
inline int occupancy_model(const DeviceProperties& p, const KernelAttributes& a, int block_threads,
                           int64_t dynamic_smem) {
  if (block_threads <= 0 || block_threads > p.max_threads_per_block ||
      block_threads > a.max_threads_per_block) {
    return 0;
  }
  const int warps = (block_threads + p.warp_size - 1) / p.warp_size;
  const int by_threads = p.max_threads_per_sm / (warps * p.warp_size);
  const int regs_per_warp = ((a.regs_per_thread * p.warp_size + 255) / 256) * 256;
  if (static_cast<int64_t>(regs_per_warp) * warps > p.regs_per_block) return 0;
  const int by_regs = regs_per_warp == 0 ? p.max_blocks_per_sm : (p.regs_per_sm / regs_per_warp) / warps;
  const int64_t smem = a.static_shared_bytes + dynamic_smem;
  if (smem > p.shared_mem_per_block_optin) return 0;
  const int64_t smem_slot = ((smem + p.reserved_shared_mem_per_block + 127) / 128) * 128;
  const int64_t by_smem = smem_slot == 0 ? p.max_blocks_per_sm : p.shared_mem_per_sm / smem_slot;
  int64_t blocks = p.max_blocks_per_sm;
  if (by_threads < blocks) blocks = by_threads;
  if (by_regs < blocks) blocks = by_regs;
  if (by_smem < blocks) blocks = by_smem;
  return static_cast<int>(blocks < 0 ? 0 : blocks);
}

// Checks every launch makes before it runs (both worlds): grid and block dimensions,
// threads per block against the device and the kernel's launch bounds, dynamic shared
// memory against the opt-in limit.
inline void validate_launch(const DeviceProperties& p, const KernelAttributes& a, dim3 grid, dim3 block,
                            std::size_t dynamic_smem, const std::source_location& where) {
  auto fail = [&](const std::string& why) {
    throw Error("simt: invalid launch at " + format_site(where) + " (grid " + format_dim(grid) + ", block " +
                format_dim(block) + ", dynamic shared memory " + std::to_string(dynamic_smem) + " bytes): " + why);
  };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("every grid dimension must be at least 1");
  if (block.x == 0 || block.y == 0 || block.z == 0) fail("every block dimension must be at least 1");
  if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u) fail("grid dimension exceeds (2^31-1, 65535, 65535)");
  if (block.x > 1024u || block.y > 1024u || block.z > 64u) fail("block dimension exceeds (1024, 1024, 64)");
  const unsigned long long threads = volume(block);
  if (threads > static_cast<unsigned long long>(p.max_threads_per_block)) {
    fail(std::to_string(threads) + " threads per block exceed the device limit " +
         std::to_string(p.max_threads_per_block));
  }
  if (threads > static_cast<unsigned long long>(a.max_threads_per_block)) {
    fail(std::to_string(threads) + " threads per block exceed the kernel's launch bounds " +
         std::to_string(a.max_threads_per_block));
  }
  if (static_cast<int64_t>(dynamic_smem) + a.static_shared_bytes > p.shared_mem_per_block_optin) {
    fail("static (" + std::to_string(a.static_shared_bytes) + ") + dynamic shared memory exceeds the per-block limit " +
         std::to_string(p.shared_mem_per_block_optin) + " bytes");
  }
}

inline void validate_cooperative(const DeviceProperties& p, int blocks_per_sm, dim3 grid,
                                 const std::source_location& where) {
  if (!p.cooperative_launch) {
    throw Error("simt: cooperative launch at " + format_site(where) + ": the device does not support cooperative launches");
  }
  const unsigned long long capacity = static_cast<unsigned long long>(blocks_per_sm) * p.sm_count;
  if (volume(grid) > capacity) {
    throw Error("simt: cooperative launch too large at " + format_site(where) + " (cudaErrorCooperativeLaunchTooLarge): grid " +
                format_dim(grid) + " has " + std::to_string(volume(grid)) + " blocks but at most " +
                std::to_string(capacity) + " (" + std::to_string(blocks_per_sm) + " per SM x " +
                std::to_string(p.sm_count) + " SMs) can be co-resident");
  }
}

// Thread-block clusters: at most 8 blocks portably, 16 where the kernel opted in to
// non-portable sizes (H100/H200; cudaFuncAttributeNonPortableClusterSizeAllowed).
constexpr unsigned kPortableClusterSize = 8;
constexpr unsigned kMaxClusterSize = 16;

inline bool has_clusters(const DeviceProperties& p) { return p.compute_capability_major >= 9; }

inline std::string format_compute_capability(const DeviceProperties& p) {
  return std::to_string(p.compute_capability_major) + "." + std::to_string(p.compute_capability_minor);
}

// Why clusters of `cluster_size` blocks of this kernel cannot launch on this device ("" if
// they can, as far as the device and the size go; co-residency is checked separately).
inline std::string cluster_size_problem(const DeviceProperties& p, const KernelAttributes& a, unsigned cluster_size) {
  if (!has_clusters(p)) {
    return "cluster launch is not supported on this device (compute capability " + format_compute_capability(p) +
           "; thread-block clusters need 9.0 or newer)";
  }
  if (cluster_size < 1 || cluster_size > kMaxClusterSize) {
    return "cluster size " + std::to_string(cluster_size) + " is outside [1, " + std::to_string(kMaxClusterSize) +
           "] (cudaErrorInvalidClusterSize)";
  }
  if (cluster_size > kPortableClusterSize && !a.nonportable_cluster_size_allowed) {
    return "cluster size " + std::to_string(cluster_size) + " exceeds the portable limit " +
           std::to_string(kPortableClusterSize) +
           " and the kernel did not opt in with simt::allow_nonportable_cluster_size (cudaErrorInvalidClusterSize)";
  }
  return "";
}

// The emulator's cluster occupancy, 0 without clusters. A cluster's blocks share one GPC, so each
// GPC holds blocks per SM x its SMs / cluster size of them: the SMs in GPCs of sms_per_gpc, the
// last one the rest (all in one where sms_per_gpc is 0). The default, 132 SMs as 7 x 18 + 6,
// reproduces what an H200 measured (docs/simt.md): 7 clusters of 16 or of 12 blocks at one block
// per SM, where 132 SMs without GPCs would hold 8 and 11.
inline int cluster_occupancy_model(const DeviceProperties& p, const KernelAttributes& a, int block_threads,
                                   int64_t dynamic_smem, unsigned cluster_size) {
  if (!cluster_size_problem(p, a, cluster_size).empty()) return 0;
  const int64_t per_sm = occupancy_model(p, a, block_threads, dynamic_smem);
  const int64_t gpc = p.sms_per_gpc > 0 ? std::min(p.sms_per_gpc, p.sm_count) : p.sm_count;
  const int64_t full_gpcs = p.sm_count / gpc, rest = p.sm_count % gpc;
  return static_cast<int>(full_gpcs * (per_sm * gpc / cluster_size) + per_sm * rest / cluster_size);
}

// Checks a cluster launch makes (both worlds) on top of validate_launch: the device has
// clusters, the size is allowed, clusters tile the grid along x, and at least one whole
// cluster can be co-resident (`max_clusters`, from max_active_clusters).
inline void validate_cluster(const DeviceProperties& p, const KernelAttributes& a, dim3 grid, dim3 block,
                             std::size_t dynamic_smem, unsigned cluster_size, int max_clusters,
                             const std::source_location& where) {
  auto fail = [&](const std::string& why) {
    throw Error("simt: invalid cluster launch at " + format_site(where) + " (grid " + format_dim(grid) + ", block " +
                format_dim(block) + ", dynamic shared memory " + std::to_string(dynamic_smem) + " bytes, cluster size " +
                std::to_string(cluster_size) + "): " + why);
  };
  const std::string problem = cluster_size_problem(p, a, cluster_size);
  if (!problem.empty()) fail(problem);
  if (grid.x % cluster_size != 0) {
    fail("grid.x = " + std::to_string(grid.x) + " is not a multiple of the cluster size " +
         std::to_string(cluster_size) + " (cudaErrorInvalidClusterSize)");
  }
  if (max_clusters < 1) {
    fail("not even one cluster of " + std::to_string(cluster_size) +
         " blocks can be co-resident with this block size and shared memory (max_active_clusters is 0)");
  }
}

}  // namespace detail
SIMT_END_WORLD
}  // namespace simt

#if defined(__CUDACC__)
#include "simt/simt_cuda.cuh"
#else
#include "simt/simt_emulator.h"
#endif

namespace simt {
SIMT_BEGIN_WORLD

// Barrier over the blocks [first, first + count) of a cooperative launch (co-resident, so a
// spin-wait ends), through one flag per block in global memory: every thread of each of those
// blocks calls it with the same `epoch`, 1 at the first use and one more at each later one.
// flags [gridDim.x] unsigned, zero before the first use. On return every thread sees what
// those blocks wrote before their call. Unlike grid_sync, blocks outside the range neither
// wait nor are waited for, and no atomic read-modify-write is involved: one release store
// per block and one acquire spin per awaited block.
SIMT_DEVICE __forceinline__ void flag_barrier(unsigned* flags, unsigned first, unsigned count, unsigned epoch) {
  __syncthreads();  // the block's writes before the release
  if (threadIdx.x == 0) publish_flag(flags + blockIdx.x, epoch);
  for (unsigned i = threadIdx.x; i < count; i += blockDim.x) wait_flag(flags + first + i, epoch);
  __syncthreads();  // the acquires before the block's reads
}

// A tagged word: a float32 value's bits in the low half, a tag (a step count) in the high half.
// One 8-byte store publishes both at once, so a reader that sees the tag it expects sees the
// value stored with it, without a fence (the tagged exchange of the Grid path).
SIMT_DEVICE __forceinline__ unsigned long long tag_word(float value, unsigned tag) {
#if defined(__CUDACC__)
  const unsigned bits = __float_as_uint(value);
#else
  const unsigned bits = std::bit_cast<unsigned>(value);
#endif
  return static_cast<unsigned long long>(tag) << 32 | bits;
}
SIMT_DEVICE __forceinline__ unsigned word_tag(unsigned long long word) { return static_cast<unsigned>(word >> 32); }
SIMT_DEVICE __forceinline__ float word_value(unsigned long long word) {
#if defined(__CUDACC__)
  return __uint_as_float(static_cast<unsigned>(word));
#else
  return std::bit_cast<float>(static_cast<unsigned>(word));
#endif
}

SIMT_END_WORLD
}  // namespace simt
