"""Overhead of truncation and in-kernel gradient norms, and speed-up over the PyTorch way
of getting the same numbers (rnn_fused/bptt_benchmark.py). Prints two Markdown tables and
writes them, with the raw numbers as JSON, to --out.

Usage: python benchmarks/bptt_overhead.py [--threads 2] [--out bench_out] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from rnn_fused import bptt_benchmark as bb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    timing = dict(min_repeats=2, min_seconds=0.0) if args.quick else {}
    overhead_shapes = [(20, 2, 4, 8)] if args.quick else bb.CPU_SHAPES
    way_shapes = [(30, 2, 4, 8)] if args.quick else bb.PYTORCH_WAY_SHAPES
    every = 5 if args.quick else bb.PYTORCH_WAY_K

    def show(row):
        print(f"  {row}", file=sys.stderr, flush=True)

    overhead = bb.overhead_rows(overhead_shapes, progress=show, **timing)
    way = bb.pytorch_way_rows(way_shapes, every, progress=show, **timing)
    text = (f"CPU, float32, {args.threads} threads, forward+backward, medians of alternating runs\n\n"
            + bb.format_overhead(overhead) + "\n\n" + bb.format_pytorch_way(way))
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bptt_overhead.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "bptt_overhead.json"), "w") as f:
        f.write(bb.as_json(overhead, way, args.threads) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
