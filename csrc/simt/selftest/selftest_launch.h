// selftest_launch.h — host side of the SIMT self-test ops: tensors in, simt::launch /
// simt::launch_cooperative / simt::launch_cluster, tensors out. Shared verbatim by the emulated build
// (selftest_ops.cpp, CPU tensors) and the CUDA build (selftest_cuda.cu, CUDA tensors), as
// the recurrence kernels' launcher is.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <string>
#include <tuple>

#include "simt/selftest/selftest_kernels.cuh"

#if defined(__CUDACC__)
#include <c10/cuda/CUDAGuard.h>
#define RNN_FUSED_SELFTEST_GUARD(t) const c10::cuda::CUDAGuard simt_selftest_guard_((t).device())
#else
#define RNN_FUSED_SELFTEST_GUARD(t) (void)(t)
#endif

namespace rnn_fused::simt_selftest {
SIMT_BEGIN_WORLD

inline void check_float_vector(const at::Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(), what,
              ": expected a contiguous 1-D float32 tensor, got ", x.sizes(), " ", x.scalar_type());
}

inline int checked_int(int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= 2147483647, what, " out of range: ", v);
  return static_cast<int>(v);
}

// x [blocks * block_threads] -> per-block sums [blocks].
inline at::Tensor warp_reduce(const at::Tensor& x, int64_t block_threads) {
  check_float_vector(x, "simt_selftest_warp_reduce");
  RNN_FUSED_SELFTEST_GUARD(x);
  TORCH_CHECK(block_threads > 0 && block_threads % 32 == 0 && x.numel() % block_threads == 0,
              "simt_selftest_warp_reduce: block_threads must be a multiple of 32 dividing x.numel()");
  const auto blocks = static_cast<unsigned>(x.numel() / block_threads);
  at::Tensor sums = at::empty({static_cast<int64_t>(blocks)}, x.options());
  simt::launch(warp_reduce_kernel, blocks, dim3(static_cast<unsigned>(block_threads)), 0, x.data_ptr<float>(),
               sums.data_ptr<float>());
  return sums;
}

// x [rows, cols] -> x^T [cols, rows].
inline at::Tensor transpose(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "simt_selftest_transpose: expected a contiguous 2-D float32 tensor");
  RNN_FUSED_SELFTEST_GUARD(x);
  const int rows = checked_int(x.size(0), "rows");
  const int cols = checked_int(x.size(1), "cols");
  at::Tensor out = at::empty({cols, rows}, x.options());
  if (x.numel() == 0) return out;
  const dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
  simt::launch(transpose_kernel, grid, dim3(kTile, kTileRows), 0, x.data_ptr<float>(), out.data_ptr<float>(), rows, cols);
  return out;
}

