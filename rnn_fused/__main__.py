"""Command line: `python -m rnn_fused bench` (installed as `rnn-fused`).

bench: the CPU side-by-side benchmark of rnn_fused.RNN against torch.nn.RNN, printed as a
Markdown table and written as JSON and Markdown to --out.
"""

from __future__ import annotations

import argparse
import os
import sys


def _bench(args: argparse.Namespace) -> int:
    from .benchmark import CPU_SHAPES, cpu_table, format_table, rows_as_json

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnn-fused", description="rnn_fused command line")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="CPU benchmark: rnn_fused.RNN vs torch.nn.RNN")
    bench.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    bench.add_argument("--out", default="bench_out", help="directory for cpu_benchmark.json/.md")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory child runs")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", 1) < 1:
        build_parser().error(f"--threads must be at least 1, got {args.threads}")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
