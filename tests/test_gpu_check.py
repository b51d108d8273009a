"""`rnn-fused gpu-check` and `make gpu-check` without a GPU.

The benchmark's whole code path (plan queries, every path forced, the cost-model probes, the
tables, JSON and figure) runs here through --emulated: the CUDA kernels on CPU tensors by the
SIMT emulator at tiny sizes, nn.RNN on the CPU in cuDNN's place. The report's formatting is
checked on synthetic rows, and the stage runner of `make gpu-check` (benchmarks/gpu_check.py)
on stand-in stages: it keeps going after a failed or hung stage and fails at the end."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import rnn_fused
from rnn_fused import simt
from rnn_fused.launch_plan import PATHS, cost_constants
from rnn_fused.tools import gpu_check
from rnn_fused.tools.bptt_benchmark import OVERHEAD_VARIANTS
from rnn_fused.tools.cli import main
from rnn_fused.tools.gpu_check import (EMULATED_PATH_SHAPES, EMULATED_SHAPES, GpuCheckResult, PathRow, PhaseRow, Probe,
                                       Shape, ShapeRow, baseline_refusal, format_path_table, format_report,
                                       format_shape_table, refused_by_baseline, result_as_json)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Float32 against float64 on these small, contracting shapes: about 1e-7. A wrong step, index
# or mask is of order 1.
FLOAT32_RELATIVE_ERROR = 1e-5


def _load_stage_runner():
    spec = importlib.util.spec_from_file_location("gpu_check_stages", os.path.join(REPO, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


stages = _load_stage_runner()


# --- the emulated rehearsal, end to end -------------------------------------------------------


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_out")
    code = main(["gpu-check", "--emulated", "--out", str(out)])
    report = json.loads((out / "gpu_check.json").read_text())
    return code, out, report


def test_rehearsal_succeeds_and_writes_report_json_and_figure(rehearsal):
    code, out, report = rehearsal
    assert code == 0 and report["failures"] == []
    text = (out / "gpu_check.md").read_text()
    for heading in ("## rnn_fused vs nn.RNN (CPU)", "## Against issue 11's goals", "## Every path forced",
                    "## Cost-model constants"):
        assert heading in text
    assert [g["goal"] for g in report["goals"]] == [g.goal for g in gpu_check.issue_goals([])]
    assert (out / "gpu_check.png").read_bytes()[:8] == PNG_SIGNATURE
    assert report["meta"]["emulated"] and report["meta"]["baseline"] == "nn.RNN (CPU)"


def test_rehearsal_measures_every_shape_row(rehearsal):
    _, _, report = rehearsal
    rows = report["shape_rows"]
    assert [r["label"] for r in rows] == [s.label() for s in EMULATED_SHAPES]
    for row, shape in zip(rows, EMULATED_SHAPES):
        assert row["error"] is None and row["skipped"] is None, row
        for name in ("baseline_fwd_ms", "ours_fwd_ms", "baseline_fwd_bwd_ms", "ours_fwd_bwd_ms"):
            assert row[name] > 0, (row["label"], name)
        assert row["fwd_ratio"] == pytest.approx(row["baseline_fwd_ms"] / row["ours_fwd_ms"])
        with simt.emulated_device(**gpu_check.EMULATED_DEVICE):
            target = gpu_check.Target(torch.device("cpu"), emulated=True)
            stacked, could = gpu_check.runs_as_stack(shape, target), gpu_check.could_run_as_stack(shape, target)
        if stacked:
            # A stack in one launch each way, timed again with its layers one by one.
            assert row["forward_path"] == row["backward_path"] == "stack"
            assert row["one_by_one_fwd_ms"] > 0 and row["one_by_one_fwd_bwd_ms"] > 0
        else:
            assert row["forward_path"] in PATHS and row["backward_path"] in PATHS
            assert row["one_by_one_fwd_ms"] is None
        # A stack run layer by layer that its kernel could take in one launch, timed so too.
        assert not (stacked and could)
        assert (row["as_stack_fwd_ms"] is not None) == (row["as_stack_fwd_bwd_ms"] is not None) == could
        assert row["as_stack_fwd_ms"] is None or row["as_stack_fwd_ms"] > 0
        # CPU tensors have no streams: no directions run at once, so none are timed again in turn,
        # nor at once.
        assert row["in_turn_fwd_ms"] is None and row["in_turn_fwd_bwd_ms"] is None
        assert row["at_once_fwd_ms"] is None and row["at_once_fwd_bwd_ms"] is None
        assert row["predicted_fwd_us_per_step"] > 0 and row["predicted_fwd_bwd_ms"] > row["predicted_fwd_ms"] > 0
        # The recurrence per step is estimated for single-layer rows only, the backward from the
        # backward pass timed alone.
        assert (row["measured_fwd_us_per_step"] is not None) == shape.single_layer
        assert (row["ours_bwd_ms"] is not None) == (row["measured_bwd_us_per_step"] is not None) == shape.single_layer
        if shape.dtype == "float32" and not shape.long:
            assert 0 < row["ours_rel_error"] < FLOAT32_RELATIVE_ERROR
            assert 0 < row["baseline_rel_error"] < FLOAT32_RELATIVE_ERROR
            # ... and which result has the worst: one of nn.RNN's outputs or gradients.
            results = ["output", "h_n", "grad input"] + [
                f"grad {kind}_l{layer}{suffix}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                for layer in range(shape.layers) for suffix in ("", "_reverse")]
            assert row["ours_rel_error_of"] in results and row["baseline_rel_error_of"] in results
        else:
            assert row["ours_rel_error"] is None and row["ours_rel_error_of"] is None
        # Peak memory comes from the CUDA caching allocator: none on the CPU.
        assert row["ours_peak_mb"] is None


def test_rehearsal_runs_a_stack_row(rehearsal):
    _, out, report = rehearsal
    stacked = [r for r in report["shape_rows"] if r["forward_path"] == "stack"]
    assert [r["label"] for r in stacked] == ["20, 1, 3, 5, 2 layers, stack forced"]
    text = (out / "gpu_check.md").read_text()
    assert "20, 1, 3, 5, 2 layers, stack forced: rnn_fused's layers in one launch each against the same layers one " \
           "by one" in text
    # The planner runs 2 layers of 5 units one by one; the stack is timed beside them.
    assert "30, 1, 3, 5, 2 layers: rnn_fused's layers one by one (the planner's choice) against the same layers in " \
           "one launch each" in text


def test_rehearsal_forces_every_path(rehearsal):
    _, _, report = rehearsal
    rows = report["path_rows"]
    # (H <= 128 in float32: the block path's lane-row step forced beside its general kernels)
    assert [(r["label"], r["path"], r["lane_rows_step"]) for r in rows] == [
        (s.label(), p, lane) for s in EMULATED_PATH_SHAPES
        for p, lane in [("block", False), ("block", True), *[(p, False) for p in PATHS[1:]]]]
    for row in rows:
        assert row["forward_plan"]["lane_rows"] == row["lane_rows_step"]
    for shape in EMULATED_PATH_SHAPES:
        mine = [r for r in rows if r["label"] == shape.label()]
        assert sum(r["planned_forward"] for r in mine) == 1 and sum(r["planned_backward"] for r in mine) == 1
    for row in rows:
        assert row["error"] is None, row
        plan = row["forward_plan"]
        assert plan["path"] == row["path"] and {"grid", "block_threads", "cluster", "units_per_cta",
                                                "samples_per_group", "waves", "shared_mem_bytes"} <= plan.keys()
        if plan["feasible"]:
            assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0 and row["predicted_fwd_us_per_step"] > 0
            assert row["measured_fwd_us_per_step"] is not None and row["forward_gemms_ms"] > 0
            # The backward's step from the backward pass timed alone, not from fwd_bwd - fwd.
            assert row["bwd_ms"] > 0 and row["measured_bwd_us_per_step"] == pytest.approx(
                (row["bwd_ms"] - row["backward_gemms_ms"]) * 1e3 / row["shape"]["steps"])
            assert row["rel_error"] < FLOAT32_RELATIVE_ERROR
        else:
            assert row["fwd_ms"] is None and row["note"]
    # On the emulated H100-like device every path runs these shapes.
    assert all(r["forward_plan"]["feasible"] for r in rows)


def test_rehearsal_times_what_norms_and_truncation_cost(rehearsal):
    """Each of bptt_benchmark's variants (norms, truncation every K steps, randomized, both), and
    norms summed in the general kernel's steps (forced_tiling's norms_in_steps), against plain
    forward+backward on the emulated kernels, in the report and the JSON: one layer, and a stack
    of two run in one launch."""
    _, out, report = rehearsal
    rows = report["bptt_rows"]
    assert [(tuple(r["shape"]), r["variant"]) for r in rows] == \
        [(shape, variant) for shape in gpu_check.EMULATED_BPTT_SHAPES for variant in OVERHEAD_VARIANTS] + \
        [(shape, gpu_check.NORMS_IN_STEPS_VARIANT) for shape in gpu_check.EMULATED_BPTT_SHAPES]
    assert all(r["baseline_ms"] > 0 and r["variant_ms"] > 0 for r in rows)
    text = (out / "gpu_check.md").read_text()
    assert "## What recorded norms and truncation cost" in text and "random p=0.9" in text
    assert "| 5, 2, 3, 9, 2 layers | norms |" in text


def test_rehearsal_probes_the_model_constants(rehearsal):
    _, _, report = rehearsal
    probes = {p["name"]: p for p in report["probes"]}
    assert {"launch", "L2 read bandwidth", "device memory read bandwidth", "square GEMM rate",
            "input projection GEMM rate", "layer forward call (T = 1)",
            "layer forward+backward call (T = 1)"} <= probes.keys()
    assert all(p["measured"] > 0 for p in probes.values())
    # The model's values are the compiled ones.
    compiled = cost_constants()
    assert probes["launch"]["model_constant"] == "launch_us"
    assert probes["launch"]["model_value"] == compiled["launch_us"]
    assert probes["input projection GEMM rate"]["model_value"] == compiled["gemm_tflops"] == 40.0


def test_rehearsal_times_the_step_phases_of_every_persistent_path(rehearsal):
    _, _, report = rehearsal
    rows = report["phase_rows"]
    assert [(r["label"], r["direction"], r["path"]) for r in rows] == [
        (s.label(), d, s.path) for s in gpu_check.EMULATED_PHASE_SHAPES for d in ("forward", "backward")]
    for r in rows:
        assert r["error"] is None and r["compute_cycles"] > 0 and r["barrier_cycles"] > 0
        # Only the grid path stages state rows from global memory.
        assert (r["stage_cycles"] > 0) == (r["path"] == "grid")
        assert r["measured_us_per_step"] > 0 and r["predicted_us_per_step"] > 0
        # A forced count of units per pass is the one that ran and the one fit-model prices.
        assert r["forced_units_per_pass"] in (None, r["plan"]["units_per_pass"])
    assert {r["forced_units_per_pass"] for r in rows} == {None, 16, 32}


def test_rehearsal_report_compares_the_warp_counts(rehearsal):
    _, out, _ = rehearsal
    text = (out / "gpu_check.md").read_text()
    assert "Units per pass (the rows forced to 16 and to 32):" in text
    for direction in ("forward", "backward"):
        assert f"- grid at H, B = 33, 2, {direction}: dot products on 4 warps " in text


def test_rehearsal_times_every_path_of_each_single_layer_shape_with_autotune(rehearsal):
    _, out, report = rehearsal
    rows = report["tune_rows"]
    sizes = [(s.hidden, s.batch) for s in EMULATED_SHAPES if s.layers == 1 and s.dtype == "float32"]
    assert [(r["hidden"], r["batch"], r["direction"]) for r in rows] == [
        (h, b, d) for h, b in dict.fromkeys(sizes) for d in ("forward", "backward")]
    for r in rows:
        assert r["error"] is None
        assert {t["path"] for t in r["timed"]} >= {"block", "grid", "stepwise"}
        assert all(t["measured_us_per_step"] > 0 and t["predicted_us_per_step"] > 0 for t in r["timed"])
        fastest = min(r["timed"], key=lambda t: t["measured_us_per_step"])
        assert (r["tuned_path"], r["tuned_units_per_pass"], r["tuned_step_sync"], r["tuned_kernels"]) == (
            fastest["path"], fastest["units_per_pass"], fastest["step_sync"], gpu_check.kernel_variant(fastest))
        assert r["model_path"] == plan_of(r).path
    assert report["meta"]["tune_steps"] == gpu_check.EMULATED_TUNE_STEPS
    text = (out / "gpu_check.md").read_text()
    assert "## Every path timed by autotuning (one recurrence, fp32)" in text
    assert "The model picked the measured fastest path in " in text


def test_rehearsal_times_again_under_autotune_where_it_takes_another_shape(rehearsal):
    _, out, report = rehearsal
    retuned = {(r["hidden"], r["batch"]) for r in report["tune_rows"]
               if (r["tuned_path"], r["tuned_units_per_pass"], r["tuned_step_sync"], r["tuned_kernels"])
               != (r["model_path"], r["model_units_per_pass"], r["model_step_sync"], r["model_kernels"])}
    assert retuned, "on the emulator the stepwise path's CPU products win: some shape must be retuned"
    tuned_path = {(r["hidden"], r["batch"], r["direction"]): r["tuned_path"] for r in report["tune_rows"]}
    for r in report["shape_rows"]:
        shape = r["shape"]
        size = (shape["hidden"], shape["batch"])
        if size in retuned and not shape["long"]:
            assert r["tuned_fwd_ms"] > 0 and r["tuned_fwd_bwd_ms"] > 0
            assert r["tuned_fwd_ratio"] == pytest.approx(r["baseline_fwd_ms"] / r["tuned_fwd_ms"])
            assert r["tuned_paths"] == f"{tuned_path[(*size, 'forward')]} / {tuned_path[(*size, 'backward')]}"
        else:
            assert r["tuned_fwd_ms"] is None and r["tuned_paths"] is None
    assert "Where autotuning takes another launch shape than the model" in (out / "gpu_check.md").read_text()


def test_backward_fn_times_the_backward_alone_through_one_retained_graph():
    """benchmark.backward_fn, which gives gpu-check its backward times: every call returns the
    gradients a fresh forward+backward gives (bitwise: the same kernels on the same operands),
    runs no forward (the module is not called again) and leaves .grad alone."""
    from rnn_fused.tools.benchmark import backward_fn

    torch.manual_seed(0)
    module = rnn_fused.RNN(3, 5)
    x, grad_out = torch.randn(7, 2, 3), torch.randn(7, 2, 5)
    params = list(module.parameters())
    out, _ = module(x)
    expected = torch.autograd.grad(out, params, grad_out)
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    run = backward_fn(lambda: module(x)[0], params, grad_out)
    assert len(calls) == 1
    for _ in range(3):
        for got, want in zip(run(), expected, strict=True):
            assert torch.equal(got, want)
    handle.remove()
    assert len(calls) == 1 and all(p.grad is None for p in params)


def test_tuned_rows_table_lists_only_the_retimed_rows():
    retimed = ShapeRow("1000, 8, 64, 64", {}, baseline_fwd_ms=0.4, ours_fwd_ms=0.2, baseline_fwd_bwd_ms=1.2,
                       ours_fwd_bwd_ms=0.6, forward_path="block", backward_path="block", tuned_fwd_ms=0.1,
                       tuned_fwd_bwd_ms=0.4, tuned_paths="cluster / block")
    untouched = ShapeRow("1000, 8, 256, 256", {}, baseline_fwd_ms=1.0, ours_fwd_ms=0.5)
    assert gpu_check.format_tuned_rows_table([retimed, untouched]).splitlines()[2:] == [
        "| 1000, 8, 64, 64 | block / block | cluster / block | 2.00 | 4.00 | 2.00 | 3.00 |"]


def plan_of(row: dict):

    with simt.emulated_device(**gpu_check.EMULATED_DEVICE):
        return rnn_fused.plan(row["hidden"], row["batch"], backward=row["direction"] == "backward")


def test_tune_verdict_names_the_recurrences_the_model_got_wrong():
    right = gpu_check.TuneRow(64, 8, "forward", model_path="block", tuned_path="block")
    wrong = gpu_check.TuneRow(1024, 32, "backward", model_path="grid", tuned_path="stepwise")
    failed = gpu_check.TuneRow(9, 9, "forward", error="boom")
    assert gpu_check.tune_verdict([right, failed]) == "The model picked the measured fastest path in 1 of 1 recurrences."
    assert gpu_check.tune_verdict([right, wrong]) == (
        "The model picked the measured fastest path in 1 of 2 recurrences; not in: 1024, 32 backward (grid predicted, "
        "stepwise measured) (run fit-model, docs/gpu_check.md).")
    assert gpu_check.tune_verdict([failed]) is None


def test_a_kernel_variant_autotuning_took_is_named_and_timed_again():
    """Where autotuning takes the operand ring (or another kernel variant) on the model's own
    path and tile, the shape is still one it took differently: timed again under autotune, and
    the tune table names the variant."""
    timed = {"path": "block", "samples": 1, "units_per_pass": 32, "measured_us_per_step": 0.2,
             "predicted_us_per_step": 0.3, "operand_ring": True}
    ring = gpu_check.TuneRow(64, 8, "forward", model_path="block", model_units_per_pass=32, model_step_sync=0,
                             tuned_path="block", tuned_units_per_pass=32, tuned_step_sync=0,
                             tuned_kernels=gpu_check.kernel_variant(timed), timed=[timed])
    same = dataclasses.replace(ring, hidden=128, tuned_kernels="")
    assert gpu_check.retuned_sizes([ring, same]) == {(64, 8)}
    table = gpu_check.format_tune_table([ring])
    assert "| 0.200 (0.300, 1 s x 32 u/p, operand ring) |" in table
    assert table.rstrip().endswith("| block | block (32 u/p, operand ring) |")
    # JSON of runs before a variant existed has no such field: the path's usual kernels.
    assert gpu_check.kernel_variant({"path": "grid"}) == ""
    assert gpu_check.kernel_variant({"path": "grid", "tiled_dots": True}) == "tiled dot products"
    assert gpu_check.kernel_variant({"path": "block", "lane_rows": True}) == "lane-row step"


def test_layer_overlap_verdicts_compare_a_stack_with_its_one_layer_row():
    def row(layers, theirs, ours, **shape_changes):
        shape = dataclasses.asdict(dataclasses.replace(gpu_check.Shape(1000, 8, 64, 64, layers=layers),
                                                       **shape_changes))
        return gpu_check.ShapeRow(gpu_check.Shape(**shape).label(), shape, baseline_fwd_ms=theirs,
                                  ours_fwd_ms=ours, baseline_fwd_bwd_ms=3 * theirs, ours_fwd_bwd_ms=2 * ours)

    rows = [row(1, 0.4, 0.2), row(4, 0.8, 0.8), row(4, 2.0, 1.0, input_size=32),
            row(4, 2.0, 1.0, bidirectional=True), row(4, 2.0, 1.0, steps=500)]
    assert gpu_check.layer_overlap_verdicts(rows, "cuDNN") == [
        "1000, 8, 64, 64, 4 layers: the stack's time over one layer's (one after another: 4x): forward cuDNN 2.00x, "
        "rnn_fused 4.00x; forward+backward cuDNN 2.00x, rnn_fused 4.00x."]
    # Without its one-layer row, or with that row failed, a stack gives no verdict.
    assert gpu_check.layer_overlap_verdicts([row(4, 0.8, 0.8)], "cuDNN") == []
    failed = dataclasses.replace(row(1, 0.4, 0.2), error="boom")
    assert gpu_check.layer_overlap_verdicts([failed, row(4, 0.8, 0.8)], "cuDNN") == []
    # A stack that ran in one launch each way, timed again with its layers one by one.
    stacked = dataclasses.replace(row(4, 0.8, 0.5), one_by_one_fwd_ms=1.0, one_by_one_fwd_bwd_ms=1.5)
    assert gpu_check.layer_overlap_verdicts([stacked], "cuDNN") == [
        "1000, 8, 64, 64, 4 layers: rnn_fused's layers in one launch each against the same layers one by one "
        "(RNN.stack = False; > 1: the stack faster): forward 2.00x, forward+backward 1.50x."]
    # A stack run layer by layer, timed again in one launch each.
    layer_by_layer = dataclasses.replace(row(4, 0.8, 0.5), as_stack_fwd_ms=0.6, as_stack_fwd_bwd_ms=1.5)
    assert gpu_check.layer_overlap_verdicts([layer_by_layer], "cuDNN") == [
        "1000, 8, 64, 64, 4 layers: rnn_fused's layers one by one (the planner's choice) against the same layers in "
        "one launch each (RNN.stack = True; > 1: one by one faster): forward 1.20x, forward+backward 1.50x."]
    # Directions that ran at once, timed again one after the other.
    at_once = dataclasses.replace(row(2, 1.0, 0.5, bidirectional=True), in_turn_fwd_ms=0.8, in_turn_fwd_bwd_ms=1.5)
    assert gpu_check.layer_overlap_verdicts([at_once], "cuDNN") == [
        "1000, 8, 64, 64, 2 layers, bidirectional: rnn_fused's directions at once, each on half the SMs, against one "
        "after the other on the whole device (RNN.side_by_side = False; > 1: at once faster): forward 1.60x, "
        "forward+backward 1.50x."]
    # Directions that ran one after the other for their few steps, timed again at once.
    in_turn = dataclasses.replace(row(2, 1.0, 0.5, bidirectional=True), at_once_fwd_ms=0.6, at_once_fwd_bwd_ms=0.9)
    assert gpu_check.layer_overlap_verdicts([in_turn], "cuDNN") == [
        "1000, 8, 64, 64, 2 layers, bidirectional: rnn_fused's directions one after the other (the planner's "
        "choice: too few steps for the side stream's fork and join) against at once, each on half the SMs "
        "(RNN.side_by_side = True; > 1: one after the other faster): forward 1.20x, forward+backward 0.90x."]
    # A batch that ran as two layer ops, timed again in one launch.
    split = dataclasses.replace(row(1, 1.0, 0.5), whole_batch_fwd_ms=0.6, whole_batch_fwd_bwd_ms=1.2)
    assert gpu_check.layer_overlap_verdicts([split], "cuDNN") == [
        "1000, 8, 64, 64: rnn_fused's batch in two layer ops (batch_pieces) against the whole batch in one launch "
        "(RNN.path forced; > 1: the split faster): forward 1.20x, forward+backward 1.20x."]
    # Inputs projected in the block kernel, timed again with the projections on the host.
    in_kernel = dataclasses.replace(row(1, 1.0, 0.5), host_projection_fwd_ms=0.55, host_projection_fwd_bwd_ms=1.1)
    assert gpu_check.layer_overlap_verdicts([in_kernel], "cuDNN") == [
        "1000, 8, 64, 64: rnn_fused's input projection inside the block kernel against the host's bias sum and GEMM "
        "(forced_tiling(input_projection_on_host=True); > 1: in the kernel faster): forward 1.10x, "
        "forward+backward 1.10x."]
    # Gradients made in the gradients kernel, timed again with them on the host (forward+backward only).
    kernel_gradients = dataclasses.replace(row(1, 1.0, 0.5), host_gradients_fwd_bwd_ms=1.2)
    assert gpu_check.layer_overlap_verdicts([kernel_gradients], "cuDNN") == [
        "1000, 8, 64, 64: rnn_fused's whole-sequence gradients in one launch of the gradients kernel against the "
        "host's GEMMs and bias sum (forced_tiling(gradients_on_host=True); > 1: the kernel faster): "
        "forward+backward 1.20x."]


def test_rows_whose_block_kernel_projects_the_input_are_timed_with_the_host_projection_too():
    """measure_shape_row on the emulated kernels: a short 2-layer row whose block kernels project
    their inputs themselves is timed again with every projection on the host; a row whose
    projections are too long for a kernel (launch_plan.kernel_projects_input) is not."""
    target = gpu_check.Target(torch.device("cpu"), emulated=True)
    short = gpu_check.Shape(3, 2, 5, 9, layers=2)
    assert gpu_check.projects_input_in_kernel(short, target)
    assert not gpu_check.projects_input_in_kernel(gpu_check.Shape(1000, 8, 256, 64), target)
    row = gpu_check.measure_shape_row(short, target, gpu_check.QUICK_TIMING, False)
    assert row.host_projection_fwd_ms > 0 and row.host_projection_fwd_bwd_ms > 0


def test_rows_whose_backward_makes_its_gradients_in_a_kernel_are_timed_with_them_on_the_host_too():
    """measure_shape_row on the emulated kernels: a short row whose backward makes its
    whole-sequence gradients in the gradients kernel is timed forward+backward again with them on
    the host (forced_tiling(gradients_on_host=True)); a row of more than 64 rows is not."""
    target = gpu_check.Target(torch.device("cpu"), emulated=True)
    short = gpu_check.Shape(3, 2, 5, 9)
    assert gpu_check.makes_gradients_in_kernel(short, target)
    assert not gpu_check.makes_gradients_in_kernel(gpu_check.Shape(1000, 8, 256, 64), target)
    row = gpu_check.measure_shape_row(short, target, gpu_check.QUICK_TIMING, False)
    assert row.host_gradients_fwd_bwd_ms > 0 and row.host_gradients_fwd_ms is None


def test_the_benchmark_says_which_rows_run_their_directions_side_by_side(monkeypatch):
    """runs_side_by_side: bidirectional rows on CUDA whose directions the planner runs at once
    (functional.directions_side_by_side, asked for the layer's compute dtype and steps); never on CPU
    tensors (no streams), never unidirectional. Stubbed planner: at once below H = 512."""
    asked = []

    def fake(device, dtype, hidden, batch, path, steps):
        asked.append((device.type, dtype, hidden, batch, path, steps))
        return 2 if hidden < 512 else 1

    monkeypatch.setattr(gpu_check, "directions_side_by_side", fake)
    cuda, cpu = (gpu_check.Target(torch.device(d), emulated=False) for d in ("cuda", "cpu"))
    assert gpu_check.runs_side_by_side(gpu_check.Shape(500, 32, 256, 256, layers=2, bidirectional=True), cuda)
    assert gpu_check.runs_side_by_side(gpu_check.Shape(10, 8, 16, 256, bidirectional=True, dtype="bfloat16"), cuda)
    assert not gpu_check.runs_side_by_side(gpu_check.Shape(500, 32, 256, 512, bidirectional=True), cuda)
    assert not gpu_check.runs_side_by_side(gpu_check.Shape(500, 32, 256, 256, bidirectional=True), cpu)
    assert not gpu_check.runs_side_by_side(gpu_check.Shape(500, 32, 256, 256, layers=2), cuda)
    assert asked == [("cuda", torch.float32, 256, 32, None, 500), ("cuda", torch.float32, 256, 8, None, 10),
                     ("cuda", torch.float32, 512, 32, None, 500)]


def test_the_benchmark_times_directions_run_in_turn_for_their_steps_at_once_too(monkeypatch):
    """could_run_side_by_side: a bidirectional CUDA row whose directions are faster at once per step
    but run one after the other for their few steps (the side stream's fork and join) is timed
    at once too; not one that runs them at once, nor one slower at once per step, nor on CPU
    tensors. Stubbed planner: at once per step below H = 512, worth it from 32 steps."""
    def fake(device, dtype, hidden, batch, path, steps=None):
        return 2 if hidden < 512 and (steps is None or steps >= 32) else 1

    monkeypatch.setattr(gpu_check, "directions_side_by_side", fake)
    cuda, cpu = (gpu_check.Target(torch.device(d), emulated=False) for d in ("cuda", "cpu"))
    assert gpu_check.could_run_side_by_side(gpu_check.Shape(11, 3, 20, 48, layers=2, bidirectional=True), cuda)
    assert not gpu_check.could_run_side_by_side(gpu_check.Shape(500, 32, 256, 256, bidirectional=True), cuda)
    assert not gpu_check.could_run_side_by_side(gpu_check.Shape(11, 3, 20, 512, bidirectional=True), cuda)
    assert not gpu_check.could_run_side_by_side(gpu_check.Shape(11, 3, 20, 48, bidirectional=True), cpu)
    assert not gpu_check.could_run_side_by_side(gpu_check.Shape(11, 3, 20, 48, layers=2), cuda)


def test_the_benchmark_says_which_rows_run_as_a_stack():
    """runs_as_stack: unidirectional float32 stacks the planner predicts faster in one launch (or forced),
    on the emulated H100/H200-like device; could_run_as_stack: those it runs layer by layer though
    the stack's kernel could take them (at H = 128, 2 layers; at H = 129 and 256 the cluster path's
    stack, measured slower on the H200), which gpu-check times as a stack too; neither the
    bidirectional, single-layer, bfloat16, too wide or forced ones."""
    target = gpu_check.Target(torch.device("cpu"), emulated=True)
    for shape in (gpu_check.Shape(1000, 8, 64, 64, layers=4), gpu_check.Shape(300, 7, 50, 100, layers=3),
                  gpu_check.Shape(11, 3, 20, 48, layers=2, stack=True)):
        assert gpu_check.runs_as_stack(shape, target) and not gpu_check.could_run_as_stack(shape, target), shape
    for shape in (gpu_check.Shape(1000, 8, 64, 64, layers=2), gpu_check.Shape(1000, 8, 128, 128, layers=2),
                  gpu_check.Shape(300, 7, 50, 129, layers=3), gpu_check.Shape(1000, 8, 256, 256, layers=2)):
        assert not gpu_check.runs_as_stack(shape, target) and gpu_check.could_run_as_stack(shape, target), shape
    for shape in (gpu_check.Shape(1000, 8, 64, 64), gpu_check.Shape(500, 32, 256, 64, layers=2, bidirectional=True),
                  gpu_check.Shape(1000, 8, 64, 64, layers=4, dtype="bfloat16"),
                  gpu_check.Shape(100, 8, 64, 1024, layers=2), gpu_check.Shape(300, 7, 50, 129, layers=3, stack=False)):
        assert not gpu_check.runs_as_stack(shape, target) and not gpu_check.could_run_as_stack(shape, target), shape


def _phase_row(per_pass: int, measured: float, predicted: float, **changes) -> PhaseRow:
    row = PhaseRow(f"1024, 32 ({per_pass} units/pass)", "forward", 1024, 32, "grid", 128,
                   plan={"units_per_pass": per_pass}, forced_units_per_pass=per_pass,
                   measured_us_per_step=measured, predicted_us_per_step=predicted)
    return dataclasses.replace(row, **changes)


def test_lane_rows_verdicts_set_the_lane_row_step_beside_the_general_kernels(rehearsal):
    """The phase rows at H = 9 on the lane-row step (forced) and on the general kernels (the
    planner's): one line per direction with both times and whether the model orders them so."""
    _, out, report = rehearsal
    rows = {(r["label"], r["direction"]): r for r in report["phase_rows"]}
    for direction in ("forward", "backward"):
        assert not rows[("9, 3", direction)]["plan"]["lane_rows"]
        lane = rows[("9, 3 (lane-row step)", direction)]
        assert lane["forced_lane_rows_step"] and lane["plan"]["lane_rows"]
    assert "The block path's lane-row step against its general kernels" in (out / "gpu_check.md").read_text()
    lane = _phase_row(32, 0.2, 0.14, plan={"lane_rows": True}, forced_units_per_pass=None, forced_lane_rows_step=True)
    lane = dataclasses.replace(lane, path="block", hidden=64, batch=8)
    general = dataclasses.replace(lane, plan={"compiled_passes": 2}, forced_lane_rows_step=False,
                                  measured_us_per_step=0.4, predicted_us_per_step=0.82)
    assert gpu_check.lane_rows_verdicts([lane, general]) == [
        "block at H, B = 64, 8, forward: the lane-row step 0.200 µs/step, the general kernels 0.400 (predicted 0.14 "
        "and 0.82): 2.00x (> 1: the lane-row step faster), as the model orders them."]
    assert gpu_check.lane_rows_verdicts([lane]) == []


def test_tiled_dots_verdicts_set_the_tiled_step_beside_the_eight_lane_rows(rehearsal):
    """The phase rows at H = 33 forced to the grid path's tiled dot products (with the grid
    barrier) and to the cluster path's, and the same shapes on 8 lanes per row: one line per
    path and direction with both times, both predictions and whether the model orders them as
    measured; the tiled rows take no part in the step-sync and warp-count verdicts."""
    _, out, report = rehearsal
    rows = {(r["label"], r["direction"]): r for r in report["phase_rows"]}
    for direction in ("forward", "backward"):
        tiled = rows[("33, 2 (grid barrier, tiled dot products)", direction)]
        assert tiled["forced_tiled_dots"] and tiled["plan"]["tiled_dots"] and tiled["path"] == "grid", tiled
        assert not rows[("33, 2 (grid barrier)", direction)]["plan"]["tiled_dots"]
        by_path = {(r["label"], r["path"]): r for r in report["phase_rows"] if r["direction"] == direction}
        tiled = by_path[("33, 2 (tiled dot products)", "cluster")]
        assert tiled["forced_tiled_dots"] and tiled["plan"]["tiled_dots"] and tiled["plan"]["samples"] == 4, tiled
        assert not by_path[("33, 2", "cluster")]["plan"]["tiled_dots"]
    text = (out / "gpu_check.md").read_text()
    assert "The tiled dot products against 8 lanes per weight row" in text
    for path in ("grid", "cluster"):
        assert text.count(f"{path} at H, B = 33, 2, forward: the tiled dot products") == 1, path
    plain = _phase_row(32, 2.0, 3.0, forced_units_per_pass=None, forced_step_sync="grid_barrier")
    tiled = dataclasses.replace(plain, forced_tiled_dots=True, measured_us_per_step=1.5, predicted_us_per_step=2.2)
    assert gpu_check.tiled_dots_verdicts([plain, tiled]) == [
        "grid at H, B = 1024, 32, forward: the tiled dot products 1.500 µs/step, 8 lanes per row 2.000 (predicted "
        "2.20 and 3.00): 1.33x (> 1: the tiled dot products faster), as the model orders them."]
    assert gpu_check.tiled_dots_verdicts([tiled]) == []
    assert gpu_check.step_sync_verdicts([plain, tiled]) == []


def test_operand_ring_verdicts_set_the_ring_beside_the_loads_ahead(rehearsal):
    """The phase rows at H = 9 with the block path's operand ring (forced) and without it (the
    planner's general kernels): one line per direction with both times, both computes and the
    ratio (the model prices the two alike: no ordering to check); the ring's rows take no part in
    the lane-row, compiled-passes or warp-count verdicts, nor in fit-model's observations."""
    _, out, report = rehearsal
    rows = {(r["label"], r["direction"]): r for r in report["phase_rows"]}
    for direction in ("forward", "backward"):
        ring = rows[("9, 3 (operand ring)", direction)]
        assert ring["forced_operand_ring"] and ring["path"] == "block", ring
        assert "each lane's step operands 4 steps ahead in shared memory" in ring["plan"]["reason"], ring
        assert "step operands" not in rows[("9, 3", direction)]["plan"]["reason"]
    text = (out / "gpu_check.md").read_text()
    assert "The block path's step operands through a ring in shared memory" in text
    assert text.count("block at H, B = 9, 3, forward: the operand ring") == 1
    from rnn_fused.tools import fit_model
    assert not any("operand ring" in o.label for o in fit_model.phase_observations(report))
    plain = _phase_row(32, 0.4, 0.33, path="block", hidden=64, batch=8, forced_units_per_pass=None,
                       plan={"compiled_passes": 2}, compute_cycles=678.0)
    ring = dataclasses.replace(plain, forced_operand_ring=True, measured_us_per_step=0.25, compute_cycles=380.0)
    assert gpu_check.operand_ring_verdicts([plain, ring]) == [
        "block at H, B = 64, 8, forward: the operand ring 0.250 µs/step (compute 380 cycles), operands one step "
        "ahead 0.400 (compute 678): 1.60x (> 1: the ring faster; the model prices both alike)."]
    assert gpu_check.operand_ring_verdicts([ring]) == []
    # beside a run-time-passes row and a lane-row one, only the planner's kernels are compared
    run_time = dataclasses.replace(plain, forced_run_time_passes=True, measured_us_per_step=0.6)
    [compiled] = gpu_check.compiled_passes_verdicts([plain, ring, run_time])
    assert "compiled for its 2 pass(es) 0.400 µs/step, reading them at run time 0.600" in compiled, compiled
    lane = dataclasses.replace(plain, plan={"lane_rows": True}, forced_lane_rows_step=True, measured_us_per_step=0.3)
    [lane_verdict] = gpu_check.lane_rows_verdicts([lane, plain, ring])
    assert "the lane-row step 0.300 µs/step, the general kernels 0.400" in lane_verdict, lane_verdict


def test_warp_count_verdicts_say_whether_the_model_picked_the_faster():
    agree = gpu_check.warp_count_verdicts([_phase_row(32, 2.0, 3.58), _phase_row(16, 1.5, 3.14)])
    assert agree == ["grid at H, B = 1024, 32, forward: dot products on 4 warps 1.500 µs/step, on 8 warps 2.000 "
                     "(predicted 3.140 and 3.580): on 4 warps faster, as the model predicts."]
    disagree = gpu_check.warp_count_verdicts([_phase_row(32, 1.2, 3.58), _phase_row(16, 1.5, 3.14)])
    assert disagree[0].endswith("on 8 warps faster, the model predicted the other: run fit-model (docs/gpu_check.md).")
    # The planner's own row, an errored row or a lone count give no verdict.
    assert gpu_check.warp_count_verdicts([_phase_row(16, 1.5, 3.14), _phase_row(32, 2.0, 3.58, error="boom"),
                                          _phase_row(16, 1.4, 3.14, forced_units_per_pass=None)]) == []


def test_step_sync_verdicts_compare_each_with_the_grid_barrier():
    def row(sync, measured, predicted, **changes):
        return _phase_row(32, measured, predicted, forced_units_per_pass=None, forced_step_sync=sync, **changes)

    verdicts = gpu_check.step_sync_verdicts([row("grid_barrier", 2.0, 3.0), row("flag_barrier", 1.6, 3.0),
                                             row("tagged_exchange", 2.4, 3.5)])
    assert verdicts == [
        "grid at H, B = 1024, 32, forward: steps with the flag barrier 1.600 µs/step, with the grid barrier 2.000 "
        "(predicted 3.000 and 3.000): with the flag barrier faster, the model predicted the other: run fit-model "
        "(docs/gpu_check.md).",
        "grid at H, B = 1024, 32, forward: steps with the tagged exchange 2.400 µs/step, with the grid barrier 2.000 "
        "(predicted 3.500 and 3.000): with the grid barrier faster, as the model predicts."]
    assert gpu_check.step_sync_verdicts([row("flag_barrier", 1.6, 3.0),
                                         row("grid_barrier", 2.0, 3.0, error="boom")]) == []
    # The rows forced to a warp count are not step-sync rows, and the other way round.
    assert gpu_check.warp_count_verdicts([row("grid_barrier", 2.0, 3.0), row("flag_barrier", 1.6, 3.0)]) == []


def test_compiled_passes_verdicts_set_the_two_kernels_side_by_side(rehearsal):
    """The rows timed again on the kernels that read their passes at run time: the rehearsal
    ran them (a run-time plan, the same launch shape), and each pair with a compiled kernel
    gives one line with both times."""
    _, _, report = rehearsal
    rows = {(r["label"], r["direction"], r["path"]): r for r in report["phase_rows"]}
    for label, path in (("9, 3", "block"), ("33, 2", "cluster")):
        for direction in ("forward", "backward"):
            compiled = rows[(label, direction, path)]
            run_time = rows[(f"{label} (passes at run time)", direction, path)]
            assert compiled["plan"]["compiled_passes"] > 0 and run_time["plan"]["compiled_passes"] == 0
            assert run_time["forced_run_time_passes"] and not compiled["forced_run_time_passes"]
            shape = ("path", "samples", "ctas_per_group", "units_per_cta", "units_per_pass")
            assert [compiled["plan"][k] for k in shape] == [run_time["plan"][k] for k in shape]
    row = _phase_row(32, 2.0, 3.0, forced_units_per_pass=None, plan={"compiled_passes": 2})
    verdicts = gpu_check.compiled_passes_verdicts(
        [row, dataclasses.replace(row, forced_run_time_passes=True, measured_us_per_step=3.0, plan={}),
         dataclasses.replace(row, direction="backward"),  # (no twin: no verdict)
         dataclasses.replace(row, direction="backward", forced_run_time_passes=True, error="boom")])
    assert verdicts == ["grid at H, B = 1024, 32, forward: compiled for its 2 pass(es) 2.000 µs/step, reading them at "
                        "run time 3.000: 1.50x (> 1: compiled faster; both with the step-phase clock's reads)."]
    # The twins are not warp-count rows.
    twin = _phase_row(32, 2.0, 3.5, forced_run_time_passes=True)
    assert gpu_check.warp_count_verdicts([_phase_row(16, 1.5, 3.1), twin]) == []


def test_rehearsal_report_is_what_fit_model_reads(rehearsal):
    """rnn-fused fit-model refits the model from this JSON: every single-layer (shape, path)
    row with a measured step becomes an observation priced at the plan that ran, and every
    part of a step the phase table measured an observation of that term, but for the rows
    forced onto the kernels that read their passes at run time (not the planner's kernels)."""
    from rnn_fused.tools import fit_model

    _, _, report = rehearsal
    observations = fit_model.observations_from_report(report)
    assert not any("passes at run time" in o.label for o in observations)
    assert any("passes at run time" in r["label"] for r in report["phase_rows"])
    totals = [o for o in observations if o.term == "total"]
    assert {o.plan["path"] for o in totals} == set(PATHS)
    for o in totals:
        assert o.predicted_us(cost_constants()) == pytest.approx(o.plan["predicted_us_per_step"])
    parts = {(o.plan["path"], o.direction, o.term) for o in observations if o.term != "total"}
    assert parts == {(path, direction, term) for path in ("block", "cluster", "grid")
                     for direction in ("forward", "backward") for term in ("stage", "compute", "barrier")
                     if term != "stage" or path == "grid"}


def test_report_keeps_the_constants_the_build_predicts_with(rehearsal):
    _, _, report = rehearsal
    constants = report["meta"]["model_constants"]
    assert constants == cost_constants()  # the compiled values (launch_plan.cost_constants), not a parse of a header
    # Those fitted to the H200 run (recurrence_cost_model.h kH200), not the first kernels' set.
    assert constants["grid_barrier_us"] == cost_constants()["grid_barrier_us"] != \
        cost_constants(first_kernels=True)["grid_barrier_us"]


# --- the command line ---------------------------------------------------------------------------


def test_without_a_gpu_it_is_a_usage_error_that_names_the_rehearsal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["gpu-check", "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "gpu-check measures a CUDA device" in captured.err and "--emulated" in captured.err
    assert main(["gpu-check", "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_emulated_with_a_cuda_device_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # the CLI enters it
    assert main(["gpu-check", "--emulated", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--emulated rehearses on the CPU; drop --device cuda" in capsys.readouterr().err


def test_min_seconds_shortens_each_measurement_not_its_runs(tmp_path, capsys, monkeypatch):
    seen = []

    class Measured(Exception):
        pass

    def measure(target, shapes, path_shapes, *, timing, long_timing, **kwargs):
        seen.append((timing, long_timing))
        raise Measured

    monkeypatch.setattr(gpu_check, "measure", measure)
    with pytest.raises(Measured):
        gpu_check.run(device=torch.device("cpu"), emulated=True, quick=False, budget_s=10, threads=1,
                      out=str(tmp_path), min_seconds=0.05)
    with pytest.raises(Measured):
        gpu_check.run(device=torch.device("cpu"), emulated=True, quick=False, budget_s=10, threads=1,
                      out=str(tmp_path))
    (timing, long_timing), (default, _) = seen
    assert timing == dataclasses.replace(gpu_check.QUICK_TIMING, min_seconds=0.05)
    assert long_timing == gpu_check.QUICK_TIMING and default == gpu_check.QUICK_TIMING
    runs = []
    monkeypatch.setattr(gpu_check, "run", lambda **kwargs: runs.append(kwargs) or 0)
    assert main(["gpu-check", "--emulated", "--min-seconds", "0.05", "--out", str(tmp_path)]) == 0
    assert main(["gpu-check", "--emulated", "--out", str(tmp_path)]) == 0
    assert [r["min_seconds"] for r in runs] == [0.05, None]
    for bad in ("0", "-1", "inf", "soon"):
        assert main(["gpu-check", "--emulated", "--min-seconds", bad, "--out", str(tmp_path)]) == 2
        assert f"--min-seconds" in capsys.readouterr().err


def test_unusable_out_is_a_usage_error(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["gpu-check", "--emulated", "--out", str(a_file)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def _synthetic_result() -> GpuCheckResult:
    meta = gpu_check.describe(gpu_check.Target(torch.device("cpu"), True), gpu_check.QUICK_TIMING, 10)
    result = GpuCheckResult(meta)
    result.shape_rows = [_shape_row()]
    result.path_rows = _path_rows()
    result.probes = [Probe("launch", "us", 4.2, "launch_us", 5.0, "back to back")]
    return result


def test_runs_without_tqdm_and_matplotlib(tmp_path, capsys, monkeypatch):
    """The GPU machine may have neither: the report and JSON are written, the figure is
    skipped with one line, and the exit status stays 0."""
    for name in ("tqdm", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    result = _synthetic_result()
    result.path_rows = [r for r in result.path_rows if r.error is None]
    monkeypatch.setattr(gpu_check, "measure", lambda *args, **kwargs: result)
    assert main(["gpu-check", "--emulated", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if "matplotlib" in line]
    assert skipped == ["rnn-fused gpu-check: matplotlib is not installed: gpu_check.png skipped "
                       "(pip install matplotlib to draw it)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.md"]
    assert "gpu_check.png skipped" in (tmp_path / "gpu_check.md").read_text()


def test_a_failing_row_is_recorded_the_rest_still_run_and_the_exit_status_is_1(tmp_path, capsys, monkeypatch):
    calls = []

    def measure_shape_row(shape, *args):
        calls.append(shape)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: unspecified launch failure\nmore")
        return _shape_row()

    monkeypatch.setattr(gpu_check, "measure_probes", lambda *args: [])
    monkeypatch.setattr(gpu_check, "measure_shape_row", measure_shape_row)
    monkeypatch.setattr(gpu_check, "measure_path_rows", lambda *args: [])
    assert main(["gpu-check", "--emulated", "--out", str(tmp_path)]) == 1
    assert calls == EMULATED_SHAPES
    err = capsys.readouterr().err
    assert f"rnn-fused gpu-check: FAILED {EMULATED_SHAPES[0].label()}: RuntimeError: CUDA error: unspecified launch " \
           "failure" in err
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["shape_rows"][0]["error"] == "RuntimeError: CUDA error: unspecified launch failure"
    assert "ERROR: RuntimeError" in (tmp_path / "gpu_check.md").read_text()


def test_rows_past_the_budget_are_listed_as_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "measure_probes", lambda *args: [])
    target = gpu_check.Target(torch.device("cpu"), True)
    result = gpu_check.measure(target, EMULATED_SHAPES, EMULATED_PATH_SHAPES[:1], timing=gpu_check.QUICK_TIMING,
                               long_timing=gpu_check.QUICK_TIMING, probe_sizes=gpu_check.SMALL_PROBE_SIZES,
                               budget_s=0, threads=1, out=str(tmp_path), progress=lambda line: None)
    assert all(r.skipped == "over the time budget" for r in result.shape_rows + result.path_rows)
    # (every path, and the block path's general kernels beside its lane-row step)
    assert len(result.path_rows) == len(PATHS) + 1 and not result.failures
    assert f"{len(EMULATED_SHAPES) + len(PATHS) + 1} rows skipped" in result.notes[0]


# --- cuDNN's refusal ----------------------------------------------------------------------------


def test_only_cudnns_not_supported_counts_as_a_refusal():
    refused = RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a "
                           "non-contiguous input.")
    assert baseline_refusal(refused) == "cuDNN: not supported"
    assert baseline_refusal(RuntimeError("CUDA out of memory")) is None
    assert baseline_refusal(ValueError("CUDNN_STATUS_NOT_SUPPORTED")) is None

    def refuse():
        raise refused

    def break_():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert refused_by_baseline(refuse) == "cuDNN: not supported"
    assert refused_by_baseline(lambda: None) is None
    with pytest.raises(RuntimeError, match="illegal memory access"):
        refused_by_baseline(break_)


def test_a_refused_baseline_still_times_rnn_fused(monkeypatch):
    """The long row's code path: the baseline refuses, rnn_fused alone is timed and the row
    says why the baseline columns are empty."""
    original = gpu_check.build_modules

    def build_with_a_refusing_baseline(shape, target, seed=0):
        stock, ours, x, grad_out = original(shape, target, seed)

        def refuse(*args, **kwargs):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

        monkeypatch.setattr(stock, "forward", refuse)
        return stock, ours, x, grad_out

    monkeypatch.setattr(gpu_check, "build_modules", build_with_a_refusing_baseline)
    target = gpu_check.Target(torch.device("cpu"), True)

    with simt.emulated_device(**gpu_check.EMULATED_DEVICE):
        row = gpu_check.measure_shape_row(Shape(30, 2, 3, 4, long=True), target, gpu_check.QUICK_TIMING, True)
    assert row.note == "cuDNN: not supported"
    assert row.baseline_fwd_ms is None and row.baseline_fwd_bwd_ms is None and row.fwd_ratio is None
    assert row.ours_fwd_ms > 0 and row.ours_fwd_bwd_ms > 0 and row.ours_rel_error is None
    line = format_shape_table([row], "cuDNN").splitlines()[2]
    assert line.startswith("| 30, 2, 3, 4 | cuDNN: not supported | ") and "| – |" in line


# --- formatting on synthetic rows -----------------------------------------------------------------


def _shape_row(**changes) -> ShapeRow:
    row = ShapeRow("1000, 8, 256, 256", dataclasses.asdict(Shape(1000, 8, 256, 256)), baseline_fwd_ms=1.78,
                   ours_fwd_ms=0.89, baseline_fwd_bwd_ms=3.96, ours_fwd_bwd_ms=4.4, baseline_peak_mb=150.0,
                   ours_peak_mb=32.4, baseline_rel_error=6.0e-6, ours_rel_error=3.4e-7, forward_path="cluster",
                   backward_path="grid", predicted_fwd_us_per_step=0.61, predicted_bwd_us_per_step=1.7,
                   measured_fwd_us_per_step=0.7, measured_bwd_us_per_step=2.25, predicted_fwd_ms=0.8,
                   predicted_fwd_bwd_ms=2.9)
    return dataclasses.replace(row, **changes)


def test_goal_verdicts_take_the_worst_covered_row():
    """Each goal over the rows it covers: the default row (1000, 8, 256, 256) has forward 2.0x and
    forward+backward 0.9x; a B = 128, H = 1024 row 1.6x and 1.5x; a 2-layer row 1.2x and 3.0x."""
    large = _shape_row(label="1000, 128, 1024, 1024", shape=dataclasses.asdict(Shape(1000, 128, 1024, 1024)),
                       baseline_fwd_ms=1.6, ours_fwd_ms=1.0, baseline_fwd_bwd_ms=3.0, ours_fwd_bwd_ms=2.0,
                       baseline_peak_mb=10.0, ours_peak_mb=12.0, ours_rel_error=2.3e-6)
    layered = _shape_row(label="300, 7, 50, 129, 3 layers", shape=dataclasses.asdict(Shape(300, 7, 50, 129, layers=3)),
                         baseline_fwd_ms=1.2, ours_fwd_ms=1.0, baseline_fwd_bwd_ms=3.0, ours_fwd_bwd_ms=1.0)
    skipped = _shape_row(label="1000, 1, 64, 64", shape=dataclasses.asdict(Shape(1000, 1, 64, 64)),
                         baseline_fwd_ms=None, ours_fwd_ms=None, baseline_fwd_bwd_ms=None, ours_fwd_bwd_ms=None,
                         skipped="over the time budget")
    goals = {g.goal: g for g in gpu_check.issue_goals([_shape_row(), large, layered, skipped])}
    small = goals["forward+backward >= 1.5x at H <= 256, B <= 32"]
    assert small.rows == ["1000, 8, 256, 256"] and small.worst == pytest.approx(0.9) and small.met is False
    assert goals["forward >= 1.5x at H <= 256, B <= 32"].met is True
    assert goals["forward+backward >= 3x at H = 512-1024, B <= 32"].met is None  # no such row measured
    batch = goals["forward+backward >= 1.5x at B = 128 (H = 256, 1024)"]
    assert batch.rows == ["1000, 128, 1024, 1024"] and batch.worst == pytest.approx(1.5) and batch.met is True
    floor = goals["never below 1.0x (every row, forward and forward+backward)"]
    assert len(floor.rows) == 3 and floor.worst_row == "1000, 8, 256, 256" and floor.met is False
    memory = goals["peak memory <= the baseline's (ours / baseline)"]
    assert memory.worst == pytest.approx(1.2) and memory.worst_row == "1000, 128, 1024, 1024" and memory.met is False
    error = goals["relative error <= the first kernels' (GPU_FACTS.md; ours / theirs)"]
    assert error.worst == pytest.approx(1.0) and error.met is True
    table = gpu_check.format_goal_table(list(goals.values()))
    assert "| forward+backward >= 3x at H = 512-1024, B <= 32 | 0 | – | – | not measured |" in table
    assert "| 1 | 0.90 | 1000, 8, 256, 256 | MISSED |" in table


def _plan(path: str, feasible: bool = True, **changes) -> dict:
    plan = dict(path=path, feasible=feasible, samples_per_group=8, groups=1, ctas_per_group=4, units_per_cta=64,
                grid=4, block_threads=256, cluster=4 if path == "cluster" else 1, shared_mem_bytes=65536,
                blocks_per_sm=1, waves=1, predicted_us_per_step=0.61, reason="a reason")
    plan.update(changes)
    return plan


def _path_rows() -> list[PathRow]:
    label, shape = "1000, 8, 256, 256", dataclasses.asdict(Shape(1000, 8, 256, 256))
    return [
        PathRow(label, shape, "block", forward_plan=_plan("block", False, reason="one CTA owns at most 256 units"),
                backward_plan=_plan("block", False, reason="one CTA owns at most 256 units"),
                note="forward: one CTA owns at most 256 units"),
        PathRow(label, shape, "cluster", planned_forward=True, forward_plan=_plan("cluster", compiled_passes=2),
                backward_plan=_plan("cluster", predicted_us_per_step=0.9), fwd_ms=0.9, fwd_bwd_ms=4.0,
                measured_fwd_us_per_step=0.7, measured_bwd_us_per_step=2.5, rel_error=3e-7),
        PathRow(label, shape, "grid", planned_backward=True, forward_plan=_plan("grid", predicted_us_per_step=1.3),
                backward_plan=_plan("grid", predicted_us_per_step=1.7), fwd_ms=1.5, fwd_bwd_ms=3.8,
                measured_fwd_us_per_step=1.4, measured_bwd_us_per_step=2.0, rel_error=3e-7),
        PathRow(label, shape, "stepwise", forward_plan=_plan("stepwise", grid=8, predicted_us_per_step=10.0),
                backward_plan=_plan("stepwise", predicted_us_per_step=10.0), error="RuntimeError: broke"),
    ]


def test_shape_table_rows():
    rows = [_shape_row(),
            _shape_row(label="100000, 4, 256, 256", baseline_fwd_ms=None, baseline_fwd_bwd_ms=None,
                       baseline_peak_mb=None, baseline_rel_error=None, ours_rel_error=None,
                       note="cuDNN: not supported", measured_fwd_us_per_step=-0.004),
            ShapeRow("1000, 1, 64, 64", {}, skipped="over the time budget"),
            ShapeRow("64, 5, 1, 1000", {}, error="RuntimeError: broke")]
    header, rule, full, refused, skipped, failed = format_shape_table(rows, "cuDNN").splitlines()
    assert header.count("|") == rule.count("|") == full.count("|") == 14
    assert full == ("| 1000, 8, 256, 256 | 1.78 | 0.89 | 2.00 | 3.96 | 4.40 | 0.90 | 150 / 32 | 6.0e-06 / 3.4e-07 | "
                    "cluster / grid | 0.61 / 1.70 | 0.70 / 2.25 | 0.80 / 2.90 |")
    assert refused.startswith("| 100000, 4, 256, 256 | cuDNN: not supported | 0.89 | – | cuDNN: not supported | "
                              "4.40 | – | – / 32 | – |")
    assert "| -4.0e-03 / 2.25 |" in refused  # a negative estimate is shown, not hidden
    assert skipped.startswith("| 1000, 1, 64, 64 | skipped: over the time budget |") and skipped.count("|") == 14
    assert failed.startswith("| 64, 5, 1, 1000 | ERROR: RuntimeError: broke |")


def test_path_table_marks_the_planned_and_the_fastest_path():
    lines = format_path_table(_path_rows()).splitlines()
    block, cluster, grid, stepwise = lines[2:]
    assert block == ("| 1000, 8, 256, 256 | block | – | – / – | – / – | – | – | – | "
                     "forward: one CTA owns at most 256 units |")
    assert cluster.startswith("| 1000, 8, 256, 256 | cluster (planned (fwd), fastest fwd) | 4×256, cluster 4, "
                              "64 units/CTA, 8 samples/group, step compiled for 2 pass(es) | 0.61 / 0.90 | 0.70 / 2.50 | "
                              "0.900 | 4.000 | 3.0e-07 |")
    assert grid.startswith("| 1000, 8, 256, 256 | grid (planned (bwd), fastest fwd+bwd) |")
    assert "per step: a GEMM and 8×256 epilogue" in stepwise and "ERROR: RuntimeError: broke" in stepwise


def test_report_and_json_carry_every_row_and_the_failures():
    result = _synthetic_result()
    text = format_report(result)
    assert "| launch | 4.20 | us | launch_us | 5.00 | back to back |" in text
    assert "FAILED: 1000, 8, 256, 256 path stepwise: RuntimeError: broke" in text
    data = json.loads(json.dumps(result_as_json(result)))
    assert data["shape_rows"][0]["fwd_ratio"] == pytest.approx(2.0)
    assert data["path_rows"][1]["predicted_fwd_us_per_step"] == 0.61
    assert data["path_rows"][0]["predicted_fwd_us_per_step"] is None  # infeasible: no prediction
    assert data["failures"] == ["1000, 8, 256, 256 path stepwise: RuntimeError: broke"]


def test_shape_labels():
    two_layers = Shape(500, 32, 256, 256, layers=2, bidirectional=True)
    assert two_layers.label() == "500, 32, 256, 256, 2 layers, bidirectional"
    assert Shape(1000, 8, 256, 256, dtype="bfloat16").label() == "bf16: 1000, 8, 256, 256"
    assert gpu_check.LONG_SHAPE.long and gpu_check.LONG_SHAPE in gpu_check.GPU_SHAPES


# --- make gpu-check's stage runner -------------------------------------------------------------


def test_stages_build_for_the_gpu_architecture_and_run_pytest_without_the_projects_addopts(tmp_path):
    build, tests, benchmark, fit, counters = stages.gpu_check_stages("python3", str(tmp_path), "9.0",
                                                                     stages.BENCHMARK_BUDGET_S)
    assert build.argv == ["python3", "setup.py", "-q", "build_ext", "--inplace"]
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build.env["RNN_FUSED_SELFTESTS"] == "1"
    assert build.env["RNN_FUSED_CUDA"] == "1" and int(build.env["MAX_JOBS"]) == stages.cores()
    assert tests.argv[:8] == ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]
    assert tests.argv[-3:] == ["tests/test_cuda_gpu.py", "tests/test_simt.py", "tests/test_simt_cluster.py"]
    assert tests.env["PYTHONPATH"].split(os.pathsep)[0] == REPO
    assert benchmark.argv == ["python3", "-m", "rnn_fused", "gpu-check", "--out", str(tmp_path), "--budget-s", "80"]
    assert benchmark.timeout_s > 80
    assert fit.argv == ["python3", "-m", "rnn_fused", "fit-model", str(tmp_path / "gpu_check.json"), "--out",
                        str(tmp_path)]
    assert counters.argv == ["python3", os.path.join(REPO, "benchmarks", "smem_counters.py"), "--out", str(tmp_path)]
    # The worst case (every stage at its limit) still ends within a 10-minute session.
    assert sum(s.timeout_s for s in (build, tests, benchmark, fit, counters)) <= 600


def test_stages_run_as_chosen_in_the_order_given(tmp_path):
    every = stages.gpu_check_stages("python3", str(tmp_path), "9.0", 240)
    assert [s.name for s in every] == list(stages.STAGE_NAMES)
    assert stages.gpu_check_stages("python3", "o", "9.0", 240, 0.15)[2].argv[-2:] == ["--min-seconds", "0.15"]
    chosen = stages.select_stages(every, "benchmark, tests,smem-counters")
    assert [s.name for s in chosen] == ["benchmark", "tests", "smem-counters"]
    assert chosen[0] is every[2]
    for bad, said in (("benchmark,bench", "bench unknown"), ("tests,tests", "distinct"), (" , ", "distinct")):
        with pytest.raises(ValueError, match=said):
            stages.select_stages(every, bad)
    done = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_check.py"), "--out",
                           str(tmp_path / "out"), "--stages", "build,fit"], capture_output=True, text=True)
    assert done.returncode == 2 and "--stages 'build,fit'" in done.stderr and "fit unknown" in done.stderr
    assert not (tmp_path / "out").exists()


def test_without_a_gpu_the_build_stage_fails_and_says_why(tmp_path):
    build = stages.gpu_check_stages(sys.executable, str(tmp_path), None, 240)[0]
    stages.run_stage(build, str(tmp_path / "build.log"), echo=open(os.devnull, "w"))
    assert build.status == "failed (exit status 1)"
    assert build.last_line == "build: no CUDA device, so no architecture to build for"


def test_the_test_stage_runs_without_pytest_benchmark(tmp_path):
    """The project's addopts hold --benchmark-disable, which pytest rejects without the
    pytest-benchmark plugin; the stage drops them (-p no:benchmark plays the missing plugin)."""
    tests = stages.gpu_check_stages(sys.executable, str(tmp_path), "9.0", 240)[1]
    argv = tests.argv[:-3] + ["-p", "no:benchmark", "tests/test_cuda_gpu.py"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, **tests.env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "tests.xml").exists()
    without_override = [a for a in argv if a not in ("-o", "addopts=")]
    done = subprocess.run(without_override, cwd=REPO, capture_output=True, text=True)
    assert done.returncode != 0 and "--benchmark-disable" in done.stderr


def test_every_stage_runs_and_the_check_fails_at_the_end_if_one_failed(tmp_path):
    python = sys.executable
    runs = [
        stages.Stage("first", [python, "-c", "print('built'); raise SystemExit(3)"]),
        stages.Stage("hangs", [python, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                     timeout_s=2),
        stages.Stage("last", [python, "-c", "import os; print('ran', os.environ['MARK'])"], {"MARK": "yes"}),
    ]
    echo = open(tmp_path / "console.txt", "w")
    assert stages.run_stages(runs, str(tmp_path / "out"), "a device", echo=echo) == 1
    assert [s.status for s in runs] == ["failed (exit status 3)", "timed out after 2 s", "passed"]
    assert [s.last_line for s in runs] == ["built", "started", "ran yes"]
    assert runs[1].seconds < 30
    out = tmp_path / "out"
    assert (out / "last.log").read_text() == "ran yes\n"
    summary = (out / "stages.md").read_text()
    assert "| hangs | timed out after 2 s |" in summary and summary.rstrip().endswith("FAILED: first, hangs")
    assert json.loads((out / "stages.json").read_text())["stages"][2]["status"] == "passed"
    assert stages.run_stages(runs[2:], str(out), "a device", echo=echo) == 0
    assert (out / "stages.md").read_text().rstrip().endswith("All stages passed.")


def test_makefile_target_calls_the_stage_runner_with_the_given_python():
    makefile = open(os.path.join(REPO, "Makefile")).read()
    recipe = makefile[makefile.index("\ngpu-check:"):].splitlines()[2]
    assert recipe == "\t$(PYTHON) benchmarks/gpu_check.py --out gpu_out"


def test_code_never_run_on_a_gpu_runs_after_the_shape_rows(monkeypatch, tmp_path):
    """The shape rows (the planner's own choices) are measured before the step-phase rows and
    autotuning, which run the grid path's flag barrier and tagged exchange; a failure of a row's
    second timing under autotune keeps the row's own times and fails the run."""
    order = []

    def noting(name, function):
        def wrapper(*args, **kwargs):
            order.append(name)
            return function(*args, **kwargs)
        return wrapper

    def failing_retime(row, *args):
        raise RuntimeError("a trap in the tagged exchange")

    monkeypatch.setattr(gpu_check, "measure_shape_row", noting("shape", gpu_check.measure_shape_row))
    monkeypatch.setattr(gpu_check, "measure_phase_rows", noting("phases", gpu_check.measure_phase_rows))
    monkeypatch.setattr(gpu_check, "measure_tune_rows", noting("tune", gpu_check.measure_tune_rows))
    monkeypatch.setattr(gpu_check, "retuned_sizes", lambda rows: {(5, 2)})
    monkeypatch.setattr(gpu_check, "measure_tuned", failing_retime)
    target = gpu_check.Target(torch.device("cpu"), True)
    result = gpu_check.measure(target, [gpu_check.Shape(6, 2, 3, 5)], [], timing=gpu_check.QUICK_TIMING,
                               long_timing=gpu_check.QUICK_TIMING, probe_sizes=gpu_check.SMALL_PROBE_SIZES,
                               budget_s=120, threads=1, out=str(tmp_path),
                               phase_shapes=[gpu_check.PhaseShape(9, 3, "block", 4)],
                               tune_steps=gpu_check.EMULATED_TUNE_STEPS)
    assert order == ["shape", "phases", "tune"]
    [row] = result.shape_rows
    assert row.error is None and row.ours_fwd_ms > 0 and row.tuned_error == "RuntimeError: a trap in the tagged exchange"
    assert result.failures == ["6, 2, 3, 5 under autotune: RuntimeError: a trap in the tagged exchange"]


def test_the_test_stage_isolates_crashes_where_xdist_is_installed(tmp_path, monkeypatch):
    """With pytest-xdist one worker runs the GPU tests, so a test that kills its process is
    reported by name and the tests after it still run; without xdist the argv is unchanged."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, installed=installed: (object() if installed else None)
                            if name == "xdist" else real_find_spec(name, *a))
        argv = stages.gpu_check_stages("python3", str(tmp_path), "9.0", 240)[1].argv
        assert ("-n" in argv) == installed
        if installed:
            assert argv[argv.index("-n") + 1] == "1" and "--max-worker-restart=1000" in argv


def test_a_crashing_test_process_leaves_its_native_frames(tmp_path):
    """The GPU tests run with benchmarks/native_backtrace.c preloaded: a process that dies of
    SIGSEGV appends the signal and its native frames to the file the environment names (and
    still dies of the signal); frames in the extension are resolved to functions."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler to build benchmarks/native_backtrace.c")  # gpu-check then says so too
    if shutil.which("nm") is None or shutil.which("addr2line") is None:
        pytest.skip("no binutils (nm, addr2line) to resolve the extension's frames")
    env = stages.native_backtrace_env(str(tmp_path))
    assert env["RNN_FUSED_NATIVE_BACKTRACE"] == str(tmp_path / "native_backtrace.txt")
    crash = [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]
    done = subprocess.run(crash, capture_output=True, text=True, env={**os.environ, **env})
    assert done.returncode == -signal.SIGSEGV
    text = (tmp_path / "native_backtrace.txt").read_text()
    assert "signal 11 (Segmentation fault), native frames:" in text
    assert len(text.splitlines()) > 3 and "python" in text.lower()
    # The extension's frames gain their functions and lines: here a frame at the address of the
    # forward op's entry, as backtrace_symbols_fd prints a function without an exported name.
    import rnn_fused._C as extension

    listing = subprocess.run(["nm", "--defined-only", "-C", extension.__file__], capture_output=True, text=True).stdout
    address = next(int(line.split()[0], 16) for line in listing.splitlines()
                   if "::rnn_layer_forward(" in line and "[clone" not in line)
    resolved = stages.resolve_extension_frames(f"{extension.__file__}(+{address:#x}) [0x1]\n", extension.__file__)
    assert "rnn_layer_forward" in resolved.splitlines()[1] and "ops.cpp" in resolved


def test_the_sanitizer_workload_rehearses_on_the_emulator(capsys):
    """benchmarks/sanitizer_workload.py (run under compute-sanitizer on a GPU machine) with
    --emulated: every path and step synchronisation of a bidirectional 2-layer model (and the
    block path's lane-row kernels at H <= 128, the grid and cluster paths' tiled dot products), and a
    unidirectional stack in one launch, each matching the CPU op under the tolerance rule."""
    spec = importlib.util.spec_from_file_location("sanitizer_workload",
                                                  os.path.join(REPO, "benchmarks", "sanitizer_workload.py"))
    workload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workload)
    assert workload.main(["--emulated", "--hidden", "33", "200", "--steps", "4"]) == 0
    printed = capsys.readouterr().out
    assert "H=33 path=stack: ok" in printed and "H=200 path=stack: ok" in printed
    assert "H=33 path=block lane_rows_step: ok" in printed
    assert "H=33 path=grid tiled_dots: ok" in printed and "H=200 path=grid tiled_dots: ok" in printed
    assert "H=33 path=cluster tiled_dots: ok" in printed and "H=200 path=cluster tiled_dots: ok" in printed
    assert "H=200 path=block lane_rows_step: not run (the lane-row kernels take H <= 128)" in printed
    assert "H=33 path=block operand_ring: ok" in printed and "H=200 path=block operand_ring: ok" in printed
    assert printed.rstrip().endswith("all cases matched")


def test_the_toolchain_report_says_what_the_extension_was_built_with_and_whether_its_errors_survive():
    """After its stages gpu-check writes OUT/toolchain.txt, for the SIGSEGV of 2026-11-30 (a C++
    error raised by the extension's own op killed the GPU test process): compilers, torch's C++
    ABI, the libstdc++ loaded and needed, and a C++ error raised in a fresh interpreter without
    CUDA (here: a ValueError, as everywhere) and after initialising CUDA (here: no driver)."""
    report = stages.toolchain_report(sys.executable)
    fields = [line.split(":")[0] for line in report.splitlines()]
    for expected in ("python", "torch", "c++", "nvcc", "extension needs", "extension resolves",
                     "a C++ error raised without CUDA", "a C++ error raised after CUDA initialised"):
        assert expected in fields, report
    without_cuda = next(line for line in report.splitlines() if line.startswith("a C++ error raised without CUDA"))
    assert without_cuda.endswith("raised ValueError: rnn_fused.cpu_loop_team: steps, batch and hidden must be >= 0, "
                                 "got -1, 1 and 1"), report
    assert "this process (torch imported) loaded:" in report and "GLIBCXX_3.4." in report


def _load_smem_counters():
    spec = importlib.util.spec_from_file_location("smem_counters", os.path.join(REPO, "benchmarks", "smem_counters.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smem_counters_read_ncus_csv_per_launch_beside_the_plans(tmp_path):
    """benchmarks/smem_counters.py (gpu-check's last stage, ncu on a GPU machine): the metric
    rows of `ncu --csv --print-units base`, with ncu's own lines and the workload's plan lines
    mixed in, become one set of counters per launch in launch order (thousands separators
    dropped), and each sits beside its plan with its wavefronts per shared load."""
    counters = _load_smem_counters()
    header = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",' \
             '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'

    def row(launch, kernel, metric, value):
        return f'"{launch}","7","python3","h","{kernel}","1","7","(256, 1, 1)","(128, 1, 1)","0","9.0","Command line ' \
               f'profiler metrics","{metric}","{"" if metric == counters.CYCLES else "inst"}","{value}"'

    plans = [{"path": "grid", "hidden": 1024, "batch": 128, "direction": d, "samples": 8, "units_per_cta": 32,
              "units_per_pass": 16, "ctas": 128} for d in ("forward", "backward")]
    lines = ["==PROF== Connected to process 7", json.dumps(plans[0]), header]
    for launch, kernel, loads in ((10, "forward_recurrence_kernel", "40,960"), (2, "backward_recurrence_kernel", "81920")):
        lines += [row(launch, kernel, counters.LOADS, loads), row(launch, kernel, counters.WAVEFRONTS, "163,840"),
                  row(launch, kernel, counters.CONFLICTS, "0"), row(launch, kernel, "other__metric.sum", "5")]
    lines += [json.dumps(plans[1]), "==PROF== Disconnected from process 7"]
    text = "\n".join(lines)
    launches = counters.parse_ncu_csv(text)
    assert [launch["kernel"] for launch in launches] == ["backward_recurrence_kernel", "forward_recurrence_kernel"]
    assert launches[1][counters.LOADS] == 40960 and launches[1][counters.WAVEFRONTS] == 163840
    assert "other__metric.sum" not in launches[0]
    assert counters.plans_in(text) == plans
    table, rows = counters.report(plans, [launches[1], launches[0]])
    assert [r["wavefronts_per_load"] for r in rows] == [4.0, 2.0]
    assert "| grid | 1024 | 128 | forward | 8 | 32 / 16 | 40960 | 163840 | 4.00 | 0 |" in table
    with pytest.raises(SystemExit, match="1 kernel launches profiled for 2 plans"):
        counters.report(plans, launches[:1])


def test_smem_counters_workloads_rehearse_on_the_emulator(capsys):
    """The workload ncu profiles, at small shapes on the SIMT emulator: each forced path's
    forward and backward run, and a plan line per launch in order."""
    counters = _load_smem_counters()
    counters.run_workloads((("grid", 40, 9), ("block", 33, 1), ("cluster", 70, 2)), emulated=True)
    plans = counters.plans_in(capsys.readouterr().out)
    assert [(p["path"], p["hidden"], p["direction"]) for p in plans] == [
        (path, hidden, direction) for path, hidden in (("grid", 40), ("block", 33), ("cluster", 70))
        for direction in ("forward", "backward")]
    assert all(p["ctas"] >= 1 and p["samples"] >= 1 for p in plans)


def test_smem_counters_report_ncu_running_past_its_limit(tmp_path, monkeypatch, capsys):
    """An ncu that does not finish within the stage's time: a line that says so, its output
    so far kept in smem_counters.log, exit status 1 (not a traceback)."""
    counters = _load_smem_counters()
    monkeypatch.setattr(counters, "ncu_executable", lambda: "/usr/bin/ncu")

    def too_slow(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"], output=b"==PROF== Connected", stderr=None)

    monkeypatch.setattr(counters.subprocess, "run", too_slow)
    assert counters.main(["--out", str(tmp_path)]) == 1
    assert f"ncu ran past {counters.TIMEOUT_S} s" in capsys.readouterr().out
    assert (tmp_path / "smem_counters.log").read_text() == "==PROF== Connected"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_host_time_probe_says_it_needs_a_gpu(capsys):
    """benchmarks/host_overhead.py (run by benchmarks/gpu_session.sh on a GPU machine) measures
    the host time of GPU calls; without a CUDA device it stops with a usage error saying so."""
    spec = importlib.util.spec_from_file_location("host_overhead", os.path.join(REPO, "benchmarks", "host_overhead.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    with pytest.raises(SystemExit) as stopped:
        probe.main([])
    assert stopped.value.code == 2
    assert "a CUDA device is needed" in capsys.readouterr().err


def test_the_host_time_probes_python_loop_variant_runs_the_layer_ops_from_python():
    """host_overhead.py's variant with the layers' loop in Python: inside it a model's forward calls
    no rnn_layers_forward, outside it (and after it) one."""
    spec = importlib.util.spec_from_file_location("host_overhead", os.path.join(REPO, "benchmarks", "host_overhead.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    model, x = rnn_fused.RNN(3, 4, num_layers=2), torch.randn(5, 2, 3)

    def ops_called():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            model(x)
        return {event.name for event in profile.events()}

    with probe.layers_loop_in_python(True):
        assert "rnn_fused::rnn_layers_forward" not in ops_called()
    with probe.layers_loop_in_python(False):
        assert "rnn_fused::rnn_layers_forward" in ops_called()
    assert "rnn_fused::rnn_layers_forward" in ops_called()


@pytest.mark.parametrize("backward,steps,input_size", [(False, 12, 5), (True, 12, 5), (True, 30, 5), (False, 12, 2000)],
                         ids=["forward-projected-in-the-kernel", "backward-gradients-in-the-kernel",
                              "backward-gradients-on-the-host", "forward-projected-on-the-host"])
def test_gemms_timed_alone_are_the_layer_passes_own(backward, steps, input_size):
    # The recurrence per step is a layer pass less these GEMMs timed alone: they must be the
    # pass's own, op for op (a hand-written copy once drifted from the host layer and made the
    # backward's estimate negative on the GPU). Counted on the emulated backend, which runs the
    # CUDA backend's host layer. At T = 12, I = 5 the block kernel projects the input itself and
    # the backward makes its gradients in the gradients kernel (36 rows): no GEMM either way; at
    # I = 2000 the host projects, at T = 30 (90 rows) the host makes the gradients.
    shape = gpu_check.Shape(steps, 3, input_size, 16)
    assert rnn_fused.launch_plan.kernel_projects_input(steps, 3, input_size, 16) == (input_size == 5)
    assert rnn_fused.launch_plan.kernel_makes_gradients(steps, 3, input_size, 16, input_grad=False) == (steps == 12)
    in_kernel = input_size == 5 if not backward else steps == 12
    target = gpu_check.Target(torch.device("cpu"), emulated=True)
    products = {"aten::mm", "aten::bmm", "aten::addmm", "aten::sum", "aten::add", "aten::add_", "aten::cat"}

    def counts(work):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            work()
        return {e.key: e.count for e in profile.key_averages() if e.key in products}

    x, weights, grad_out = gpu_check.layer_arguments(shape, target)
    leaves = [w.clone().requires_grad_() for w in weights]
    if backward:
        out, _ = rnn_fused.rnn_layer(x, None, *leaves, backend="emulated")
        layer_counts = counts(lambda: torch.autograd.backward(out, grad_out))
    else:
        with torch.no_grad():
            layer_counts = counts(lambda: rnn_fused.rnn_layer(x, None, *leaves, backend="emulated"))
    assert (layer_counts.get("aten::mm" if backward else "aten::addmm", 0) >= 1) != in_kernel
    assert counts(gpu_check.whole_sequence_work(shape, target, backward)) == layer_counts


def test_a_split_row_names_its_pieces_and_is_timed_whole_too(monkeypatch):
    """measure_shape_row on a single layer whose batch the planner splits (batch_pieces stubbed to
    3 + 2 on the emulated kernels): the path columns name the pieces, the predicted step is the
    pieces' summed, and the row is timed again with the whole batch in one launch."""
    from rnn_fused import _ops, functional, launch_plan

    layer_ops = []
    real_forward = _ops.layer_forward

    def counting(inputs, options):
        layer_ops.append((inputs.input.shape[1], options.path))
        return real_forward(inputs, options)

    # (cached, as the stubbed ones are: a planner setting clears their caches)
    monkeypatch.setattr(launch_plan, "runs_in_waves", functools.lru_cache()(lambda *args, **kwargs: True))
    pieces = functools.lru_cache()(lambda *args, **kwargs: (3, 2))
    monkeypatch.setattr(launch_plan, "batch_pieces", pieces)
    monkeypatch.setattr(gpu_check, "batch_pieces", pieces)
    monkeypatch.setattr(_ops, "layer_forward", counting)
    # (every layer op through Python's loop, where `counting` sees it, not rnn_layers_forward)
    monkeypatch.setattr(functional, "_layers_route", lambda *args, **kwargs: None)
    shape = gpu_check.Shape(4, 5, 3, 9)
    target = gpu_check.Target(torch.device("cpu"), emulated=True)
    row = gpu_check.measure_shape_row(shape, target, gpu_check.QUICK_TIMING, False)
    assert row.forward_path.endswith(" in 3 + 2") and row.backward_path.endswith(" in 3 + 2"), row
    pieces = [launch_plan.plan(9, b) for b in (3, 2)]
    assert row.predicted_fwd_us_per_step == pytest.approx(sum(p.predicted_us_per_step for p in pieces))
    assert row.whole_batch_fwd_ms > 0 and row.whole_batch_fwd_bwd_ms > 0
    # The split's layer ops choose their path; the whole batch's were forced to the planned one.
    whole_path = launch_plan.plan(9, 5).path
    assert {(3, None), (2, None), (5, whole_path)} <= set(layer_ops), set(layer_ops)


def test_the_stored_cluster_waves_are_the_h200_runs_own():
    """tests/data/h200_cluster_waves_2026-12-04.json (the emulator's cluster occupancy is held to
    it in test_simt_cluster.py, which make sanitize runs without benchmarks/) lists exactly the
    feasible cluster-path launch shapes of both H200 runs' autotuning, with their waves."""
    launches = set()
    for run in ("h200_2026-12-04", "h200_2026-12-04b"):
        with open(os.path.join(REPO, "benchmarks", run, "gpu_check.json")) as f:
            for recurrence in json.load(f)["tune_rows"]:
                launches |= {(shape["ctas_per_group"], shape["blocks_per_sm"], shape["groups"], shape["waves"])
                             for shape in recurrence["timed"] if shape["path"] == "cluster" and shape["feasible"]}
    with open(os.path.join(REPO, "tests", "data", "h200_cluster_waves_2026-12-04.json")) as f:
        stored = {tuple(launch) for launch in json.load(f)["launches"]}
    assert stored == launches and len(stored) == 69
