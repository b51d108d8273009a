"""The SIMT emulator's self-test kernels (op namespace rnn_fused_selftest): CPU tensors run
emulated, CUDA tensors on the GPU. They check the emulation itself (tests/test_simt.py).
Built only with RNN_FUSED_SELFTESTS=1, as `make build` does; not part of an installed
rnn_fused."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _build  # noqa: F401  (loads rnn_fused._C)


def _ops():
    if not hasattr(torch.ops.rnn_fused_selftest, "warp_reduce"):
        raise RuntimeError("rnn_fused: the SIMT self-test kernels are not in this build; rebuild with "
                           "RNN_FUSED_SELFTESTS=1 (make build does)")
    return torch.ops.rnn_fused_selftest


def occupancy(kernel: str, block_threads: int, dynamic_smem: int = 0) -> int:
    """Blocks per SM of a self-test kernel under the emulated device's occupancy model."""
    return _ops().occupancy(kernel, block_threads, dynamic_smem)


def cluster_occupancy(block_threads: int, dynamic_smem: int, cluster_size: int, nonportable: bool = False) -> int:
    """Co-resident clusters of the cluster all-gather kernel under the emulated device
    (simt::max_active_clusters), after setting its opt-in to 9..16-block clusters."""
    return _ops().cluster_occupancy(block_threads, dynamic_smem, cluster_size, nonportable)


def warp_reduce(x: Tensor, block_threads: int) -> Tensor:
    """Per-block sums of x [blocks * block_threads] via warp shuffles."""
    return _ops().warp_reduce(x, block_threads)


def transpose(x: Tensor) -> Tensor:
    """x.T through a shared-memory tile."""
    return _ops().transpose(x)


def grid_stencil(x: Tensor, steps: int, block_threads: int = 128, blocks: int = 0) -> tuple[Tensor, Tensor]:
    """`steps` rounds of a 3-point stencil in one cooperative launch with a grid sync per
    step. blocks=0 lets the occupancy-based planner choose. Returns (result, plan) where
    plan = [blocks, blocks_per_sm, sm_count]."""
    return _ops().grid_stencil(x, steps, block_threads, blocks)


def flag_stencil(x: Tensor, steps: int, block_threads: int = 128, blocks: int = 0) -> tuple[Tensor, Tensor]:
    """grid_stencil with simt::flag_barrier (one flag per block in global memory) where
    grid_stencil has its grid sync."""
    return _ops().flag_stencil(x, steps, block_threads, blocks)


def flag_relay(x: Tensor, blocks: int) -> Tensor:
    """Block 0's first block_threads / 2 values of x [blocks * block_threads], relayed by a flag
    through every block to the last, which copies them (one cooperative launch); returns the
    copy. Ordered only through the chain of releases and acquires."""
    return _ops().flag_relay(x, blocks)