// Cooperative stencil. blocks == 0: the planner picks min(blocks needed, co-resident
// capacity from the occupancy query), as the fused RNN kernels will. Returns the result
// [n] and the plan [blocks, blocks_per_sm, sm_count] (int64, on the CPU). with_flags: each
// step ends in simt::flag_barrier instead of simt::grid_sync.
inline std::tuple<at::Tensor, at::Tensor> run_grid_stencil(const at::Tensor& x, int64_t steps, int64_t block_threads,
                                                           int64_t blocks, bool with_flags) {
  check_float_vector(x, "simt_selftest_grid_stencil");
  RNN_FUSED_SELFTEST_GUARD(x);
  const int n = checked_int(x.numel(), "n");
  const int threads = checked_int(block_threads, "block_threads");
  const simt::DeviceProperties props = simt::device_properties();
  const int per_sm = simt::max_active_blocks_per_sm(grid_stencil_kernel, threads, 0);
  if (blocks == 0) {
    TORCH_CHECK(per_sm > 0, "simt_selftest_grid_stencil: the kernel cannot run with ", threads, " threads per block");
    const int64_t needed = (n + threads - 1) / std::max(threads, 1);
    blocks = std::max<int64_t>(1, std::min<int64_t>(needed, static_cast<int64_t>(per_sm) * props.sm_count));
  }
  at::Tensor state = at::empty({2, n}, x.options());
  state[0].copy_(x);
  at::Tensor flags = with_flags ? at::zeros({blocks}, x.options().dtype(at::kInt)) : at::Tensor();
  simt::launch_cooperative(grid_stencil_kernel, static_cast<unsigned>(blocks), dim3(static_cast<unsigned>(threads)), 0,
                           state.data_ptr<float>(), n, checked_int(steps, "steps"),
                           with_flags ? reinterpret_cast<unsigned*>(flags.data_ptr<int>()) : nullptr);
  at::Tensor plan = at::empty({3}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = plan.data_ptr<int64_t>();
  p[0] = blocks;
  p[1] = per_sm;
  p[2] = props.sm_count;
  return {state[steps % 2].clone(), plan};
}
inline std::tuple<at::Tensor, at::Tensor> grid_stencil(const at::Tensor& x, int64_t steps, int64_t block_threads,
                                                       int64_t blocks) {
  return run_grid_stencil(x, steps, block_threads, blocks, false);
}
inline std::tuple<at::Tensor, at::Tensor> flag_stencil(const at::Tensor& x, int64_t steps, int64_t block_threads,
                                                       int64_t blocks) {
  return run_grid_stencil(x, steps, block_threads, blocks, true);
}

// x [blocks * block_threads]: block 0's first block_threads / 2 values, relayed by a flag through
// every block to the last, which copies them (flag_relay_kernel; a cooperative launch). Returns
// the copy [block_threads / 2].
inline at::Tensor flag_relay(const at::Tensor& x, int64_t blocks) {
  check_float_vector(x, "simt_selftest_flag_relay");
  RNN_FUSED_SELFTEST_GUARD(x);
  TORCH_CHECK(blocks >= 2 && x.numel() % blocks == 0 && x.numel() / blocks >= 2,
              "simt_selftest_flag_relay: at least 2 blocks of at least 2 threads, blocks dividing x.numel()");
  const int64_t block_threads = x.numel() / blocks, half = block_threads / 2;
  at::Tensor out = at::zeros_like(x);
  simt::launch_cooperative(flag_relay_kernel, static_cast<unsigned>(checked_int(blocks, "blocks")),
                           dim3(static_cast<unsigned>(checked_int(block_threads, "block_threads"))), 0,
                           x.data_ptr<float>(), out.data_ptr<float>());
  return out.narrow(0, x.numel() / 2 + half, half).clone();
}

// x [blocks * block_threads]: each block's slice handed through global memory to the previous
// rank of its cluster (cluster_exchange_kernel). Returns what each block got [same].
inline at::Tensor cluster_exchange(const at::Tensor& x, int64_t blocks, int64_t cluster_size) {
  check_float_vector(x, "simt_selftest_cluster_exchange");
  RNN_FUSED_SELFTEST_GUARD(x);
  TORCH_CHECK(blocks > 0 && x.numel() % blocks == 0, "simt_selftest_cluster_exchange: blocks must divide x.numel()");
  at::Tensor stage = at::empty_like(x), got = at::empty_like(x);
  simt::launch_cluster(cluster_exchange_kernel, static_cast<unsigned>(checked_int(blocks, "blocks")),
                       dim3(static_cast<unsigned>(checked_int(x.numel() / blocks, "block_threads"))), 0,
                       static_cast<unsigned>(checked_int(cluster_size, "cluster_size")), x.data_ptr<float>(),
                       stage.data_ptr<float>(), got.data_ptr<float>());
  return got;
}

// values [n] int32 in [0, bins) -> (hist [bins] int32, maxima [2] int32, total [1] float32).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> atomics(const at::Tensor& values, int64_t bins, int64_t blocks,
                                                              int64_t block_threads) {
  TORCH_CHECK(values.dim() == 1 && values.scalar_type() == at::kInt && values.is_contiguous(),
              "simt_selftest_atomics: expected a contiguous 1-D int32 tensor");
  RNN_FUSED_SELFTEST_GUARD(values);
  const int b = checked_int(bins, "bins");
  at::Tensor hist = at::zeros({b}, values.options());
  at::Tensor maxima = at::full({2}, -2147483647 - 1, values.options());
  at::Tensor total = at::zeros({1}, values.options().dtype(at::kFloat));
  simt::launch(atomics_kernel, static_cast<unsigned>(checked_int(blocks, "blocks")),
               dim3(static_cast<unsigned>(checked_int(block_threads, "block_threads"))), sizeof(int) * b,
               values.data_ptr<int>(), checked_int(values.numel(), "n"), b, hist.data_ptr<int>(),
               maxima.data_ptr<int>(), total.data_ptr<float>());
  return {hist, maxima, total};
}

