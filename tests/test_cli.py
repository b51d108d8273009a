"""The command line: argument errors exit non-zero with a message; bench's table code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnn_fused.__main__ import main
from rnn_fused.benchmark import Row, format_table, layer_flops


def test_unknown_command_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code != 0
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_bad_thread_count_exits_nonzero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--threads", "0"])
    assert exc.value.code != 0
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "rnn_fused", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bench" in out.stdout


def test_flop_model():
    # Forward: 2TBH(I+H); backward adds recurrence, dW_hh and dW_ih: 2TBH(I+2H).
    assert layer_flops(10, 2, 3, 4, backward=False) == 2 * 10 * 2 * 4 * (3 + 4)
    assert layer_flops(10, 2, 3, 4, backward=True) == 2 * 10 * 2 * 4 * (3 + 4) + 2 * 10 * 2 * 4 * (3 + 8)


def test_table_has_one_row_per_measurement():
    rows = [Row((1, 2, 3, 4), "fwd", 2.0, 1.0, 2.0, 5.0, 0.5),
            Row((1, 2, 3, 4), "fwd+bwd", 6.0, 2.0, 3.0, 7.0, 0.25, 10.0, 4.0)]
    table = format_table(100e9, rows, threads=2)
    assert "100.0 GFLOP/s" in table
    assert "| 1, 2, 3, 4 | fwd | 2.00 | 1.00 | 2.00x | 5.0 | 50% |  |  |" in table
    assert "| 1, 2, 3, 4 | fwd+bwd | 6.00 | 2.00 | 3.00x | 7.0 | 25% | 10.0 | 4.0 |" in table