def cluster_exchange(x: Tensor, block_threads: int, cluster_size: int) -> Tensor:
    """Each block's slice of x [blocks * block_threads] handed through global memory to the
    previous rank of its cluster, behind one cluster_sync; returns what each block got."""
    if block_threads <= 0 or x.numel() % block_threads:
        raise ValueError(f"block_threads ({block_threads}) must be positive and divide x.numel() ({x.numel()})")
    return _ops().cluster_exchange(x, x.numel() // block_threads, cluster_size)


def atomics(values: Tensor, bins: int, blocks: int = 3, block_threads: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """(histogram [bins], [max, max of block maxima], [float sum]) of int32 values."""
    return _ops().atomics(values, bins, blocks, block_threads)


def warp_scan(x: Tensor, block_threads: int = 64) -> tuple[Tensor, Tensor]:
    """(per-warp inclusive scan, per-warp ballot of x > 0 as int32)."""
    return _ops().warp_scan(x, block_threads)


def device_math(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(y = fma(tanh x, exp(-|x|), rsqrt(1 + x^2)), y via float16, y via bfloat16)."""
    return _ops().device_math(x)


def barrier_loop(x: Tensor, block_threads: int, rounds: int) -> Tensor:
    """`rounds` rounds of neighbour mixing through shared memory, two barriers per round."""
    return _ops().barrier_loop(x, block_threads, rounds)


def bounded(blocks: int, block_x: int, block_y: int = 1, dynamic_smem: int = 0, device="cpu") -> Tensor:
    """Launch a kernel with launch bounds 128 in the given configuration (launch checks)."""
    like = torch.empty(0, device=device)
    return _ops().bounded(like, blocks, block_x, block_y, dynamic_smem)


def cluster_allgather(x: Tensor, block_threads: int, cluster_size: int, rounds: int, static_buffers: bool = False,
                      nonportable: bool = False, async_exchange: bool = False) -> tuple[Tensor, Tensor]:
    """`rounds` rounds of a recurrence whose state each cluster shares through distributed
    shared memory (one cluster_sync per round; with async_exchange, asynchronous stores counted
    by each block's mbarriers instead); x [blocks * block_threads] holds one vector of
    cluster_size * block_threads elements per cluster. cluster_size=0 launches without
    clusters (one-block clusters). Returns (each block's copy of its cluster's final vector
    [blocks, n], (cluster_rank, cluster_size) per block [blocks, 2] int32)."""
    if block_threads <= 0 or x.numel() % block_threads:
        raise ValueError(f"block_threads ({block_threads}) must be positive and divide x.numel() ({x.numel()})")
    return _ops().cluster_allgather(x, x.numel() // block_threads, cluster_size, rounds, static_buffers, nonportable,
                                    async_exchange)


FAULTS = (
    "divergent_barrier", "exit_before_barrier", "missing_barrier", "inactive_lane", "mask_excludes_caller",
    "exited_lane", "warp_barrier_deadlock", "grid_sync_not_cooperative", "grid_sync_block_exits",
    "missing_grid_sync", "kernel_check", "shared_out_of_bounds", "dynamic_shared_out_of_bounds",
    "mismatched_warp_ops", "shuffle_outside_mask", "stack_overflow", "async_copy_unwaited",
    "async_copy_pending_at_exit", "async_copy_outside_shared", "flag_never_published",
    "flag_across_plain_launch", "tagged_word_overwritten", "flag_before_block_barrier",
    "flag_wait_without_block_barrier", "cross_block_overwrite", "cross_block_plain_launch",
    "flag_relay_broken", "flag_later_release", "copy_overwritten_in_flight",
)


def faulty(fault: str, x: Tensor, blocks: int, block_threads: int) -> Tensor:
    """Run one known-bad kernel (see FAULTS) over x [blocks * block_threads]."""
    return _ops().faulty(fault, x, blocks, block_threads)


CLUSTER_FAULTS = (
    "missing_cluster_sync", "divergent_cluster_sync", "rank_out_of_range", "map_non_shared",
    "exit_while_mapped", "exit_before_cluster_sync", "cluster_sync_against_barrier",
    "remote_shared_out_of_bounds", "stale_remote_access", "grid_sync_in_cluster",
    "global_exchange_across_clusters", "read_before_cluster_wait", "wait_without_arrive", "arrive_twice",
    "map_between_arrive_and_wait", "exit_after_arrive", "async_read_before_wait", "async_one_copy", "async_expect_too_many_bytes",
    "async_store_before_init_visible", "async_uninitialised_barrier", "async_exit_with_stores_pending",
)


def faulty_cluster(fault: str, x: Tensor, block_threads: int, cluster_size: int, rounds: int = 0) -> Tensor:
    """Run one known-bad cluster kernel (see CLUSTER_FAULTS) over x [blocks * block_threads]
    in clusters of `cluster_size` blocks; returns out [blocks, cluster_size * block_threads]."""
    if block_threads <= 0 or x.numel() % block_threads:
        raise ValueError(f"block_threads ({block_threads}) must be positive and divide x.numel() ({x.numel()})")
    return _ops().faulty_cluster(fault, x, x.numel() // block_threads, cluster_size, rounds)
