// Every compiled persistent recurrence kernel (the layer kernels of each path, the layer stacks'
// and the lane-row step's), listed once, in parts. What a listing does depends on the
// translation unit:
//  - nvcc (elman_cuda.cu): nothing but a check of the launch bounds; the one .cu file
//    instantiates every kernel it launches (nvcc --split-compile spreads them over the cores).
//  - the emulator's part files (csrc/simt/elman_emulated_part_<n>.cpp, RNN_FUSED_KERNEL_PART n):
//    the kernels of part n, explicitly instantiated, with their launch bounds and registers
//    registered for the emulator's occupancy model (SIMT_KERNEL_ATTRIBUTES).
//  - the emulated backend's host code (csrc/simt/elman_emulated.cpp,
//    RNN_FUSED_KERNELS_ELSEWHERE): an explicit instantiation declaration of each, so that its
//    planner and launches name the kernels without compiling them.
// Why parts: g++ compiled the ~400 emulated kernels in one translation unit in about 6-8 minutes
// on one core, the longest job of a build on any number of cores (the H200 host's build did not
// finish in 338 s); in eight parts they compile side by side where there are cores for them.
// A kernel the planner can pick but missing here would be compiled into the host code's
// translation unit again, with the emulator's default launch bounds and registers: the lists
// name every kernel with_persistent_kernel, with_stack_kernel and with_lane_rows_kernel
// (elman_launch.h) can pick.
#pragma once

#include "cuda/elman_backward_kernel.cuh"
#include "cuda/elman_forward_kernel.cuh"
#include "cuda/elman_lane_rows_kernel.cuh"

// The part this translation unit instantiates (-1: every part).
#ifndef RNN_FUSED_KERNEL_PART
#define RNN_FUSED_KERNEL_PART -1
#endif
#define RNN_FUSED_IN_KERNEL_PART(n) (RNN_FUSED_KERNEL_PART < 0 || RNN_FUSED_KERNEL_PART == (n))

#if defined(__CUDACC__)
#define RNN_FUSED_LISTED_KERNEL(max_threads, regs_per_thread, ...) \
  SIMT_KERNEL_ATTRIBUTES(max_threads, regs_per_thread, __VA_ARGS__)
#elif defined(RNN_FUSED_KERNELS_ELSEWHERE)
#define RNN_FUSED_LISTED_KERNEL(max_threads, regs_per_thread, ...) extern template decltype(__VA_ARGS__) __VA_ARGS__
#else
#define RNN_FUSED_LISTED_KERNEL(max_threads, regs_per_thread, ...) \
  template decltype(__VA_ARGS__) __VA_ARGS__;                      \
  SIMT_KERNEL_ATTRIBUTES(max_threads, regs_per_thread, __VA_ARGS__)
#endif

namespace rnn_fused::kernels {

SIMT_BEGIN_WORLD

// Registers per thread for the emulator's occupancy model, at least what ptxas reports over
// float/double and sm_80/sm_90 (benchmarks/nvcc_resource_usage.txt: up to 255 for the
// persistent kernels, whose launch bounds allow 255 at one CTA per SM); under nvcc the real
// numbers are queried.
constexpr int kPersistentKernelRegisters = 255;

#define RNN_FUSED_RECURRENCE_KERNELS(scalar_t, samples, path, passes)                                        \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                   \
                          forward_recurrence_kernel<scalar_t, samples, RecurrencePath::path, passes>);      \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                   \
                          backward_recurrence_kernel<scalar_t, samples, RecurrencePath::path, passes>)
#define RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(scalar_t, path, passes) \
  RNN_FUSED_RECURRENCE_KERNELS(scalar_t, 1, path, passes);               \
  RNN_FUSED_RECURRENCE_KERNELS(scalar_t, 2, path, passes);               \
  RNN_FUSED_RECURRENCE_KERNELS(scalar_t, 4, path, passes);               \
  RNN_FUSED_RECURRENCE_KERNELS(scalar_t, 8, path, passes)
// The float32 kernels compiled for their passes, with the backward's plain copy (kPlain).
#define RNN_FUSED_COMPILED_KERNELS(samples, path, passes)   \
  RNN_FUSED_RECURRENCE_KERNELS(float, samples, path, passes); \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters, \
                          backward_recurrence_kernel<float, samples, RecurrencePath::path, passes, true>)
