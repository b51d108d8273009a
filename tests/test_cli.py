"""The command line: bench, check and demo at tiny sizes (--quick), their outputs, and the
exit statuses: 0 done, 1 a check failed, 2 a usage error told in one line before any work,
3 an unexpected error told in one line (the traceback with --debug)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rnn_fused
from rnn_fused.tools import benchmark, bptt_benchmark, check, demo, experiments
from rnn_fused.tools.cli import build_parser, main, shapes_argument
from rnn_fused.tools.benchmark import (PACKED, BenchResult, Row, build_pair, default_shapes, format_table, layer_flops,
                                      shape_flops)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each command with the function that starts its work: a usage error must come before it.
COMMANDS = {
    "bench": (["bench", "--quick", "--device", "cpu"], benchmark, "measure_table"),
    "bench --bptt": (["bench", "--bptt", "--quick", "--device", "cpu"], bptt_benchmark, "overhead_rows"),
    "check": (["check", "--quick", "--device", "cpu"], check, "plan"),
    "demo": (["demo", "--quick"], demo, "run_experiments"),
}


def _exit_message(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of a call that must fail before printing anything on stdout."""
    code = main(argv)
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def _forbid_work(monkeypatch, command: str) -> list[str]:
    """argv of `command`, with the work of every command replaced by a failure (exit status
    3 if reached)."""
    for name, (_, module, work) in COMMANDS.items():
        def started(*args, name=name, **kwargs):
            raise AssertionError(f"{name} started working")

        monkeypatch.setattr(module, work, started)
    return list(COMMANDS[command][0])


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE


# --- arguments ------------------------------------------------------------------------------


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("bench", "check", "demo", "exit status"))
    assert main(["bench", "--help"]) == 0
    assert "--debug" in capsys.readouterr().out


def test_unknown_command_exits_2_with_one_line(capsys):
    code, err = _exit_message(["frobnicate"], capsys)
    assert code == 2 and "invalid choice: 'frobnicate'" in _one_line(err) and "see rnn-fused --help" in err


@pytest.mark.parametrize("command", ["bench", "check"])
@pytest.mark.parametrize("device", ["tpu", "cpu:0", "cuda:", "cuda:x", "cuda:-1"])
def test_unknown_device_is_a_usage_error(command, device, capsys):
    code, err = _exit_message([command, "--device", device], capsys)
    assert code == 2 and f"unknown device {device!r} (choose cpu, cuda or cuda:N)" in _one_line(err)


