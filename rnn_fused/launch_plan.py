"""The CUDA backend's launch planner, queried from Python.

`plan(hidden_size, ...)` reports what the recurrence kernels would do: the persistent
cooperative kernel (grid, threads, W_hh rows per block in shared memory) or the per-step
fallback, and why. device="emulated" asks the SIMT emulator's device (see
rnn_fused.simt.emulated_device); a CUDA device asks the real GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _build  # noqa: F401  (loads rnn_fused._C)


@dataclass(frozen=True)
class LaunchPlan:
    path: str               # "persistent" or "fallback"
    grid: int               # blocks
    block_threads: int
    units_per_block: int    # hidden units (rows of W_hh) per block
    shared_mem_bytes: int   # dynamic shared memory per block (0 on the fallback path)
    blocks_per_sm: int      # co-resident blocks per SM at that shared memory (persistent)
    reason: str


def plan(hidden_size: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "emulated",
         nonlinearity: str = "tanh", backward: bool = False) -> LaunchPlan:
    """The plan of the forward (or backward) recurrence kernel for a layer of `hidden_size`
    units in `dtype` (float16/bfloat16 plan as float32, the compute dtype)."""
    emulated = device == "emulated"
    target = torch.device("cpu") if emulated else torch.device(device)
    if target.type != "cuda" and not emulated:
        raise ValueError(f"rnn_fused.plan: device must be 'emulated' or a CUDA device, got {device!r}")
    like = torch.empty(0, dtype=dtype, device=target)
    backend = "emulated" if emulated else None
    return LaunchPlan(*torch.ops.rnn_fused.recurrence_plan(like, hidden_size, nonlinearity, backward, backend))
