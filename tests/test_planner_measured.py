"""The planner's cost model against what an H200 measured (make gpu-check, 2026-11-30).

tests/data/h200_autotune_2026-11-30.json holds, for 42 recurrences (H from 32 to 2048, B from
1 to 128, forward and backward, float32), every launch shape that autotuning timed on the GPU:
every feasible path, sample tile, computing-warp count and, on the grid path, step
synchronisation, with its measured time per step. A model that prices these shapes in the
wrong order sends the planner to a slower kernel than the one the GPU has; these tests hold
the model's order to the measured one. The constants are those of this build
(csrc/cuda/recurrence_cost_model.h, kH200), fitted to the same run: so this checks that the
fit was pasted in and that later changes to the model keep its choices.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rnn_fused.launch_plan import STEP_SYNCS, cost_constants, step_cost_us

DATA = os.path.join(os.path.dirname(__file__), "data", "h200_autotune_2026-11-30.json")
with open(DATA) as f:
    RECURRENCES = json.load(f)["recurrences"]

# The model's pick may be this much slower than the measured fastest shape at any one
# recurrence, and this much on geometric average. (With the first kernels' constants the
# picks are 1.08x slower on average and up to 1.70x at single recurrences; they were 1.16x
# and 1.77x before the model priced shared memory's wavefronts after the issue.)
WORST_SLOWDOWN = 1.25
MEAN_SLOWDOWN = 1.05


def _id(r):
    return f"H{r['hidden']}-B{r['batch']}-{r['direction'][:3]}"


def model_pick(recurrence, constants):
    """The timed launch shape the model prices fastest."""
    return min(recurrence["timed"], key=lambda p: step_cost_us(p, recurrence["hidden"], recurrence["batch"],
                                                                torch.float32, constants))


def slowdown(recurrence, constants) -> float:
    fastest = min(p["measured_us_per_step"] for p in recurrence["timed"])
    return model_pick(recurrence, constants)["measured_us_per_step"] / fastest


@pytest.mark.parametrize("recurrence", RECURRENCES, ids=_id)
def test_the_models_pick_is_close_to_the_measured_fastest(recurrence):
    assert slowdown(recurrence, cost_constants()) <= WORST_SLOWDOWN, model_pick(recurrence, cost_constants())


def test_the_models_picks_are_close_to_the_measured_fastest_on_average():
    logs = [math.log(slowdown(r, cost_constants())) for r in RECURRENCES]
    assert math.exp(sum(logs) / len(logs)) <= MEAN_SLOWDOWN


def test_the_grid_path_ends_its_steps_as_measured_fastest():
    """The grid path's step synchronisation the planner takes measured within 5% of the
    fastest one at every recurrence the grid path ran at H >= 1000: the tagged exchange (no
    barrier; each state value carries its step's tag) at B <= 8, where it measured 1.2-1.7x
    faster than the grid barrier; a barrier at B >= 32, where the tagged exchange's staging
    made it 1.1-1.6x slower (the flag and the grid barrier measured within 2% of each other)."""
    import rnn_fused

    checked = 0
    for recurrence in RECURRENCES:
        grid = [p for p in recurrence["timed"] if p["path"] == "grid"]
        if recurrence["hidden"] < 1000 or not grid:
            continue
        plan = rnn_fused.plan(recurrence["hidden"], recurrence["batch"], torch.float32, "emulated",
                              backward=recurrence["direction"] == "backward").candidate("grid")
        taken = min(p["measured_us_per_step"] for p in grid if p["step_sync"] == plan.step_sync)
        fastest = min(p["measured_us_per_step"] for p in grid)
        assert taken <= 1.05 * fastest, (recurrence["hidden"], recurrence["batch"], recurrence["direction"],
                                         STEP_SYNCS[plan.step_sync], taken, fastest)
        checked += 1
    assert checked == 14
