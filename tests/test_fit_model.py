"""Refitting the cost model to a GPU's measurements (rnn_fused/tools/fit_model.py) and the op
it prices launch shapes with (rnn_fused::step_cost, launch_plan.step_cost_us).

No GPU here: the "measurements" are the model's own times under other constants, which a fit
must reproduce, and gpu-check's JSON layout is built from the emulated device's plans."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import rnn_fused
from rnn_fused.launch_plan import cost_constants, plan, step_cost_us
from rnn_fused.tools import fit_model, gpu_check
from rnn_fused.tools.cli import main
from rnn_fused.tools.command_output import UsageError

SHAPES = [(64, 1), (64, 8), (128, 8), (128, 32), (256, 8), (256, 128), (512, 8), (512, 32), (768, 16), (1024, 1),
          (1024, 8), (1024, 32), (1024, 128)]


def test_step_cost_of_a_planned_shape_is_the_planners_prediction():
    """One home for the per-step formulas: the planner's figure for every candidate shape is
    what step_cost prices that shape at, bitwise."""
    priced = 0
    for hidden in (1, 7, 64, 100, 256, 300, 1024, 2048):
        for batch in (1, 3, 32, 128):
            for dtype in (torch.float32, torch.float64):
                for backward in (False, True):
                    for candidate in plan(hidden, batch, dtype, backward=backward).candidates:
                        if candidate.feasible:
                            assert step_cost_us(candidate, hidden, batch, dtype) == candidate.predicted_us_per_step
                            priced += 1
    assert priced > 300


def test_replaced_constants_move_only_their_terms():
    with rnn_fused.launch_plan.forced_tiling(step_sync="grid_barrier"):  # steps that end in the path's barrier
        grid = plan(1024, 32, path="grid")
        cluster = plan(256, 8, path="cluster")
    block = plan(64, 8, path="block")
    slower = {"grid_barrier_us": cost_constants()["grid_barrier_us"] + 0.5}
    assert step_cost_us(grid, 1024, 32, constants=slower) == pytest.approx(grid.predicted_us_per_step + 0.5)
    assert step_cost_us(block, 64, 8, constants=slower) == block.predicted_us_per_step
    doubled = step_cost_us(cluster, 256, 8, constants={"cluster_barrier_scale": 2.0})
    assert doubled > cluster.predicted_us_per_step
    assert step_cost_us(cluster, 256, 8, constants={"cluster_barrier_scale": 1.0}) == cluster.predicted_us_per_step
    # The shape is priced as given, not planned again: a fast barrier does not change the tiling.
    assert step_cost_us(grid, 1024, 32, constants={"grid_barrier_us": 1e-3}) < grid.predicted_us_per_step


@pytest.mark.parametrize("constants, message", [
    ({"warp_speed": 2.0}, "unknown constant 'warp_speed'"),
    ({"grid_barrier_us": 0.0}, "constant 'grid_barrier_us' must be a positive finite number, got 0"),
    ({"launch_us": float("inf")}, "constant 'launch_us' must be a positive finite number"),
    ({"block_stack_wait_us": -0.5}, "constant 'block_stack_wait_us' must be a non-negative finite number, got -0.5"),
])
def test_step_cost_refuses_bad_constants(constants, message):
    with pytest.raises(ValueError, match=message):
        step_cost_us(plan(64, 8), 64, 8, constants=constants)


def test_step_cost_refuses_shapes_no_kernel_has():
    fields = dict(path="grid", samples=3, chunks=1, ctas_per_group=4, units_per_cta=32, waves=1)
    with pytest.raises(ValueError, match="samples must be 1, 2, 4 or 8"):
        step_cost_us(fields, 128, 3)
    with pytest.raises(ValueError, match="path must be 'block', 'cluster', 'grid' or 'stepwise', got 'warp'"):
        step_cost_us({**fields, "path": "warp", "samples": 1}, 128, 3)
    with pytest.raises(ValueError, match=r"units_per_cta in \[1, 256\], got 1, 4, 1, 300"):
        step_cost_us({**fields, "samples": 1, "units_per_cta": 300}, 128, 3)
    with pytest.raises(ValueError, match="units_per_pass must be 32 or 16, got 8"):
        step_cost_us({**fields, "samples": 1, "units_per_pass": 8}, 128, 3)
    with pytest.raises(ValueError, match=r"units_per_cta in \[1, 128\], got 1, 4, 1, 160"):
        step_cost_us({**fields, "samples": 1, "units_per_cta": 160, "units_per_pass": 16}, 128, 3)
    with pytest.raises(ValueError, match="block_stack=True prices the Block path's layer stack \\(float32\\), got "
                                         "path 'grid' in Float"):
        step_cost_us({**fields, "samples": 1}, 128, 3, block_stack=True)
    with pytest.raises(ValueError, match="block_stack=True prices the Block path's layer stack \\(float32\\), got "
                                         "path 'block' in Double"):
        step_cost_us({**fields, "path": "block", "samples": 1, "ctas_per_group": 1}, 128, 3, torch.float64,
                     block_stack=True)


def test_issue_term_counts_the_dot_loops_instructions():
    """The grid path at H = 1024, B = 32 (32 units and 8 samples per CTA, 32 chunk
    iterations). Per scheduler and iteration the issue: 8 computing warps (2 per scheduler) x
    (9 loads with an address instruction each + 32 FMAs + 1 for the loop, as counted in the
    kernels' machine code); or 4 warps (1 per scheduler) x (10 loads x 2 + 64 FMAs + 1) + half
    a shared load latency (30 cycles) exposed. Then the SM's shared-memory wavefronts, one per
    cycle: per warp and iteration 4 for each weight row's load (4 units) and 4 for each state
    chunk's (512 bytes to the lanes, though the warp's 4 unit groups read the same 128). Plus
    one batch's epilogue tail, 2 outputs per lane x 80 cycles. At 1980 cycles per us. (The
    constants the first kernels were priced with: the architecture's figures and the counted
    instructions.)"""
    fields = dict(path="grid", samples=8, chunks=1, ctas_per_group=32, units_per_cta=32, waves=1)
    first = cost_constants(first_kernels=True)
    tail = 2 * 80
    all_warps = step_cost_us({**fields, "units_per_pass": 32}, 1024, 32, constants=first, term="compute")
    assert all_warps == pytest.approx((32 * 2 * (9 * 2 + 32 + 1) + 8 * 32 * (4 + 8 * 4) + tail) / 1980, rel=1e-12)
    half_warps = step_cost_us({**fields, "units_per_pass": 16}, 1024, 32, constants=first, term="compute")
    assert half_warps == pytest.approx((32 * (10 * 2 + 64 + 1 + 15) + 4 * 32 * (2 * 4 + 8 * 4) + tail) / 1980,
                                       rel=1e-12)
    # A state load of one wavefront (as the first fit priced it) leaves 8 x 32 x (4 + 8).
    packed = {**first, "state_load_wavefronts": 1}
    assert step_cost_us({**fields, "units_per_pass": 32}, 1024, 32, constants=packed, term="compute") == \
        pytest.approx((32 * 2 * (9 * 2 + 32 + 1) + 8 * 32 * 12 + tail) / 1980, rel=1e-12)


def _observations(constants: dict[str, float], paths=("block", "cluster", "grid"), shapes=SHAPES,
                  terms=("total",)) -> list[fit_model.Observation]:
    """Every feasible (shape, path, direction) of `shapes` on the emulated device, 'measured' at
    the model's times (or parts of them: `terms`) under `constants`."""
    found = []
    for hidden, batch in shapes:
        for path in paths:
            for backward in (False, True):
                try:
                    estimate = plan(hidden, batch, path=path, backward=backward)
                except ValueError:
                    continue
                fields = {k: v for k, v in vars(estimate).items() if k != "candidates"}  # as gpu-check keeps it
                for term in terms:
                    if term == "stage" and path != "grid":
                        continue
                    row = fit_model.Observation(f"{hidden}, {batch}", "backward" if backward else "forward", fields,
                                                hidden, batch, torch.float32, 1.0, term)
                    if row.predicted_us(constants) == 0:
                        continue  # a part the shape does not have: the tagged exchange's barrier
                    found.append(dataclasses.replace(row, measured_us=row.predicted_us(constants)))
    return found


