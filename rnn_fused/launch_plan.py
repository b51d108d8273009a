"""The CUDA backend's launch planner, queried from Python.

`plan(hidden_size, ...)` reports what the recurrence kernels would do: the persistent
cooperative kernel (grid, threads, W_hh rows per block in shared memory) or the per-step
fallback, and why. device="emulated" asks the SIMT emulator's device (see
rnn_fused.simt.emulated_device); a CUDA device asks the real GPU.

log_plan_once(plan, key) tells the "rnn_fused" logger, once per key (e.g. device and shape
class), which path the planner chose and why: at INFO, or at WARNING for the per-step
fallback (slower, and the one a user would not expect). Python's logging prints warnings
to stderr even when the application configured nothing; INFO shows once it asks for it
(logging.getLogger("rnn_fused").setLevel(logging.INFO) and a handler, e.g. basicConfig).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from . import _build  # noqa: F401  (loads rnn_fused._C)

logger = logging.getLogger("rnn_fused")


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


FALLBACK_PATH = "fallback"

_logged_plan_keys: set[Hashable] = set()
_logged_plan_keys_lock = threading.Lock()


def log_plan_once(plan: LaunchPlan, key: Hashable) -> bool:
    """Log `plan` on the "rnn_fused" logger unless a plan was already logged under `key`
    (in this process): INFO for a persistent plan, WARNING for the per-step fallback.
    Returns whether it logged. `key` names what the plan was made for, e.g.
    ("cuda:0", "forward", dtype, hidden_size class), so each situation is told once."""
    with _logged_plan_keys_lock:
        if key in _logged_plan_keys:
            return False
        _logged_plan_keys.add(key)
    if plan.path == FALLBACK_PATH:
        logger.warning("rnn_fused: %s: the CUDA planner chose the per-step fallback path (grid %d x %d threads): "
                       "%s", key, plan.grid, plan.block_threads, plan.reason)
    else:
        logger.info("rnn_fused: %s: the CUDA planner chose the %s path (grid %d x %d threads, %d units per block, "
                    "%d B shared memory, %d blocks per SM): %s", key, plan.path, plan.grid, plan.block_threads,
                    plan.units_per_block, plan.shared_mem_bytes, plan.blocks_per_sm, plan.reason)
    return True
