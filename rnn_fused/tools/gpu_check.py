"""`rnn-fused gpu-check`: rnn_fused against cuDNN on one GPU, with the recurrence planner's
predicted time per step beside the measured one, and every path forced on a few shapes: the
data that recalibrates csrc/cuda/recurrence_cost_model.h (docs/gpu_check.md).

Four parts, in this order, each row written to --out as soon as it is measured (a run cut
short still leaves its rows):
1. the cost model's constants measured on this GPU (launch latency, L2 and HBM read
   bandwidth, GEMM rates) beside the values the model holds, and where a step of each
   persistent path goes (step-phase timing inside the kernels: staging, compute, barrier);
2. the shape table: rnn_fused.RNN vs nn.RNN on cuDNN (fp32 with TF32 off, and bf16), forward
   and forward+backward, peak memory, relative error against a float64 cuDNN run, the path
   the planner chose and its predicted microseconds per step, and the measured ones;
3. the path table: for a subset of shapes, rnn_fused.rnn_layer with each path forced.

Timing is benchmark.py's (CUDA events, medians; the two implementations alternate run by
run). The measured time per step of the recurrence is the layer pass (the forward, or the
backward timed alone through a retained graph) minus the same whole-sequence GEMMs the host
layer runs around it (csrc/elman_gemms.h) timed alone, divided by T: an estimate by
subtraction, documented as such in the report.

--emulated rehearses everything on the CPU (CI has no GPU): the CUDA kernels run through
the SIMT emulator (backend "emulated") on tiny shapes, nn.RNN on the CPU stands in for
cuDNN, plans are the emulated device's and timing is the host clock. Only the numbers mean
nothing there. matplotlib is optional: without it the figure is skipped (one line says so).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import __version__
from ..functional import directions_side_by_side, rnn_layer
from ..launch_plan import (CLUSTER_STEP_SYNCS, GRID_STEP_SYNCS, PATHS, STEP_SYNCS, PathEstimate, autotune,
                           batch_pieces, cost_constants, forced_tiling, kernel_makes_gradients,
                           kernel_projects_input, plan,
                           split_layer_us, stack_plan, step_phases)
from ..modules import RNN
from ..reference import reference_layer
from .benchmark import (Timing, _benchmark_settings, baseline_refusal, refused_by_baseline, cuda_peak_memory_mb, backward_fn, forward_backward_fn, forward_fn,
                        gemm_rate, median_seconds, output_tensor, packed_lengths, paired_median_seconds)
from .bptt_benchmark import OVERHEAD_VARIANTS, OverheadRow, format_overhead, overhead_rows
from .command_output import output_directory, write_json, write_text


@dataclass(frozen=True)
class Shape:
    """One configuration of the benchmark: sizes, layers, directions and dtype."""

    steps: int
    batch: int
    input_size: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    dtype: str = "float32"
    long: bool = False  # few repeats and no float64 reference (a long sequence)
    stack: bool | None = None  # RNN.stack forced (True: the layers in one launch each way), or None: the planner's
    packed: bool = False  # the input a PackedSequence of lengths from T down to about T / 4 (packed_lengths)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def single_layer(self) -> bool:
        return self.layers == 1 and not self.bidirectional

    def label(self) -> str:
        text = f"{self.steps}, {self.batch}, {self.input_size}, {self.hidden}"
        if self.layers > 1:
            text += f", {self.layers} layers"
        if self.bidirectional:
            text += ", bidirectional"
        if self.stack is not None:
            text += ", stack forced" if self.stack else ", one by one forced"
        if self.packed:
            text += ", packed"
        return text if self.dtype == "float32" else f"{_short_dtype(self.dtype)}: {text}"


def _short_dtype(name: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(name, name)


# GPU_FACTS.md's table (H200, 2026-11-30), so that the numbers of the first kernels and these can be read side by side.
FACTS_SHAPES = [
    Shape(1000, 1, 64, 64), Shape(1000, 1, 256, 256), Shape(1000, 1, 1024, 1024),
    Shape(1000, 8, 64, 64), Shape(1000, 8, 128, 128), Shape(1000, 8, 256, 256), Shape(1000, 8, 512, 512),
    Shape(1000, 8, 1024, 1024),
    Shape(1000, 32, 128, 128), Shape(1000, 32, 256, 256), Shape(1000, 32, 512, 512), Shape(1000, 32, 1024, 1024),
    Shape(1000, 128, 256, 256), Shape(1000, 128, 1024, 1024),
    Shape(1024, 16, 768, 768), Shape(100, 64, 512, 1024), Shape(100, 64, 2048, 2048),
    Shape(500, 32, 256, 256, layers=2, bidirectional=True),
    Shape(1000, 8, 256, 256, dtype="bfloat16"), Shape(1024, 16, 768, 768, dtype="bfloat16"),
]
# Shapes in no table of the project: odd sizes, a single input feature, three layers, odd
# bidirectional layers, and sequences so short that host time per call decides (one step;
# eleven steps of two layers) (issue 11: "never below 1.0x at any shape ... checked
# independently"). Two and four layers of 1000, 8, 64, 64 beside its one-layer row: how much
# cuDNN and rnn_fused overlap the layers of a stack (layer l + 1 at step t beside layer l at
# step t + 1: rnn_fused's stack in one launch), and the stack against its layers one by one
# (layer_overlap_verdicts; 2 layers is the model's closest call). Two layers of 1000, 8, 128, 128:
# the block path's stack with its 8 passes' weight rows all in registers (stack_compiled_passes).
# Two layers of 1000, 8, 256, 256 and three of 300, 7, 50, 129: the cluster path's stack (forward
# and backward in one launch each) against its layers one by one and cuDNN's overlap. And
# 500, 256, 128, 256: a batch past the SMs, the block path's split weights at 2 samples per CTA.
# Then corners no row had touched (added 2026-12-04, not yet run): a long sequence of a tiny layer
# (cuDNN's persistent kernel at its fastest step against ours), a batch of 512 at H = 32, a short
# sequence at an H past 256 that is no multiple of 128, and one bidirectional layer at H = 128.
# Then (added 2026-12-05, not yet run) what a user's training loop often feeds: packed batches of
# uneven lengths (one layer, and two short layers), and a short bidirectional model, whose host
# time per call decides.
ODD_SHAPES = [
    Shape(777, 3, 97, 333), Shape(64, 5, 1, 1000), Shape(300, 7, 50, 129, layers=3),
    Shape(257, 33, 40, 200, layers=2, bidirectional=True), Shape(1, 1, 16, 32), Shape(11, 3, 20, 48, layers=2),
    Shape(1000, 8, 64, 64, layers=2), Shape(1000, 8, 64, 64, layers=4), Shape(1000, 8, 128, 128, layers=2),
    Shape(1000, 8, 256, 256, layers=2), Shape(500, 256, 128, 256),
    Shape(5000, 1, 8, 16), Shape(200, 512, 32, 32), Shape(50, 16, 64, 384),
    Shape(400, 16, 64, 128, bidirectional=True),
    Shape(200, 16, 64, 128, packed=True), Shape(50, 8, 32, 64, layers=2, packed=True),
    Shape(11, 3, 20, 48, layers=2, bidirectional=True),
]
# cuDNN refuses this one (CUDNN_STATUS_NOT_SUPPORTED on an H200; docs/long_sequences.md).
LONG_SHAPE = Shape(100_000, 4, 256, 256, long=True)
GPU_SHAPES = FACTS_SHAPES + ODD_SHAPES + [LONG_SHAPE]
# Every path forced: small and large H and B, an odd shape, one beyond the chip.
GPU_PATH_SHAPES = [
    Shape(1000, 1, 64, 64), Shape(1000, 8, 64, 64), Shape(1000, 32, 128, 128), Shape(1000, 8, 256, 256),
    Shape(1000, 128, 256, 256), Shape(1000, 32, 512, 512), Shape(1000, 8, 1024, 1024),
    Shape(1000, 32, 1024, 1024), Shape(1000, 128, 1024, 1024), Shape(777, 3, 97, 333), Shape(100, 64, 2048, 2048),
]
GPU_QUICK_SHAPES = [Shape(1000, 8, 256, 256), Shape(777, 3, 97, 333),
                    Shape(500, 32, 256, 256, layers=2, bidirectional=True), Shape(1000, 8, 256, 256, dtype="bfloat16")]
GPU_QUICK_PATH_SHAPES = [Shape(1000, 8, 256, 256), Shape(777, 3, 97, 333)]
# The CPU rehearsal: every kind of row, at sizes the emulator runs in seconds.
EMULATED_SHAPES = [Shape(6, 2, 3, 5), Shape(5, 3, 2, 9, layers=2, bidirectional=True),
                   Shape(30, 1, 3, 5, layers=2), Shape(20, 1, 3, 5, layers=2, stack=True),
                   Shape(4, 2, 3, 7, dtype="bfloat16"), Shape(40, 2, 3, 4, long=True), Shape(6, 3, 3, 5, packed=True)]
EMULATED_PATH_SHAPES = [Shape(5, 3, 4, 9), Shape(4, 2, 3, 33)]


@dataclass(frozen=True)
class PhaseShape:
    """A recurrence whose step phases are timed: H, B, the path (None: the planner's), the
    units per pass and the step synchronisation (one of launch_plan.STEP_SYNCS; None: the
    planner's; launch_plan.forced_tiling), whether its kernels read their passes at run
    time where a kernel compiled for them exists (forced_tiling's run_time_passes), whether
    the block path runs the lane-row step instead of its general kernels (forced_tiling's
    lane_rows_step), whether the grid or cluster path computes its dot products in warp-wide
    tiles (forced_tiling's tiled_dots), and whether the block path's general kernels take their
    step operands through a ring in shared memory (forced_tiling's operand_ring)."""

    hidden: int
    batch: int
    path: str | None = None
    steps: int = 200
    units_per_pass: int | None = None
    step_sync: str | None = None
    run_time_passes: bool = False
    lane_rows_step: bool = False
    tiled_dots: bool = False
    operand_ring: bool = False

    def label(self) -> str:
        forced = [f"{self.units_per_pass} units/pass"] if self.units_per_pass else []
        forced += [self.step_sync.replace("_", " ")] if self.step_sync else []
        forced += ["passes at run time"] if self.run_time_passes else []
        forced += ["lane-row step"] if self.lane_rows_step else []
        forced += ["tiled dot products"] if self.tiled_dots else []
        forced += ["operand ring"] if self.operand_ring else []
        return f"{self.hidden}, {self.batch}" + (f" ({', '.join(forced)})" if forced else "")


# One shape per persistent path the planner takes on an H200 (block, and at H = 256 block with
# split weights since 2026-12-02, grid with one chunk, grid with several chunks per CTA), forward
# and backward, and the cluster path at H = 256, B = 8, which the planner took there before; the grid path at
# H = 1024, B = 32 with the dot products on all 8 warps and on 4 (the cost model prefers 4 by
# its issue term, counted in SASS, not measured); the grid path at H = 1024, B = 1 and 32
# with each step synchronisation; and the cluster path at H = 256, B = 1 and 8 with the cluster
# barrier and with the asynchronous exchange (not yet run on a GPU); and the kernels compiled
# for their passes against those reading them at run time (block: H = 64, B = 8, 2 passes;
# cluster: 256, 8 at 1 pass and 256, 32 at 4 passes of 16 units, and 256, 32 at 2 passes of 32,
# the planner's shape there; not yet timed on a GPU; the cluster kernels at 1 or 2 passes hold
# their rows in registers since 2026-12-03, cluster_rows_in_registers, those reading their
# passes at run time read the rows from shared memory); and
# the cluster path at H = 1024, B = 8 with split weights (cluster_weights_split, since
# 2026-12-02: the planner's choice there, the model's step 2.43 us against the grid path's 4.91);
# at H = 1024, B = 32 the planner's choice is the cluster path at 2 samples per cluster since
# 2026-12-02 (split weights, the first pass's rows to column 768 in registers: two waves of 8
# clusters, the model's 6.38 us against the grid path's 8.34), the grid path's one-chunk step
# there is the forced rows that follow it. 1024, 128 is forced onto the grid path (several chunks
# per CTA): the planner took the stepwise path there on 2026-12-04, which has no phases. At H = 64,
# B = 8 the block path's lane-row step beside the planner's general kernels (on 2026-12-04 it
# measured 0.91x their step forward, 0.73x backward, under the phase clock). The grid path's tiled
# dot products (forced_tiling's tiled_dots; never timed) beside its 8-lane rows at H = 1024, B = 32
# with the grid barrier and at B = 128, and the cluster path's beside its own at H = 256, 512 and
# 1024, B = 32 (every weight row in shared memory; at 1024 the split kernels; tiled_dots_verdicts).
# The block path's general kernels with their step operands through a ring in shared memory
# (forced_tiling's operand_ring; never timed) beside the planner's at H, B = 64, 8 and 128, 32
# (operand_ring_verdicts): whether a wait for the operands' loads bounds those steps.
GPU_PHASE_SHAPES = [PhaseShape(64, 8), PhaseShape(64, 8, lane_rows_step=True), PhaseShape(256, 8), PhaseShape(256, 8, "cluster"), PhaseShape(1024, 32),
                    PhaseShape(1024, 128, "grid"), PhaseShape(1024, 8, "cluster"),
                    PhaseShape(1024, 32, "grid", units_per_pass=32), PhaseShape(1024, 32, "grid", units_per_pass=16),
                    *[PhaseShape(1024, batch, "grid", step_sync=sync) for batch in (1, 32) for sync in GRID_STEP_SYNCS],
                    *[PhaseShape(256, batch, "cluster", step_sync=sync) for batch in (1, 8)
                      for sync in CLUSTER_STEP_SYNCS],
                    PhaseShape(64, 8, run_time_passes=True), PhaseShape(256, 8, "cluster", run_time_passes=True),
                    *[PhaseShape(256, 32, "cluster", units_per_pass=per_pass, run_time_passes=run_time)
                      for per_pass in (16, 32) for run_time in (False, True)],
                    PhaseShape(1024, 32, "grid", step_sync="grid_barrier", tiled_dots=True),
                    PhaseShape(1024, 128, "grid", tiled_dots=True),
                    *[PhaseShape(hidden, 32, "cluster", tiled_dots=tiled) for hidden in (256, 512, 1024)
                      for tiled in (False, True)],
                    PhaseShape(64, 8, operand_ring=True), PhaseShape(128, 32),
                    PhaseShape(128, 32, operand_ring=True)]
EMULATED_PHASE_SHAPES = [PhaseShape(9, 3, "block", 4), PhaseShape(9, 3, "block", 4, lane_rows_step=True),
                         PhaseShape(33, 2, "cluster", 4), PhaseShape(33, 2, "grid", 4),
                         PhaseShape(33, 2, "grid", 4, units_per_pass=32),
                         PhaseShape(33, 2, "grid", 4, units_per_pass=16),
                         *[PhaseShape(33, 2, "grid", 4, step_sync=sync) for sync in GRID_STEP_SYNCS],
                         *[PhaseShape(33, 2, "cluster", 4, step_sync=sync) for sync in CLUSTER_STEP_SYNCS],
                         PhaseShape(9, 3, "block", 4, run_time_passes=True),
                         PhaseShape(33, 2, "cluster", 4, run_time_passes=True),
                         PhaseShape(33, 2, "grid", 4, step_sync="grid_barrier", tiled_dots=True),
                         PhaseShape(33, 2, "cluster", 4, tiled_dots=True),
                         PhaseShape(9, 3, "block", 4, operand_ring=True)]
# What recorded norms and truncation cost over plain forward+backward (bptt_benchmark's
# variants): one layer, where a backward runs its plain copy or its general kernel; and layer
# stacks run in one launch ((T, B, I, H, directions, layers), RNN.stack = True: the block path's
# stack at 1000, 8, 64, 64 in 4 layers, the cluster path's at 300, 7, 50, 129 in 3), whose plain
# copies defer the norms too.
GPU_BPTT_SHAPES = [(1000, 8, 64, 64), (1000, 8, 256, 256), (1000, 8, 64, 64, 1, 4), (300, 7, 50, 129, 1, 3)]
EMULATED_BPTT_SHAPES = [(5, 2, 3, 9), (5, 2, 3, 9, 1, 2)]
# Norms recorded and summed in the general kernel's steps (forced_tiling's norms_in_steps), as
# every such backward did before 2026-12-06, beside the plain copy's g_t summed after the launch
# (the "norms" row): what deferring the sums saves, in one run.
NORMS_IN_STEPS_VARIANT = "norms, summed in the steps"
# Steps of autotuning's timed runs (launch_plan.autotune) in the table of every path's time.
GPU_TUNE_STEPS = 64
EMULATED_TUNE_STEPS = 3
# A small emulated GPU (the tests' choice): grids still span several CTAs.
EMULATED_DEVICE = dict(sm_count=2)

GPU_TIMING = Timing(min_repeats=7, min_seconds=0.3)
LONG_TIMING = Timing(min_repeats=2, min_seconds=0.0)
QUICK_TIMING = Timing(min_repeats=2, min_seconds=0.0)
DEFAULT_BUDGET_S = 240


@dataclass
class Target:
    """Where the check runs: a CUDA device, or the CPU rehearsal through the emulator."""

    device: torch.device
    emulated: bool

    @property
    def backend(self) -> str | None:
        return "emulated" if self.emulated else None

    @property
    def plan_device(self) -> str | torch.device:
        return "emulated" if self.emulated else self.device

    @property
    def baseline(self) -> str:
        return "nn.RNN (CPU)" if self.emulated else "cuDNN"


# --- rows ---------------------------------------------------------------------------------


@dataclass
class ShapeRow:
    """rnn_fused.RNN vs nn.RNN at one shape. Times in ms; None where not measured (see note)."""

    label: str
    shape: dict
    baseline_fwd_ms: float | None = None
    ours_fwd_ms: float | None = None
    baseline_fwd_bwd_ms: float | None = None
    ours_fwd_bwd_ms: float | None = None
    baseline_peak_mb: float | None = None
    ours_peak_mb: float | None = None
    baseline_rel_error: float | None = None
    ours_rel_error: float | None = None
    baseline_rel_error_of: str | None = None  # the result with the worst error: "output", "grad weight_hh_l0", ...
    ours_rel_error_of: str | None = None
    forward_path: str | None = None
    backward_path: str | None = None
    predicted_fwd_us_per_step: float | None = None
    predicted_bwd_us_per_step: float | None = None
    # Single-layer rows: (layer pass - the same whole-sequence GEMMs timed alone) / T; the
    # backward pass timed alone (benchmark.backward_fn) in ours_bwd_ms.
    measured_fwd_us_per_step: float | None = None
    measured_bwd_us_per_step: float | None = None
    ours_bwd_ms: float | None = None
    # The cost model's whole-layer time (GEMMs included), summed over layers and directions.
    predicted_fwd_ms: float | None = None
    predicted_fwd_bwd_ms: float | None = None
    # Rows where autotuning takes another launch shape than the model (tune_rows): rnn_fused
    # timed again under launch_plan.autotune, and the paths it took.
    tuned_fwd_ms: float | None = None
    tuned_fwd_bwd_ms: float | None = None
    tuned_paths: str | None = None  # "forward path / backward path"
    tuned_error: str | None = None  # a failure of that second timing (the exit status is then 1)
    # Stacks whose recurrences ran in one launch each (functional.rnn's stack): rnn_fused timed
    # again with the layers one by one (RNN.stack = False).
    one_by_one_fwd_ms: float | None = None
    one_by_one_fwd_bwd_ms: float | None = None
    # Stacks the planner runs layer by layer though their kernel could take them in one launch
    # (could_run_as_stack): rnn_fused timed again with RNN.stack = True, so that every run
    # measures both (fit-model's stack waits).
    as_stack_fwd_ms: float | None = None
    as_stack_fwd_bwd_ms: float | None = None
    # Bidirectional rows whose directions ran at once, each on half the SMs (functional.rnn's
    # side_by_side): rnn_fused timed again with them one after the other (RNN.side_by_side = False).
    in_turn_fwd_ms: float | None = None
    in_turn_fwd_bwd_ms: float | None = None
    # Bidirectional rows whose directions ran one after the other because their steps save less GPU
    # time than the side stream costs the host (could_run_side_by_side): timed again at once
    # (RNN.side_by_side = True), which measures that cost.
    at_once_fwd_ms: float | None = None
    at_once_fwd_bwd_ms: float | None = None
    # Single layers whose batch runs as two layer ops (batch_pieces): rnn_fused timed again with the
    # whole batch in one launch (RNN.path = the whole batch's planned path).
    whole_batch_fwd_ms: float | None = None
    whole_batch_fwd_bwd_ms: float | None = None
    # Layers whose block kernel projects the input itself (launch_plan.kernel_projects_input):
    # rnn_fused timed again with every projection on the host
    # (forced_tiling(input_projection_on_host=True): the bias sum and the GEMM, two launches).
    host_projection_fwd_ms: float | None = None
    host_projection_fwd_bwd_ms: float | None = None
    # Layers whose backward makes its whole-sequence gradients in the gradients kernel
    # (launch_plan.kernel_makes_gradients): forward+backward timed again with them on the host
    # (forced_tiling(gradients_on_host=True): the GEMMs and the bias sum, three or four launches).
    # (No forward: it does not change.)
    host_gradients_fwd_ms: float | None = None
    host_gradients_fwd_bwd_ms: float | None = None
    note: str | None = None    # e.g. "cuDNN: not supported"
    error: str | None = None   # an unexpected failure of this row (the run's exit status is then 1)
    skipped: str | None = None

    @property
    def fwd_ratio(self) -> float | None:
        return _ratio(self.baseline_fwd_ms, self.ours_fwd_ms)

    @property
    def fwd_bwd_ratio(self) -> float | None:
        return _ratio(self.baseline_fwd_bwd_ms, self.ours_fwd_bwd_ms)

    @property
    def tuned_fwd_ratio(self) -> float | None:
        return _ratio(self.baseline_fwd_ms, self.tuned_fwd_ms)

    @property
    def tuned_fwd_bwd_ratio(self) -> float | None:
        return _ratio(self.baseline_fwd_bwd_ms, self.tuned_fwd_bwd_ms)


def _ratio(baseline: float | None, ours: float | None) -> float | None:
    return None if baseline is None or ours is None or ours <= 0 else baseline / ours


@dataclass
class PathRow:
    """One layer (rnn_fused.rnn_layer) with one path forced: the plan's launch shape and
    prediction, and the measurement. forward_plan/backward_plan are the PathEstimate fields
    (launch_plan.py) for the forward and the backward recurrence."""

    label: str
    shape: dict
    path: str
    planned_forward: bool = False   # the planner's own choice for this shape
    planned_backward: bool = False
    forward_plan: dict = field(default_factory=dict)
    backward_plan: dict = field(default_factory=dict)
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    bwd_ms: float | None = None             # the backward pass alone (benchmark.backward_fn)
    forward_gemms_ms: float | None = None   # the host layer's whole-sequence GEMMs alone
    backward_gemms_ms: float | None = None
    measured_fwd_us_per_step: float | None = None
    measured_bwd_us_per_step: float | None = None
    rel_error: float | None = None          # worst over output, h_n and the weight gradients vs float64
    note: str | None = None                 # why the path was not run (the planner's limit)
    error: str | None = None
    skipped: str | None = None
    # The block path's lane-row step forced (forced_tiling's lane_rows_step) beside its general
    # kernels (the planner's)
    lane_rows_step: bool = False

    @property
    def name(self) -> str:
        return self.path + (" (lane-row step)" if self.lane_rows_step else "")

    @property
    def predicted_fwd_us_per_step(self) -> float | None:
        return self.forward_plan.get("predicted_us_per_step") if self.forward_plan.get("feasible") else None

    @property
    def predicted_bwd_us_per_step(self) -> float | None:
        return self.backward_plan.get("predicted_us_per_step") if self.backward_plan.get("feasible") else None


@dataclass
class Probe:
    """A constant of the cost model measured on this device."""

    name: str
    unit: str
    measured: float
    model_constant: str | None = None  # the field of cost::Constants it corresponds to
    model_value: float | None = None
    how: str = ""


@dataclass
class PhaseRow:
    """Where the steps of one recurrence kernel go (launch_plan.step_phases): cycles per step
    of thread 0, mean over the CTAs, and their sum in µs at the model's SM clock."""

    label: str
    direction: str  # "forward" or "backward"
    hidden: int | None = None
    batch: int | None = None
    path: str | None = None
    ctas: int | None = None
    plan: dict = field(default_factory=dict)  # the launch shape that ran (estimate_fields): what fit-model prices
    forced_units_per_pass: int | None = None  # launch_plan.forced_tiling's, or None (the planner's)
    forced_step_sync: str | None = None  # launch_plan.forced_tiling's, or None (the planner's)
    forced_run_time_passes: bool = False  # launch_plan.forced_tiling's run_time_passes
    forced_lane_rows_step: bool = False  # launch_plan.forced_tiling's lane_rows_step
    forced_tiled_dots: bool = False  # launch_plan.forced_tiling's tiled_dots
    forced_operand_ring: bool = False  # launch_plan.forced_tiling's operand_ring
    stage_cycles: float | None = None
    compute_cycles: float | None = None
    barrier_cycles: float | None = None
    slowest_compute_cycles: float | None = None
    measured_us_per_step: float | None = None
    predicted_us_per_step: float | None = None
    error: str | None = None


@dataclass
class TuneRow:
    """One recurrence (H, B, direction; fp32) planned with autotuning (launch_plan.autotune):
    every launch shape it timed on the device (each feasible path's, a persistent path's with
    every sample tile, 32 and 16 units per pass and, on the grid path, each step sync) with its
    measured and predicted µs per step, the path the model picks and the one the measurements
    pick."""

    hidden: int
    batch: int
    direction: str  # "forward" or "backward"
    model_path: str | None = None
    model_units_per_pass: int | None = None
    model_step_sync: int | None = None  # PathEstimate.step_sync
    tuned_path: str | None = None
    tuned_units_per_pass: int | None = None
    tuned_step_sync: int | None = None
    model_kernels: str = ""  # kernel_variant of the model's plan ("" its path's usual kernels)
    tuned_kernels: str = ""  # kernel_variant of the shape timed fastest
    timed: list = field(default_factory=list)  # estimate_fields of each shape timed: what fit-model prices
    error: str | None = None

    def fastest(self, path: str) -> dict | None:
        """The shape of `path` timed fastest, or None."""
        shapes = [t for t in self.timed if t["path"] == path]
        return min(shapes, key=lambda t: t["measured_us_per_step"]) if shapes else None


@dataclass
class GpuCheckResult:
    meta: dict
    probes: list[Probe] = field(default_factory=list)
    phase_rows: list[PhaseRow] = field(default_factory=list)
    tune_rows: list[TuneRow] = field(default_factory=list)
    shape_rows: list[ShapeRow] = field(default_factory=list)
    path_rows: list[PathRow] = field(default_factory=list)
    bptt_rows: list[OverheadRow] = field(default_factory=list)
    bptt_error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"{r.label}: {r.error}" for r in self.shape_rows if r.error] + \
               [f"{r.label} path {r.path}: {r.error}" for r in self.path_rows if r.error] + \
               [f"step phases {r.label} {r.direction}: {r.error}" for r in self.phase_rows if r.error] + \
               [f"autotune {r.hidden}, {r.batch} {r.direction}: {r.error}" for r in self.tune_rows if r.error] + \
               [f"{r.label} under autotune: {r.tuned_error}" for r in self.shape_rows if r.tuned_error] + \
               ([f"norms and truncation overhead: {self.bptt_error}"] if self.bptt_error else [])


# --- issue 11's goals -----------------------------------------------------------------------

# The first kernels' measured relative errors (GPU_FACTS.md, H200, commit 54a1037), the bar of
# "accuracy no worse than today's", by shape label.
FIRST_KERNELS_REL_ERROR = {
    "1000, 1, 64, 64": 2.2e-7, "1000, 1, 256, 256": 3.2e-7, "1000, 1, 1024, 1024": 6.3e-7,
    "1000, 8, 64, 64": 3.5e-7, "1000, 8, 128, 128": 3.2e-7, "1000, 8, 256, 256": 3.4e-7,
    "1000, 8, 512, 512": 5.0e-7, "1000, 8, 1024, 1024": 8.4e-7, "1000, 32, 128, 128": 3.7e-7,
    "1000, 32, 256, 256": 4.4e-7, "1000, 32, 512, 512": 8.3e-7, "1000, 32, 1024, 1024": 1.2e-6,
    "1000, 128, 256, 256": 8.1e-7, "1000, 128, 1024, 1024": 2.3e-6, "1024, 16, 768, 768": 6.6e-7,
    "100, 64, 512, 1024": 6.0e-7, "100, 64, 2048, 2048": 1.1e-6,
    "500, 32, 256, 256, 2 layers, bidirectional": 5.0e-7,
}


@dataclass
class GoalVerdict:
    """One of issue 11's "done means" criteria against the measured shape rows."""

    goal: str
    rows: list[str]              # the labels of the rows it covers that were measured
    worst: float | None          # the worst measured value over those rows (None: none measured)
    worst_row: str | None
    met: bool | None             # None: no row measured


def _one_layer_fp32(shape: dict) -> bool:
    return shape["dtype"] == "float32" and shape["layers"] == 1 and not shape["bidirectional"] and not shape["long"]


def _verdict(goal: str, rows: list[ShapeRow], value, better_high: bool, bar: float) -> GoalVerdict:
    """The worst of value(row) over the rows where it is measured, against bar."""
    measured = [(value(r), r.label) for r in rows if value(r) is not None]
    if not measured:
        return GoalVerdict(goal, [], None, None, None)
    worst, label = min(measured) if better_high else max(measured)
    return GoalVerdict(goal, [lb for _, lb in measured], worst, label, worst >= bar if better_high else worst <= bar)


def issue_goals(rows: list[ShapeRow]) -> list[GoalVerdict]:
    """Issue 11's criteria (fp32, TF32 off, T = 1000 where the issue names shapes; ratio =
    baseline time / rnn_fused time) over the rows measured."""
    def covered(h_low, h_high, b_low, b_high):
        return [r for r in rows if _one_layer_fp32(r.shape) and h_low <= r.shape["hidden"] <= h_high
                and b_low <= r.shape["batch"] <= b_high]

    small, middle = covered(1, 256, 1, 32), covered(512, 1024, 1, 32)
    large_batch = [r for r in covered(256, 1024, 128, 128) if r.shape["hidden"] in (256, 1024)]
    ratios = [r for r in rows if r.skipped is None and r.error is None]

    def slowest(r: ShapeRow) -> float | None:
        present = [v for v in (r.fwd_ratio, r.fwd_bwd_ratio) if v is not None]
        return min(present) if present else None

    def memory(r: ShapeRow) -> float | None:
        return _ratio(r.ours_peak_mb, r.baseline_peak_mb)  # ours / baseline

    def error_vs_first(r: ShapeRow) -> float | None:
        first = FIRST_KERNELS_REL_ERROR.get(r.label)
        return None if first is None or r.ours_rel_error is None else r.ours_rel_error / first

    return [
        _verdict("forward+backward >= 1.5x at H <= 256, B <= 32", small, lambda r: r.fwd_bwd_ratio, True, 1.5),
        _verdict("forward >= 1.5x at H <= 256, B <= 32", small, lambda r: r.fwd_ratio, True, 1.5),
        _verdict("forward+backward >= 3x at H = 512-1024, B <= 32", middle, lambda r: r.fwd_bwd_ratio, True, 3.0),
        _verdict("forward >= 3x at H = 512-1024, B <= 32", middle, lambda r: r.fwd_ratio, True, 3.0),
        _verdict("forward+backward >= 1.5x at B = 128 (H = 256, 1024)", large_batch, lambda r: r.fwd_bwd_ratio,
                 True, 1.5),
        _verdict("forward >= 1.5x at B = 128 (H = 256, 1024)", large_batch, lambda r: r.fwd_ratio, True, 1.5),
        _verdict("never below 1.0x (every row, forward and forward+backward)", ratios, slowest, True, 1.0),
        _verdict("peak memory <= the baseline's (ours / baseline)", ratios, memory, False, 1.0),
        _verdict("relative error <= the first kernels' (GPU_FACTS.md; ours / theirs)", ratios, error_vs_first,
                 False, 1.0),
    ]


def format_goal_table(goals: list[GoalVerdict]) -> str:
    lines = ["| goal | rows measured | worst | at | verdict |", "|---|---:|---:|---|---|"]
    for g in goals:
        verdict = "not measured" if g.met is None else "met" if g.met else "MISSED"
        lines.append(f"| {g.goal} | {len(g.rows)} | {_num(g.worst)} | {g.worst_row or '–'} | {verdict} |")
    return "\n".join(lines)


# --- measuring ------------------------------------------------------------------------------


def build_modules(shape: Shape, target: Target, seed: int = 0):
    """(stock nn.RNN, rnn_fused.RNN with the same weights, input [T,B,I], grad_out [T,B,D*H]).
    W_hh is halved so that the dynamics contract: a chaotic RNN makes every float32 run
    equally wrong, and the relative errors would measure nothing."""
    torch.manual_seed(seed)
    stock = nn.RNN(shape.input_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional)
    with torch.no_grad():
        for name, parameter in stock.named_parameters():
            if name.startswith("weight_hh"):
                parameter.mul_(0.5)
    stock = stock.to(target.device, shape.torch_dtype)
    ours = RNN.from_torch(stock)
    ours.backend = target.backend
    directions = 2 if shape.bidirectional else 1
    x = torch.randn(shape.steps, shape.batch, shape.input_size, device=target.device, dtype=shape.torch_dtype)
    grad_out = torch.randn(shape.steps, shape.batch, directions * shape.hidden, device=target.device,
                           dtype=shape.torch_dtype)
    if shape.packed:  # the packed batch, and the gradient of the packed output's data [N, D*H]
        lengths = packed_lengths(shape.steps, shape.batch)
        x = nn.utils.rnn.pack_padded_sequence(x, lengths)
        grad_out = nn.utils.rnn.pack_padded_sequence(grad_out, lengths).data
    return stock, ours, x, grad_out


def relative_errors(results: list[Tensor], reference: list[Tensor]) -> list[float]:
    """||x - ref|| / ||ref|| of each result (absolute where ref is all zeros)."""
    errors = []
    for got, want in zip(results, reference, strict=True):
        want = want.detach().double()
        difference = (got.detach().double() - want).norm().item()
        norm = want.norm().item()
        errors.append(difference / norm if norm > 0 else difference)
    return errors


def relative_error(results: list[Tensor], reference: list[Tensor]) -> float:
    """The worst of relative_errors."""
    return max(relative_errors(results, reference))


def worst_error_of(results: list[Tensor], reference: list[Tensor], names: list[str]) -> tuple[float, str]:
    """(the worst relative error, the name of the result that has it)."""
    errors = relative_errors(results, reference)
    worst = max(range(len(errors)), key=errors.__getitem__)
    return errors[worst], names[worst]


def module_results(module: nn.Module, x: Tensor, grad_out: Tensor, dtype: torch.dtype) -> list[Tensor]:
    """[output, h_n, grad of x, grads of every parameter] of `module` run in dtype
    (module_result_names names them)."""
    module = copy.deepcopy(module).to(dtype)
    packed = isinstance(x, nn.utils.rnn.PackedSequence)
    leaf = (x.data if packed else x).detach().to(dtype).requires_grad_()
    out, h_n = module(x._replace(data=leaf) if packed else leaf)
    out = output_tensor(out)
    grad_h_n = torch.ones_like(h_n)
    params = list(module.parameters())
    grads = torch.autograd.grad((out, h_n), [leaf, *params], (grad_out.to(dtype), grad_h_n))
    return [out.detach(), h_n.detach(), *grads]


def module_result_names(module: nn.Module) -> list[str]:
    """The names of module_results' entries: output, h_n, grad input, then grad <parameter>."""
    return ["output", "h_n", "grad input"] + [f"grad {name}" for name, _ in module.named_parameters()]


GEMMS_ALONE = "layer ops"  # describe()'s "gemms_alone": whole_sequence_work runs the layer ops' own GEMMs


def whole_sequence_work(shape: Shape, target: Target, backward: bool):
    """A function that runs the whole-sequence GEMMs the host layer runs around one layer's
    recurrence, through the layer ops' own code (csrc/elman_gemms.h, the ops
    layer_input_projection and layer_gradients_from_dz), in the compute dtype: the input
    projection before the forward; dW_ih, the bias gradient and dW_hh's chunked sum of outer
    products after the backward (no input gradient: the timed input needs none). As on the GPU
    kernels' backends (CUDA, emulated), each product a launch. Where the planned forward's kernel
    projects the input itself (launch_plan.kernel_projects_input), the forward has none; where the
    backward makes its gradients in the gradients kernel (launch_plan.kernel_makes_gradients), the
    backward has none (that kernel's microseconds stay in the step's estimate)."""
    steps, batch, inputs, hidden = shape.steps, shape.batch, shape.input_size, shape.hidden
    compute = torch.float64 if shape.torch_dtype == torch.float64 else torch.float32
    options = dict(device=target.device, dtype=compute)
    x = torch.randn(steps, batch, inputs, **options)
    w_ih = torch.randn(hidden, inputs, **options)
    if not backward:
        bias_ih, bias_hh = torch.randn(hidden, **options), torch.randn(hidden, **options)
        in_kernel = kernel_projects_input(steps, batch, inputs, hidden, shape.torch_dtype, target.plan_device)

        def forward_gemms():
            if not in_kernel:
                torch.ops.rnn_fused.layer_input_projection(x, w_ih, bias_ih, bias_hh)
        return forward_gemms
    w_hh = torch.randn(hidden, hidden, **options)
    outputs = torch.randn(steps, batch, hidden, **options)
    dz = torch.randn(steps, batch, hidden, **options)
    in_kernel = kernel_makes_gradients(steps, batch, inputs, hidden, shape.torch_dtype, target.plan_device,
                                       input_grad=False)

    def backward_gemms():
        if not in_kernel:
            torch.ops.rnn_fused.layer_gradients_from_dz(x, w_ih, w_hh, outputs, dz, [False, True, True, True], True)
    return backward_gemms


def per_step_us(total_s: float | None, gemms_s: float | None, steps: int) -> float | None:
    """(total - gemms) / steps in microseconds; None when either is missing."""
    if total_s is None or gemms_s is None:
        return None
    return (total_s - gemms_s) * 1e6 / steps


def estimate_fields(estimate: PathEstimate) -> dict:
    """The PathEstimate fields of a plan or candidate (a LaunchPlan's candidates left out)."""
    return {f.name: getattr(estimate, f.name) for f in dataclasses.fields(PathEstimate)}


def predicted_model_ms(shape: Shape, target: Target, backward: bool) -> float:
    """The cost model's time of the planned path, whole-sequence GEMMs included, summed over
    the layers and directions (as if they ran one after the other): the forward, or with
    `backward` the forward and the backward. A unidirectional layer's batch in the pieces
    rnn_layer runs it in (batch_pieces: chosen for the forward alone, or for both), the copies
    of a split included."""
    directions = 2 if shape.bidirectional else 1
    total_us = 0.0
    for layer in range(shape.layers):
        inputs = shape.input_size if layer == 0 else directions * shape.hidden
        pieces = (batch_pieces(shape.steps, shape.batch, inputs, shape.hidden, shape.torch_dtype, target.plan_device,
                               backward) if directions == 1 else (shape.batch,))
        for part in (False, True) if backward else (False,):
            total_us += directions * split_layer_us(shape.steps, pieces, inputs, shape.hidden, shape.torch_dtype,
                                                    target.plan_device, part)
    return total_us / 1e3


def projects_input_in_kernel(shape: Shape, target: Target) -> bool:
    """Whether a layer of this shape, run one by one, has its block kernel project its input
    (launch_plan.kernel_projects_input; the input of a layer above the first is the layer
    below's output)."""
    directions = 2 if shape.bidirectional else 1
    inputs = [shape.input_size] + [directions * shape.hidden] * (shape.layers - 1)
    return any(kernel_projects_input(shape.steps, shape.batch, size, shape.hidden, shape.torch_dtype, target.plan_device)
               for size in inputs)


def makes_gradients_in_kernel(shape: Shape, target: Target) -> bool:
    """Whether a layer of this shape, run one by one, makes its whole-sequence gradients in the
    gradients kernel (launch_plan.kernel_makes_gradients; the timed input needs no gradient, a
    layer above the first hands one down)."""
    directions = 2 if shape.bidirectional else 1
    inputs = [shape.input_size] + [directions * shape.hidden] * (shape.layers - 1)
    return any(kernel_makes_gradients(shape.steps, shape.batch, size, shape.hidden, shape.torch_dtype,
                                      target.plan_device, input_grad=layer > 0)
               for layer, size in enumerate(inputs))


def runs_as_stack(shape: Shape, target: Target) -> bool:
    """Whether rnn_fused.RNN runs this shape's layers in one launch each (functional.rnn's
    stack=None: a unidirectional float32 stack the planner predicts faster so; or the shape's
    forced RNN.stack)."""
    if shape.layers < 2 or shape.bidirectional or shape.torch_dtype != torch.float32:
        return False
    if shape.stack is not None:
        return shape.stack
    return stack_plan(shape.hidden, shape.batch, shape.steps, shape.layers, target.plan_device).faster


def could_run_as_stack(shape: Shape, target: Target) -> bool:
    """Whether rnn_fused.RNN runs this shape's layers one by one (stack=None) where the stack's
    kernel could run them in one launch each: the planner predicts the stack slower."""
    if shape.layers < 2 or shape.bidirectional or shape.torch_dtype != torch.float32 or shape.stack is not None:
        return False
    report = stack_plan(shape.hidden, shape.batch, shape.steps, shape.layers, target.plan_device)
    return report.feasible and not report.faster


def could_run_side_by_side(shape: Shape, target: Target) -> bool:
    """Whether rnn_fused.RNN runs this bidirectional shape's directions one after the other only
    for its steps: at once faster per step, but too few steps to pay for the side stream's fork
    and join (functional.directions_side_by_side with and without the steps)."""
    if not shape.bidirectional or target.device.type != "cuda":
        return False
    dtype = torch.float32 if shape.torch_dtype in (torch.float16, torch.bfloat16) else shape.torch_dtype
    per_step = directions_side_by_side(target.plan_device, dtype, shape.hidden, shape.batch, None)
    return per_step == 2 and not runs_side_by_side(shape, target)


def runs_side_by_side(shape: Shape, target: Target) -> bool:
    """Whether rnn_fused.RNN runs this bidirectional shape's directions at once, each on half the
    SMs (functional.rnn's side_by_side=None: on CUDA, where the planner prices it faster over the
    shape's steps)."""
    if not shape.bidirectional or target.device.type != "cuda":
        return False
    dtype = torch.float32 if shape.torch_dtype in (torch.float16, torch.bfloat16) else shape.torch_dtype
    return directions_side_by_side(target.plan_device, dtype, shape.hidden, shape.batch, None, shape.steps) == 2


def measure_tuned(row: ShapeRow, shape: Shape, target: Target, timing: Timing, tune_steps: int) -> None:
    """rnn_fused again under launch_plan.autotune (the measurements of tune_rows, kept by the
    process): its forward and forward+backward times and the paths it took."""
    _, ours, x, grad_out = build_modules(shape, target)
    with autotune(steps=tune_steps):
        paths = [plan(shape.hidden, shape.batch, shape.torch_dtype, target.plan_device, backward).path
                 for backward in (False, True)]
        row.tuned_fwd_ms = median_seconds(forward_fn(ours, x), device=target.device, min_repeats=timing.min_repeats,
                                          min_seconds=timing.min_seconds, warmup=1) * 1e3
        row.tuned_fwd_bwd_ms = median_seconds(forward_backward_fn(ours, x, grad_out), device=target.device,
                                              min_repeats=timing.min_repeats, min_seconds=timing.min_seconds,
                                              warmup=1) * 1e3
    row.tuned_paths = " / ".join(paths)


def measure_shape_row(shape: Shape, target: Target, timing: Timing, measure_error: bool) -> ShapeRow:
    row = ShapeRow(shape.label(), dataclasses.asdict(shape))
    stock, ours, x, grad_out = build_modules(shape, target)
    ours.stack = shape.stack
    dtype = shape.torch_dtype
    # A single layer's batch may run in two layer ops (batch_pieces: the forward alone's, and
    # forward+backward's for the backward): the path then names the pieces, and the predicted
    # step is the pieces' steps summed.
    split, whole_paths = False, set()
    for backward, direction in ((False, "fwd"), (True, "bwd")):
        pieces = (batch_pieces(shape.steps, shape.batch, shape.input_size, shape.hidden, dtype, target.plan_device,
                               backward) if shape.single_layer else (shape.batch,))
        plans = [plan(shape.hidden, samples, dtype, target.plan_device, backward) for samples in pieces]
        path = plans[0].path + ("" if len(pieces) == 1 else " in " + " + ".join(map(str, pieces)))
        setattr(row, "forward_path" if direction == "fwd" else "backward_path", path)
        setattr(row, f"predicted_{direction}_us_per_step", sum(p.predicted_us_per_step for p in plans))
        split = split or len(pieces) > 1
        whole_paths.add(plan(shape.hidden, shape.batch, dtype, target.plan_device, backward).path)
    stacked = runs_as_stack(shape, target)
    if stacked:
        row.forward_path = row.backward_path = "stack"
    row.predicted_fwd_ms = predicted_model_ms(shape, target, False)
    row.predicted_fwd_bwd_ms = predicted_model_ms(shape, target, True)
    seconds = {}
    for pass_, make in (("fwd", lambda m: forward_fn(m, x)),
                        ("fwd_bwd", lambda m: forward_backward_fn(m, x, grad_out))):
        refusal = refused_by_baseline(make(stock))
        if refusal is None:
            baseline_s, ours_s = paired_median_seconds(make(stock), make(ours), device=target.device,
                                                       min_repeats=timing.min_repeats, min_seconds=timing.min_seconds)
            setattr(row, f"baseline_{pass_}_ms", baseline_s * 1e3)
        else:
            row.note = refusal
            ours_s = median_seconds(make(ours), device=target.device, min_repeats=timing.min_repeats,
                                    min_seconds=timing.min_seconds, warmup=1)
        setattr(row, f"ours_{pass_}_ms", ours_s * 1e3)
        seconds[pass_] = ours_s
    # What the planner overlaps, timed again without the overlap: a stack's layers one by one, a
    # bidirectional layer's directions one after the other; and a stack it runs layer by layer,
    # timed in one launch each.
    # A split batch: the whole batch in one launch, its plan's path forced (which no call splits;
    # only where the forward's and the backward's whole-batch plans take the same path).
    for chosen, setting, prefix, other in ((stacked, "stack", "one_by_one", False),
                                           (runs_side_by_side(shape, target), "side_by_side", "in_turn", False),
                                           (split and len(whole_paths) == 1, "path", "whole_batch",
                                            next(iter(whole_paths))),
                                           (could_run_as_stack(shape, target), "stack", "as_stack", True),
                                           (could_run_side_by_side(shape, target), "side_by_side", "at_once", True)):
        if not chosen:
            continue
        setattr(ours, setting, other)
        for pass_, make in (("fwd", lambda m: forward_fn(m, x)),
                            ("fwd_bwd", lambda m: forward_backward_fn(m, x, grad_out))):
            setattr(row, f"{prefix}_{pass_}_ms",
                    median_seconds(make(ours), device=target.device, min_repeats=timing.min_repeats,
                                   min_seconds=timing.min_seconds, warmup=1) * 1e3)
        setattr(ours, setting, shape.stack if setting == "stack" else None)
    if not stacked and projects_input_in_kernel(shape, target):
        with forced_tiling(input_projection_on_host=True):
            for pass_, make in (("fwd", lambda m: forward_fn(m, x)),
                                ("fwd_bwd", lambda m: forward_backward_fn(m, x, grad_out))):
                setattr(row, f"host_projection_{pass_}_ms",
                        median_seconds(make(ours), device=target.device, min_repeats=timing.min_repeats,
                                       min_seconds=timing.min_seconds, warmup=1) * 1e3)
    if not stacked and makes_gradients_in_kernel(shape, target):
        with forced_tiling(gradients_on_host=True):
            row.host_gradients_fwd_bwd_ms = median_seconds(
                forward_backward_fn(ours, x, grad_out), device=target.device, min_repeats=timing.min_repeats,
                min_seconds=timing.min_seconds, warmup=1) * 1e3
    if shape.single_layer:
        forward_gemms = median_seconds(whole_sequence_work(shape, target, False), device=target.device,
                                       min_repeats=timing.min_repeats, min_seconds=0)
        backward_gemms = median_seconds(whole_sequence_work(shape, target, True), device=target.device,
                                        min_repeats=timing.min_repeats, min_seconds=0)
        # The backward alone, through one retained forward's graph (not forward+backward minus
        # forward: the difference of two noisy medians).
        backward_s = median_seconds(backward_fn(lambda: output_tensor(ours(x)[0]), ours.parameters(), grad_out),
                                    device=target.device,
                                    min_repeats=timing.min_repeats, min_seconds=0)
        row.ours_bwd_ms = backward_s * 1e3
        row.measured_fwd_us_per_step = per_step_us(seconds["fwd"], forward_gemms, shape.steps)
        row.measured_bwd_us_per_step = per_step_us(backward_s, backward_gemms, shape.steps)
    if target.device.type == "cuda":
        if row.note is None:
            row.baseline_peak_mb = cuda_peak_memory_mb(stock, x, grad_out)
        row.ours_peak_mb = cuda_peak_memory_mb(ours, x, grad_out)
    if measure_error and dtype == torch.float32 and not shape.long:
        reference = module_results(stock, x, grad_out, torch.float64)
        names = module_result_names(stock)
        row.baseline_rel_error, row.baseline_rel_error_of = worst_error_of(
            module_results(stock, x, grad_out, dtype), reference, names)
        row.ours_rel_error, row.ours_rel_error_of = worst_error_of(module_results(ours, x, grad_out, dtype),
                                                                   reference, names)
    return row


def layer_arguments(shape: Shape, target: Target):
    """(input, weight_ih, weight_hh, bias_ih, bias_hh, grad_out) of one layer, W_hh scaled as in build_modules."""
    stock, _, x, grad_out = build_modules(Shape(shape.steps, shape.batch, shape.input_size, shape.hidden,
                                                dtype=shape.dtype), target)
    weights = [p.detach() for p in (stock.weight_ih_l0, stock.weight_hh_l0, stock.bias_ih_l0, stock.bias_hh_l0)]
    return x, weights, grad_out


def layer_results(x: Tensor, weights: list[Tensor], grad_out: Tensor, layer, dtype: torch.dtype) -> list[Tensor]:
    """[output, h_n, grads of the weights and biases] of `layer` (rnn_layer's signature) in dtype."""
    leaves = [w.to(dtype).requires_grad_() for w in weights]
    out, h_n = layer(x.to(dtype), None, *leaves)
    grads = torch.autograd.grad((out, h_n), leaves, (grad_out.to(dtype), torch.ones_like(h_n)))
    return [out.detach(), h_n.detach(), *grads]


def measure_path_rows(shape: Shape, target: Target, timing: Timing, measure_error: bool, deadline: float,
                      progress) -> list[PathRow]:
    """One row per path at `shape` (one layer, float32): feasible paths forced and timed,
    the others with the planner's limit as the note."""
    dtype = shape.torch_dtype
    forward_plan = plan(shape.hidden, shape.batch, dtype, target.plan_device)
    backward_plan = plan(shape.hidden, shape.batch, dtype, target.plan_device, backward=True)
    x, weights, grad_out = layer_arguments(shape, target)
    leaves = [w.clone().requires_grad_() for w in weights]
    forward_gemms = median_seconds(whole_sequence_work(shape, target, False), device=target.device,
                                   min_repeats=timing.min_repeats, min_seconds=0)
    backward_gemms = median_seconds(whole_sequence_work(shape, target, True), device=target.device,
                                    min_repeats=timing.min_repeats, min_seconds=0)
    reference = (layer_results(x, weights, grad_out, reference_layer, torch.float64)
                 if measure_error else None)
    rows = []
    # Every path as planned; and where the block path can run the lane-row step, that too
    # (forced_tiling's lane_rows_step), to time it against the general kernels.
    variants = [(path, False) for path in PATHS]
    with forced_tiling(lane_rows_step=True):
        if plan(shape.hidden, shape.batch, dtype, target.plan_device).candidate("block").lane_rows:
            variants.insert(1, ("block", True))
    for path, lane in variants:
        with forced_tiling(lane_rows_step=lane):
            forward_estimate = plan(shape.hidden, shape.batch, dtype, target.plan_device).candidate(path)
            backward_estimate = plan(shape.hidden, shape.batch, dtype, target.plan_device,
                                     backward=True).candidate(path)
        row = PathRow(shape.label(), dataclasses.asdict(shape), path,
                      planned_forward=forward_plan.path == path and not lane,
                      planned_backward=backward_plan.path == path and not lane,
                      forward_plan=estimate_fields(forward_estimate), backward_plan=estimate_fields(backward_estimate),
                      forward_gemms_ms=forward_gemms * 1e3, backward_gemms_ms=backward_gemms * 1e3,
                      lane_rows_step=lane)
        rows.append(row)
        if time.perf_counter() > deadline:
            row.skipped = "over the time budget"
            continue
        if not row.forward_plan["feasible"] or not row.backward_plan["feasible"]:
            limits = [f"{name}: {plan['reason']}" for name, plan in (("forward", row.forward_plan),
                                                                     ("backward", row.backward_plan))
                      if not plan["feasible"]]
            row.note = "; ".join(limits)
            if not row.forward_plan["feasible"]:
                continue
        # (the lane-row setting held for the whole row: no setting changes inside a timing)
        setting = contextlib.ExitStack()
        try:
            if lane:
                setting.enter_context(forced_tiling(lane_rows_step=True))

            def layer(*args, path=path):
                return rnn_layer(*args, backend=target.backend, path=path)

            def forward():
                with torch.no_grad():
                    layer(x, None, *weights)

            def forward_backward():
                for leaf in leaves:
                    leaf.grad = None
                out, _ = layer(x, None, *leaves)
                torch.autograd.backward(out, grad_out)

            fwd_s = median_seconds(forward, device=target.device, min_repeats=timing.min_repeats,
                                   min_seconds=timing.min_seconds)
            row.fwd_ms = fwd_s * 1e3
            row.measured_fwd_us_per_step = per_step_us(fwd_s, forward_gemms, shape.steps)
            if row.backward_plan["feasible"]:
                fwd_bwd_s = median_seconds(forward_backward, device=target.device, min_repeats=timing.min_repeats,
                                           min_seconds=timing.min_seconds)
                row.fwd_bwd_ms = fwd_bwd_s * 1e3
                bwd_s = median_seconds(backward_fn(lambda: layer(x, None, *leaves)[0], leaves, grad_out),
                                       device=target.device, min_repeats=timing.min_repeats, min_seconds=0)
                row.bwd_ms = bwd_s * 1e3
                row.measured_bwd_us_per_step = per_step_us(bwd_s, backward_gemms, shape.steps)
                if reference is not None:
                    row.rel_error = relative_error(layer_results(x, weights, grad_out, layer, dtype), reference)
        except Exception as error:  # recorded in the row and the exit status; the next path still runs
            row.error = _one_line(error)
            traceback.print_exc(file=sys.stderr)
        finally:
            setting.close()
        progress(f"path {row.name} at {shape.label()}: " + _path_summary(row))
    return rows


def _path_summary(row: PathRow) -> str:
    if row.error:
        return f"ERROR {row.error}"
    if row.fwd_ms is None:
        return f"not run ({row.note})"
    return (f"fwd {row.fwd_ms:.3f} ms (predicted {_num(row.predicted_fwd_us_per_step)} us/step, measured "
            f"{_num(row.measured_fwd_us_per_step)}), fwd+bwd {_num(row.fwd_bwd_ms, 3)} ms")


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _checkout_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class ProbeSizes:
    l2_bytes: int        # resident in L2 (H100/H200: 50 MB of L2)
    memory_bytes: int    # far beyond L2: device memory bandwidth
    gemm_size: int       # the square GEMM of the rate probe
    launches: int


GPU_PROBE_SIZES = ProbeSizes(l2_bytes=8 << 20, memory_bytes=1 << 30, gemm_size=4096, launches=2000)
SMALL_PROBE_SIZES = ProbeSizes(l2_bytes=1 << 20, memory_bytes=16 << 20, gemm_size=256, launches=200)


def _seconds_per_call(fn, target: Target, calls: int) -> float:
    """The median over a few repeats of `calls` back-to-back calls, per call."""
    def many():
        for _ in range(calls):
            fn()
    return median_seconds(many, device=target.device, min_repeats=5, min_seconds=0) / calls


def measure_probes(target: Target, sizes: ProbeSizes) -> list[Probe]:
    """Launch latency, L2 and device-memory read bandwidth, GEMM rates, each beside the model
    constant it corresponds to (None where the model has none)."""
    constants = cost_constants()
    sm_count = torch.cuda.get_device_properties(target.device).multi_processor_count \
        if target.device.type == "cuda" else None
    probes = []

    def add(name, unit, measured, constant=None, how=""):
        probes.append(Probe(name, unit, measured, constant, constants.get(constant) if constant else None, how))

    one = torch.zeros(1, device=target.device)
    add("launch", "us", _seconds_per_call(lambda: one.add_(1.0), target, sizes.launches) * 1e6, "launch_us",
        f"{sizes.launches} one-element ATen ops back to back in a stream (what the stepwise path pays per launch)")
    resident = torch.randn(sizes.l2_bytes // 4, device=target.device)
    l2_s = _seconds_per_call(lambda: resident.sum(), target, 50)
    l2_bytes_per_us = sizes.l2_bytes / (l2_s * 1e6)
    add("L2 read bandwidth", "GB/s", l2_bytes_per_us / 1e3, None,
        f"sum of a {sizes.l2_bytes >> 20} MB tensor, 50 times in a row (resident in L2 after the first)")
    if sm_count is not None:
        add("L2 read bandwidth per SM", "bytes/us", l2_bytes_per_us / sm_count, "l2_bytes_per_sm_per_us",
            f"the above over {sm_count} SMs")
    del resident
    far = torch.randn(sizes.memory_bytes // 4, device=target.device)
    memory_s = _seconds_per_call(lambda: far.sum(), target, 5)
    add("device memory read bandwidth", "GB/s", sizes.memory_bytes / memory_s / 1e9, None,
        f"sum of a {sizes.memory_bytes >> 20} MB tensor")
    add("device memory bytes per us", "bytes/us", sizes.memory_bytes / memory_s / 1e6, "memory_bytes_per_us",
        "the above (prices the copies of a batch split into launches)")
    del far
    add("square GEMM rate", "TFLOP/s", gemm_rate(target.device, size=sizes.gemm_size) / 1e12, None,
        f"fp32 {sizes.gemm_size}^3 matrix product, TF32 off")
    # A layer call with almost no GPU work: the stream waits on the host, so the time per call
    # is the op's host path (checks, plan, allocations, launches). The model charges
    # op_fixed_us plus a launch for the input projection and one for the recurrence.
    x, weights, grad_out = layer_arguments(Shape(1, 1, 64, 64), target)
    leaves = [w.clone().requires_grad_() for w in weights]

    def forward_call():
        with torch.no_grad():
            rnn_layer(x, None, *weights, backend=target.backend)

    def forward_backward_call():
        out, _ = rnn_layer(x, None, *leaves, backend=target.backend)
        torch.autograd.grad(out, leaves, grad_out)

    add("layer forward call (T = 1)", "us", _seconds_per_call(forward_call, target, 200) * 1e6, "op_fixed_us",
        "200 one-step forward calls at B = 1, I = H = 64 back to back (two launches included); the model's "
        "value is fitted to the first kernels and excludes the launches")
    add("layer forward+backward call (T = 1)", "us", _seconds_per_call(forward_backward_call, target, 100) * 1e6,
        None, "100 one-step forward+backward calls at B = 1, I = H = 64 back to back (autograd included)")
    projection = Shape(1000, 8, 256, 256)
    projection_s = median_seconds(whole_sequence_work(projection, target, False), device=target.device,
                                  min_repeats=7, min_seconds=0)
    flops = 2.0 * projection.steps * projection.batch * projection.input_size * projection.hidden
    add("input projection GEMM rate", "TFLOP/s", flops / projection_s / 1e12, "gemm_tflops",
        "[8000, 256] x [256, 256] + bias (T=1000, B=8, I=H=256), launch included; the model's value is fitted")
    return probes


# --- report -----------------------------------------------------------------------------------


def measure_phase_rows(target: Target, shapes: list[PhaseShape]) -> list[PhaseRow]:
    """Step-phase timing of each shape's forward and backward recurrence (fp32)."""
    clock_per_us = cost_constants().get("clock_per_us", 1980.0)
    rows = []
    for shape in shapes:
        for backward in (False, True):
            row = PhaseRow(shape.label(), "backward" if backward else "forward", shape.hidden, shape.batch,
                           forced_units_per_pass=shape.units_per_pass, forced_step_sync=shape.step_sync,
                           forced_run_time_passes=shape.run_time_passes,
                           forced_lane_rows_step=shape.lane_rows_step, forced_tiled_dots=shape.tiled_dots,
                           forced_operand_ring=shape.operand_ring)
            try:
                with forced_tiling(units_per_pass=shape.units_per_pass, step_sync=shape.step_sync,
                                   run_time_passes=shape.run_time_passes, lane_rows_step=shape.lane_rows_step,
                                   tiled_dots=shape.tiled_dots, operand_ring=shape.operand_ring):
                    phases = step_phases(shape.hidden, shape.batch, shape.steps, backward, torch.float32,
                                         target.plan_device, shape.path)
                    row.plan = estimate_fields(plan(shape.hidden, shape.batch, torch.float32, target.plan_device,
                                                    backward, phases.path))
                row.path, row.ctas = phases.path, phases.ctas
                row.stage_cycles, row.compute_cycles = phases.stage_cycles, phases.compute_cycles
                row.barrier_cycles, row.slowest_compute_cycles = phases.barrier_cycles, phases.slowest_compute_cycles
                total = phases.stage_cycles + phases.compute_cycles + phases.barrier_cycles
                row.measured_us_per_step = total / clock_per_us
                row.predicted_us_per_step = phases.predicted_us_per_step
            except Exception as error:  # recorded in the row and the exit status; the next row still runs
                row.error = _one_line(error)
                traceback.print_exc(file=sys.stderr)
            rows.append(row)
    return rows


def format_phase_table(rows: list[PhaseRow], clock_per_us: float) -> str:
    lines = ["| H, B | pass | path | CTAs | stage | compute (slowest CTA) | barrier | µs/step at "
             f"{clock_per_us:.0f} MHz | predicted µs/step |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.label} | {r.direction} | – | – | – | – | – | – | ERROR {r.error} |")
            continue
        lines.append(f"| {r.label} | {r.direction} | {r.path} | {r.ctas} | {_num(r.stage_cycles, 0)} | "
                     f"{_num(r.compute_cycles, 0)} ({_num(r.slowest_compute_cycles, 0)}) | "
                     f"{_num(r.barrier_cycles, 0)} | {_num(r.measured_us_per_step, 3)} | "
                     f"{_num(r.predicted_us_per_step, 3)} |")
    return "\n".join(lines)


def _forced_pair_verdicts(rows: list[PhaseRow], setting: str, names: dict, subject: str) -> list[str]:
    """For each recurrence (H, B, path, direction) timed with the PhaseRow field `setting` (a
    forced part of the launch shape) at both values of `names` ({value: how the verdict names
    it}, the first one first): both measured times beside the model's, and whether the faster
    one is the one the model predicts faster (the planner's pick between them)."""
    timed: dict[tuple, dict] = {}
    for row in rows:
        value = getattr(row, setting)
        if row.error or row.measured_us_per_step is None or value is None or row.forced_run_time_passes or \
                row.forced_tiled_dots or row.forced_operand_ring:
            continue
        timed.setdefault((row.hidden, row.batch, row.path, row.direction), {})[value] = row
    (first, first_name), (second, second_name) = names.items()
    verdicts = []
    for (hidden, batch, path, direction), pair in timed.items():
        if set(pair) != {first, second}:
            continue
        a, b = pair[first], pair[second]
        measured_first = a.measured_us_per_step < b.measured_us_per_step
        predicted_first = a.predicted_us_per_step < b.predicted_us_per_step
        verdict = ("as the model predicts" if measured_first == predicted_first else
                   "the model predicted the other: run fit-model (docs/gpu_check.md)")
        verdicts.append(
            f"{path} at H, B = {hidden}, {batch}, {direction}: {subject} {first_name} "
            f"{a.measured_us_per_step:.3f} µs/step, {second_name} {b.measured_us_per_step:.3f} (predicted "
            f"{a.predicted_us_per_step:.3f} and {b.predicted_us_per_step:.3f}): "
            f"{first_name if measured_first else second_name} faster, {verdict}.")
    return verdicts


def warp_count_verdicts(rows: list[PhaseRow]) -> list[str]:
    """The rows forced to 16 and to 32 units per pass: dot products on 4 warps against 8."""
    return _forced_pair_verdicts(rows, "forced_units_per_pass", {16: "on 4 warps", 32: "on 8 warps"},
                                 "dot products")


def step_sync_verdicts(rows: list[PhaseRow]) -> list[str]:
    """The rows forced to each step synchronisation against the path's barrier: on the grid path
    the flag barrier over a group's CTAs and the tagged exchange, on the cluster path the
    asynchronous exchange (priced as no faster until fit-model fits async_exchange_us)."""
    names = {"flag_barrier": "with the flag barrier", "tagged_exchange": "with the tagged exchange",
             "async_exchange": "with the asynchronous exchange"}
    verdicts = []
    for other, name in names.items():
        barrier = "with the cluster barrier" if other == "async_exchange" else "with the grid barrier"
        verdicts += _forced_pair_verdicts([r for r in rows if r.forced_step_sync in (other, "grid_barrier")],
                                          "forced_step_sync", {other: name, "grid_barrier": barrier}, "steps")
    return verdicts


def compiled_passes_verdicts(rows: list[PhaseRow]) -> list[str]:
    """Each recurrence timed with its kernels compiled for their passes and again reading them
    at run time (forced_tiling's run_time_passes; the same launch shape otherwise): both
    measured times and the ratio. The cost model prices both alike (it was fitted to the
    run-time kernels), so there is no prediction to compare with."""
    pairs: dict[tuple, dict] = {}
    for row in rows:
        if row.error or row.measured_us_per_step is None or row.plan.get("lane_rows") or row.forced_tiled_dots or \
                row.forced_operand_ring:
            continue  # (the lane-row step has no passes: lane_rows_verdicts; tiled rows: tiled_dots_verdicts;
            # the operand ring's: operand_ring_verdicts)
        key = (row.hidden, row.batch, row.path, row.direction, row.forced_units_per_pass, row.forced_step_sync)
        pairs.setdefault(key, {})[row.forced_run_time_passes] = row
    verdicts = []
    for (hidden, batch, path, direction, _, _), pair in pairs.items():
        if set(pair) != {False, True} or not pair[False].plan.get("compiled_passes"):
            continue
        compiled, run_time = pair[False], pair[True]
        gain = _ratio_text(_ratio(run_time.measured_us_per_step, compiled.measured_us_per_step))
        verdicts.append(
            f"{path} at H, B = {hidden}, {batch}, {direction}: compiled for its {compiled.plan['compiled_passes']} "
            f"pass(es) {compiled.measured_us_per_step:.3f} µs/step, reading them at run time "
            f"{run_time.measured_us_per_step:.3f}: {gain}x (> 1: compiled faster; both with the step-phase clock's "
            f"reads).")
    return verdicts


def lane_rows_verdicts(rows: list[PhaseRow]) -> list[str]:
    """Each block-path recurrence timed on the lane-row step (forced_tiling's lane_rows_step) and
    on the planner's general kernels compiled for their passes (the same H and B, nothing else
    forced): both measured and predicted times, and whether the model orders them as measured."""
    lane = {(r.hidden, r.batch, r.direction): r for r in rows
            if not r.error and r.measured_us_per_step is not None and r.plan.get("lane_rows")}
    verdicts = []
    for r in rows:
        key = (r.hidden, r.batch, r.direction)
        if r.error or r.measured_us_per_step is None or r.path != "block" or r.plan.get("lane_rows") or \
                r.forced_run_time_passes or r.forced_units_per_pass or r.forced_operand_ring or key not in lane:
            continue
        verdicts.append(_alternative_verdict(lane[key], r, "the lane-row step", "the general kernels"))
    return verdicts


def _alternative_verdict(ours: PhaseRow, baseline: PhaseRow, ours_name: str, baseline_name: str) -> str:
    """One line for a kernel timed beside the one it would replace (the same H, B, direction):
    both measured and predicted times, the ratio, and whether the model orders them as measured."""
    gain = _ratio_text(_ratio(baseline.measured_us_per_step, ours.measured_us_per_step))
    agree = (ours.measured_us_per_step < baseline.measured_us_per_step) == \
        (ours.predicted_us_per_step < baseline.predicted_us_per_step)
    return (f"{ours.path} at H, B = {ours.hidden}, {ours.batch}, {ours.direction}: {ours_name} "
            f"{ours.measured_us_per_step:.3f} µs/step, {baseline_name} {baseline.measured_us_per_step:.3f} (predicted "
            f"{_num(ours.predicted_us_per_step)} and {_num(baseline.predicted_us_per_step)}): {gain}x (> 1: "
            f"{ours_name} faster)" + (", as the model orders them." if agree else ", the model ordered them the other way."))


def tiled_dots_verdicts(rows: list[PhaseRow]) -> list[str]:
    """Each grid- or cluster-path recurrence timed with the tiled dot products (forced_tiling's
    tiled_dots) beside the same path, H, B, direction and forced step synchronisation on the
    8-lane rows (nothing else forced): both measured and predicted times, the ratio, and whether
    the model orders them as measured (the planner takes the tiled dot products only once a GPU
    has timed them)."""
    def key(r: PhaseRow) -> tuple:
        return r.path, r.hidden, r.batch, r.direction, r.forced_step_sync

    usable = [r for r in rows if not r.error and r.measured_us_per_step is not None and r.path in ("grid", "cluster")
              and not r.forced_run_time_passes and r.forced_units_per_pass is None]
    rows_of = {key(r): r for r in usable if not r.forced_tiled_dots}
    verdicts = []
    for tiled in (r for r in usable if r.forced_tiled_dots):
        if key(tiled) in rows_of:
            verdicts.append(_alternative_verdict(tiled, rows_of[key(tiled)], "the tiled dot products",
                                                 "8 lanes per row"))
    return verdicts


def operand_ring_verdicts(rows: list[PhaseRow]) -> list[str]:
    """Each block-path recurrence timed with its step operands through the ring in shared memory
    (forced_tiling's operand_ring) beside the planner's general kernels at the same H, B and
    direction (nothing else forced): both measured times and the ratio. The cost model prices the
    two alike (it has no term for a wait on the operands), so there is no prediction to compare
    with: a ring faster by about the unexplained wait (some 400 cycles a step at H = 64 on the
    H200) says that wait was the operands' loads."""
    def key(r: PhaseRow) -> tuple:
        return r.hidden, r.batch, r.direction

    usable = [r for r in rows if not r.error and r.measured_us_per_step is not None and r.path == "block"
              and not r.plan.get("lane_rows") and not r.forced_run_time_passes and r.forced_units_per_pass is None]
    plain = {key(r): r for r in usable if not r.forced_operand_ring}
    verdicts = []
    for ring in (r for r in usable if r.forced_operand_ring):
        if key(ring) not in plain:
            continue
        base = plain[key(ring)]
        gain = _ratio_text(_ratio(base.measured_us_per_step, ring.measured_us_per_step))
        verdicts.append(f"block at H, B = {ring.hidden}, {ring.batch}, {ring.direction}: the operand ring "
                        f"{ring.measured_us_per_step:.3f} µs/step (compute {_num(ring.compute_cycles, 0)} cycles), "
                        f"operands one step ahead {base.measured_us_per_step:.3f} (compute "
                        f"{_num(base.compute_cycles, 0)}): {gain}x (> 1: the ring faster; the model prices both "
                        f"alike).")
    return verdicts


def layer_overlap_verdicts(rows: list[ShapeRow], baseline: str) -> list[str]:
    """Each unidirectional stack of L layers with input size H beside the one-layer row of the
    same T, B, I = H, dtype: the stack's time as a multiple of the one layer's, for the baseline
    and for rnn_fused, forward and forward+backward. L times means the layers ran one after the
    other (rnn_fused does); well under L, that they overlap. Then what rnn_fused's own overlaps
    gained where they ran: a stack in one launch each way against its layers one by one, a
    bidirectional layer's directions at once against one after the other; and what a stack the
    planner declined would have given (its layers one by one against them in one launch)."""
    def key(shape: dict) -> tuple:
        return shape["steps"], shape["batch"], shape["input_size"], shape["hidden"], shape["dtype"], shape["long"]

    single = {key(r.shape): r for r in rows if r.shape["layers"] == 1 and not r.shape["bidirectional"] and not r.error}
    verdicts = []
    for row in rows:
        shape = row.shape
        one = single.get(key(shape))
        if shape["layers"] < 2 or shape["bidirectional"] or shape["input_size"] != shape["hidden"] or one is None \
                or row.error:
            continue
        parts = []
        for name, stack_theirs, one_theirs, stack_ours, one_ours in (
                ("forward", row.baseline_fwd_ms, one.baseline_fwd_ms, row.ours_fwd_ms, one.ours_fwd_ms),
                ("forward+backward", row.baseline_fwd_bwd_ms, one.baseline_fwd_bwd_ms, row.ours_fwd_bwd_ms,
                 one.ours_fwd_bwd_ms)):
            theirs, ours = _ratio(stack_theirs, one_theirs), _ratio(stack_ours, one_ours)
            if theirs is not None and ours is not None:
                parts.append(f"{name} {baseline} {theirs:.2f}x, rnn_fused {ours:.2f}x")
        if parts:
            layers = shape["layers"]
            verdicts.append(f"{row.label}: the stack's time over one layer's (one after another: {layers}x): "
                            + "; ".join(parts) + ".")
    # (the other choice's timing, what it compares): rnn_fused's own choice against it
    others = (("one_by_one", "rnn_fused's layers in one launch each against the same layers one by one "
                             "(RNN.stack = False; > 1: the stack faster)"),
              ("as_stack", "rnn_fused's layers one by one (the planner's choice) against the same layers in one "
                           "launch each (RNN.stack = True; > 1: one by one faster)"),
              ("in_turn", "rnn_fused's directions at once, each on half the SMs, against one after the other on "
                          "the whole device (RNN.side_by_side = False; > 1: at once faster)"),
              ("at_once", "rnn_fused's directions one after the other (the planner's choice: too few steps for "
                          "the side stream's fork and join) against at once, each on half the SMs "
                          "(RNN.side_by_side = True; > 1: one after the other faster)"),
              ("whole_batch", "rnn_fused's batch in two layer ops (batch_pieces) against the whole batch in one "
                              "launch (RNN.path forced; > 1: the split faster)"),
              ("host_projection", "rnn_fused's input projection inside the block kernel against the host's bias "
                                  "sum and GEMM (forced_tiling(input_projection_on_host=True); > 1: in the kernel "
                                  "faster)"),
              ("host_gradients", "rnn_fused's whole-sequence gradients in one launch of the gradients kernel "
                                 "against the host's GEMMs and bias sum (forced_tiling(gradients_on_host=True); "
                                 "> 1: the kernel faster)"))
    for row in rows:
        for prefix, compared in others:
            gains = [f"{name} {ratio:.2f}x" for name, ratio in (
                ("forward", _ratio(getattr(row, f"{prefix}_fwd_ms"), row.ours_fwd_ms)),
                ("forward+backward", _ratio(getattr(row, f"{prefix}_fwd_bwd_ms"), row.ours_fwd_bwd_ms)))
                if ratio is not None]
            if gains:
                verdicts.append(f"{row.label}: {compared}: " + ", ".join(gains) + ".")
    return verdicts


def tune_shapes(shapes: list[Shape]) -> list[tuple[int, int]]:
    """(H, B) of every single-layer fp32 shape, once each, in order."""
    seen = []
    for shape in shapes:
        if shape.layers == 1 and not shape.bidirectional and shape.dtype == "float32" and \
                (shape.hidden, shape.batch) not in seen:
            seen.append((shape.hidden, shape.batch))
    return seen


def measure_tune_rows(target: Target, sizes: list[tuple[int, int]], steps: int) -> list[TuneRow]:
    """Each (H, B)'s forward and backward plan with autotuning: every feasible path's time per
    step measured on the device (runs of 2 and 2 + `steps` steps), beside the model's."""
    rows = []
    for hidden, batch in sizes:
        for backward in (False, True):
            row = TuneRow(hidden, batch, "backward" if backward else "forward")
            try:
                model = plan(hidden, batch, torch.float32, target.plan_device, backward)
                row.model_path, row.model_units_per_pass = model.path, model.units_per_pass
                row.model_step_sync = model.step_sync
                with autotune(steps=steps):
                    tuned = plan(hidden, batch, torch.float32, target.plan_device, backward)
                row.tuned_path, row.tuned_units_per_pass = tuned.path, tuned.units_per_pass
                row.tuned_step_sync = tuned.step_sync
                row.model_kernels, row.tuned_kernels = kernel_variant(model), kernel_variant(tuned)
                row.timed = [estimate_fields(t) for t in tuned.timed]
            except Exception as error:  # recorded in the row and the exit status; the next row still runs
                row.error = _one_line(error)
                traceback.print_exc(file=sys.stderr)
            rows.append(row)
    return rows


def kernel_variant(plan: PathEstimate | dict) -> str:
    """Which of its path's kernel variants a launch shape runs: "lane-row step", "tiled dot
    products", "operand ring", or "" for the path's usual kernels (also in JSON from runs before
    a variant existed)."""
    fields = plan if isinstance(plan, dict) else vars(plan)
    for key, name in (("lane_rows", "lane-row step"), ("tiled_dots", "tiled dot products"),
                      ("operand_ring", "operand ring")):
        if fields.get(key):
            return name
    return ""


def _timed_cell(shape: dict | None) -> str:
    """A path's fastest timed shape: measured (predicted) µs per step, its samples per chunk and
    units per pass, and its kernel variant where it is not the path's usual kernels."""
    if shape is None:
        return "–"
    tile = f", {shape['samples']} s x {shape['units_per_pass']} u/p" if shape["units_per_pass"] else ""
    variant = kernel_variant(shape)
    return (f"{_num(shape['measured_us_per_step'], 3)} ({_num(shape['predicted_us_per_step'], 3)}{tile}"
            f"{', ' + variant if variant else ''})")


def retuned_sizes(rows: list[TuneRow]) -> set[tuple[int, int]]:
    """(H, B) where autotuning took another launch shape (path, units per pass, the grid
    path's step synchronisation or a kernel variant) than the model, in either direction."""
    return {(r.hidden, r.batch) for r in rows
            if not r.error and (r.tuned_path, r.tuned_units_per_pass, r.tuned_step_sync, r.tuned_kernels)
            != (r.model_path, r.model_units_per_pass, r.model_step_sync, r.model_kernels)}


def format_tuned_rows_table(rows: list[ShapeRow]) -> str:
    lines = ["| T, B, I, H | paths fwd / bwd: model | autotune | fwd ratio: model | autotune | "
             "fwd+bwd ratio: model | autotune |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.tuned_paths is None:
            continue
        lines.append(f"| {r.label} | {r.forward_path} / {r.backward_path} | {r.tuned_paths} | "
                     f"{_ratio_text(r.fwd_ratio)} | {_ratio_text(r.tuned_fwd_ratio)} | "
                     f"{_ratio_text(r.fwd_bwd_ratio)} | {_ratio_text(r.tuned_fwd_bwd_ratio)} |")
    return "\n".join(lines)


def format_tune_table(rows: list[TuneRow]) -> str:
    lines = ["| H, B | pass | " + " | ".join(f"{p}: measured (predicted) µs/step" for p in PATHS) +
             " | model's path | measured fastest |", "|---|---|" + "---:|" * len(PATHS) + "---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.hidden}, {r.batch} | {r.direction} | " + "– | " * len(PATHS) + f"– | ERROR {r.error} |")
            continue
        cells = [_timed_cell(r.fastest(p)) for p in PATHS]
        sync = f", {STEP_SYNCS[r.tuned_step_sync].replace('_', ' ')}" if r.tuned_step_sync else ""
        variant = f", {r.tuned_kernels}" if r.tuned_kernels else ""
        per_pass = f" ({r.tuned_units_per_pass} u/p{sync}{variant})" if r.tuned_units_per_pass else ""
        lines.append(f"| {r.hidden}, {r.batch} | {r.direction} | " + " | ".join(cells) +
                     f" | {r.model_path} | {r.tuned_path}{per_pass} |")
    return "\n".join(lines)


def tune_verdict(rows: list[TuneRow]) -> str | None:
    timed = [r for r in rows if not r.error]
    if not timed:
        return None
    misses = [f"{r.hidden}, {r.batch} {r.direction} ({r.model_path} predicted, {r.tuned_path} measured)"
              for r in timed if r.model_path != r.tuned_path]
    return (f"The model picked the measured fastest path in {len(timed) - len(misses)} of {len(timed)} recurrences"
            + (f"; not in: {'; '.join(misses)} (run fit-model, docs/gpu_check.md)." if misses else "."))


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if value != 0 and abs(value) < 10 ** -digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _ratio_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _pair(a: str, b: str) -> str:
    return f"{a} / {b}"


def format_shape_table(rows: list[ShapeRow], baseline: str) -> str:
    lines = [
        f"| T, B, I, H | fwd {baseline} ms | fwd ours ms | fwd ratio | fwd+bwd {baseline} ms | fwd+bwd ours ms | "
        f"fwd+bwd ratio | peak MB {baseline} / ours | rel. error {baseline} / ours | path fwd / bwd | "
        "predicted µs/step fwd / bwd | measured µs/step fwd / bwd | predicted ms fwd / fwd+bwd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r.skipped or (r.error and r.ours_fwd_ms is None):
            lines.append(f"| {r.label} | {'skipped: ' + r.skipped if r.skipped else 'ERROR: ' + r.error} |"
                         + " |" * 11)
            continue
        baseline_fwd = _num(r.baseline_fwd_ms) if r.baseline_fwd_ms is not None else (r.note or "–")
        baseline_fwd_bwd = _num(r.baseline_fwd_bwd_ms) if r.baseline_fwd_bwd_ms is not None else (r.note or "–")
        errors = ("–" if r.ours_rel_error is None
                  else _pair(f"{r.baseline_rel_error:.1e}", f"{r.ours_rel_error:.1e}"
                             + (f" ({r.ours_rel_error_of})" if r.ours_rel_error_of else "")))
        lines.append(
            f"| {r.label} | {baseline_fwd} | {_num(r.ours_fwd_ms)} | {_ratio_text(r.fwd_ratio)} | {baseline_fwd_bwd} | "
            f"{_num(r.ours_fwd_bwd_ms)} | {_ratio_text(r.fwd_bwd_ratio)} | "
            f"{_pair(_num(r.baseline_peak_mb, 0), _num(r.ours_peak_mb, 0))} | {errors} | "
            f"{_pair(r.forward_path or '–', r.backward_path or '–')} | "
            f"{_pair(_num(r.predicted_fwd_us_per_step), _num(r.predicted_bwd_us_per_step))} | "
            f"{_pair(_num(r.measured_fwd_us_per_step), _num(r.measured_bwd_us_per_step))} | "
            f"{_pair(_num(r.predicted_fwd_ms), _num(r.predicted_fwd_bwd_ms))} |"
            + (f" ERROR: {r.error}" if r.error else ""))
    return "\n".join(lines)


def _launch_text(plan: dict) -> str:
    if not plan.get("feasible"):
        return "–"
    if plan["path"] == "stepwise":
        return f"per step: a GEMM and {plan['grid']}×{plan['block_threads']} epilogue"
    text = f"{plan['grid']}×{plan['block_threads']}"
    if plan.get("lane_rows"):  # (absent from the JSON of runs before it existed)
        return text + (f", a lane per unit, {plan['samples_per_group']} samples/CTA"
                       + (f", {plan['waves']} waves" if plan["waves"] > 1 else ""))
    if plan["cluster"] > 1:
        text += f", cluster {plan['cluster']}"
    text += f", {plan['units_per_cta']} units/CTA, {plan['samples_per_group']} samples/group"
    if plan.get("units_per_pass", 32) != 32:  # (absent from the JSON of runs before it existed)
        text += f", dot products on {plan['units_per_pass'] // 4} warps"
    if plan.get("compiled_passes"):  # (likewise)
        text += f", step compiled for {plan['compiled_passes']} pass(es)"
    variant = kernel_variant(plan)
    if variant:
        text += f", {variant}"
    if plan["waves"] > 1:
        text += f", {plan['waves']} waves"
    return text


def fastest_paths(rows: list[PathRow]) -> dict[tuple[str, str], str]:
    """(shape label, 'fwd' | 'fwd_bwd') -> the path measured fastest there."""
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for r in rows:
        for pass_, ms in (("fwd", r.fwd_ms), ("fwd_bwd", r.fwd_bwd_ms)):
            key = (r.label, pass_)
            if ms is not None and (key not in best or ms < best[key][0]):
                best[key] = (ms, r.name)
    return {key: path for key, (_, path) in best.items()}


def format_path_table(rows: list[PathRow]) -> str:
    fastest = fastest_paths(rows)
    lines = [
        "| T, B, I, H | path | launch (forward) | predicted µs/step fwd / bwd | measured µs/step fwd / bwd | "
        "fwd ms | fwd+bwd ms | rel. error | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        marks = []
        if r.planned_forward or r.planned_backward:
            marks.append("planned" + ("" if r.planned_forward and r.planned_backward
                                      else " (fwd)" if r.planned_forward else " (bwd)"))
        if fastest.get((r.label, "fwd")) == r.name:
            marks.append("fastest fwd")
        if fastest.get((r.label, "fwd_bwd")) == r.name:
            marks.append("fastest fwd+bwd")
        path = r.name + (f" ({', '.join(marks)})" if marks else "")
        note = "; ".join(text for text in (r.skipped and f"skipped: {r.skipped}", r.error and f"ERROR: {r.error}",
                                           r.note) if text)
        lines.append(
            f"| {r.label} | {path} | {_launch_text(r.forward_plan)} | "
            f"{_pair(_num(r.predicted_fwd_us_per_step), _num(r.predicted_bwd_us_per_step))} | "
            f"{_pair(_num(r.measured_fwd_us_per_step), _num(r.measured_bwd_us_per_step))} | "
            f"{_num(r.fwd_ms, 3)} | {_num(r.fwd_bwd_ms, 3)} | "
            f"{'–' if r.rel_error is None else f'{r.rel_error:.1e}'} | {note} |")
    return "\n".join(lines)


def format_probe_table(probes: list[Probe]) -> str:
    lines = ["| quantity | measured | unit | model constant | model value | how |", "|---|---:|---|---|---:|---|"]
    for p in probes:
        lines.append(f"| {p.name} | {_num(p.measured)} | {p.unit} | {p.model_constant or '–'} | "
                     f"{_num(p.model_value)} | {p.how} |")
    return "\n".join(lines)


def format_report(result: GpuCheckResult) -> str:
    meta = result.meta
    baseline = meta["baseline"]
    lines = [
        f"# rnn_fused gpu-check: {meta['device_name']}",
        "",
        f"{meta['date']}; torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}; rnn_fused "
        f"{meta['version']} at commit {meta['commit'] or 'unknown'}; {meta['elapsed_s']:.0f} s.",
        "",
        f"{meta['timing']}",
        "",
        "## rnn_fused vs " + baseline,
        "",
        f"ratio = {baseline} time / rnn_fused time (> 1: rnn_fused faster). Relative error = worst "
        "‖x − ref‖/‖ref‖ over output, h_n and every gradient against a float64 run of " + baseline +
        " (W_hh halved so the dynamics contract; in brackets the result with rnn_fused's worst); fp32 rows "
        "only. Path and predicted µs/step: "
        "`plan(H, B, dtype, device)` for the forward and the backward recurrence (a single layer whose "
        "batch runs as two layer ops, `batch_pieces`: the pieces named, their steps summed). Measured µs/step "
        "(single-layer rows): (rnn_fused pass − the same whole-sequence GEMMs timed alone) / T, an estimate "
        "by subtraction; the backward pass timed alone, through a retained forward graph. Predicted ms: "
        "the cost model's layer time (GEMMs included; a split's copies too), summed over layers and "
        "directions.",
        "",
        format_shape_table(result.shape_rows, baseline),
        "",
        "## Against issue 11's goals",
        "",
        f"The worst measured value over the rows each goal covers (ratio = {baseline} time / rnn_fused "
        "time; memory and error as ours / theirs). Only a run on an H100/H200-class GPU against cuDNN "
        "decides them.",
        "",
        format_goal_table(issue_goals(result.shape_rows)),
        "",
    ]
    verdicts = layer_overlap_verdicts(result.shape_rows, baseline)
    if verdicts:
        lines += ["Layers of a stack, overlapped or one after another:", ""]
        lines += [f"- {verdict}" for verdict in verdicts] + [""]
    lines += [
        "## Every path forced (one layer, fp32)",
        "",
        "`rnn_layer(..., path=p)`. A path the planner rules out for the shape is not run; the note "
        "says why. 'planned' marks the planner's choice, 'fastest' the fastest measured path.",
        "",
        format_path_table(result.path_rows),
        "",
        "## Cost-model constants measured on this device",
        "",
        "Model values from csrc/cuda/recurrence_cost_model.h (measured on an H200, 2026-11-30, or fitted).",
        "",
        format_probe_table(result.probes),
        "",
        "## Where a step goes (step-phase timing)",
        "",
        "Thread 0 of every CTA reads the SM's cycle counter at each phase boundary of T steps "
        "(`launch_plan.step_phases`; random data, fp32, T = " + str(result.meta.get("phase_steps", "?")) +
        "): cycles per step, mean over the CTAs, in the staging of state rows (grid path), the compute "
        "(dot products, reduce-scatter, epilogues, publishing) and the step barrier (the other warps' and "
        "CTAs' lag included); µs at the model's SM clock (`clock_per_us`). The cost model's terms are "
        "fitted from these (docs/gpu_check.md). On the emulated rehearsal the cycles are host nanoseconds.",
        "",
        format_phase_table(result.phase_rows, cost_constants().get("clock_per_us", 1980.0)),
    ]
    verdicts = warp_count_verdicts(result.phase_rows)
    if verdicts:
        lines += ["", "Units per pass (the rows forced to 16 and to 32):", ""]
        lines += [f"- {verdict}" for verdict in verdicts]
    verdicts = lane_rows_verdicts(result.phase_rows)
    if verdicts:
        lines += ["", "The block path's lane-row step against its general kernels (the same H and B):", ""]
        lines += [f"- {verdict}" for verdict in verdicts]
    verdicts = tiled_dots_verdicts(result.phase_rows)
    if verdicts:
        lines += ["", "The tiled dot products against 8 lanes per weight row (the same path, H, B and "
                  "step synchronisation):", ""]
        lines += [f"- {verdict}" for verdict in verdicts]
    verdicts = operand_ring_verdicts(result.phase_rows)
    if verdicts:
        lines += ["", "The block path's step operands through a ring in shared memory against one step ahead in "
                  "registers (the same H and B):", ""]
        lines += [f"- {verdict}" for verdict in verdicts]
    verdicts = compiled_passes_verdicts(result.phase_rows)
    if verdicts:
        lines += ["", "Kernels compiled for their passes against those reading them at run time (the same launch "
                  "shape):", ""]
        lines += [f"- {verdict}" for verdict in verdicts]
    verdicts = step_sync_verdicts(result.phase_rows)
    if verdicts:
        lines += ["", "Grid path's step synchronisation (the rows forced to each; the barrier column is the "
                  "barrier's own cost, the other CTAs' lag included; with the tagged exchange the wait for the "
                  "producers' words is in the stage column):", ""]
        lines += [f"- {verdict}" for verdict in verdicts]
    if result.tune_rows:
        lines += ["", "## Every path timed by autotuning (one recurrence, fp32)", "",
                  "`launch_plan.autotune(steps=" + str(result.meta.get("tune_steps", "?")) + ")`: each feasible "
                  "path's launch shape (a persistent path's with every sample tile and 32 and 16 units per pass, "
                  "the grid path's with each step synchronisation) run on constant "
                  "data, the fastest of 3 runs of 2 and of 2 + steps steps; their difference over the steps is "
                  "the time per step (no launch cost). Each cell: the path's fastest shape, measured (predicted, "
                  "samples per chunk x units per pass). The recurrence alone, no GEMMs; the rows above time the model's path.",
                  "", format_tune_table(result.tune_rows)]
        verdict = tune_verdict(result.tune_rows)
        if verdict:
            lines += ["", verdict]
        if any(r.tuned_paths is not None for r in result.shape_rows):
            lines += ["", "Where autotuning takes another launch shape than the model (path or units per pass), "
                      "the shape rows above timed again with `launch_plan.autotune` (ratio = " + baseline +
                      " time / rnn_fused time; the same " + baseline + " times):", "",
                      format_tuned_rows_table(result.shape_rows)]
    if result.bptt_rows:
        lines += ["", "## What recorded norms and truncation cost (one layer, fp32, forward+backward)", "",
                  "Each variant against the same module with full BPTT and nothing recorded, timed alternately "
                  "(medians). A backward without recorded norms runs its kernel's plain copy (full BPTT, every K "
                  "steps and, since 2026-12-03, randomized truncation, whose scales are drawn before the launch); "
                  "with norms, since 2026-12-06, the same plain copy, which stores each g_t, and one launch that "
                  "sums them, where the kernel is compiled for its passes; \"" + NORMS_IN_STEPS_VARIANT + "\": the "
                  "general kernel summing them in its steps, as before.", "", format_overhead(result.bptt_rows)]
    if result.notes or result.failures:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in result.notes]
        lines += [f"- FAILED: {failure}" for failure in result.failures]
    return "\n".join(lines)


def result_as_json(result: GpuCheckResult) -> dict:
    def row_json(row, derived: tuple[str, ...]) -> dict:
        return {**dataclasses.asdict(row), **{name: getattr(row, name) for name in derived}}

    return {
        "meta": result.meta,
        "probes": [dataclasses.asdict(p) for p in result.probes],
        "phase_rows": [dataclasses.asdict(r) for r in result.phase_rows],
        "tune_rows": [dataclasses.asdict(r) for r in result.tune_rows],
        "shape_rows": [row_json(r, ("fwd_ratio", "fwd_bwd_ratio", "tuned_fwd_ratio", "tuned_fwd_bwd_ratio"))
                       for r in result.shape_rows],
        "path_rows": [row_json(r, ("predicted_fwd_us_per_step", "predicted_bwd_us_per_step"))
                      for r in result.path_rows],
        "bptt_rows": [dict(dataclasses.asdict(r), overhead=r.overhead) for r in result.bptt_rows],
        "goals": [dataclasses.asdict(g) for g in issue_goals(result.shape_rows)],
        "notes": result.notes,
        "failures": result.failures,
    }


def plot(result: GpuCheckResult, ax_ratios, ax_paths) -> None:
    """Left: the ratio per shape (log scale) with the break-even line. Right: predicted vs
    measured µs per step of every forced path (log-log) with the line of perfect prediction."""
    rows = [r for r in result.shape_rows if r.ours_fwd_ms is not None]
    width = 0.4
    for offset, name, attr in ((-width / 2, "fwd", "fwd_ratio"), (width / 2, "fwd+bwd", "fwd_bwd_ratio")):
        points = [(i + offset, getattr(r, attr)) for i, r in enumerate(rows) if getattr(r, attr) is not None]
        if points:
            ax_ratios.bar([p[0] for p in points], [p[1] for p in points], width, label=name)
    ax_ratios.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax_ratios.set_yscale("log")
    ax_ratios.set_xticks(range(len(rows)), [r.label for r in rows], fontsize=6, rotation=60, ha="right")
    ax_ratios.set_ylabel(f"{result.meta['baseline']} time / rnn_fused time")
    ax_ratios.set_title("> 1: rnn_fused faster")
    ax_ratios.legend(fontsize=8)
    markers = {"fwd": "o", "bwd": "s"}
    low, high = math.inf, 0.0
    for path in PATHS:
        for pass_ in ("fwd", "bwd"):
            pairs = [(getattr(r, f"predicted_{pass_}_us_per_step"), getattr(r, f"measured_{pass_}_us_per_step"))
                     for r in result.path_rows if r.path == path]
            pairs = [(p, m) for p, m in pairs if p is not None and m is not None and p > 0 and m > 0]
            if pairs:
                ax_paths.scatter([p for p, _ in pairs], [m for _, m in pairs], marker=markers[pass_],
                                 label=f"{path} {pass_}", alpha=0.8)
                low = min(low, *(min(pair) for pair in pairs))
                high = max(high, *(max(pair) for pair in pairs))
    if high > 0:
        ax_paths.plot([low / 2, high * 2], [low / 2, high * 2], color="black", linewidth=0.8, linestyle="--")
        ax_paths.set_xscale("log")
        ax_paths.set_yscale("log")
        ax_paths.legend(fontsize=7)
    ax_paths.set_xlabel("predicted µs per step")
    ax_paths.set_ylabel("measured µs per step (pass − GEMMs) / T")
    ax_paths.set_title("cost model vs measurement, every path forced")


def write_figure(result: GpuCheckResult, out: str) -> str | None:
    """gpu_check.png, or None with one line on stderr when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        message = "matplotlib is not installed: gpu_check.png skipped (pip install matplotlib to draw it)"
        print(f"rnn-fused gpu-check: {message}", file=sys.stderr)
        result.notes.append(message)
        return None
    matplotlib.use("Agg")
    from .command_output import figure, save_figure

    fig, (ax_ratios, ax_paths) = figure(ncols=2, width=8.0, height=5.5)
    plot(result, ax_ratios, ax_paths)
    return save_figure(fig, out, "gpu_check.png")


def write_outputs(result: GpuCheckResult, out: str) -> None:
    write_text(out, "gpu_check.md", format_report(result))
    write_json(out, "gpu_check.json", result_as_json(result))


# --- the command ------------------------------------------------------------------------------


def _commit() -> str | None:
    """HEAD's short hash, with "+ changes" where tracked files differ from it (a working tree
    copied to a GPU machine may come with older git metadata than its files)."""
    try:
        found = subprocess.run(["git", "-C", _checkout_root(), "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, timeout=10)
        changed = subprocess.run(["git", "-C", _checkout_root(), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    head = found.stdout.strip()
    if not head:
        return None
    return f"{head} + changes" if changed.returncode == 0 and changed.stdout.strip() else head


def describe(target: Target, timing: Timing, budget_s: float) -> dict:
    if target.emulated:
        name = "SIMT emulator on the CPU (rehearsal: the numbers mean nothing)"
    else:
        props = torch.cuda.get_device_properties(target.device)
        name = f"{props.name} ({props.multi_processor_count} SMs, compute capability {props.major}.{props.minor})"
    clock = "the host clock" if target.device.type == "cpu" else "CUDA events"
    return {
        "device_name": name, "emulated": target.emulated, "baseline": target.baseline,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "version": __version__, "commit": _commit(), "budget_s": budget_s, "elapsed_s": 0.0,
        "model_constants": cost_constants(),
        # What the measured µs/step subtract (fit-model reads the backward's only from runs that
        # replayed the layer ops' own GEMMs: a hand-written replay before outlasted them).
        "gemms_alone": GEMMS_ALONE,
        "timing": (f"fp32 with TF32 off (and bf16 rows); medians of at least {timing.min_repeats} runs and "
                   f"{timing.min_seconds} s timed with {clock} (long rows: {LONG_TIMING.min_repeats} runs), "
                   f"after warm-up; {target.baseline} and rnn_fused alternate run by run."),
    }


@contextlib.contextmanager
def _on_target(target: Target, threads: int):
    with _benchmark_settings(target.device, threads):
        if not target.emulated:
            yield
            return
        from .. import simt

        with simt.emulated_device(**EMULATED_DEVICE):
            yield


def measure(target: Target, shapes: list[Shape], path_shapes: list[Shape], *, timing: Timing, long_timing: Timing,
            probe_sizes: ProbeSizes, budget_s: float, threads: int, out: str, measure_error: bool = True,
            progress=None, phase_shapes: list[PhaseShape] = (), tune_steps: int = 0,
            bptt_shapes: list[tuple[int, ...]] = ()) -> GpuCheckResult:
    """Every part of the check; the outputs are rewritten after each row."""
    start = time.perf_counter()
    deadline = start + budget_s

    def log(message: str) -> None:
        text = f"[gpu-check {time.perf_counter() - start:6.1f} s] {message}"
        (progress or (lambda line: print(line, file=sys.stderr, flush=True)))(text)

    result = GpuCheckResult(describe(target, timing, budget_s))

    def save() -> None:
        result.meta["elapsed_s"] = time.perf_counter() - start
        write_outputs(result, out)

    with _on_target(target, threads):
        log("measuring the cost model's constants")
        try:
            result.probes = measure_probes(target, probe_sizes)
        except Exception as error:  # noted, and the run goes on: the probes are the optional part
            result.notes.append(f"the constant probes failed: {_one_line(error)}")
            traceback.print_exc(file=sys.stderr)
        save()
        # The planner's own launch shapes first, then the forced paths, and last what forces every
        # step synchronisation and tile (the phase rows, autotuning): a fault there (a trap loses
        # the process's CUDA context) leaves the rows before it measured.
        for index, shape in enumerate(shapes):
            if time.perf_counter() > deadline:
                result.shape_rows.append(ShapeRow(shape.label(), dataclasses.asdict(shape),
                                                  skipped="over the time budget"))
                continue
            try:
                row = measure_shape_row(shape, target, long_timing if shape.long else timing, measure_error)
            except Exception as error:  # recorded in the row and the exit status; the next row still runs
                row = ShapeRow(shape.label(), dataclasses.asdict(shape), error=_one_line(error))
                traceback.print_exc(file=sys.stderr)
            result.shape_rows.append(row)
            log(f"shape {index + 1}/{len(shapes)} {shape.label()}: "
                + (f"ERROR {row.error}" if row.error else
                   f"fwd {_ratio_text(row.fwd_ratio)}x, fwd+bwd {_ratio_text(row.fwd_bwd_ratio)}x "
                   f"({row.note or 'paths ' + str(row.forward_path) + '/' + str(row.backward_path)})"))
            save()
        for shape in path_shapes:
            try:
                result.path_rows += measure_path_rows(shape, target, timing, measure_error, deadline, log)
            except Exception as error:
                result.path_rows.append(PathRow(shape.label(), dataclasses.asdict(shape), "all",
                                                error=_one_line(error)))
                traceback.print_exc(file=sys.stderr)
            save()
        if phase_shapes:
            log("timing the step phases of the persistent paths")
            result.meta["phase_steps"] = phase_shapes[0].steps
            result.phase_rows = measure_phase_rows(target, list(phase_shapes))
            save()
        if tune_steps:
            log("timing every path of each shape (autotune)")
            result.meta["tune_steps"] = tune_steps
            result.tune_rows = measure_tune_rows(target, tune_shapes(shapes), tune_steps)
            save()
        retune = retuned_sizes(result.tune_rows)
        for shape, row in zip(shapes, result.shape_rows):
            if shape.long or (shape.hidden, shape.batch) not in retune or row.error or row.skipped:
                continue
            try:
                measure_tuned(row, shape, target, timing, tune_steps)
            except Exception as error:  # recorded in the row and the exit status; its own times stand
                row.tuned_error = _one_line(error)
                traceback.print_exc(file=sys.stderr)
            save()
        if bptt_shapes and time.perf_counter() > deadline:
            result.notes.append("norms and truncation overhead skipped: over the time budget")
        elif bptt_shapes:
            log("timing recorded norms and truncation against plain forward+backward")
            try:
                bptt_timing = dict(device=target.device, backend=target.backend, min_repeats=timing.min_repeats,
                                   min_seconds=timing.min_seconds)
                result.bptt_rows = overhead_rows(list(bptt_shapes), **bptt_timing)
                with forced_tiling(norms_in_steps=True):
                    result.bptt_rows += overhead_rows(list(bptt_shapes),
                                                      variants={NORMS_IN_STEPS_VARIANT: OVERHEAD_VARIANTS["norms"]},
                                                      **bptt_timing)
            except Exception as error:  # recorded in the exit status; the rows before it stand
                result.bptt_error = _one_line(error)
                traceback.print_exc(file=sys.stderr)
            save()
    skipped = sum(1 for r in [*result.shape_rows, *result.path_rows] if r.skipped)
    if skipped:
        result.notes.append(f"{skipped} rows skipped: the run went over its time budget of {budget_s:.0f} s")
    save()
    return result


def run(*, device: torch.device, emulated: bool, quick: bool, budget_s: float, threads: int, out: str,
        min_seconds: float | None = None) -> int:
    """`rnn-fused gpu-check`: measure, print the report, write gpu_check.{md,json,png}. Exit
    status 1 when a row failed unexpectedly (the report lists it), else 0. min_seconds replaces
    the timing's minimum seconds per measurement (not its minimum runs)."""
    output_directory(out)
    target = Target(device, emulated)
    phase_shapes = EMULATED_PHASE_SHAPES if emulated else GPU_PHASE_SHAPES
    if emulated:
        shapes, path_shapes, timing, long_timing, sizes = (EMULATED_SHAPES, EMULATED_PATH_SHAPES, QUICK_TIMING,
                                                           QUICK_TIMING, SMALL_PROBE_SIZES)
    elif quick:
        shapes, path_shapes, timing, long_timing, sizes = (GPU_QUICK_SHAPES, GPU_QUICK_PATH_SHAPES, QUICK_TIMING,
                                                           LONG_TIMING, SMALL_PROBE_SIZES)
    else:
        shapes, path_shapes, timing, long_timing, sizes = (GPU_SHAPES, GPU_PATH_SHAPES, GPU_TIMING, LONG_TIMING,
                                                           GPU_PROBE_SIZES)
    if min_seconds is not None:
        timing = dataclasses.replace(timing, min_seconds=min_seconds)
    result = measure(target, shapes, path_shapes, timing=timing, long_timing=long_timing, probe_sizes=sizes,
                     budget_s=budget_s, threads=threads, out=out, phase_shapes=phase_shapes,
                     tune_steps=EMULATED_TUNE_STEPS if emulated else GPU_TUNE_STEPS,
                     bptt_shapes=EMULATED_BPTT_SHAPES if emulated else GPU_BPTT_SHAPES)
    write_figure(result, out)
    write_outputs(result, out)
    print(format_report(result))
    for failure in result.failures:
        print(f"rnn-fused gpu-check: FAILED {failure}", file=sys.stderr)
    return 1 if result.failures else 0