def test_fit_reproduces_times_measured_under_other_constants():
    first = cost_constants(first_kernels=True)
    truth = {**first, "grid_barrier_us": 1.4, "block_barrier_us": 0.03, "cluster_barrier_scale": 1.3,
             "l2_dependent_load_us": 0.35, "smem_latency_cycles": 45.0, "output_issue_cycles": 120.0}
    with rnn_fused.launch_plan.forced_tiling(step_sync="grid_barrier"):  # steps that end in barriers
        observations = _observations(truth)
    assert {o.plan["path"] for o in observations} == {"block", "cluster", "grid"}
    before = [o.predicted_us(first) / o.measured_us for o in observations]
    assert max(abs(r - 1) for r in before) > 0.2  # the starting constants are far off these rows
    fitted, iterations = fit_model.fit(observations, first)
    after = [o.predicted_us(fitted) / o.measured_us for o in observations]
    assert max(abs(r - 1) for r in after) < 0.05, after
    assert 1 <= iterations < 50
    # Constants no row depends on stay where they were (the prior holds them).
    assert fitted["fp64_fma_fraction"] == cost_constants()["fp64_fma_fraction"]


def test_fit_recovers_a_constant_the_rows_identify():
    truth = {**cost_constants(), "grid_barrier_us": 1.6}
    with rnn_fused.launch_plan.forced_tiling(step_sync="grid_barrier"):  # rows that all depend on it
        observations = _observations(truth, paths=("grid",))
    fitted, _ = fit_model.fit(observations, fitted=("grid_barrier_us",))
    assert fitted["grid_barrier_us"] == pytest.approx(1.6, rel=0.02)


