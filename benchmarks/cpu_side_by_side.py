"""CPU side-by-side benchmark: torch.nn.RNN vs rnn_fused.RNN, forward and forward+backward.

Prints a Markdown table (medians, ratios, achieved GFLOP/s and its fraction of this
machine's large-GEMM rate measured in the same run, peak memory) and writes the rows as
JSON next to it. Usage: python benchmarks/cpu_side_by_side.py [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rnn_fused.benchmark import CPU_SHAPES, cpu_table, format_table, rows_as_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_out", help="directory for cpu_benchmark.json/.md")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child runs")
    args = parser.parse_args()

    def progress(row):
        print(f"  measured {row.shape} {row.pass_}: {row.ratio:.2f}x", file=sys.stderr, flush=True)

    rate, rows = cpu_table(CPU_SHAPES, threads=args.threads, measure_memory=not args.no_memory,
                           progress=progress)
    table = format_table(rate, rows, args.threads)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "cpu_benchmark.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "cpu_benchmark.json"), "w") as f:
        f.write(rows_as_json(rate, rows, args.threads) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
