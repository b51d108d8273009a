"""Autotuning (rnn_fused.launch_plan.autotune): the planner times every feasible path on the
device and takes the fastest it measured, instead of the cost model's pick.

Run on the SIMT emulator (backend "emulated"), where a "device time" is host time: these
tests check what the planner does with measurements (which paths it times, which it takes,
that it keeps them, that the layer runs the path it took), not how fast a GPU is. On the
emulator the stepwise path (CPU matrix products) is far faster than the fiber-emulated
persistent kernels, so tuning overrules the model at these sizes, which is what lets the
tests tell a tuned plan from a predicted one.
"""

from __future__ import annotations

import math

import pytest
import torch

import rnn_fused
from rnn_fused import launch_plan, simt

from test_cuda_kernels_emulated import SMALL_GPU, run_layer

STEPS = 3  # steps of a timed run beyond the short one: small, the emulator is slow


def _measured_fastest(plan: launch_plan.LaunchPlan) -> launch_plan.PathEstimate:
    feasible = [c for c in plan.candidates if c.feasible]
    return min(feasible, key=lambda c: c.measured_us_per_step)


@pytest.mark.parametrize("hidden,batch,backward", [(33, 2, False), (33, 2, True), (9, 3, False)])
def test_every_feasible_path_is_timed_and_the_fastest_taken(hidden, batch, backward):
    with simt.emulated_device(**SMALL_GPU):
        predicted = rnn_fused.plan(hidden, batch, backward=backward)
        assert predicted.measured_us_per_step is None
        assert all(c.measured_us_per_step is None for c in predicted.candidates)
        with launch_plan.autotune(steps=STEPS):
            tuned = rnn_fused.plan(hidden, batch, backward=backward)
    for c in tuned.candidates:
        if c.feasible:
            assert math.isfinite(c.measured_us_per_step) and c.measured_us_per_step > 0
        else:
            assert c.measured_us_per_step is None
    assert len([c for c in tuned.candidates if c.feasible]) >= 3  # block, cluster (2 SMs, 9.0), grid, stepwise
    fastest = _measured_fastest(tuned)
    assert tuned.path == fastest.path
    assert tuned.measured_us_per_step == fastest.measured_us_per_step
    assert (tuned.grid, tuned.samples, tuned.units_per_pass) == (fastest.grid, fastest.samples, fastest.units_per_pass)
    assert tuned.reason.startswith(f"{tuned.path} (measured ")
    assert f"the fastest of {len(tuned.timed)} launch shapes timed" in tuned.reason
    assert "(predicted " in predicted.reason and "measured" not in predicted.reason
    # What was timed: each feasible persistent path's best shape by the model for each sample
    # tile the planner considers (1, 2, 4, 8 samples per chunk, fewer than twice the batch),
    # each number of units per pass (the model's own pick among them) and on the grid and
    # cluster paths each step synchronisation (and the tiled dot products: the grid path's at 4
    # and 8 samples, the cluster path's at 4; the block path's general kernels with the operand
    # ring and without), the stepwise path's; each path's candidate is its fastest of those.
    for c in tuned.candidates:
        shapes = [t for t in tuned.timed if t.path == c.path]
        if not c.feasible:
            assert shapes == []
            continue
        assert c.measured_us_per_step == min(t.measured_us_per_step for t in shapes)
        assert c in shapes
        if c.path == "stepwise":
            assert len(shapes) == 1
            continue
        model = predicted.candidate(c.path)
        tiles = [samples for samples in (1, 2, 4, 8) if samples == 1 or samples // 2 < batch]
        syncs = {"grid": (0, 1, 2), "cluster": (0, 3)}.get(c.path, (0,))
        # (in float32 the grid path at 4 and 8 samples and the cluster path at 4 also with their
        # tiled dot products)
        tiled = {s: (False, True) if (c.path, s) in {("grid", 4), ("grid", 8), ("cluster", 4)} else (False,)
                 for s in tiles}
        rings = (False, True) if c.path == "block" else (False,)
        assert sorted((t.samples, t.units_per_pass, t.step_sync, t.tiled_dots, t.operand_ring) for t in shapes) == [
            (s, u, f, d, o) for s in tiles for u in (16, 32) for f in syncs for d in tiled[s] for o in rings]
        assert any((t.grid, t.samples, t.units_per_pass, t.step_sync)
                   == (model.grid, model.samples, model.units_per_pass, model.step_sync) for t in shapes)
    assert all(math.isfinite(t.measured_us_per_step) and t.measured_us_per_step > 0 for t in tuned.timed)
    assert predicted.timed == ()


def test_measurements_are_kept_and_the_setting_restored():
    with simt.emulated_device(**SMALL_GPU):
        with launch_plan.autotune(steps=STEPS):
            first = rnn_fused.plan(21, 2)
            again = rnn_fused.plan(21, 2)
        after = rnn_fused.plan(21, 2)
    # Timed once: a second timing would not reproduce the first's microseconds to the last bit.
    assert again.timed == first.timed and again.candidates == first.candidates
    assert after.measured_us_per_step is None and "measured" not in after.reason


def test_a_forced_tiling_is_the_only_one_timed():
    with simt.emulated_device(**SMALL_GPU), launch_plan.autotune(steps=STEPS):
        with launch_plan.forced_tiling(units_per_pass=16):
            per_pass = rnn_fused.plan(40, 2)
        with launch_plan.forced_tiling(samples=2, units_per_pass=32, step_sync="flag_barrier"):
            forced = rnn_fused.plan(40, 2)
        fp64 = rnn_fused.plan(40, 2, torch.float64)
        with launch_plan.forced_tiling(tiled_dots=True):
            tiled = rnn_fused.plan(40, 3)
        with launch_plan.forced_tiling(operand_ring=True):
            ring = rnn_fused.plan(40, 2)
        with launch_plan.forced_tiling(lane_rows_step=True):
            lane = rnn_fused.plan(40, 2)
        with launch_plan.forced_tiling(run_time_passes=True):
            run_time = rnn_fused.plan(40, 2)
    assert sorted((t.samples, t.units_per_pass, t.step_sync) for t in per_pass.timed if t.path == "grid") == [
        (s, 16, f) for s in (1, 2) for f in (0, 1, 2)]
    assert [(t.samples, t.units_per_pass, t.step_sync) for t in forced.timed if t.path == "grid"] == [(2, 32, 1)]
    # The tagged exchange carries float32 only: float64 grids are timed with the two barriers.
    assert {t.step_sync for t in fp64.timed if t.path == "grid"} == {0, 1}
    # Forced, the tiled dot products are the grid and cluster paths' only shapes (4 samples per
    # chunk at B = 3); the block and stepwise paths are timed as before.
    for path in ("grid", "cluster"):
        assert {(t.samples, t.tiled_dots) for t in tiled.timed if t.path == path} == {(4, True)}, path
    assert {t.path for t in tiled.timed} >= {"block", "cluster", "grid", "stepwise"}
    assert not any(t.tiled_dots for t in tiled.timed if t.path in ("block", "stepwise"))
    # Forced, the operand ring is the block path's only shape; the other paths have none.
    assert sorted((t.samples, t.units_per_pass) for t in ring.timed if t.operand_ring) == [
        (s, u) for s in (1, 2) for u in (16, 32)]
    assert all(t.operand_ring == (t.path == "block") for t in ring.timed)
    # The rest of a forced tiling holds for every shape timed: the lane-row step (at 32 units per
    # pass; 16 are the general kernels' alone) without the ring, the kernels reading their passes
    # at run time.
    assert sorted((t.samples, t.units_per_pass, t.lane_rows) for t in lane.timed if t.path == "block") == [
        (s, u, u == 32) for s in (1, 2) for u in (16, 32)]
    assert not any(t.operand_ring for t in lane.timed)
    assert all(t.compiled_passes == 0 for t in run_time.timed if t.path != "stepwise")
    assert any(t.compiled_passes > 0 for t in ring.timed if t.path == "block")


def test_a_forced_path_is_not_timed():
    with simt.emulated_device(**SMALL_GPU), launch_plan.autotune(steps=STEPS):
        forced = rnn_fused.plan(17, 2, path="grid")
    assert forced.path == "grid" and forced.reason.startswith("forced: ")
    assert forced.measured_us_per_step is None and forced.timed == ()
    assert all(c.measured_us_per_step is None for c in forced.candidates)


def test_the_layer_runs_the_path_tuning_took():
    """Forward and backward under autotune are bitwise those of the tuned path forced, and not
    those of the model's pick (which differs here, and rounds differently: the stepwise path's
    products are the CPU's matrix products). On the emulator the stepwise path is the fastest
    at this size by a factor of about 5: its products run as CPU matrix products, the
    persistent kernels as 256 fibers per CTA; that margin and the longer timed runs (12 steps)
    keep the choice clear of the host's noise (at H = 33, with a margin of 2, a busy host
    could turn it)."""
    steps, batch, input_size, hidden = 5, 3, 4, 200
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(steps, batch, input_size, generator=g), torch.randn(batch, hidden, generator=g) * 0.5,
            torch.randn(hidden, input_size, generator=g) * 0.3, torch.randn(hidden, hidden, generator=g) * 0.2,
            torch.randn(hidden, generator=g) * 0.1, torch.randn(hidden, generator=g) * 0.1]
    lengths = torch.tensor([5, 2, 4])
    cotangents = [torch.randn(steps, batch, hidden, generator=g), torch.randn(batch, hidden, generator=g)]

    def run(path=None):
        return run_layer(args, lengths, "tanh", False, "emulated", cotangents, path=path)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # no thread pool to wait on a busy host: the CPU products stay fast
    try:
        _check_the_layer_runs_the_tuned_path(hidden, batch, run)
    finally:
        torch.set_num_threads(threads)