PHASE_SHAPES = [(64, 8), (256, 8), (1024, 32), (1024, 128)]  # gpu-check's GPU_PHASE_SHAPES


def test_step_phases_tell_the_barriers_apart():
    """The totals cannot tell a slower barrier from slower compute; the step-phase table's
    parts can: with them the barrier constants come back within 3% while compute constants
    move too."""
    truth = {**cost_constants(), "grid_barrier_us": 1.4, "block_barrier_us": 0.03, "cluster_barrier_scale": 1.3,
             "smem_latency_cycles": 45.0, "fma_per_sm_per_us": 1.5e5}
    with rnn_fused.launch_plan.forced_tiling(step_sync="grid_barrier"):  # steps that end in barriers
        phases = _observations(truth, shapes=PHASE_SHAPES, terms=("stage", "compute", "barrier"))
        totals_rows = _observations(truth)
    assert {(o.plan["path"], o.term) for o in phases} >= {("block", "barrier"), ("cluster", "barrier"),
                                                          ("grid", "barrier"), ("grid", "stage")}
    fitted, _ = fit_model.fit(totals_rows + phases)
    for name in ("grid_barrier_us", "block_barrier_us", "cluster_barrier_scale"):
        assert fitted[name] == pytest.approx(truth[name], rel=0.03), name
    totals, _ = fit_model.fit(totals_rows)
    assert abs(totals["block_barrier_us"] / truth["block_barrier_us"] - 1) > 0.03  # without the phases they drift


def test_phase_parts_add_up_to_the_step():
    for hidden, batch in PHASE_SHAPES:
        estimate = plan(hidden, batch)
        parts = [step_cost_us(estimate, hidden, batch, term=t) for t in ("stage", "compute", "barrier")]
        assert sum(parts) == pytest.approx(estimate.predicted_us_per_step, rel=1e-12)
        assert (parts[0] > 0) == (estimate.path == "grid")
    with pytest.raises(ValueError, match="term must be 'total', 'stage', 'compute' or 'barrier', got 'epilogue'"):
        step_cost_us(plan(64, 8), 64, 8, term="epilogue")


