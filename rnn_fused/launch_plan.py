"""The GPU kernels' path planner, queried from Python.

`plan(hidden_size, batch_size=...)` reports which recurrence path the CUDA kernels take for
a layer on a device, with what launch shape, how long the cost model predicts a step takes,
and why; `.candidates` holds every path's best shape (or the limit that rules it out), and
under autotune() `.timed` every launch shape it measured. The paths: "block" (one CTA per
sample group holds all of W_hh), "cluster" (a thread-block
cluster splits W_hh and exchanges the state through distributed shared memory, compute
capability >= 9.0), "grid" (a cooperative grid over the whole GPU), "stepwise" (a cuBLAS
product and an epilogue launch per step). device="emulated" asks the SIMT emulator's device
(rnn_fused.simt.emulated_device); a CUDA device asks the real GPU. The predictions come from
constants measured on an H200 (csrc/cuda/recurrence_cost_model.h).

step_phases(hidden_size, batch_size, ...) times where the steps of a persistent kernel go
(staging state rows, compute, the step barrier) with the kernels' own cycle counter: the
measurements that fit the cost model's terms one by one (`rnn-fused gpu-check` reports them).

log_plan_once(plan, key) tells the "rnn_fused" logger, once per key (device, dtype, shape),
which path the planner chose for a layer run on CUDA tensors and why: at INFO, or at WARNING
for the stepwise path (a launch per step, the slow one a user would not expect). Python's
logging prints warnings to stderr even when the application configured nothing; INFO shows
once it asks for it (logging.getLogger("rnn_fused").setLevel(logging.INFO) and a handler).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import _build  # noqa: F401  (loads rnn_fused._C)

logger = logging.getLogger("rnn_fused")

PATHS = ("block", "cluster", "grid", "stepwise")
# The grid and cluster paths' ways to hand a step's state to the next (PathEstimate.step_sync
# indexes them; csrc/cuda/recurrence_paths.cuh StepSync): "grid_barrier" is either path's barrier
# (the grid barrier, the cluster barrier), the next two the grid path's, the last the cluster path's.
STEP_SYNCS = ("grid_barrier", "flag_barrier", "tagged_exchange", "async_exchange")
GRID_STEP_SYNCS = STEP_SYNCS[:3]
CLUSTER_STEP_SYNCS = (STEP_SYNCS[0], STEP_SYNCS[3])


@dataclass(frozen=True)
class PathEstimate:
    path: str                    # "block", "cluster", "grid" or "stepwise"
    feasible: bool               # whether it can run the shape on the device
    samples_per_group: int       # samples one CTA group carries: samples x chunks
    samples: int                 # samples per chunk: the kernel's register tile (1, 2, 4 or 8)
    chunks: int                  # sample chunks a CTA computes in turn each step (grid path; else 1)
    groups: int                  # sample groups: ceil(batch_size / samples_per_group)
    ctas_per_group: int          # CTAs that split one group's hidden units
    units_per_cta: int           # hidden units (rows of W_hh) per CTA
    units_per_pass: int          # 32 (all 8 warps compute the dot products) or 16 (warps 0-3, each
                                 # state chunk loaded feeding twice the units); 0 for "stepwise"
    step_sync: int               # how a step hands over its state, an index into STEP_SYNCS: "grid"
                                 # 0 the grid barrier, 1 a flag barrier over the sample group's CTAs,
                                 # 2 the tagged exchange, no barrier; "cluster" 0 the cluster barrier,
                                 # 3 the asynchronous exchange (mbarriers, no barrier); else 0
    grid: int                    # CTAs of the launch (epilogue blocks for "stepwise")
    block_threads: int
    cluster: int                 # CTAs per thread-block cluster ("cluster"), else 1
    shared_mem_bytes: int        # dynamic shared memory per CTA
    blocks_per_sm: int           # co-resident CTAs per SM at that shared memory
    waves: int                   # times the groups take turns on the device (1: all at once)
    compiled_passes: int         # the passes per CTA its kernels are compiled for (1-4: the block path
                                 # with its weight rows in registers; 1-8 the cluster path, 1-4 at 8
                                 # samples; float32); 0: read at run time
    predicted_us_per_step: float
    reason: str                  # the shape's description, or the limit that rules it out
    measured_us_per_step: float | None = None  # timed on the device where autotune() measured it
    # "block" at H <= 128 in float32: the lane-row step (a thread per hidden unit holding its weight
    # row, block_threads of them; csrc/cuda/elman_lane_rows_kernel.cuh) instead of the general
    # kernels' 8 lanes per row
    lane_rows: bool = False
    ctas_per_sm: int = 1         # (lane_rows) the CTAs that share an SM at once, as the model priced them
    # "grid" in float32 at 4 or 8 samples per chunk: the tiled dot products (a warp splits the columns
    # of 32 / samples units x samples; forced_tiling's tiled_dots, or autotune()'s pick)
    tiled_dots: bool = False
    # "block" (its general kernels): each lane's step operands copied into a ring in shared memory
    # 4 steps ahead instead of loaded into registers one step ahead (forced_tiling's operand_ring,
    # or autotune()'s pick)
    operand_ring: bool = False


@dataclass(frozen=True)
class LaunchPlan(PathEstimate):
    """The chosen (or forced) path's estimate, and every path's best shape."""

    candidates: tuple[PathEstimate, ...] = ()
    timed: tuple[PathEstimate, ...] = ()  # every launch shape autotune() timed, with its measured time

    def candidate(self, path: str) -> PathEstimate:
        return next(c for c in self.candidates if c.path == path)


_SHAPE_FIELDS = 19


def plan(hidden_size: int, batch_size: int = 1, dtype: torch.dtype = torch.float32,
         device: str | torch.device = "emulated", backward: bool = False, path: str | None = None,
         side_by_side: int = 1) -> LaunchPlan:
    """The plan of the forward (or backward) recurrence for a layer of `hidden_size` units and
    `batch_size` samples in `dtype` (float16/bfloat16 plan as float32, the compute dtype).
    `path` forces one: ValueError naming the path, the shape and the limit when it cannot run.
    `side_by_side`: how many recurrences run side by side on the device (the two directions of
    a bidirectional layer: 2); the plan takes 1/side_by_side of its SMs, and the grid path,
    which wants the whole device, is then ruled out."""
    emulated = device == "emulated"
    target = torch.device("cpu") if emulated else torch.device(device)
    if target.type != "cuda" and not emulated:
        raise ValueError(f"rnn_fused.plan: device must be 'emulated' or a CUDA device, got {device!r}")
    like = torch.empty(0, dtype=dtype, device=target)
    paths, feasible, shapes, predicted, reasons, measured = torch.ops.rnn_fused.recurrence_plan(
        like, hidden_size, batch_size, backward, path, "emulated" if emulated else None, side_by_side)
    def estimate(i: int) -> PathEstimate:
        fields = shapes[i * _SHAPE_FIELDS:(i + 1) * _SHAPE_FIELDS]
        lane_rows, ctas_per_sm, tiled_dots, operand_ring = fields[-4:]
        return PathEstimate(paths[i], bool(feasible[i]), *fields[:-4], predicted[i], reasons[i],
                            None if math.isnan(measured[i]) else measured[i], lane_rows=bool(lane_rows),
                            ctas_per_sm=ctas_per_sm, tiled_dots=bool(tiled_dots), operand_ring=bool(operand_ring))

    estimates = [estimate(i) for i in range(len(paths))]
    chosen, candidates, timed = estimates[0], estimates[1:1 + len(PATHS)], estimates[1 + len(PATHS):]
    return LaunchPlan(**vars(chosen), candidates=tuple(candidates), timed=tuple(timed))


@dataclass(frozen=True)
class StackPlan:
    """Whether the GPU kernels would run a stack of unidirectional layers' forward in one
    launch (csrc/cuda/elman_forward_kernel.cuh): at H <= 128 on the block path, layer l a few
    steps behind layer l - 1, each CTA holding its layer's W_hh and the next layer's W_ih
    (forward_stack_kernel); beyond, on the cluster path, one cluster of L x P CTAs per sample
    group, each holding [W_ih | W_hh] rows of its layer, layer l one step behind layer l - 1
    (forward_cluster_stack_kernel; its backward, the mirror, backward_cluster_stack_kernel).
    And what the cost model predicts for it and for the same layers one launch after another,
    and under autotune() what the device measured."""

    feasible: bool                 # the stack's kernel can run the shape on the device
    faster: bool                   # feasible and faster (measured under autotune(), else predicted):
                                   # rnn_fused.functional.rnn takes it then
    predicted_stack_us: float      # T + lead_steps steps of the stack's kernel
    predicted_layers_us: float     # the L layers' T steps each, on their own forward plans
    measured_stack_us: float | None   # the same two under autotune(): the stack's step timed on the
    measured_layers_us: float | None  # device, a layer's as its own tuned plan's; else None
    grid: int                      # CTAs: layers x sample groups
    samples: int                   # samples per group
    units_per_pass: int
    shared_mem_bytes: int
    compiled_passes: int
    cluster: int                   # CTAs per thread-block cluster: L x P on the cluster path, 1 on the block path
    units_per_cta: int             # the cluster path's hidden units per CTA (0 on the block path: 2H rows)
    lead_steps: int                # the stack's steps beyond T: 1 (block path), L - 1 (cluster path)
    reason: str                    # the launch shape, or the limit that rules it out

    @property
    def path(self) -> str:
        return "cluster" if self.cluster > 1 else "block"


def stack_plan(hidden_size: int, batch_size: int, steps: int, num_layers: int,
               device: str | torch.device = "emulated") -> StackPlan:
    """The plan of a float32 stack of `num_layers` unidirectional layers of `hidden_size` units
    over `steps` steps and `batch_size` samples, forward (device as for plan())."""
    emulated = device == "emulated"
    target = torch.device("cpu") if emulated else torch.device(device)
    if target.type != "cuda" and not emulated:
        raise ValueError(f"rnn_fused.launch_plan.stack_plan: device must be 'emulated' or a CUDA device, got {device!r}")
    like = torch.empty(0, dtype=torch.float32, device=target)
    feasible, faster, stack_us, layers_us, measured_stack_us, measured_layers_us, shape, reason = \
        torch.ops.rnn_fused.stack_plan(like, hidden_size, batch_size, steps, num_layers,
                                       "emulated" if emulated else None)
    return StackPlan(feasible, faster, stack_us, layers_us, measured_stack_us if measured_stack_us >= 0 else None,
                     measured_layers_us if measured_layers_us >= 0 else None, *shape, reason)


def predicted_layer_us(kernel: str, steps: int, batch_size: int, input_size: int, hidden_size: int,
                       backward: bool = False, dtype: torch.dtype = torch.float32,
                       device: str | torch.device = "emulated") -> float:
    """The cost model's time, in microseconds, of one layer and direction: its forward, or
    (backward=True) its backward, whole-sequence GEMMs included. kernel: "planned" (the path
    plan() chooses on `device`), or a reference model measured on an H200: "legacy-grid" (the
    first grid kernel, commit 54a1037) or "cudnn" (cuDNN where it runs one GEMM per step)."""
    return torch.ops.rnn_fused.cost_model(_planned_for(dtype, device), kernel, steps, batch_size, input_size,
                                          hidden_size, backward)


def kernel_projects_input(steps: int, batch_size: int, input_size: int, hidden_size: int,
                          dtype: torch.dtype = torch.float32, device: str | torch.device = "emulated") -> bool:
    """Whether a layer's forward of this shape on `device` makes its input projection (XW_t +
    b_ih + b_hh at every step) inside the recurrence kernel instead of by the host's bias sum and
    GEMM: the block path's general kernels do where the cost model prices the projection's
    multiply-adds on one CTA under a quarter of a launch (short sequences of small layers, whose
    time is the host's launches), unless forced_tiling(input_projection_on_host=True)."""
    return torch.ops.rnn_fused.kernel_projects_input(_planned_for(dtype, device), steps, batch_size, input_size,
                                                     hidden_size)


def kernel_makes_gradients(steps: int, batch_size: int, input_size: int, hidden_size: int,
                           dtype: torch.dtype = torch.float32, device: str | torch.device = "emulated", *,
                           input_grad: bool = True, hx_grad: bool = False) -> bool:
    """Whether a layer's backward of this shape on `device` (the GPU kernels) makes its
    whole-sequence gradients (dW_ih, dW_hh, the biases'; dX with `input_grad`, h_0's with
    `hx_grad`) in one launch of the gradients kernel instead of by the host's GEMMs: float32
    compute, at most 64 rows (steps x batch_size), where the cost model prices the kernel under a
    quarter of a launch (short layers, whose backward time is the host's launches), unless
    forced_tiling(gradients_on_host=True)."""
    return torch.ops.rnn_fused.kernel_makes_gradients(_planned_for(dtype, device), steps, batch_size, input_size,
                                                      hidden_size, input_grad, hx_grad)


def _planned_for(dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    """The ops' `like`: an empty tensor of the layer's dtype on the device to plan for (a CPU
    tensor for the emulated device)."""
    target = torch.device("cpu") if device == "emulated" else torch.device(device)
    return torch.empty(0, dtype=dtype, device=target)


def split_layer_us(steps: int, pieces: tuple[int, ...], input_size: int, hidden_size: int,
                   dtype: torch.dtype = torch.float32, device: str | torch.device = "emulated",
                   backward: bool = False) -> float:
    """The cost model's time of a layer's forward (or backward) with its batch in `pieces`, one
    layer op after another (batch_pieces): each piece's planned layer, whole-sequence GEMMs and the
    op's fixed cost included, and for more than one piece the copies of the samples: the input's
    and the output's (forward), the output gradient's and the input gradient's (backward), T B
    (I + H) elements read and as many written, at memory_bytes_per_us."""
    total = sum(predicted_layer_us("planned", steps, samples, input_size, hidden_size, backward, dtype, device)
                for samples in pieces)
    if len(pieces) > 1:
        moved_bytes = 2.0 * steps * sum(pieces) * (input_size + hidden_size) * dtype.itemsize
        total += moved_bytes / cost_constants()["memory_bytes_per_us"]
    return total


@functools.lru_cache(maxsize=1024)
def runs_in_waves(hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "emulated") -> bool:
    """Whether the plan of the forward or of the backward recurrence takes more than one wave."""
    return any(plan(hidden_size, batch_size, dtype, device, backward=backward).waves > 1
               for backward in (False, True))


@functools.lru_cache(maxsize=1024)
def batch_pieces(steps: int, batch_size: int, input_size: int, hidden_size: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "emulated", backward: bool = False) -> tuple[int, ...]:
    """How many samples each launch of a layer's recurrences takes: (batch_size,) for one launch,
    or (first, rest), first >= rest, for the first samples' layer and then the rest's, where
    split_layer_us prices the two faster (the forward, plus the backward with `backward`).
    rnn_layer splits so (functional._split_layer).

    A persistent kernel whose sample groups do not all fit on the device at once runs them in
    waves, each a whole sequence, and every wave costs a step of the plan's sample tile however
    few groups the last one holds. Two launches give the last samples a tile of their own: at
    H = 1024, B = 32 an H200 holds 7 clusters of 16 CTAs, so the planner's 16 groups of 2 samples
    run in 3 waves (7.7 us a step), where 28 samples in 7 groups of 4 and then 4 in 4 groups of 1
    take a wave each (4.05 + 1.83 us). Only where a plan takes more than one wave
    (runs_in_waves) is a split priced."""
    if batch_size < 2 or steps < 1 or not runs_in_waves(hidden_size, batch_size, dtype, device):
        return (batch_size,)

    def layer_us(pieces: tuple[int, ...]) -> float:
        total = split_layer_us(steps, pieces, input_size, hidden_size, dtype, device)
        if backward:
            total += split_layer_us(steps, pieces, input_size, hidden_size, dtype, device, backward=True)
        return total

    # Of splits priced alike (to a nanosecond: sums of the same terms in another order), the one
    # with the most samples first; the whole batch before any split.
    splits = [(first, batch_size - first) for first in range(batch_size - 1, (batch_size - 1) // 2, -1)]
    return min([(batch_size,)] + splits, key=lambda pieces: (round(layer_us(pieces), 3), -pieces[0]))


def cost_constants(first_kernels: bool = False) -> dict[str, float]:
    """The cost model's named constants and their values in this build
    (csrc/cuda/recurrence_cost_model.h): those the planner prices with (fitted to an H200's
    measurements of today's kernels), or with first_kernels=True those the reference models
    of the first kernels and of cuDNN were fitted with. Plus cluster_barrier_scale: the set's
    table of cluster barrier costs relative to the planner's (1 for the planner's own)."""
    names, values = torch.ops.rnn_fused.cost_constants(first_kernels)
    return dict(zip(names, values))


def step_cost_us(estimate: PathEstimate, hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32,
                 constants: dict[str, float] | None = None, term: str = "total", block_stack: bool = False) -> float:
    """The cost model's microseconds per step of the launch shape `estimate` (a plan, or a
    plan's fields as gpu-check's JSON keeps them: anything with path, samples, chunks,
    ctas_per_group, units_per_cta and waves, and units_per_pass where it is not 32 and
    step_sync where it is not 0, as in runs from before they existed) for a layer of
    hidden_size units and batch_size samples, with `constants` (names from cost_constants())
    replacing the built-in values.
    The same shape is priced, not searched for: what refitting the model to a GPU's
    measurements needs. term: "total" (the time per step), or the part of it that step-phase
    timing measures apart (step_phases): "stage", "compute" or "barrier". block_stack=True:
    the shape is a CTA of the block path's layer stack (units_per_cta its rows, 2H in whole
    passes), whose weights are in registers where its kernels are compiled for its passes.
    A shape with lane_rows (runs from before it existed have none) is priced as the block
    path's lane-row step, one with tiled_dots as the grid or cluster path's tiled dot products."""
    fields = estimate if isinstance(estimate, dict) else vars(estimate)
    constants = constants or {}
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.ops.rnn_fused.step_cost(fields["path"], hidden_size, batch_size, compute, fields["samples"],
                                         fields["chunks"], fields["ctas_per_group"], fields["units_per_cta"],
                                         fields["waves"], list(constants), [float(v) for v in constants.values()],
                                         term, fields.get("units_per_pass") or 32,
                                         int(fields.get("step_sync") or 0), block_stack,
                                         bool(fields.get("lane_rows") or False), int(fields.get("ctas_per_sm") or 1),
                                         bool(fields.get("tiled_dots") or False))


@contextlib.contextmanager
def forced_tiling(samples: int | None = None, units_per_pass: int | None = None,
                  step_sync: str | None = None, run_time_passes: bool = False,
                  lane_rows_step: bool = False, input_projection_on_host: bool = False,
                  gradients_on_host: bool = False, norms_in_steps: bool = False,
                  tiled_dots: bool = False, operand_ring: bool = False, every_row: bool = False) -> Iterator[None]:
    """Inside, every plan (and so every layer launched on a GPU-kernel backend) takes `samples`
    samples per chunk (1, 2, 4 or 8: the kernels' register tiles), `units_per_pass` units
    per pass (32: all 8 warps of a CTA compute the dot products; 16: warps 0-3, each holding
    twice the passes) and `step_sync` (one of STEP_SYNCS): "grid_barrier" (the grid and cluster
    paths end each step in their barrier: the cooperative grid barrier, the cluster barrier),
    on the grid path "flag_barrier" (a barrier over the CTAs of each sample group, one flag per
    CTA in global memory) or "tagged_exchange" (no barrier: each state value travels with its
    step's tag in one 8-byte word; float32 only), on the cluster path "async_exchange" (no
    barrier: each CTA's slice of the state goes into the others' shared memory by asynchronous
    stores that an mbarrier per state buffer counts); a path that has not the forced one
    chooses its own. None leaves that part to each plan. `run_time_passes=True`: the kernels
    read their pass count at run time even where one compiled for the launch shape's passes
    exists (the block path at H <= 128, the cluster path at 1-8 passes per CTA: a plan's
    compiled_passes is then 0), to time the one against the other (and so the block path's general
    kernels). `lane_rows_step=True`: the block path runs the lane-row step (float32, H <= 128, 1
    sample per CTA or 2 at H <= 64: a thread per hidden unit holding its weight row in registers)
    instead of its general kernels (8 lanes per weight row, the reduce-scatter); not with
    units_per_pass=16 or run_time_passes=True. `input_projection_on_host=True`: no kernel
    projects a layer's input itself (the block path's general kernels do where the cost model
    prices it below the host's bias sum and GEMM, two launches: short sequences of small
    layers), so every path starts from the same GEMM's XW_t (comparing paths bit for bit;
    timing the one against the other). `gradients_on_host=True`: no layer's backward makes its
    whole-sequence gradients (dX, dW_ih, dW_hh, the biases', h_0's) in one launch of its own (the
    GPU-kernel backends do where the cost model prices it below a quarter of a launch: short
    layers), so every backward takes the host's GEMMs, as the CPU backend does. `norms_in_steps=True`:
    a backward that records norms sums them in its steps (the general kernels) even where the
    plain copy of a kernel compiled for its passes would store each g_t and one launch after it
    sum them (docs/cuda_backend.md, deferred norms). `tiled_dots=True`: the grid and cluster paths
    compute their dot products in warp-wide tiles (a warp splits the columns of 32 / S units x S
    samples, float32: the grid path at S = 4 or 8 samples per chunk, the cluster path at 4 where
    every weight row of a CTA fits its shared memory; their other plans, and float64, are ruled
    out), whose results equal the other paths' within rounding, not bitwise (docs/cuda_backend.md,
    the tiled dot products); not the planner's own choice yet. `operand_ring=True`: the block
    path's general kernels copy each lane's step operands (XW_t forward; dy_t and h_t backward)
    into a ring in shared memory 4 steps before the step reads them (asynchronous copies)
    instead of loading them into registers one step ahead behind L1 prefetches; the same
    arithmetic, so the same results bit for bit (docs/cuda_backend.md, the operand ring); not
    with lane_rows_step=True; not the planner's own choice yet. `every_row=True`: the host's
    whole-sequence GEMMs (the input projection; dX, dW_ih, dW_hh and the biases' gradients)
    multiply every row of a batch with lengths, T * B, even where the CPU backend multiplies
    only the rows of valid steps (csrc/valid_rows.h: as torch.nn.RNN does a PackedSequence's);
    results equal within rounding. For running or timing launch shapes and routes the cost model
    would not pick (gpu-check, tests). Process-wide; a path that
    cannot run the shape so is infeasible, and forcing it says why. The previous setting is
    restored on exit."""
    # 0 means "each plan's own choice" to the op: refuse it here rather than take it for None.
    for name, value in (("samples", samples), ("units_per_pass", units_per_pass)):
        if value == 0:
            allowed = "1, 2, 4 or 8" if name == "samples" else "16 or 32"
            raise ValueError(f"rnn_fused.launch_plan.forced_tiling: {name} must be {allowed} (or None: each plan's "
                             f"own choice), got 0")
    if step_sync is not None and step_sync not in STEP_SYNCS:
        raise ValueError(f"rnn_fused.launch_plan.forced_tiling: step_sync must be 'grid_barrier', 'flag_barrier', "
                         f"'tagged_exchange' or 'async_exchange' (or None: each plan's own choice), got {step_sync!r}")
    for name, value in (("run_time_passes", run_time_passes), ("lane_rows_step", lane_rows_step),
                        ("input_projection_on_host", input_projection_on_host),
                        ("gradients_on_host", gradients_on_host), ("norms_in_steps", norms_in_steps),
                        ("tiled_dots", tiled_dots), ("operand_ring", operand_ring), ("every_row", every_row)):
        if not isinstance(value, bool):
            raise TypeError(f"rnn_fused.launch_plan.forced_tiling: {name} must be a bool, got {value!r}")
    with _planner_setting(torch.ops.rnn_fused.set_forced_tiling, samples or 0, units_per_pass or 0,
                          -1 if step_sync is None else STEP_SYNCS.index(step_sync), int(run_time_passes),
                          int(lane_rows_step), int(input_projection_on_host), int(gradients_on_host),
                          int(norms_in_steps), int(tiled_dots), int(operand_ring), int(every_row)):
        yield


def forget_cached_plans() -> None:
    """Drops what the Python side keeps from plans (functional's decisions per shape): after a
    planner setting or the emulated device changed, plans may differ."""
    from . import functional

    functional.directions_side_by_side.cache_clear()
    functional._directions_step_us.cache_clear()
    functional._stack_step_costs.cache_clear()
    runs_in_waves.cache_clear()
    batch_pieces.cache_clear()


def _apply_planner_setting(set_op, *values):
    """Sets a process-wide setting of the planner through `set_op`; returns the previous values.
    Plans change with it, so what is cached from plans is dropped."""
    previous = set_op(*values)
    forget_cached_plans()
    return previous


@contextlib.contextmanager
def _planner_setting(set_op, *values) -> Iterator[None]:
    """_apply_planner_setting for the block; the previous values are restored on exit."""
    previous = _apply_planner_setting(set_op, *values)
    try:
        yield
    finally:
        _apply_planner_setting(set_op, *previous)


DEFAULT_AUTOTUNE_STEPS = 64


def set_autotune(enabled: bool, steps: int = DEFAULT_AUTOTUNE_STEPS) -> None:
    """Switches autotuning on or off for the rest of the process (what autotune() does for a
    block), as torch.backends.cudnn.benchmark = True does for cuDNN."""
    _apply_planner_setting(torch.ops.rnn_fused.set_autotune, enabled, steps)


@contextlib.contextmanager
def autotune(steps: int = DEFAULT_AUTOTUNE_STEPS) -> Iterator[None]:
    """Inside, the planner measures instead of predicting: at the first plan of each (device,
    hidden_size, batch_size, direction, dtype) it times every feasible path's launch shape on
    the device, a persistent path's with every sample tile it considers and the dot products
    on 8 and on 4 warps (32 and 16 units per pass: the model's choices there rest on fitted
    terms), the grid path's with each step synchronisation (STEP_SYNCS) and, in float32, the
    grid path at 4 and 8 samples per chunk and the cluster path at 4 with their tiled dot
    products too (forced_tiling's tiled_dots), the block path's general kernels with the
    operand ring too (forced_tiling's operand_ring); what forced_tiling forces holds for every
    shape timed. It times the recurrence alone on constant data (runs of 2 and 2 + `steps`
    steps, the fastest of 3 each; their difference over `steps` is the time per step) and
    takes the fastest; plan() reports each path's fastest shape with its measured_us_per_step
    beside its prediction, and `.timed` every shape measured. The measurements are kept for
    the process, so tuning costs one such set of runs per shape (it waits for the device).
    Like torch.backends.cudnn.benchmark, it can pick another path in another process: block,
    cluster and grid give bitwise the same results (with the operand ring or without), the
    stepwise path (cuBLAS products) and the tiled dot products (32 partial sums per output)
    the same within rounding. A forced path (path=...) is never tuned, and nothing is timed
    while the current stream captures a CUDA graph (the model chooses then). Process-wide;
    the previous setting is restored on exit."""
    with _planner_setting(torch.ops.rnn_fused.set_autotune, True, steps):
        yield


class CpuLoopTeam(NamedTuple):
    """The threads a CPU time loop runs on and how it is split among them: "rows" (each thread runs
    the whole loop for its own samples; the threads never wait for each other), "units" (each
    thread owns a slice of the hidden units and waits for the others once per step), or "none"
    (one thread)."""

    threads: int
    split: str


def cpu_loop_team(steps: int, batch_size: int, hidden_size: int) -> CpuLoopTeam:
    """The team the CPU time loops of a layer of this many steps, samples and units run on, called
    from this thread (csrc/cpu/step_team.h). By rows where the batch gives each thread 4 samples or
    more and H < 512 (W_hh fits a core's L2), from 2^18 multiply-adds in the loop (T x B x H^2); by
    units otherwise, from 2^16 multiply-adds in a step (B x H^2), at most one thread per 2^15 of
    them and per 16 units; torch's threads at most. One thread inside a parallel region (a
    bidirectional layer's directions at once). The last bits of the results may change with the
    team (BLAS may sum a narrower product in another order); for a given team they are the same
    run to run."""
    return CpuLoopTeam(*torch.ops.rnn_fused.cpu_loop_team(steps, batch_size, hidden_size))


@contextlib.contextmanager
def forced_cpu_loop_team(threads: int, split: str | None = None) -> Iterator[None]:
    """Inside, the CPU time loops run on `threads` threads whatever their size and torch's thread
    count (at most one per sample by rows, per 16 units by units; a thread owns several shares
    where torch's OpenMP team has fewer threads), split by `split` ("rows" or "units"; None: each
    loop's own choice), to time or test one team against another. Process-wide; the previous
    setting is restored on exit."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"rnn_fused.launch_plan.forced_cpu_loop_team: threads must be an int >= 1, got {threads!r}")
    if split not in (None, "rows", "units"):
        raise ValueError(f"rnn_fused.launch_plan.forced_cpu_loop_team: split must be 'rows', 'units' or None (each "
                         f"loop's own choice), got {split!r}")
    previous = torch.ops.rnn_fused.set_cpu_loop_team(threads, split or "")
    try:
        yield
    finally:
        torch.ops.rnn_fused.set_cpu_loop_team(*previous)


@dataclass(frozen=True)
class StepPhases:
    """Where the steps of a persistent recurrence kernel go (step_phases). Thread 0 of every
    CTA reads the SM's cycle counter at the boundaries of each step's phases; the figures are
    cycles per step, the mean over the CTAs (the slowest CTA's compute beside it). Thread 0's
    view: the other warps' lag shows in the barrier. On the emulated device they are host
    nanoseconds: they show that the timing runs, not how fast a GPU is."""

    path: str                     # the persistent path that ran ("block", "cluster" or "grid")
    ctas: int
    steps: int
    stage_cycles: float           # the Grid path's state rows into shared memory (0 on the others)
    compute_cycles: float         # dot products, reduce-scatter, epilogues, publishing the new state
    barrier_cycles: float         # the step's barrier
    slowest_compute_cycles: float
    predicted_us_per_step: float  # the plan's


def step_phases(hidden_size: int, batch_size: int, steps: int = 200, backward: bool = False,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "emulated",
                path: str | None = None) -> StepPhases:
    """Times the phases of the recurrence kernel the planner would launch (or `path`, which
    must be a persistent one) for `steps` steps of a layer of `hidden_size` units and
    `batch_size` samples in float32 or float64 on `device`, on random data (the forward from
    a zero state; the backward after it). For fitting the cost model's terms one by one."""
    chosen = plan(hidden_size, batch_size, dtype, device, backward, path)
    emulated = device == "emulated"
    target = torch.device("cpu") if emulated else torch.device(device)
    generator = torch.Generator().manual_seed(0)
    xw = torch.randn(steps, batch_size, hidden_size, generator=generator, dtype=dtype) * 0.5
    w_hh = torch.randn(hidden_size, hidden_size, generator=generator, dtype=dtype) * (0.5 / hidden_size ** 0.5)
    cycles, _ = torch.ops.rnn_fused.recurrence_step_phases(
        xw.to(target), w_hh.to(target), backward, "tanh", chosen.path, "emulated" if emulated else None)
    per_step = cycles.double().cpu() / steps  # [CTAs, 3]
    stage, compute, barrier = per_step.mean(0).tolist()
    return StepPhases(chosen.path, per_step.shape[0], steps, stage, compute, barrier,
                      per_step[:, 1].max().item(), chosen.predicted_us_per_step)


SLOW_PATH = "stepwise"

_logged_plan_keys: set[Hashable] = set()
_logged_plan_keys_lock = threading.Lock()


def log_plan_once(plan: LaunchPlan, key: Hashable) -> bool:
    """Log `plan` on the "rnn_fused" logger unless a plan was already logged under `key` (in
    this process): INFO for an on-chip path, WARNING for the stepwise path. Returns whether it
    logged. `key` names what the plan was made for, e.g. ("cuda:0", torch.float32, 256, 8)."""
    with _logged_plan_keys_lock:
        if key in _logged_plan_keys:
            return False
        _logged_plan_keys.add(key)
    level = logging.WARNING if plan.path == SLOW_PATH else logging.INFO
    logger.log(level, "rnn_fused: %s: the CUDA planner chose the %s path (%d CTAs of %d threads, predicted %.2f us "
               "per step): %s", key, plan.path, plan.grid, plan.block_threads, plan.predicted_us_per_step, plan.reason)
    return True


def log_stack_plan_once(report: StackPlan, steps: int, layers: int, key: Hashable) -> bool:
    """Log at INFO, once per `key` (device, dtype, hidden_size, batch_size, layers), that a
    stack's layers run in one launch each way (rnn_fused.functional.rnn's stack) and why;
    `report` is stack_plan's for `steps` steps. Returns whether it logged."""
    with _logged_plan_keys_lock:
        if ("stack", key) in _logged_plan_keys:
            return False
        _logged_plan_keys.add(("stack", key))
    measured = report.measured_stack_us is not None
    stack_us = report.measured_stack_us if measured else report.predicted_stack_us
    layers_us = report.measured_layers_us if measured else report.predicted_layers_us
    logger.info("rnn_fused: %s: the CUDA planner runs the %d layers in one launch each way (%d CTAs, %s "
                "%.2f us per step of the stack against %.2f us per step of the layers one by one): %s", key, layers,
                report.grid, "measured" if measured else "predicted", stack_us / (steps + report.lead_steps),
                layers_us / steps,
                report.reason)
    return True


def log_split_once(pieces: tuple[int, ...], key: Hashable) -> bool:
    """Log at INFO, once per `key` (device, dtype, steps, batch_size, input_size, hidden_size,
    backward), that a layer's batch runs as one layer op per piece (batch_pieces), one after the
    other; each piece's plan is then logged as any layer's. Returns whether it logged."""
    with _logged_plan_keys_lock:
        if ("split", key) in _logged_plan_keys:
            return False
        _logged_plan_keys.add(("split", key))
    logger.info("rnn_fused: %s: the layer's batch runs as %d layer ops of %s samples, one after the other: the "
                "cost model prices that faster than one launch whose last wave holds few sample groups",
                key, len(pieces), " + ".join(map(str, pieces)))
    return True


def log_layer_plan(input: torch.Tensor, hidden_size: int, path: str | None, side_by_side: int = 1) -> None:
    """Before a layer runs on CUDA tensors: log the planner's choice once per (device, dtype,
    hidden_size, batch_size, side_by_side). Eager only (under torch.compile nothing is logged). An empty
    batch launches nothing, so nothing is planned (the planner rejects batch_size = 0)."""
    if not input.is_cuda or input.shape[1] == 0 or torch.compiler.is_compiling():
        return
    key = (str(input.device), input.dtype, hidden_size, input.shape[1], side_by_side)
    if key in _logged_plan_keys:  # the common case: no plan query at all
        return
    log_plan_once(plan(hidden_size, input.shape[1], input.dtype, input.device, path=path, side_by_side=side_by_side),
                  key)
