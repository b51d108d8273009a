"""The SIMT emulator from Python: emulated device, thread schedule, self-test kernels.

The project's CUDA kernels are compiled twice: by nvcc for CUDA tensors and by g++ with
the fiber-based emulator (csrc/simt/) for CPU tensors. This module configures the
emulator (what device it pretends to be, in which order threads run between barriers)
and wraps the self-test kernels that check the emulation itself. Settings are process
wide; use the context managers so a test restores what it changed.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterator

import torch
from torch import Tensor

from . import _C  # noqa: F401  (registers torch.ops.rnn_fused)

_ops = torch.ops.rnn_fused

SCHEDULE_MODES = ("forward", "reverse", "shuffle")


@dataclass(frozen=True)
class DeviceProperties:
    """The emulated GPU. Defaults resemble an H100 SXM (132 SMs, 227 KB opt-in shared)."""

    sm_count: int = 132
    max_threads_per_block: int = 1024
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32
    shared_mem_per_block: int = 48 * 1024
    shared_mem_per_block_optin: int = 227 * 1024
    shared_mem_per_sm: int = 228 * 1024
    reserved_shared_mem_per_block: int = 1024
    regs_per_block: int = 65536
    regs_per_sm: int = 65536
    cooperative_launch: bool = True


def device_properties() -> DeviceProperties:
    """The emulated device's current properties."""
    values = _ops.simt_get_device_properties()
    names = [f.name for f in fields(DeviceProperties)]
    if len(values) != len(names):
        raise RuntimeError(f"simt_get_device_properties returned {len(values)} fields, expected {len(names)}")
    kwargs = dict(zip(names, values))
    kwargs["cooperative_launch"] = bool(kwargs["cooperative_launch"])
    return DeviceProperties(**kwargs)


def set_device_properties(props: DeviceProperties) -> None:
    _ops.simt_set_device_properties(**asdict(props))


def reset_device_properties() -> None:
    """Back to the defaults (DeviceProperties())."""
    _ops.simt_reset_device_properties()


@contextlib.contextmanager
def emulated_device(**overrides) -> Iterator[DeviceProperties]:
    """Emulate a device with some properties changed, e.g. emulated_device(sm_count=2).

    Unnamed properties keep their current values; the previous device is restored on exit.
    """
    previous = device_properties()
    wanted = replace(previous, **overrides)
    set_device_properties(wanted)
    try:
        yield wanted
    finally:
        set_device_properties(previous)


def get_schedule() -> tuple[str, int]:
    mode, seed = _ops.simt_get_schedule()
    return mode, seed


@contextlib.contextmanager
def schedule(mode: str, seed: int = 0) -> Iterator[None]:
    """Run emulated threads between barriers in `mode` order ('forward', 'reverse', or
    'shuffle' with `seed`); the previous schedule is restored on exit."""
    if mode not in SCHEDULE_MODES:
        raise ValueError(f"schedule mode must be one of {SCHEDULE_MODES}, got {mode!r}")
    previous = get_schedule()
    _ops.simt_set_schedule(mode, seed)
    try:
        yield
    finally:
        _ops.simt_set_schedule(*previous)


# Schedules a race-sensitive test should run under: their results must agree bitwise.
ALL_SCHEDULES = (("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2))


def fiber_switch_ns(switches: int = 1_000_000) -> float:
    """Measured cost of one fiber switch in nanoseconds."""
    return _ops.simt_measure_fiber_switch_ns(switches)


def occupancy(kernel: str, block_threads: int, dynamic_smem: int = 0) -> int:
    """Blocks per SM of a self-test kernel under the emulated device's occupancy model."""
    return _ops.simt_occupancy(kernel, block_threads, dynamic_smem)


# ---- Self-test kernels (CPU tensors run emulated; CUDA tensors on the GPU) ----

def warp_reduce(x: Tensor, block_threads: int) -> Tensor:
    """Per-block sums of x [blocks * block_threads] via warp shuffles."""
    return _ops.simt_selftest_warp_reduce(x, block_threads)


def transpose(x: Tensor) -> Tensor:
    """x.T through a shared-memory tile."""
    return _ops.simt_selftest_transpose(x)


def grid_stencil(x: Tensor, steps: int, block_threads: int = 128, blocks: int = 0) -> tuple[Tensor, Tensor]:
    """`steps` rounds of a 3-point stencil in one cooperative launch with a grid sync per
    step. blocks=0 lets the occupancy-based planner choose. Returns (result, plan) where
    plan = [blocks, blocks_per_sm, sm_count]."""
    return _ops.simt_selftest_grid_stencil(x, steps, block_threads, blocks)


def atomics(values: Tensor, bins: int, blocks: int = 3, block_threads: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """(histogram [bins], [max, max of block maxima], [float sum]) of int32 values."""
    return _ops.simt_selftest_atomics(values, bins, blocks, block_threads)


def warp_scan(x: Tensor, block_threads: int = 64) -> tuple[Tensor, Tensor]:
    """(per-warp inclusive scan, per-warp ballot of x > 0 as int32)."""
    return _ops.simt_selftest_warp_scan(x, block_threads)


def device_math(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(y = fma(tanh x, exp(-|x|), rsqrt(1 + x^2)), y via float16, y via bfloat16)."""
    return _ops.simt_selftest_device_math(x)


def barrier_loop(x: Tensor, block_threads: int, rounds: int) -> Tensor:
    """`rounds` rounds of neighbour mixing through shared memory, two barriers per round."""
    return _ops.simt_selftest_barrier_loop(x, block_threads, rounds)


def bounded(blocks: int, block_x: int, block_y: int = 1, dynamic_smem: int = 0, device="cpu") -> Tensor:
    """Launch a kernel with launch bounds 128 in the given configuration (launch checks)."""
    like = torch.empty(0, device=device)
    return _ops.simt_selftest_bounded(like, blocks, block_x, block_y, dynamic_smem)


FAULTS = (
    "divergent_barrier", "exit_before_barrier", "missing_barrier", "inactive_lane",
    "mask_excludes_caller", "exited_lane", "warp_barrier_deadlock", "grid_sync_not_cooperative",
    "grid_sync_block_exits", "kernel_check", "shared_out_of_bounds", "dynamic_shared_out_of_bounds",
    "mismatched_warp_ops", "shuffle_outside_mask", "stack_overflow",
)


def faulty(fault: str, x: Tensor, blocks: int, block_threads: int) -> Tensor:
    """Run one known-bad kernel (see FAULTS) over x [blocks * block_threads]."""
    return _ops.simt_selftest_faulty(fault, x, blocks, block_threads)