def _report(observations: list[fit_model.Observation]) -> dict:
    """gpu-check's JSON layout (path_rows, probes) around observations."""
    rows = {}
    for o in observations:
        if o.term != "total":
            continue
        row = rows.setdefault((o.label, o.plan["path"]), {
            "label": o.label, "path": o.plan["path"], "error": None,
            "shape": {"steps": 1000, "batch": o.batch, "input_size": o.hidden, "hidden": o.hidden, "layers": 1,
                      "bidirectional": False, "dtype": "float32", "long": False}})
        key = "fwd" if o.direction == "forward" else "bwd"
        row[f"{o.direction}_plan"] = o.plan
        row[f"measured_{key}_us_per_step"] = o.measured_us
    deeper = {"label": "500, 32, 256, 256, 2 layers", "path": "cluster", "error": None,
              "shape": {"hidden": 256, "batch": 32, "layers": 2, "bidirectional": False},
              "forward_plan": vars(plan(256, 32).candidate("cluster")), "measured_fwd_us_per_step": 1.0}
    clock = cost_constants()["clock_per_us"]
    phases = {}
    for o in observations:
        if o.term == "total":
            continue
        row = phases.setdefault((o.label, o.direction, o.plan["path"]), {
            "label": o.label, "direction": o.direction, "hidden": o.hidden, "batch": o.batch, "path": o.plan["path"],
            "plan": o.plan, "error": None, "stage_cycles": 0.0, "compute_cycles": 0.0, "barrier_cycles": 0.0})
        row[f"{o.term}_cycles"] = o.measured_us * clock
    probes = [{"name": "launch", "measured": 4.0, "model_constant": "launch_us"},
              {"name": "layer forward call (T = 1)", "measured": 30.0, "model_constant": "op_fixed_us"}]
    return {"path_rows": [*rows.values(), deeper], "phase_rows": list(phases.values()), "probes": probes,
            "meta": {"model_constants": cost_constants()}}


def test_report_rows_and_probes_become_observations_and_constants():
    observations = _observations(cost_constants(), paths=("block", "grid"))
    phases = _observations(cost_constants(), paths=("block", "grid"), shapes=[(64, 8), (1024, 32)],
                           terms=("stage", "compute", "barrier"))
    report = _report(observations + phases)
    read = fit_model.observations_from_report(report)
    # Every single-layer row's forward, not its backward (before gpu-check replayed the layer
    # ops' own GEMMs, its time by subtraction was unreliable) nor the 2-layer row (its time mixes
    # several launches), then every part of a step the phase table measured (stage on the grid
    # path only).
    def totals(found):
        return sorted((o.label, o.direction, o.plan["path"], o.term) for o in found if o.term == "total")

    assert any(o.direction == "backward" for o in observations)
    assert totals(read) == totals(o for o in observations if o.direction == "forward")
    # A run that replayed the layer ops' GEMMs: its backward rows too.
    replayed = {**report, "meta": {**report["meta"], "gemms_alone": gpu_check.GEMMS_ALONE}}
    assert totals(fit_model.observations_from_report(replayed)) == totals(observations)
    assert sorted((o.direction, o.plan["path"], o.term, round(o.measured_us, 9)) for o in read if o.term != "total") \
        == sorted((o.direction, o.plan["path"], o.term, round(o.measured_us, 9)) for o in phases)
    assert fit_model.probe_constants(report) == {"launch_us": 4.0, "op_fixed_us": 22.0}
    stale = json.loads(json.dumps(report))
    del stale["path_rows"][0]["forward_plan"]["samples"]
    with pytest.raises(UsageError, match="has no 'samples' field"):
        fit_model.observations_from_report(stale)


def test_autotuned_path_times_become_observations_at_the_shape_that_ran():
    """gpu-check's tune_rows: every path autotuning timed, priced at its own launch shape;
    an errored row, an infeasible plan, a non-positive time and the block path's operand ring
    (which the model prices as the loads it replaces) are left out."""
    truth = {**cost_constants(), "grid_barrier_us": 1.3}
    observations = _observations(truth, paths=("block", "cluster", "grid", "stepwise"), shapes=[(64, 8)])
    timed = [{**o.plan, "measured_us_per_step": o.measured_us} for o in observations if o.direction == "forward"]
    timed[1]["measured_us_per_step"] = 0.0
    ring = {**next(t for t in timed if t["path"] == "block"), "operand_ring": True, "measured_us_per_step": 0.01}
    row = {"hidden": 64, "batch": 8, "direction": "forward", "error": None, "timed": timed + [ring]}
    infeasible = {**row, "direction": "backward", "timed": [{**t, "feasible": False} for t in timed]}
    errored = {**row, "error": "boom"}
    read = fit_model.tune_observations({"tune_rows": [row, infeasible, errored]})
    assert sorted((o.plan["path"], o.measured_us) for o in read) == sorted(
        (t["path"], t["measured_us_per_step"]) for i, t in enumerate(timed) if i != 1)
    assert all(o.label == "64, 8 (autotune)" and o.direction == "forward" for o in read)
    assert [o.predicted_us(truth) for o in read] == pytest.approx([o.measured_us for o in read])
    assert fit_model.observations_from_report({"tune_rows": [row]}) == read


