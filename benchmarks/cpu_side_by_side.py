"""CPU side-by-side benchmark: torch.nn.RNN vs rnn_fused.RNN, forward and forward+backward.

The same as `python -m rnn_fused bench --device cpu`: prints a Markdown table (medians,
ratios, achieved GFLOP/s and its fraction of this machine's large-GEMM rate measured in the
same run, peak memory) and writes it as JSON and Markdown, with a bar chart of the ratios,
to --out (default bench_out/).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnn_fused.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "--device", "cpu", *sys.argv[1:]]))
