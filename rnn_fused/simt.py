"""The SIMT emulator behind backend "emulated": the emulated device and the thread schedule.

The project's CUDA kernels are compiled twice: by nvcc for CUDA tensors (backend "cuda")
and by g++ with the fiber-based emulator (csrc/simt/) for CPU tensors (backend
"emulated"). This module configures the emulator: what device it pretends to be (its
compute capability decides whether thread-block clusters exist), and
in which order threads run between barriers. Settings are process wide; use the context
managers so a test restores what it changed. `import rnn_fused` does not import this
module; `rnn_fused.simt` does, on first use.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Iterator

import torch
from torch import Tensor

from . import _build  # noqa: F401  (loads rnn_fused._C)
from . import launch_plan

_ops = torch.ops.rnn_fused_simt

SCHEDULE_MODES = ("forward", "reverse", "shuffle")


@dataclass(frozen=True)
class DeviceProperties:
    """The emulated GPU. Defaults resemble an H100 SXM (132 SMs, 227 KB opt-in shared,
    compute capability 9.0: thread-block clusters). sms_per_gpc: a cluster's blocks share a GPC,
    and the SMs are taken as GPCs of that many, the last one the rest (0: no GPCs); the default's
    7 x 18 + 6 fits what an H200 measured (7 clusters of 16 blocks of one per SM, not 8). The field
    order is the C++ side's (SIMT_DEVICE_PROPERTY_FIELDS in csrc/simt/simt.cuh);
    device_properties() checks it."""

    sm_count: int = 132
    sms_per_gpc: int = 18
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
    compute_capability_major: int = 9
    compute_capability_minor: int = 0

    @property
    def compute_capability(self) -> tuple[int, int]:
        return self.compute_capability_major, self.compute_capability_minor


def _field_names() -> list[str]:
    """DeviceProperties' fields, checked against the extension's order (count and names)."""
    names = [f.name for f in fields(DeviceProperties)]
    native = list(_ops.device_property_names())
    if len(native) != len(names) or native != names:
        raise RuntimeError(f"rnn_fused.simt.DeviceProperties has {len(names)} fields {names}, but the extension "
                           f"exchanges {len(native)}: {native}; rebuild the extension or update rnn_fused/simt.py")
    return names


def device_properties() -> DeviceProperties:
    """The emulated device's current properties."""
    names = _field_names()
    values = _ops.get_device_properties()
    kwargs = dict(zip(names, values, strict=True))
    kwargs["cooperative_launch"] = bool(kwargs["cooperative_launch"])
    return DeviceProperties(**kwargs)


def set_device_properties(props: DeviceProperties) -> None:
    _ops.set_device_properties([int(getattr(props, name)) for name in _field_names()])
    launch_plan.forget_cached_plans()  # the planner's answers for the old device


def reset_device_properties() -> None:
    """Back to the defaults (DeviceProperties())."""
    _ops.reset_device_properties()
    launch_plan.forget_cached_plans()


@contextlib.contextmanager
def emulated_device(*, compute_capability: tuple[int, int] | None = None, **overrides) -> Iterator[DeviceProperties]:
    """Emulate a device with some properties changed, e.g. emulated_device(sm_count=2).

    `compute_capability=(8, 0)` sets compute_capability_major/minor: (8, 0) behaves like an
    A100 (no thread-block clusters), the default (9, 0) like an H100/H200. Unnamed
    properties keep their current values; the previous device is restored on exit.
    """
    if compute_capability is not None:
        if ({"compute_capability_major", "compute_capability_minor"} & overrides.keys()):
            raise TypeError("emulated_device: give compute_capability or compute_capability_major/minor, not both")
        if (not isinstance(compute_capability, tuple) or len(compute_capability) != 2
                or not all(isinstance(v, int) for v in compute_capability)):
            raise TypeError(f"emulated_device: compute_capability must be a (major, minor) tuple of ints, "
                            f"got {compute_capability!r}")
        overrides["compute_capability_major"], overrides["compute_capability_minor"] = compute_capability
    previous = device_properties()
    wanted = replace(previous, **overrides)
    set_device_properties(wanted)
    try:
        yield wanted
    finally:
        set_device_properties(previous)


def get_schedule() -> tuple[str, int]:
    mode, seed = _ops.get_schedule()
    return mode, seed


@contextlib.contextmanager
def schedule(mode: str, seed: int = 0) -> Iterator[None]:
    """Run emulated threads between barriers in `mode` order ('forward', 'reverse', or
    'shuffle' with `seed`); the previous schedule is restored on exit."""
    if mode not in SCHEDULE_MODES:
        raise ValueError(f"schedule mode must be one of {SCHEDULE_MODES}, got {mode!r}")
    previous = get_schedule()
    _ops.set_schedule(mode, seed)
    try:
        yield
    finally:
        _ops.set_schedule(*previous)


@contextlib.contextmanager
def recording_launches() -> Iterator[list[str]]:
    """Record the emulated kernel launches made inside the block: yields a list that holds, on
    exit, the name of each launched kernel in launch order (as the kernel's
    SIMT_KERNEL_ATTRIBUTES spells it, e.g. 'backward_recurrence_kernel<float, 1,
    RecurrencePath::Block, 1, true>'). Recording is process wide; blocks do not nest."""
    launches: list[str] = []
    _ops.record_launches(True)
    try:
        yield launches
    finally:
        launches.extend(_ops.recorded_launches())
        _ops.record_launches(False)


# Schedules a race-sensitive test should run under: their results must agree bitwise.
ALL_SCHEDULES = (("forward", 0), ("reverse", 0), ("shuffle", 1), ("shuffle", 2))


def fiber_switch_ns(switches: int = 1_000_000) -> float:
    """Measured cost of one fiber switch in nanoseconds."""
    return _ops.measure_fiber_switch_ns(switches)