def test_fit_model_command_writes_the_report(tmp_path, capsys):
    truth = {**cost_constants(), "grid_barrier_us": 1.3}
    source = tmp_path / "gpu_check.json"
    source.write_text(json.dumps(_report(_observations(truth, paths=("grid",)))))
    assert main(["fit-model", str(source), "--out", str(tmp_path / "fit")]) == 0
    text = capsys.readouterr().out
    built_in = cost_constants()
    assert f"| grid_barrier_us | {built_in['grid_barrier_us']:g} |" in text and "double grid_barrier_us = " in text
    assert f"| launch_us | {built_in['launch_us']:g} | 4 | probe |" in text
    written = json.loads((tmp_path / "fit" / "fit_model.json").read_text())
    assert written["after"]["launch_us"] == 4.0 and written["after"]["op_fixed_us"] == 22.0
    assert all(abs(r["predicted_after_us"] / r["measured_us"] - 1) < 0.05 for r in written["rows"])
    assert (tmp_path / "fit" / "fit_model.md").read_text().startswith("# Cost model refitted to")


def test_fit_model_command_refuses_what_is_not_a_report(tmp_path, capsys):
    assert main(["fit-model", str(tmp_path / "missing.json")]) == 2
    assert "is not a file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["fit-model", str(bad), "--out", str(tmp_path)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"path_rows": [], "probes": []}))
    assert main(["fit-model", str(empty), "--out", str(tmp_path)]) == 2
    assert "no measured per-step rows" in capsys.readouterr().err


def test_cost_constants_are_the_compiled_model():
    constants, first = cost_constants(), cost_constants(first_kernels=True)
    # The planner's set was refitted to the H200 run of 2026-12-04 (recurrence_cost_model.h): its
    # grid barrier includes the wait for the slowest CTA; the first kernels' set has the measured floor.
    assert constants["grid_barrier_us"] == pytest.approx(3.21332) and constants["launch_us"] == pytest.approx(10.5481)
    assert constants["async_exchange_us"] == pytest.approx(0.177958)
    assert first["grid_barrier_us"] == 0.97 and first["launch_us"] == 5.0
    assert constants["cluster_barrier_scale"] == 1.0
    assert first["cluster_barrier_scale"] == pytest.approx(1 / (1.752 * 1.374))
    assert set(fit_model.FITTED) <= constants.keys()
    assert rnn_fused.launch_plan.cost_constants is cost_constants


def test_the_fit_makes_the_model_choose_the_path_measured_fastest():
    """Where a slower grid barrier than the built-in one makes the stepwise path the fastest
    measured, the refitted model picks it too."""
    truth = {**cost_constants(), "grid_barrier_us": 30.0}
    with rnn_fused.launch_plan.forced_tiling(step_sync="grid_barrier"):  # grid steps that end in the barrier
        observations = _observations(truth, paths=("block", "cluster", "grid", "stepwise"),
                                     shapes=[(64, 8), (256, 8), (1024, 32), (2048, 8)])
    fitted, iterations = fit_model.fit(observations)
    result = fit_model.FitResult(cost_constants(), fitted, (), tuple(observations), iterations)
    choices = fit_model.path_choices(result)
    assert len(choices) == 8  # 4 shapes x 2 directions, each run on several paths
    assert all(c.after == c.measured for c in choices), choices
    assert any(c.before != c.measured and c.measured == "stepwise" for c in choices), choices
    assert "The path measured fastest is the model's choice at 8 of 8 shapes after the fit" in \
        fit_model.format_report(result, "synthetic")


STORED_H200 = os.path.join(os.path.dirname(__file__), "data", "h200_autotune_2026-11-30.json")
# What the stored autotuning rows cannot separate from the compute terms (the step phases did):
# the barriers and exchanges, and the launch, which they never time alone.
STORED_HOLD = ("block_barrier_us,cluster_barrier_scale,grid_barrier_us,flag_barrier_us,tagged_exchange_us,"
               "async_exchange_us,remote_store_cycles,smem_wavefronts_per_us,launch_us")