#define RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(path, passes) \
  RNN_FUSED_COMPILED_KERNELS(1, path, passes);               \
  RNN_FUSED_COMPILED_KERNELS(2, path, passes);               \
  RNN_FUSED_COMPILED_KERNELS(4, path, passes);               \
  RNN_FUSED_COMPILED_KERNELS(8, path, passes)
// The Cluster path's layer stack (passes > 0: the backward's plain copy too).
#define RNN_FUSED_CLUSTER_STACK_KERNELS(samples, passes)                                                      \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          forward_cluster_stack_kernel<samples, passes>);                                    \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          backward_cluster_stack_kernel<samples, passes>)
#define RNN_FUSED_COMPILED_CLUSTER_STACK_KERNELS(samples, passes) \
  RNN_FUSED_CLUSTER_STACK_KERNELS(samples, passes);               \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters, \
                          backward_cluster_stack_kernel<samples, passes, true>)
// The Cluster path at 5-8 passes: up to 4 samples per chunk (max_compiled_cluster_passes), its
// layers' kernels and its stack's.
#define RNN_FUSED_CLUSTER_KERNELS_UP_TO_4_SAMPLES(passes) \
  RNN_FUSED_COMPILED_KERNELS(1, Cluster, passes);         \
  RNN_FUSED_COMPILED_KERNELS(2, Cluster, passes);         \
  RNN_FUSED_COMPILED_KERNELS(4, Cluster, passes);         \
  RNN_FUSED_COMPILED_CLUSTER_STACK_KERNELS(1, passes);    \
  RNN_FUSED_COMPILED_CLUSTER_STACK_KERNELS(2, passes);    \
  RNN_FUSED_COMPILED_CLUSTER_STACK_KERNELS(4, passes)
// The Cluster path's kernels compiled for more chunk iterations than passes, whose rows are
// held in registers: its split weights (cluster_weights_split: 2 passes at 1, 2 or 4 samples,
// the first's rows in registers, at 2 and 4 samples their first 24 or 20 chunk iterations), and every row
// in registers (cluster_rows_in_registers: 1 or 2 passes at 1 sample).
#define RNN_FUSED_CLUSTER_HELD_ROW_KERNELS(samples, passes, iterations)                                       \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          forward_recurrence_kernel<float, samples, RecurrencePath::Cluster, passes, iterations>); \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          backward_recurrence_kernel<float, samples, RecurrencePath::Cluster, passes, false,  \
                                                     iterations>);                                            \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          backward_recurrence_kernel<float, samples, RecurrencePath::Cluster, passes, true,   \
                                                     iterations>)
// The layer stacks (the Block path's and the Cluster path's) at up to 4 passes.
#define RNN_FUSED_STACK_KERNELS_OF(samples, passes)                                                           \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters, forward_stack_kernel<samples, passes>); \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters, backward_stack_kernel<samples, passes>); \
  RNN_FUSED_CLUSTER_STACK_KERNELS(samples, passes)
#define RNN_FUSED_COMPILED_STACK_KERNELS_OF(samples, passes)                                                  \
  RNN_FUSED_STACK_KERNELS_OF(samples, passes);                                                                \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          backward_stack_kernel<samples, passes, true>);                                     \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          backward_cluster_stack_kernel<samples, passes, true>)
#define RNN_FUSED_STACK_KERNELS(passes)  \
  RNN_FUSED_STACK_KERNELS_OF(1, passes); \
  RNN_FUSED_STACK_KERNELS_OF(2, passes); \
  RNN_FUSED_STACK_KERNELS_OF(4, passes); \
  RNN_FUSED_STACK_KERNELS_OF(8, passes)
#define RNN_FUSED_COMPILED_STACK_KERNELS(passes)  \
  RNN_FUSED_COMPILED_STACK_KERNELS_OF(1, passes); \
  RNN_FUSED_COMPILED_STACK_KERNELS_OF(2, passes); \
  RNN_FUSED_COMPILED_STACK_KERNELS_OF(4, passes); \
  RNN_FUSED_COMPILED_STACK_KERNELS_OF(8, passes)