// x [blocks * block_threads] -> (per-warp inclusive scan [same], ballots [numel / 32] int32).
inline std::tuple<at::Tensor, at::Tensor> warp_scan(const at::Tensor& x, int64_t block_threads) {
  check_float_vector(x, "simt_selftest_warp_scan");
  RNN_FUSED_SELFTEST_GUARD(x);
  TORCH_CHECK(block_threads > 0 && block_threads % 32 == 0 && x.numel() % block_threads == 0,
              "simt_selftest_warp_scan: block_threads must be a multiple of 32 dividing x.numel()");
  at::Tensor scan = at::empty_like(x);
  at::Tensor ballot = at::empty({x.numel() / 32}, x.options().dtype(at::kInt));
  simt::launch(warp_scan_kernel, static_cast<unsigned>(x.numel() / block_threads),
               dim3(static_cast<unsigned>(block_threads)), 0, x.data_ptr<float>(), scan.data_ptr<float>(),
               ballot.data_ptr<int>());
  return {scan, ballot};
}

// x [n] -> (y, y through half, y through bfloat16), each [n] float32.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> device_math(const at::Tensor& x) {
  check_float_vector(x, "simt_selftest_device_math");
  RNN_FUSED_SELFTEST_GUARD(x);
  const int n = checked_int(x.numel(), "n");
  at::Tensor y = at::empty_like(x), half = at::empty_like(x), bf16 = at::empty_like(x);
  if (n == 0) return {y, half, bf16};
  constexpr int threads = 128;
  simt::launch(device_math_kernel, static_cast<unsigned>((n + threads - 1) / threads), dim3(threads), 0,
               x.data_ptr<float>(), y.data_ptr<float>(), half.data_ptr<float>(), bf16.data_ptr<float>(), n);
  return {y, half, bf16};
}

// x [blocks * block_threads] -> x after `rounds` rounds (2 barriers each) of neighbour mixing.
inline at::Tensor barrier_loop(const at::Tensor& x, int64_t block_threads, int64_t rounds) {
  check_float_vector(x, "simt_selftest_barrier_loop");
  RNN_FUSED_SELFTEST_GUARD(x);
  TORCH_CHECK(block_threads > 0 && x.numel() % block_threads == 0,
              "simt_selftest_barrier_loop: block_threads must divide x.numel()");
  at::Tensor data = x.clone();
  simt::launch(barrier_loop_kernel, static_cast<unsigned>(x.numel() / block_threads),
               dim3(static_cast<unsigned>(block_threads)), sizeof(float) * block_threads, data.data_ptr<float>(),
               checked_int(rounds, "rounds"));
  return data;
}

// Launches bounded_kernel (launch bounds 128) with the given configuration; tests use it
// to check launch validation. Returns out [blocks * block_threads].
inline at::Tensor bounded(const at::Tensor& like, int64_t blocks, int64_t block_x, int64_t block_y,
                          int64_t dynamic_smem) {
  RNN_FUSED_SELFTEST_GUARD(like);
  at::Tensor out = at::zeros({std::max<int64_t>(blocks * block_x * block_y, 1)}, like.options().dtype(at::kFloat));
  simt::launch(bounded_kernel, static_cast<unsigned>(blocks),
               dim3(static_cast<unsigned>(block_x), static_cast<unsigned>(block_y)),
               static_cast<std::size_t>(dynamic_smem), out.data_ptr<float>());
  return out;
}