# The planner's constants before the refit of 2026-12-04 (fitted to the run of 2026-11-30, shared
# memory at the architecture's figures since 2026-12-02): where the analyses of the stored
# 2026-11-30 timings start from.
FIT_2026_11_30 = {"block_barrier_us": 0.0182009, "grid_barrier_us": 2.28374, "flag_barrier_us": 2.45782,
                  "tagged_exchange_us": 1.17097, "async_exchange_us": 0.205 * 1.752, "launch_us": 7.10757,
                  "fma_per_sm_per_us": 225271, "smem_wavefronts_per_us": 1980, "l2_dependent_load_us": 0.213089,
                  "l2_bytes_per_sm_per_us": 28018.6, "op_fixed_us": 25.418, "fma_latency_cycles": 17.7125,
                  "smem_latency_cycles": 14.9143, "remote_store_cycles": 6.55746, "output_issue_cycles": 1440.22,
                  "address_instructions_per_load": 1, "loop_instructions": 0.844938,
                  "cluster_barrier_scale": 1 / 1.374}


@pytest.fixture
def constants_of_2026_11_30(monkeypatch):
    """fit-model starting from (and holding at) the 2026-11-30 fit instead of this build's."""
    built = cost_constants

    def constants(first_kernels: bool = False):
        return built(first_kernels=True) if first_kernels else {**built(), **FIT_2026_11_30}

    monkeypatch.setattr(fit_model, "cost_constants", constants)
    return constants()


def _median_error(result, constants) -> float:
    return float(np.median([abs(r - 1) for r in result.ratios(constants)]))


def test_the_h200s_steps_are_explained_by_four_wavefronts_per_state_load(constants_of_2026_11_30):
    """The 1106 steps autotuning timed on the H200 (2026-11-30), refitted with shared memory
    at the architecture's figures (one wavefront per clock, state_load_wavefronts = 4): the
    address instructions per load, left free, come out near the machine code's count of about
    one, and the fit is as good as the planner's constants. With a state load held at one
    wavefront the same rows want several times that count and fit worse (the first fit's 17
    address instructions stood in for those wavefronts: docs/benchmarks.md)."""
    with open(STORED_H200) as f:
        report = json.load(f)
    held = fit_model.held_constants([STORED_HOLD], constants_of_2026_11_30)
    physical = fit_model.fit_report(report, held)
    assert len(physical.observations) == 1106
    assert 0.5 <= physical.after["address_instructions_per_load"] <= 1.5
    assert _median_error(physical, physical.after) <= 0.075
    assert _median_error(physical, physical.before) <= _median_error(physical, physical.after) + 0.01
    assert all(physical.after[name] == value for name, value in held.items())
    one_wavefront = fit_model.fit_report(report, {**held, "state_load_wavefronts": 1.0})
    assert one_wavefront.after["address_instructions_per_load"] >= 4
    assert _median_error(one_wavefront, one_wavefront.after) > _median_error(physical, physical.after) + 0.005


def test_held_constants_name_a_constant_and_a_positive_value():
    current = cost_constants()
    held = fit_model.held_constants(["grid_barrier_us, launch_us=3", "state_load_wavefronts=1"], current)
    assert held == {"grid_barrier_us": current["grid_barrier_us"], "launch_us": 3.0, "state_load_wavefronts": 1.0}
    with pytest.raises(UsageError, match="'grid_barier_us' is not a constant of the cost model"):
        fit_model.held_constants(["grid_barier_us"], current)
    with pytest.raises(UsageError, match=r"launch_us='fast' is not a number"):
        fit_model.held_constants(["launch_us=fast"], current)
    with pytest.raises(UsageError, match="launch_us must be positive, got -1.0"):
        fit_model.held_constants(["launch_us=-1"], current)


def test_fit_model_command_refits_the_stored_timings_with_constants_held(tmp_path, capsys, constants_of_2026_11_30):
    assert main(["fit-model", STORED_H200, "--hold", STORED_HOLD, "--hold", "address_instructions_per_load",
                 "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "fit_model.json").read_text())
    assert sorted(written["held"]) == sorted(STORED_HOLD.split(",") + ["address_instructions_per_load"])
    assert written["after"]["smem_wavefronts_per_us"] == constants_of_2026_11_30["smem_wavefronts_per_us"]
    report = (tmp_path / "fit_model.md").read_text()
    assert "| address_instructions_per_load | 1 | 1 | held |" in report
    assert "double smem_wavefronts_per_us = 1980;" in report  # (held constants are pasted too)
    capsys.readouterr()
    assert main(["fit-model", STORED_H200, "--hold", "state_loads=4", "--out", str(tmp_path)]) == 2
    assert "'state_loads' is not a constant of the cost model" in capsys.readouterr().err