// The Block stack at 5-8 passes: 1 or 2 samples per chunk (stack_compiled_passes). (The
// Cluster stack's are with the Cluster path's.)
#define RNN_FUSED_BLOCK_STACK_KERNELS_OF(samples, passes)                                                     \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters, forward_stack_kernel<samples, passes>); \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters, backward_stack_kernel<samples, passes>); \
  RNN_FUSED_LISTED_KERNEL(kRecurrenceThreads, kPersistentKernelRegisters,                                    \
                          backward_stack_kernel<samples, passes, true>)
#define RNN_FUSED_BLOCK_STACK_KERNELS(passes)    \
  RNN_FUSED_BLOCK_STACK_KERNELS_OF(1, passes); \
  RNN_FUSED_BLOCK_STACK_KERNELS_OF(2, passes)
// The lane-row kernels (elman_lane_rows_kernel.cuh): 1 or 2 samples per CTA with rows of 8 or 16
// vectors, 1 with rows of 32 (lane_rows_compiled); the backward with and without norms.
// Registers for the emulator's occupancy model: the row, four accumulators per sample and
// about 48 others.
#define RNN_FUSED_LANE_ROWS_KERNELS(samples, vectors)                                                         \
  RNN_FUSED_LISTED_KERNEL(kLaneRowsMaxThreads, 4 * (vectors) + 4 * (samples) + 48,                          \
                          forward_lane_rows_kernel<samples, vectors>);                                      \
  RNN_FUSED_LISTED_KERNEL(kLaneRowsMaxThreads, 4 * (vectors) + 4 * (samples) + 48,                          \
                          backward_lane_rows_kernel<samples, vectors, false>);                              \
  RNN_FUSED_LISTED_KERNEL(kLaneRowsMaxThreads, 4 * (vectors) + 4 * (samples) + 48,                          \
                          backward_lane_rows_kernel<samples, vectors, true>)

// The lists below name every compiled kernel: block 1-4 passes at every sample count and 5-8 at
// 1 and 2, cluster 1-4 at every sample count and 5-8 at up to 4, the cluster's split kernels and
// those with every row in registers, the grid's at run-time passes, the stacks' and the lane rows'.
// Eight parts of 24-76 kernels (about as long to compile: the split-weight kernels take longest),
// one for each of csrc/simt/elman_emulated_part_0.cpp .. _7.cpp.
static_assert(kRegisterPasses == 4 && kMaxPasses == 8 && kSplitMaxSamples == 2 && max_compiled_cluster_passes(8) == 4 &&
                  max_compiled_cluster_passes(4) == 8 && cluster_weights_split(2, 32, false, 4) &&
                  !cluster_weights_split(2, 32, false, 8) && cluster_rows_in_registers(2, 8, false, 1) &&
                  !cluster_rows_in_registers(3, 8, false, 1) && !cluster_rows_in_registers(1, 8, false, 2),
              "list the new compiled kernels");
static_assert(kStackRegisterMaxSamples == 2 && stack_compiled_passes(kMaxPasses, 4, 2) == kMaxPasses &&
                  stack_compiled_passes(kRegisterPasses + 1, 3, 4) == 0,
              "list the new compiled stack kernels");
static_assert(kLaneRowsMaxSamples == 2 && lane_row_vectors(kLaneRowsMaxHidden) == 32 && lane_rows_compiled(1, 128) &&
              lane_rows_compiled(2, 64) && !lane_rows_compiled(2, 65));