@pytest.mark.parametrize("command", ["bench", "check"])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_usage_error(command, device, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _exit_message([command, "--device", device], capsys)
    assert code == 2 and "no CUDA device is available" in _one_line(err) and "--device cpu" in err


def test_cuda_index_is_accepted_below_the_device_count(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    parser = build_parser()
    assert parser.parse_args(["bench", "--device", "cuda:1"]).device == torch.device("cuda", 1)
    assert parser.parse_args(["check", "--device", "cuda:0"]).device == torch.device("cuda", 0)
    assert parser.parse_args(["check", "--device", "cuda"]).device == torch.device("cuda")
    code, err = _exit_message(["bench", "--device", "cuda:2"], capsys)
    assert code == 2 and "cuda:2 was asked for but torch.cuda.device_count() is 2; use cuda:0 to cuda:1" in (
        _one_line(err))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, err = _exit_message(["check", "--device", "cuda:1"], capsys)
    assert code == 2 and "torch.cuda.device_count() is 1; use cuda:0" in _one_line(err)


@pytest.mark.parametrize("shapes", ["10,2,3", "10,2,3,x", "10,2,3,0", "1,2,3,4;5,6", "1,2,3,4,5", "1,2,3,4,0",
                                    "1,2,3,4,2,2"])
def test_malformed_shapes_are_a_usage_error(shapes, capsys):
    code, err = _exit_message(["bench", "--shapes", shapes], capsys)
    assert code == 2 and "expected the form T,B,I,H[,D][;T,B,I,H[,D]...]" in _one_line(err)


def test_shapes_parse():
    assert shapes_argument("1000,8,32,64; 200, 32,128,256") == [(1000, 8, 32, 64), (200, 32, 128, 256)]
    assert shapes_argument("10,2,3,4,2;10,2,3,4,1") == [(10, 2, 3, 4, 2), (10, 2, 3, 4)]


@pytest.mark.parametrize("argv,message", [
    (["bench", "--threads", "0"], "must be at least 1, got 0"),
    (["demo", "--threads", "two"], "expected an integer, got 'two'"),
    (["demo", "--seeds", "0,x"], "'0,x' is not a comma-separated list of non-negative integers"),
    (["demo", "--seeds", "1,2,1"], "'1,2,1' names a seed twice"),
    (["demo", "--seeds", str(2**32)], f"seed {2**32} is out of range (0 to {2**32 - 1})"),
    (["demo", "--device", "cpu"], "unrecognized arguments: --device"),
    (["bench", "--bptt", "--shapes", "10,2,3,4"], "--shapes does not apply to --bptt"),
    (["bench", "--bptt", "--no-memory"], "--no-memory does not apply to --bptt"),
])
def test_other_bad_arguments(argv, message, capsys, monkeypatch):
    _forbid_work(monkeypatch, "bench")
    code, err = _exit_message(argv, capsys)
    assert code == 2 and message in _one_line(err)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("out", ["a file", "below a file", "/proc/rnn_fused_out"])
def test_unusable_out_is_a_usage_error_before_any_work(command, out, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "results.json"
    a_file.write_text("{}")
    path = {"a file": str(a_file), "below a file": str(a_file / "out")}.get(out, out)
    code, err = _exit_message(_forbid_work(monkeypatch, command) + ["--out", path], capsys)
    assert code == 2 and f"--out {path!r}" in _one_line(err)
    assert ("exists and is not a directory" if out == "a file" else "is not a writable directory") in err
    assert a_file.read_text() == "{}"


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("missing", [("tqdm",), ("matplotlib",), ("tqdm", "matplotlib")])
def test_missing_optional_package_is_a_usage_error_before_any_work(command, missing, tmp_path, capsys, monkeypatch):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ModuleNotFoundError
    code, err = _exit_message(_forbid_work(monkeypatch, command) + ["--out", str(tmp_path / "out")], capsys)
    assert code == 2 and f"the optional package{'s' if len(missing) > 1 else ''} {' and '.join(missing)} " in (
        _one_line(err))
    assert 'install with: pip install tqdm matplotlib (or pip install "rnn_fused[cli]")' in err


def test_missing_optional_package_from_the_command_line(tmp_path):
    """The same through `python -m rnn_fused` in a fresh process: nothing on stdout, one line."""
    code = ("import runpy, sys; sys.modules['tqdm'] = None; sys.argv = ['rnn-fused', *sys.argv[1:]]; "
            "runpy.run_module('rnn_fused', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, "check", "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2 and out.stdout == "" and not list(tmp_path.iterdir())
    assert "rnn-fused check: error: the optional package tqdm " in _one_line(out.stderr)


@pytest.mark.parametrize("command", COMMANDS)
def test_unexpected_error_exits_3_with_one_line(command, tmp_path, capsys, monkeypatch):
    argv, module, _ = COMMANDS[command]

    def broken(**kwargs):
        raise RuntimeError("something broke\n  a second line that stays out")

    monkeypatch.setattr(module, "run", broken)
    code, err = _exit_message(argv + ["--out", str(tmp_path)], capsys)
    assert code == 3
    assert _one_line(err) == (f"rnn-fused {command.split()[0]}: unexpected error: RuntimeError: something broke "
                              "(run again with --debug for the traceback)\n")


def test_debug_prints_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(check, "run", broken)
    code, err = _exit_message(["check", "--quick", "--debug", "--out", str(tmp_path)], capsys)
    assert code == 3 and err.startswith("Traceback (most recent call last):")
    assert "in broken" in err and err.endswith("RuntimeError: something broke\n")


def test_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run", interrupted)
    code, err = _exit_message(["demo", "--quick", "--out", str(tmp_path)], capsys)
    assert code == 130 and _one_line(err) == "rnn-fused demo: interrupted\n"


def test_module_entry_point_runs_and_reports_usage_errors():
    out = subprocess.run([sys.executable, "-m", "rnn_fused", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(c in out.stdout for c in ("bench", "check", "demo"))
    out = subprocess.run([sys.executable, "-m", "rnn_fused", "bench", "--device", "tpu"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown device 'tpu'" in _one_line(out.stderr) and out.stdout == ""
    out = subprocess.run([sys.executable, "-m", "rnn_fused", "bench", "--bptt", "--shapes", "10,2,3,4"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--shapes does not apply to --bptt" in _one_line(out.stderr) and out.stdout == ""


# --- install ---------------------------------------------------------------------------------
# `make` installs the checkout into the venv in editable mode: the console script and the
# package work from any directory, not only from the repository root.

NOT_INSTALLED = ("rnn_fused is not installed in this Python environment ({}); `make test` installs it, or run "
                 "`pip install --no-build-isolation --no-deps -e .` in the checkout")


def _without_pythonpath() -> dict[str, str]:
    """The environment, rnn_fused to be found through the install only."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_console_script_runs_from_any_directory(tmp_path):
    script = os.path.join(sysconfig.get_path("scripts"), "rnn-fused")
    assert os.path.isfile(script), NOT_INSTALLED.format(f"no {script}")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path, env=_without_pythonpath())
    assert out.returncode == 0 and all(c in out.stdout for c in ("bench", "check", "demo")), out.stderr
    out = subprocess.run([script, "bench", "--device", "tpu"], capture_output=True, text=True, cwd=tmp_path,
                         env=_without_pythonpath())
    assert out.returncode == 2 and "unknown device 'tpu'" in _one_line(out.stderr)


def test_module_runs_from_any_directory(tmp_path):
    env = _without_pythonpath()
    out = subprocess.run([sys.executable, "-m", "rnn_fused", "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0 and all(c in out.stdout for c in ("bench", "check", "demo")), (
        NOT_INSTALLED.format(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""))


# --- bench ----------------------------------------------------------------------------------


def test_flop_model():
    # Forward: 2TBH(I+H); backward adds recurrence, dW_hh and dW_ih: 2TBH(I+2H).
    assert layer_flops(10, 2, 3, 4, backward=False) == 2 * 10 * 2 * 4 * (3 + 4)
    assert layer_flops(10, 2, 3, 4, backward=True) == 2 * 10 * 2 * 4 * (3 + 4) + 2 * 10 * 2 * 4 * (3 + 8)


def test_table_has_one_row_per_measurement():
    rows = [Row((1, 2, 3, 4), "fwd", 2.0, 1.0, 2.0, 5.0, 0.5),
            Row((1, 2, 3, 4), "fwd+bwd", 6.0, 2.0, 3.0, 7.0, 0.25, 10.0, 4.0)]
    table = format_table(BenchResult("cpu", "CPU", 2, 100e9, rows))
    assert "CPU, float32, 2 threads" in table and "100.0 GFLOP/s" in table
    assert "| 1, 2, 3, 4 | fwd | 2.00 | 1.00 | 2.00x | 5.0 | 50% |  |  |" in table
    assert "| 1, 2, 3, 4 | fwd+bwd | 6.00 | 2.00 | 3.00x | 7.0 | 25% | 10.0 | 4.0 |" in table
    gpu = format_table(BenchResult("cuda", "Some GPU", None, 100e9, rows))
    assert "Some GPU, float32, nn.RNN on cuDNN, TF32 off" in gpu


def test_bench_quick_writes_table_json_and_chart(tmp_path, capsys, monkeypatch):
    started = []  # every process bench starts: Python children only, no compiler
    run = subprocess.run

    def recorded_run(argv, *args, **kwargs):
        started.append(argv[0])
        return run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recorded_run)
    assert main(["bench", "--quick", "--device", "cpu", "--shapes", "12,2,3,4", "--out", str(tmp_path)]) == 0
    assert started and set(started) == {sys.executable}
    out = capsys.readouterr().out
    assert "| 12, 2, 3, 4 | fwd |" in out and "| 12, 2, 3, 4 | fwd+bwd |" in out
    results = json.loads((tmp_path / "cpu_benchmark.json").read_text())
    assert results["device"] == "cpu" and results["threads"] == 2 and results["gemm_gflops"] > 0
    assert [r["pass_"] for r in results["rows"]] == ["fwd", "fwd+bwd"]
    for row in results["rows"]:
        assert row["shape"] == [12, 2, 3, 4]
        assert row["torch_ms"] > 0 and row["ours_ms"] > 0
        assert row["ratio"] == pytest.approx(row["torch_ms"] / row["ours_ms"])
        assert row["gemm_fraction"] == pytest.approx(row["gflops"] / results["gemm_gflops"])
    backward = results["rows"][1]
    assert backward["torch_peak_mb"] > 0 and backward["ours_peak_mb"] > 0
    assert (tmp_path / "cpu_benchmark.md").read_text().strip() in out
    assert _is_png(tmp_path / "cpu_benchmark_ratios.png")
    assert "Peak memory not measured" not in out and results["memory_note"] is None


def test_peak_memory_child_imports_the_same_package_from_any_directory(tmp_path):
    code = (f"import sys; sys.path.insert(0, {REPO!r}); from rnn_fused.tools import benchmark; "
            "print(benchmark.peak_memory_mb('ours', (12, 2, 3, 4)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=_without_pythonpath())
    assert out.returncode == 0 and float(out.stdout) > 0, out.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_backward_keeps_few_float32_copies(dtype):
    """Reduced precision runs in float32. In units of one float32 [T,B,H] tensor (I = H), the
    backward's peak holds the saved output (half a unit), its float32 copy, dy's float32 copy
    and dz (one unit each): 3.5 units plus small tensors. The input's float32 copy and
    grad_input's are made only once dy's copy is gone (all of them together were 4.7 units)."""
    steps, batch, hidden = 400, 8, 128
    unit_mb = steps * batch * hidden * 4 / 2**20
    peak = benchmark.peak_memory_mb("ours", (steps, batch, hidden, hidden), dtype=dtype)
    assert 3.5 * unit_mb <= peak <= 3.75 * unit_mb, f"{peak / unit_mb:.2f} float32 [T,B,H] tensors"


def test_allocation_meter_is_built_with_the_package():
    assert os.path.isfile(benchmark.MALLOC_METER) and benchmark.malloc_meter_problem() is None


@pytest.mark.parametrize("meter", ["missing", "not a library"])
def test_bench_without_a_usable_meter_says_so_and_leaves_memory_empty(meter, tmp_path, capsys, monkeypatch):
    library = tmp_path / "libmalloc_meter.so"
    if meter == "not a library":
        library.write_text("not an ELF file")
    monkeypatch.setattr(benchmark, "MALLOC_METER", str(library))
    out_dir = tmp_path / "out"
    assert main(["bench", "--quick", "--device", "cpu", "--shapes", "12,2,3,4", "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "allocation meter" in line]
    why = "is missing" if meter == "missing" else "could not be preloaded"
    assert len(said) == 1 and why in said[0] and said[0].endswith("the peak-memory columns stay empty")
    results = json.loads((out_dir / "cpu_benchmark.json").read_text())
    assert why in results["memory_note"]
    assert all(r["torch_peak_mb"] is None and r["ours_peak_mb"] is None for r in results["rows"])
    assert f"Peak memory not measured: {results['memory_note']}." in captured.out


def test_no_memory_is_noted_in_the_table():
    rows = [Row((1, 2, 3, 4), "fwd+bwd", 6.0, 2.0, 3.0, 7.0, 0.25)]
    table = format_table(BenchResult("cpu", "CPU", 2, 100e9, rows, memory_note="--no-memory"))
    assert "Peak memory not measured: --no-memory." in table


# --- check ----------------------------------------------------------------------------------


def test_check_quick_passes_every_row(tmp_path, capsys):
    assert main(["check", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "check.json").read_text())
    rows = results["rows"]
    assert results["passed"] and all(r["passed"] and r["error"] <= r["tolerance"] for r in rows)
    assert {r["kind"] for r in rows} == {"parity", "truncation", "gradcheck"}
    assert {r["backend"] for r in rows} == {"cpu", check.EMULATED}
    quantities = {r["quantity"] for r in rows if r["kind"] == "parity"}
    assert {"output", "h_n", "grad_input", "grad_hx", "grad_weight_hh_l0"} <= quantities
    assert f"{len(rows)} rows: {len(rows)} PASS, 0 FAIL." in out
    assert _is_png(tmp_path / "check_margins.png")


def test_check_fails_and_exits_1_when_a_gradient_is_wrong(tmp_path, capsys):
    # The fault sits in the backward op's results, where every route meets it: the op's C++
    # autograd, the recording Function and gradcheck all call rnn_layer_backward.
    class OnePercentOffWeightHh(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if func is torch.ops.rnn_fused.rnn_layer_backward.default:
                result = (*result[:3], result[3] * 1.01, *result[4:])
            return result

    with OnePercentOffWeightHh():
        assert main(["check", "--quick", "--no-emulated", "--device", "cpu", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    failed = [r for r in json.loads((tmp_path / "check.json").read_text())["rows"] if not r["passed"]]
    assert {r["kind"] for r in failed} == {"parity", "truncation", "gradcheck"}
    assert all(r["kind"] == "gradcheck" or r["quantity"].startswith("grad_weight_hh") for r in failed)
    assert "| FAIL |" in out and f"{len(failed)} FAIL." in out


def test_truncation_rows_tell_truncated_from_full_bptt(monkeypatch):
    case = check.TRUNCATION_CASES[0]
    assert all(r.passed for r in check.truncation_rows(case, torch.float32, torch.device("cpu"), "cpu"))
    monkeypatch.setattr(check, "reference_edge_scales",
                        lambda case: torch.ones(case.steps, case.batch, dtype=torch.float64))
    rows = {r.quantity: r for r in check.truncation_rows(case, torch.float32, torch.device("cpu"), "cpu")}
    assert rows["output"].passed and rows["h_n"].passed  # forward values do not depend on truncation
    assert not rows["grad_weight_hh"].passed and not rows["grad_hx"].passed


def test_jacobian_mismatch_sees_a_wrong_backward():
    class WrongSin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.sin()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * x.cos() * 1.01

    x = torch.linspace(-1, 1, 5, dtype=torch.float64, requires_grad=True)
    error, allowance = check.jacobian_mismatch(lambda t: (t.sin(),), (x,))
    assert error < allowance
    error, allowance = check.jacobian_mismatch(lambda t: (WrongSin.apply(t),), (x,))
    assert error > allowance


# --- demo -----------------------------------------------------------------------------------


def test_demo_quick_writes_a_reproducible_report(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["demo", "--quick", "--out", str(first)]) == 0
    assert main(["demo", "--quick", "--out", str(second)]) == 0
    out = capsys.readouterr().out
    results = [json.loads((d / "results.json").read_text()) for d in (first, second)]
    for r in results:
        del r["wall_seconds"]
    assert results[0] == results[1]
    report = (first / "report.md").read_text()
    assert report in out and "**Seeds:** 0." in report
    for figure in ("jacobian_norms.png", "first_character_accuracy.png", "step_gradient_norms.png",
                   "clipping.png", "truncation.png"):
        assert f"]({figure})" in report and _is_png(first / figure)
    runs = results[0]["runs"]
    assert {(r["length"], r["clip"], r["truncation"]) for r in runs} >= {
        (5, None, "full"), (10, None, "full"), (50, None, "full"), (20, 5.0, "full"), (20, 1.0, "full"),
        (20, None, "K=10"), (20, None, "K=5"), (20, None, "random p=0.9")}
    for r in runs:
        assert len(r["losses"]) == len(r["grad_norms"]) == demo.QUICK.protocol.train_steps
        if r["length"] in (*demo.QUICK.lengths, demo.QUICK.truncation_length):  # the tables' runs
            assert f"{r['accuracy']:.3f} ({r['outcome']})" in report
    steps = results[0]["step_norms"]["initial"]
    assert len(steps["10"]) == 10 and len(steps["50"]) == 50


def _synthetic_results(k_accuracy: float, jacobian_end: float) -> demo.DemoResults:
    """A DemoResults with made-up numbers, to see that the report's verdicts follow them."""
    config = demo.QUICK
    results = demo.DemoResults(config)
    for key in demo.planned_runs(config):
        length, seed, clip, truncation = key
        accuracy = k_accuracy if isinstance(truncation, int) else 1.0
        results.runs[key] = experiments.TrainRun(length, seed, clip, experiments.truncation_label(truncation),
                                                 accuracy, [1.0] * 3, [2.0] * 3)
    results.jacobian = {sigma: [[sigma]] + [[jacobian_end]] * (config.jacobian_steps - 1) for sigma in config.sigmas}
    curves = {t: [10.0 ** -(t - i) for i in range(t)] for t in config.norm_lengths}
    results.step_norms = {"initial": curves, "trained": curves}
    return results


def test_report_verdicts_follow_the_numbers():
    figures = {name: f"{name}.png" for name in ("jacobian", "task", "step_norms", "clipping", "truncation")}
    at_chance = demo.report(_synthetic_results(0.125, 1e-3), figures, 1, "test")
    learned = demo.report(_synthetic_results(0.95, 1e3), figures, 1, "test")
    assert "K=10 at chance: held (1 seed); K=5 at chance: held (1 seed)." in at_chance
    assert "K=10 at chance: did not hold (1 seed)" in learned
    assert "| 0.5 | 0.5 | 0.001 | 0.001 |" in at_chance and "| vanished | vanished | yes |" in at_chance
    assert "| exploded | vanished | no |" in learned and "| exploded | exploded | yes |" in learned
    assert "initial model: held; trained model: held." in at_chance


def test_verdict_rules():
    assert demo.jacobian_verdict(0.9, 1e-3) == ("vanished", "vanished", True)
    assert demo.jacobian_verdict(1.1, 1.65) == ("neither", "exploded", False)
    assert demo.jacobian_verdict(1.5, 340.0) == ("exploded", "exploded", True)
    assert demo.seeds_verdict(["chance", "learned", "chance"], "chance") == (2, 3)
    assert demo.held_phrase(2, 3) == "held for 2 of 3 seeds"
    assert demo.held_phrase(0, 3) == "did not hold for any of the 3 seeds"
    ratios, held = demo.decay_verdict({10: [1e-3, 1.0], 50: [1e-9, 1.0]})
    assert ratios == {10: 1e-3, 50: 1e-9} and held
    assert not demo.decay_verdict({10: [3.0, 1.0], 50: [1e-9, 1.0]})[1]
    ceiling = experiments.chance_ceiling(2000)
    assert ceiling == pytest.approx(0.125 + 3.29 * math.sqrt(0.125 * 0.875 / 2000))
    assert experiments.accuracy_outcome(ceiling, 2000) == "chance"
    assert experiments.accuracy_outcome(ceiling + 1e-3, 2000) == "above chance"
    assert experiments.accuracy_outcome(0.9, 2000) == "learned"


def test_jacobian_norms_respect_the_tanh_bound():
    """|tanh'| <= 1, so ||dh_t/dh_0|| <= sigma_max^t: the fused backward's products must obey it."""
    for sigma in (0.9, 1.5):
        norms = experiments.jacobian_product_norms(sigma, steps=12, batch=3, seed=0)
        assert norms[0] == pytest.approx([sigma] * 3, rel=1e-3)  # h_0 = 0: tanh'(z_1) ~ 1
        for t, samples in enumerate(norms, start=1):
            assert max(samples) <= sigma**t * (1 + 1e-5)


def test_bench_long_writes_its_own_table(tmp_path, capsys):
    """--long (here --quick: T = 2,000) measures the long-sequence row only, beside nn.RNN."""
    from rnn_fused.tools.benchmark import LONG_QUICK_STEPS, LONG_SEQUENCE_SHAPES

    code = main(["bench", "--long", "--quick", "--device", "cpu", "--no-memory", "--out", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "cpu_long_sequence.json").read_text())["rows"]
    _, batch, input_size, hidden = LONG_SEQUENCE_SHAPES["cpu"]
    assert [tuple(r["shape"]) for r in rows] == [(LONG_QUICK_STEPS, batch, input_size, hidden)] * 2
    assert all(r["ours_ms"] > 0 and r["torch_ms"] > 0 and r["baseline_note"] is None for r in rows)


@pytest.mark.parametrize("extra", [["--shapes", "10,2,3,4"], ["--bptt"]])
def test_bench_long_takes_no_shapes_nor_bptt(extra, capsys):
    code, err = _exit_message(["bench", "--long", *extra], capsys)
    assert code == 2 and "--long measures its own shape" in err


def test_a_cudnn_refusal_is_reported_not_raised():
    from rnn_fused.tools.benchmark import baseline_refusal, refused_by_baseline

    def refuse():
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    assert refused_by_baseline(refuse) == "cuDNN: not supported"
    assert refused_by_baseline(lambda: None) is None
    assert baseline_refusal(ValueError("CUDNN_STATUS_NOT_SUPPORTED")) is None
    with pytest.raises(RuntimeError, match="out of memory"):
        refused_by_baseline(lambda: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))


def test_the_cpu_bench_has_a_bidirectional_row():
    """The CPU grid has one bidirectional layer (T, B, I, H, 2): both modules bidirectional
    with the same weights, the gradient of the output 2H wide, the table's label says so."""
    assert [shape for shape in default_shapes(torch.device("cpu")) if len(shape) == 5 and shape[4] == 2]
    stock, ours, x, grad_out = build_pair((5, 2, 3, 4, 2), torch.device("cpu"), torch.float32)
    assert stock.bidirectional and ours.bidirectional and grad_out.shape == (5, 2, 8)
    assert torch.equal(stock.weight_hh_l0_reverse, ours.weight_hh_l0_reverse)
    row = Row((5, 2, 3, 4, 2), "fwd", 1.0, 0.5, 2.0, 1.0, 0.01)
    table = format_table(BenchResult("cpu", "CPU", 2, 1e11, [row]))
    assert "| 5, 2, 3, 4, bidirectional | fwd | 1.00 | 0.50 | 2.00x |" in table


def test_the_cpu_bench_has_a_packed_row():
    """The CPU grid ends with a PackedSequence of uneven lengths (T, B, I, H, 1, 1, "packed"): both
    modules get the same packed batch (lengths from T down to about T / 4), the gradient is the packed
    output's data's, the label says so, and the FLOPs count its valid steps alone."""
    shape = default_shapes(torch.device("cpu"))[-1]
    assert len(shape) == 7 and shape[4:] == (1, 1, PACKED)
    stock, ours, x, grad_out = build_pair((6, 3, 4, 5, 1, 1, PACKED), torch.device("cpu"), torch.float32)
    assert isinstance(x, torch.nn.utils.rnn.PackedSequence) and x.batch_sizes.tolist() == [3, 2, 2, 2, 1, 1]
    assert grad_out.shape == (11, 5)  # lengths 6, 4, 1
    out, _ = ours(x)
    assert torch.equal(out.batch_sizes, stock(x)[0].batch_sizes)
    assert shape_flops((6, 3, 4, 5, 1, 1, PACKED), backward=False) == layer_flops(11, 1, 4, 5, backward=False)
    row = Row((6, 3, 4, 5, 1, 1, PACKED), "fwd", 1.0, 0.5, 2.0, 1.0, 0.01)
    table = format_table(BenchResult("cpu", "CPU", 2, 1e11, [row]))
    assert "| 6, 3, 4, 5, packed | fwd | 1.00 | 0.50 | 2.00x |" in table