// The cluster all-gather recurrence: x [blocks * block_threads] holds one vector of
// n = cluster_size * block_threads per cluster. cluster_size 0 launches without clusters
// (simt::launch: one-block clusters, n = block_threads). `nonportable` sets the kernel's
// opt-in to 9..16 blocks per cluster before the launch; `async_exchange` exchanges by
// asynchronous stores and mbarriers instead of cluster barriers. Returns (each block's final copy
// [blocks, n], (cluster_rank, cluster_size) per block [blocks, 2] int32).
inline std::tuple<at::Tensor, at::Tensor> cluster_allgather(const at::Tensor& x, int64_t blocks, int64_t cluster_size,
                                                            int64_t rounds, bool static_buffers, bool nonportable,
                                                            bool async_exchange) {
  check_float_vector(x, "simt_selftest_cluster_allgather");
  RNN_FUSED_SELFTEST_GUARD(x);
  TORCH_CHECK(blocks > 0 && x.numel() % blocks == 0 && x.numel() > 0,
              "simt_selftest_cluster_allgather: blocks must divide x.numel()");
  const int64_t block_threads = x.numel() / blocks;
  const int64_t n = std::max<int64_t>(cluster_size, 1) * block_threads;
  TORCH_CHECK(!static_buffers || n <= kClusterVectorMax, "simt_selftest_cluster_allgather: static buffers hold ",
              kClusterVectorMax, " elements, the cluster's vector has ", n);
  at::Tensor out = at::empty({blocks, n}, x.options());
  at::Tensor ranks = at::empty({blocks, 2}, x.options().dtype(at::kInt));
  const auto grid = static_cast<unsigned>(checked_int(blocks, "blocks"));
  const dim3 block(static_cast<unsigned>(checked_int(block_threads, "block_threads")));
  const std::size_t dynamic_smem = static_buffers ? 0 : 2 * sizeof(float) * static_cast<std::size_t>(n);
  const int r = checked_int(rounds, "rounds");
  if (cluster_size == 0) {
    simt::launch(cluster_allgather_kernel, grid, block, dynamic_smem, x.data_ptr<float>(), out.data_ptr<float>(),
                 ranks.data_ptr<int>(), r, static_buffers ? 1 : 0, async_exchange ? 1 : 0);
  } else {
    simt::allow_nonportable_cluster_size(cluster_allgather_kernel, nonportable);
    simt::launch_cluster(cluster_allgather_kernel, grid, block, dynamic_smem,
                         static_cast<unsigned>(checked_int(cluster_size, "cluster_size")), x.data_ptr<float>(),
                         out.data_ptr<float>(), ranks.data_ptr<int>(), r, static_buffers ? 1 : 0,
                         async_exchange ? 1 : 0);
  }
  return {out, ranks};
}

inline Fault parse_fault(const std::string& name) {
  static const std::pair<const char*, Fault> names[] = {
      {"divergent_barrier", Fault::DivergentBarrier},
      {"exit_before_barrier", Fault::ExitBeforeBarrier},
      {"missing_barrier", Fault::MissingBarrier},
      {"inactive_lane", Fault::InactiveLane},
      {"mask_excludes_caller", Fault::MaskExcludesCaller},
      {"exited_lane", Fault::ExitedLane},
      {"warp_barrier_deadlock", Fault::WarpBarrierDeadlock},
      {"grid_sync_not_cooperative", Fault::GridSyncNotCooperative},
      {"grid_sync_block_exits", Fault::GridSyncBlockExits},
      {"missing_grid_sync", Fault::MissingGridSync},
      {"kernel_check", Fault::KernelCheck},
      {"shared_out_of_bounds", Fault::SharedOutOfBounds},
      {"dynamic_shared_out_of_bounds", Fault::DynamicSharedOutOfBounds},
      {"mismatched_warp_ops", Fault::MismatchedWarpOps},
      {"shuffle_outside_mask", Fault::ShuffleOutsideMask},
      {"stack_overflow", Fault::StackOverflow},
      {"async_copy_unwaited", Fault::AsyncCopyUnwaited},
      {"async_copy_pending_at_exit", Fault::AsyncCopyPendingAtExit},
      {"async_copy_outside_shared", Fault::AsyncCopyOutsideShared},
      {"flag_never_published", Fault::FlagNeverPublished},
      {"flag_across_plain_launch", Fault::FlagAcrossPlainLaunch},
      {"tagged_word_overwritten", Fault::TaggedWordOverwritten},
      {"flag_before_block_barrier", Fault::FlagBeforeBlockBarrier},
      {"flag_wait_without_block_barrier", Fault::FlagWaitWithoutBlockBarrier},
      {"cross_block_overwrite", Fault::CrossBlockOverwrite},
      {"cross_block_plain_launch", Fault::CrossBlockPlainLaunch},
      {"flag_relay_broken", Fault::FlagRelayBroken},
      {"flag_later_release", Fault::FlagLaterRelease},
      {"copy_overwritten_in_flight", Fault::CopyOverwrittenInFlight},
  };
  for (const auto& [n, f] : names) {
    if (name == n) return f;
  }
  TORCH_CHECK(false, "simt_selftest_faulty: unknown fault '", name, "'");
}