#if RNN_FUSED_IN_KERNEL_PART(0)  // the Block path at up to 2 passes and at 7-8 (52 kernels)
RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(float, Block, 0);
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Block, 1);
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Block, 2);
RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(double, Block, 0);
RNN_FUSED_COMPILED_KERNELS(1, Block, 7);
RNN_FUSED_COMPILED_KERNELS(1, Block, 8);
RNN_FUSED_COMPILED_KERNELS(2, Block, 7);
RNN_FUSED_COMPILED_KERNELS(2, Block, 8);
#endif
#if RNN_FUSED_IN_KERNEL_PART(1)  // the Block path at 4-6 passes (24)
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Block, 4);
RNN_FUSED_COMPILED_KERNELS(1, Block, 5);
RNN_FUSED_COMPILED_KERNELS(1, Block, 6);
RNN_FUSED_COMPILED_KERNELS(2, Block, 5);
RNN_FUSED_COMPILED_KERNELS(2, Block, 6);
#endif
#if RNN_FUSED_IN_KERNEL_PART(2)  // the Cluster path at up to 2 passes, the Grid path (56)
RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(float, Cluster, 0);
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Cluster, 1);
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Cluster, 2);
RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(double, Cluster, 0);
RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(float, Grid, 0);
RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES(double, Grid, 0);
#endif
#if RNN_FUSED_IN_KERNEL_PART(3)  // the Cluster path at 3-4 passes and with rows held in registers, the lane rows (54)
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Cluster, 3);
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Cluster, 4);
RNN_FUSED_CLUSTER_HELD_ROW_KERNELS(1, kClusterSplitPasses, kClusterSplitIterations);
RNN_FUSED_CLUSTER_HELD_ROW_KERNELS(2, kClusterSplitPasses, kClusterSplitIterations);
RNN_FUSED_CLUSTER_HELD_ROW_KERNELS(4, kClusterSplitPasses, kClusterSplitIterations);
RNN_FUSED_CLUSTER_HELD_ROW_KERNELS(1, 1, kClusterRowIterations);
RNN_FUSED_CLUSTER_HELD_ROW_KERNELS(1, 2, kClusterRowIterations);
RNN_FUSED_LANE_ROWS_KERNELS(1, 8);
RNN_FUSED_LANE_ROWS_KERNELS(1, 16);
RNN_FUSED_LANE_ROWS_KERNELS(1, 32);
RNN_FUSED_LANE_ROWS_KERNELS(2, 8);
RNN_FUSED_LANE_ROWS_KERNELS(2, 16);
#endif
#if RNN_FUSED_IN_KERNEL_PART(4)  // the Cluster path and its stack at 5-6 passes (36)
RNN_FUSED_CLUSTER_KERNELS_UP_TO_4_SAMPLES(5);
RNN_FUSED_CLUSTER_KERNELS_UP_TO_4_SAMPLES(6);
#endif
#if RNN_FUSED_IN_KERNEL_PART(5)  // the Cluster path and its stack at 7-8 passes (36)
RNN_FUSED_CLUSTER_KERNELS_UP_TO_4_SAMPLES(7);
RNN_FUSED_CLUSTER_KERNELS_UP_TO_4_SAMPLES(8);
#endif
#if RNN_FUSED_IN_KERNEL_PART(6)  // the layer stacks at up to 2 passes, the Block path at 3 passes (76)
RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES(Block, 3);
RNN_FUSED_STACK_KERNELS(0);
RNN_FUSED_COMPILED_STACK_KERNELS(1);
RNN_FUSED_COMPILED_STACK_KERNELS(2);
#endif
#if RNN_FUSED_IN_KERNEL_PART(7)  // the layer stacks at 3-8 passes (72)
RNN_FUSED_COMPILED_STACK_KERNELS(3);
RNN_FUSED_COMPILED_STACK_KERNELS(4);
RNN_FUSED_BLOCK_STACK_KERNELS(5);
RNN_FUSED_BLOCK_STACK_KERNELS(6);
RNN_FUSED_BLOCK_STACK_KERNELS(7);
RNN_FUSED_BLOCK_STACK_KERNELS(8);
#endif

#undef RNN_FUSED_LANE_ROWS_KERNELS
#undef RNN_FUSED_BLOCK_STACK_KERNELS
#undef RNN_FUSED_BLOCK_STACK_KERNELS_OF
#undef RNN_FUSED_COMPILED_STACK_KERNELS
#undef RNN_FUSED_STACK_KERNELS
#undef RNN_FUSED_COMPILED_STACK_KERNELS_OF
#undef RNN_FUSED_STACK_KERNELS_OF
#undef RNN_FUSED_CLUSTER_HELD_ROW_KERNELS
#undef RNN_FUSED_CLUSTER_KERNELS_UP_TO_4_SAMPLES
#undef RNN_FUSED_COMPILED_CLUSTER_STACK_KERNELS
#undef RNN_FUSED_CLUSTER_STACK_KERNELS
#undef RNN_FUSED_COMPILED_KERNELS_ALL_SAMPLES
#undef RNN_FUSED_COMPILED_KERNELS
#undef RNN_FUSED_RECURRENCE_KERNELS_ALL_SAMPLES
#undef RNN_FUSED_RECURRENCE_KERNELS
#undef RNN_FUSED_LISTED_KERNEL
#undef RNN_FUSED_IN_KERNEL_PART

SIMT_END_WORLD

}  // namespace rnn_fused::kernels
