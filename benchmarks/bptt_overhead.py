"""Overhead of truncation and in-kernel gradient norms, and speed-up over the PyTorch way
of getting the same numbers: the same as `python -m rnn_fused bench --bptt`
(rnn_fused/bptt_benchmark.py); arguments are passed on (--device, --threads, --out, --quick).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnn_fused.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "--bptt", *sys.argv[1:]]))