// Runs one known-bad kernel: x [blocks * block_threads] float -> out [same].
// The grid_sync cases, flag_never_published and the flag exchanges are launched cooperatively,
// every other case normally.
inline at::Tensor faulty(const std::string& fault_name, const at::Tensor& x, int64_t blocks, int64_t block_threads) {
  check_float_vector(x, "simt_selftest_faulty");
  RNN_FUSED_SELFTEST_GUARD(x);
  const Fault fault = parse_fault(fault_name);
  TORCH_CHECK(blocks > 0 && block_threads > 0 && x.numel() == blocks * block_threads,
              "simt_selftest_faulty: x must have blocks * block_threads elements");
  TORCH_CHECK((fault != Fault::MissingBarrier && fault != Fault::SharedOutOfBounds) || block_threads <= 64,
              "simt_selftest_faulty: this case uses a 64-element shared array");
  at::Tensor out = at::zeros_like(x);
  const auto grid = static_cast<unsigned>(blocks);
  const dim3 block(static_cast<unsigned>(block_threads));
  const std::size_t dynamic_smem = sizeof(float) * block_threads;
  const bool cooperative = fault == Fault::GridSyncBlockExits || fault == Fault::MissingGridSync ||
                           fault == Fault::FlagNeverPublished || fault == Fault::FlagBeforeBlockBarrier ||
                           fault == Fault::FlagWaitWithoutBlockBarrier || fault == Fault::CrossBlockOverwrite ||
                           fault == Fault::FlagRelayBroken || fault == Fault::FlagLaterRelease ||
                           fault == Fault::CopyOverwrittenInFlight;
  if (cooperative) {
    simt::launch_cooperative(faulty_kernel, grid, block, dynamic_smem, static_cast<int>(fault), x.data_ptr<float>(),
                             out.data_ptr<float>());
  } else {
    simt::launch(faulty_kernel, grid, block, dynamic_smem, static_cast<int>(fault), x.data_ptr<float>(),
                 out.data_ptr<float>());
  }
  return out;
}

