"""The BPTT benchmark compares like with like: its PyTorch-way baselines produce the same
norms and gradients as the fused runs they are timed against."""

from __future__ import annotations

import pytest
import torch

from rnn_fused.tools import bptt_benchmark as bb
from rnn_fused.tools.benchmark import build_pair
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS


def _close64(actual, expected):
    """float64 runs: equal up to the float64 parity bound the parity tests use."""
    bound = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps * max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= bound


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_hook_loop_and_chunked_stock_compute_what_the_fused_runs_compute():
    stock, ours, x, grad_out = build_pair((12, 3, 4, 6), torch.device("cpu"), torch.float64)
    for every in (None, 5):
        theirs_norms = bb.hook_step_loop(stock, x, grad_out, every=every)()
        theirs = _grads(stock)
        ours_norms = bb.fused_step(ours, x, grad_out, record=True, truncation=every)()
        _close64(ours_norms[0, 0], theirs_norms)
        for a, b in zip(_grads(ours), theirs):
            _close64(a, b)
    bb.chunked_stock(stock, x, grad_out, every=5)()
    chunked = _grads(stock)
    bb.fused_step(ours, x, grad_out, record=False, truncation=5)()
    for a, b in zip(_grads(ours), chunked):
        _close64(a, b)


def test_quick_run_writes_tables(tmp_path, capsys):
    from rnn_fused.tools.cli import main

    assert main(["bench", "--bptt", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "overhead" in out and "speed-up" in out
    for name in ("cpu_bptt_benchmark.md", "cpu_bptt_benchmark.json", "cpu_bptt_benchmark.png"):
        assert (tmp_path / name).stat().st_size > 0


def _way(*speedups):
    return [bb.PyTorchWayRow((1000, 8, 32, 64), f"case {i}", "hooks", 10.0 * s, 10.0) for i, s in enumerate(speedups)]


def test_speedup_axis_is_linear_from_1x():
    overhead = [bb.OverheadRow((1000, 8, 32, 64), "norms", 10.0, 10.3)]
    _, _, right = bb.draw(overhead, _way(3.0, 1.5, 38.0))
    assert right.get_xscale() == "linear" and right.get_xlim()[0] == 1.0 and 1.0 in right.get_xticks()
    assert [(bar.get_x(), bar.get_width()) for bar in right.patches] == [(1.0, 2.0), (1.0, 0.5), (1.0, 37.0)]
    assert [t.get_text() for t in right.texts] == ["3.00x", "1.50x", "38.00x"]
    # A slow-down grows leftwards from 1x; the axis then reaches below it.
    _, _, right = bb.draw(overhead, _way(0.5, 2.0))
    assert right.get_xlim()[0] < 0.5 and (right.patches[0].get_x(), right.patches[0].get_width()) == (1.0, -0.5)


@pytest.mark.parametrize("variant", ["norms + random p=0.9", "a variant whose name is much longer " * 3])
def test_figure_keeps_every_label_inside_the_canvas(variant, tmp_path):
    """Ink (anything darker than light grey) stays clear of every edge of the saved PNG: no
    label is cut off. (With tight_layout alone, the longest tick label began 2 pixels from
    the left edge with its first letter clipped.)"""
    import matplotlib.pyplot as plt

    overhead = [bb.OverheadRow((20, 2, 4, 8), name, 1.0, 1.0 + change) for name, change in
                ((variant, -0.11), ("K=10", -0.005), ("random p=0.9", -0.003), ("norms", 0.03))]
    path = bb.plot(overhead, _way(1.22, 0.12, 0.98), str(tmp_path), "bptt.png")
    ink = plt.imread(path)[:, :, :3].min(axis=2) < 0.6
    rows, columns = ink.any(axis=1).nonzero()[0], ink.any(axis=0).nonzero()[0]
    margin = 5
    assert rows[0] >= margin and rows[-1] < ink.shape[0] - margin
    assert columns[0] >= margin and columns[-1] < ink.shape[1] - margin
