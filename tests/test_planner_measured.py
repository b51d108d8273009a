"""The planner's cost model against what an H200 measured (make gpu-check).

tests/data/h200_autotune_<date>.json holds, for each recurrence autotuning timed on the GPU (H
from 32 to 2048, B from 1 to 128, forward and backward, float32), every launch shape it ran:
every feasible path, sample tile, computing-warp count and step synchronisation, with its
measured time per step. A model that prices these shapes in the wrong order sends the planner
to a slower kernel than the one the GPU has; these tests hold the model's order to the
measured one. The constants are those of this build (csrc/cuda/recurrence_cost_model.h,
kH200), fitted to the run of 2026-12-04 (44 recurrences, the kernels of f623b1f): so this
checks that the fit was pasted in and that later changes to the model keep its choices. The
run of 2026-11-30 (42 recurrences, older kernels) is held to its own bounds, looser in the
mean than its own fit gave (1.02x): the kernels it timed have changed since. The second run of
2026-12-04 (44 recurrences, the extension of 3162599) was not fitted: on it the model's picks
were 1.035x the fastest on geometric average (1.41x worst, H = 512, B = 32 forward), the fitted
run's 1.028x.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rnn_fused.launch_plan import STEP_SYNCS, cost_constants, step_cost_us


def _load(date: str) -> list[dict]:
    with open(os.path.join(os.path.dirname(__file__), "data", f"h200_autotune_{date}.json")) as f:
        return json.load(f)["recurrences"]


RUNS = {"2026-12-04": _load("2026-12-04"), "2026-12-04b": _load("2026-12-04b"), "2026-11-30": _load("2026-11-30")}
RECURRENCES = RUNS["2026-11-30"]
# The model's pick may be this much slower than the measured fastest shape at any one
# recurrence, and this much on geometric average, per run. 2026-12-04: 1.03x on average; the
# worst, 1.41x, at H = 512, B = 32 forward, where the model prices the cluster path's 32 units
# per pass (2.16 us) below its 16 (2.51; measured 2.84 and 2.01). The 2026-11-30 fit gave 1.17x
# and 1.92x on that run.
# 2026-12-04b (the second run that day, a fresh measurement the model was not fitted to, with the
# lane-row step's shapes at H <= 128, priced with their measured wait) is held to the first's bounds.
BOUNDS = {"2026-12-04": (1.45, 1.05), "2026-12-04b": (1.45, 1.05), "2026-11-30": (1.25, 1.05)}
def _id(r):
    return f"H{r['hidden']}-B{r['batch']}-{r['direction'][:3]}"


def model_pick(recurrence, constants):
    """The timed launch shape the model prices fastest."""
    return min(recurrence["timed"], key=lambda p: step_cost_us(p, recurrence["hidden"], recurrence["batch"],
                                                                torch.float32, constants))


def slowdown(recurrence, constants) -> float:
    fastest = min(p["measured_us_per_step"] for p in recurrence["timed"])
    return model_pick(recurrence, constants)["measured_us_per_step"] / fastest


@pytest.mark.parametrize("run, recurrence", [(run, r) for run, rs in RUNS.items() for r in rs],
                         ids=lambda value: value if isinstance(value, str) else _id(value))
def test_the_models_pick_is_close_to_the_measured_fastest(run, recurrence):
    assert slowdown(recurrence, cost_constants()) <= BOUNDS[run][0], model_pick(recurrence, cost_constants())


@pytest.mark.parametrize("run", RUNS)
def test_the_models_picks_are_close_to_the_measured_fastest_on_average(run):
    logs = [math.log(slowdown(r, cost_constants())) for r in RUNS[run]]
    assert math.exp(sum(logs) / len(logs)) <= BOUNDS[run][1]


def test_the_cluster_path_ends_its_steps_as_measured_fastest():
    """The cluster path's step synchronisation the planner takes measured within 5% of the
    fastest one at every recurrence the cluster path ran on 2026-12-04 (42): the asynchronous
    exchange (mbarriers, no cluster barrier), measured 1.06-1.73x faster than the cluster
    barrier, each at its best tile (median 1.21x)."""
    import rnn_fused

    checked = 0
    for recurrence in RUNS["2026-12-04"]:
        cluster = [p for p in recurrence["timed"] if p["path"] == "cluster"]
        if not cluster:
            continue
        plan = rnn_fused.plan(recurrence["hidden"], recurrence["batch"], torch.float32, "emulated",
                              backward=recurrence["direction"] == "backward").candidate("cluster")
        taken = min(p["measured_us_per_step"] for p in cluster if p["step_sync"] == plan.step_sync)
        fastest = min(p["measured_us_per_step"] for p in cluster)
        assert STEP_SYNCS[plan.step_sync] == "async_exchange"
        assert taken <= 1.05 * fastest, (recurrence["hidden"], recurrence["batch"], recurrence["direction"],
                                         STEP_SYNCS[plan.step_sync], taken, fastest)
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("run", RUNS)
def test_the_grid_path_ends_its_steps_as_measured_fastest(run):
    """The grid path's step synchronisation the planner takes measured within 5% of the
    fastest one at every recurrence the grid path ran at H >= 1000 but H = 1024, B = 32: the
    tagged exchange (no barrier; each state value carries its step's tag) at B <= 8, where it
    measured 1.2-1.7x faster than the grid barrier; a barrier at B >= 64, where the tagged
    exchange's staging made it 1.4-1.6x slower (the flag and the grid barrier measured within 2%
    of each other). At B = 32 the refitted model prices the tagged exchange below the barrier,
    which measured 1.11-1.16x faster there in both runs: a known error of the model, on a shape
    where the planner takes the cluster path, not the grid path."""
    import rnn_fused

    checked = 0
    for recurrence in RUNS[run]:
        grid = [p for p in recurrence["timed"] if p["path"] == "grid"]
        if recurrence["hidden"] < 1000 or not grid:
            continue
        plan = rnn_fused.plan(recurrence["hidden"], recurrence["batch"], torch.float32, "emulated",
                              backward=recurrence["direction"] == "backward").candidate("grid")
        taken = min(p["measured_us_per_step"] for p in grid if p["step_sync"] == plan.step_sync)
        fastest = min(p["measured_us_per_step"] for p in grid)
        bound = 1.17 if (recurrence["hidden"], recurrence["batch"]) == (1024, 32) else 1.05
        assert taken <= bound * fastest, (recurrence["hidden"], recurrence["batch"], recurrence["direction"],
                                          STEP_SYNCS[plan.step_sync], taken, fastest)
        checked += 1
    assert checked == 14


# Every shape row of both 2026-12-04 runs whose forward ran a layer stack, beside the same layers
# one launch after another.
with open(os.path.join(os.path.dirname(__file__), "data", "h200_stack_rows_2026-12-04.json")) as _f:
    STACK_ROWS = json.load(_f)["shape_rows"]
# Where the stack and the layers one by one measured within 10% of each other (run to run, the
# same row moved by up to 16%), either choice is right.
DECIDED_STACK_ROWS = [r for r in STACK_ROWS if abs(math.log(r["one_by_one_fwd_ms"] / r["ours_fwd_ms"])) > math.log(1.1)]


def test_the_stack_waits_are_fitted_to_the_measured_stacks():
    """The stack waits of this build (block_stack_wait_us, cluster_stack_wait_us) are what
    fit-model fits to the stored stack rows: each path's median of measured less modelled
    step. Without them the model priced the cluster path's stack at 1.1 us a step (3.3-3.8
    measured) and the block path's at 0.33 (0.80-1.0)."""
    from rnn_fused.tools import fit_model

    constants = cost_constants()
    steps = fit_model.stack_steps({"shape_rows": STACK_ROWS}, constants)
    assert {s.path for s in steps} == {"block", "cluster"} and len(steps) == 7  # (the 11-step row is host time)
    waits = fit_model.fit_stack_waits(steps)
    assert set(waits) == {"block_stack_wait_us", "cluster_stack_wait_us"}
    for name, wait in waits.items():
        assert constants[name] == pytest.approx(wait, rel=1e-3), name


@pytest.mark.parametrize("row", DECIDED_STACK_ROWS, ids=lambda r: f"{r['run']}: {r['label']}")
def test_the_stack_is_chosen_where_it_measured_faster(row):
    """stack_plan's verdict (what rnn() runs, RNN.stack = None) against the measured one, at
    every row where the two differed by more than 10%: the cluster path's stacks (H = 129, 3
    layers; H = 256, 2 layers) measured 0.47-0.81x of the layers one by one, the block path's 4
    layers of 64 units 1.44-1.76x, 2 layers of 48 units over 11 steps 0.62x."""
    from rnn_fused.launch_plan import stack_plan

    shape = row["shape"]
    plan = stack_plan(shape["hidden"], shape["batch"], shape["steps"], shape["layers"], "emulated")
    assert plan.feasible
    assert plan.faster == (row["ours_fwd_ms"] < row["one_by_one_fwd_ms"]), plan