inline ClusterFault parse_cluster_fault(const std::string& name) {
  static const std::pair<const char*, ClusterFault> names[] = {
      {"missing_cluster_sync", ClusterFault::MissingClusterSync},
      {"divergent_cluster_sync", ClusterFault::DivergentClusterSync},
      {"rank_out_of_range", ClusterFault::RankOutOfRange},
      {"map_non_shared", ClusterFault::MapNonShared},
      {"exit_while_mapped", ClusterFault::ExitWhileMapped},
      {"exit_before_cluster_sync", ClusterFault::ExitBeforeClusterSync},
      {"cluster_sync_against_barrier", ClusterFault::ClusterSyncAgainstBarrier},
      {"remote_shared_out_of_bounds", ClusterFault::RemoteSharedOutOfBounds},
      {"stale_remote_access", ClusterFault::StaleRemoteAccess},
      {"grid_sync_in_cluster", ClusterFault::GridSyncInCluster},
      {"global_exchange_across_clusters", ClusterFault::GlobalExchangeAcrossClusters},
      {"read_before_cluster_wait", ClusterFault::ReadBeforeClusterWait},
      {"wait_without_arrive", ClusterFault::WaitWithoutArrive},
      {"arrive_twice", ClusterFault::ArriveTwice},
      {"map_between_arrive_and_wait", ClusterFault::MapBetweenArriveAndWait},
      {"exit_after_arrive", ClusterFault::ExitAfterArrive},
      {"async_read_before_wait", ClusterFault::AsyncReadBeforeWait},
      {"async_one_copy", ClusterFault::AsyncOneCopy},
      {"async_expect_too_many_bytes", ClusterFault::AsyncExpectTooManyBytes},
      {"async_store_before_init_visible", ClusterFault::AsyncStoreBeforeInitVisible},
      {"async_uninitialised_barrier", ClusterFault::AsyncUninitialisedBarrier},
      {"async_exit_with_stores_pending", ClusterFault::AsyncExitWithStoresPending},
  };
  for (const auto& [n, f] : names) {
    if (name == n) return f;
  }
  TORCH_CHECK(false, "simt_selftest_faulty_cluster: unknown fault '", name, "'");
}

// Runs one known-bad cluster kernel: x [blocks * block_threads] float -> out [blocks, n],
// n = cluster_size * block_threads, in a cluster launch with [2, n] floats of dynamic
// shared memory.
inline at::Tensor faulty_cluster(const std::string& fault_name, const at::Tensor& x, int64_t blocks,
                                 int64_t cluster_size, int64_t rounds) {
  check_float_vector(x, "simt_selftest_faulty_cluster");
  RNN_FUSED_SELFTEST_GUARD(x);
  const ClusterFault fault = parse_cluster_fault(fault_name);
  TORCH_CHECK(blocks > 0 && x.numel() % blocks == 0 && x.numel() > 0 && cluster_size > 0,
              "simt_selftest_faulty_cluster: blocks must divide x.numel() and cluster_size must be positive");
  const int64_t block_threads = x.numel() / blocks;
  const int64_t n = cluster_size * block_threads;
  at::Tensor out = at::zeros({blocks, n}, x.options());
  simt::launch_cluster(faulty_cluster_kernel, static_cast<unsigned>(checked_int(blocks, "blocks")),
                       dim3(static_cast<unsigned>(checked_int(block_threads, "block_threads"))),
                       2 * sizeof(float) * static_cast<std::size_t>(n),
                       static_cast<unsigned>(checked_int(cluster_size, "cluster_size")), static_cast<int>(fault),
                       x.data_ptr<float>(), out.data_ptr<float>(), checked_int(rounds, "rounds"));
  return out;
}

SIMT_END_WORLD
}  // namespace rnn_fused::simt_selftest

// The known-good self-tests, registered for one dispatch key (CPU: emulated; CUDA: real).
// The faulty kernels are emulation-only: on a GPU they would hang or trap.
#define RNN_FUSED_REGISTER_GOOD_SELFTESTS(m)                               \
  do {                                                                     \
    namespace st = ::rnn_fused::simt_selftest;                             \
    (m).impl("warp_reduce", &st::warp_reduce);              \
    (m).impl("transpose", &st::transpose);                  \
    (m).impl("grid_stencil", &st::grid_stencil);            \
    (m).impl("flag_stencil", &st::flag_stencil);            \
    (m).impl("flag_relay", &st::flag_relay);                \
    (m).impl("cluster_exchange", &st::cluster_exchange);    \
    (m).impl("atomics", &st::atomics);                      \
    (m).impl("warp_scan", &st::warp_scan);                  \
    (m).impl("device_math", &st::device_math);              \
    (m).impl("barrier_loop", &st::barrier_loop);            \
    (m).impl("cluster_allgather", &st::cluster_allgather);  \
    (m).impl("bounded", &st::bounded);                      \
  } while (0)
