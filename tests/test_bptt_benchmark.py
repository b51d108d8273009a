"""The BPTT benchmark compares like with like: its PyTorch-way baselines produce the same
norms and gradients as the fused runs they are timed against."""

from __future__ import annotations

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