def _check_the_layer_runs_the_tuned_path(hidden, batch, run):
    with simt.emulated_device(**SMALL_GPU):
        model = {rnn_fused.plan(hidden, batch, backward=b).path for b in (False, True)}
        with launch_plan.autotune(steps=12):
            tuned = {rnn_fused.plan(hidden, batch, backward=b).path for b in (False, True)}
            ours = run()
        assert len(tuned) == 1 and tuned != model, (tuned, model)
        (tuned_path,) = tuned
        forced = run(tuned_path)
        (model_path,) = model
        predicted = run(model_path)
    assert all(torch.equal(a, b) for a, b in zip(ours, forced, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(ours, predicted, strict=True))


def test_steps_are_checked():
    with pytest.raises(ValueError, match=r"rnn_fused\.launch_plan\.autotune: steps must be at least 1, got 0"):
        with launch_plan.autotune(steps=0):
            pass
    with simt.emulated_device(**SMALL_GPU):
        assert rnn_fused.plan(19, 2).measured_us_per_step is None  # nothing was switched on


def test_set_autotune_switches_it_for_the_process():
    with simt.emulated_device(**SMALL_GPU):
        try:
            launch_plan.set_autotune(True, steps=STEPS)
            assert rnn_fused.plan(23, 2).measured_us_per_step > 0
            with pytest.raises(ValueError, match=r"autotune: steps must be at least 1, got -1"):
                launch_plan.set_autotune(True, steps=-1)
            assert rnn_fused.plan(25, 2).measured_us_per_step > 0  # the refused call changed nothing
        finally:
            launch_plan.set_autotune(False)
        assert rnn_fused.plan(27, 2).measured_us_per_step is None


def test_the_stack_is_decided_by_measurement_under_autotune(stack_launches):
    """Under autotune() the planner times the layer stack's step on the device and compares it
    with a layer's step as that layer's own tuned plan measured; functional.rnn then follows the
    measured verdict (on the emulator, where the stepwise path's CPU products are fast, it may
    differ from the model's). The measurement is kept, and gone with the setting."""
    hidden, batch, layers, steps = 20, 2, 2, 50
    with simt.emulated_device(**SMALL_GPU):
        predicted = launch_plan.stack_plan(hidden, batch, steps, layers)
        assert predicted.feasible and predicted.measured_stack_us is None and predicted.measured_layers_us is None
        with launch_plan.autotune(steps=STEPS):
            tuned = launch_plan.stack_plan(hidden, batch, steps, layers)
            layer = rnn_fused.plan(hidden, batch)
            again = launch_plan.stack_plan(hidden, batch, steps, layers)
            module = rnn_fused.RNN(hidden, hidden, num_layers=layers)
            module.backend = "emulated"
            module(torch.randn(steps, batch, hidden))
        assert launch_plan.stack_plan(hidden, batch, steps, layers).measured_stack_us is None
    assert tuned.measured_stack_us > 0 and tuned.measured_layers_us > 0
    assert tuned.measured_layers_us == pytest.approx(layer.measured_us_per_step * steps * layers)
    assert tuned.faster == (tuned.measured_stack_us < tuned.measured_layers_us)
    assert tuned.predicted_stack_us == predicted.predicted_stack_us  # (the layers' own plans are the tuned ones)
    assert again.measured_stack_us == tuned.measured_stack_us  # kept, not timed again
    # The module's forward took the stack exactly where the measurement (for its T) says so.
    per_step_stack, per_step_layers = tuned.measured_stack_us / (steps + 1), tuned.measured_layers_us / steps
    assert len(stack_launches) == int((steps + 1) * per_step_stack < steps * per_step_layers)
