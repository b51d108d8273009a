"""Command line: `python -m rnn_fused bench | check | demo` (installed as `rnn-fused`).

bench  rnn_fused.RNN vs torch.nn.RNN: timings, ratios, GFLOP/s, peak memory (benchmark.py);
       with --bptt, what truncation and recorded norms cost and save (bptt_benchmark.py)
check  gradient agreement: gradcheck and parity under the tolerance rule (check.py)
demo   the backpropagation-through-time experiments, as a Markdown report (demo.py)

Each prints a table, writes JSON and PNG figures to --out, shows progress on stderr and
exits non-zero on failure. Argument errors exit with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import sys

import torch

DEVICES = ("cpu", "cuda")


def device_argument(text: str) -> torch.device:
    if text not in DEVICES:
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (choose {' or '.join(DEVICES)})")
    if text == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError("cuda was asked for but no CUDA device is available "
                                         "(torch.cuda.is_available() is False); use --device cpu")
    return torch.device(text)


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shapes_argument(text: str) -> list[tuple[int, int, int, int]]:
    """'T,B,I,H[;T,B,I,H...]' -> [(T, B, I, H), ...], every size a positive integer."""
    shapes = []
    for group in text.split(";"):
        fields = [f.strip() for f in group.split(",")]
        if len(fields) != 4 or not all(f.isdigit() and int(f) > 0 for f in fields):
            raise argparse.ArgumentTypeError(
                f"{group.strip()!r} is not four positive integers T,B,I,H; expected the form "
                "T,B,I,H[;T,B,I,H...], e.g. '1000,8,32,64;200,32,128,256'")
        shapes.append(tuple(int(f) for f in fields))
    return shapes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seeds_argument(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]."""
    fields = [f.strip() for f in text.split(",")]
    if not all(f.isdigit() for f in fields):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of non-negative integers")
    return [int(f) for f in fields]


def _bench(args: argparse.Namespace) -> int:
    from . import benchmark

    if args.bptt:
        from . import bptt_benchmark

        if args.shapes is not None:
            raise SystemExit("rnn-fused bench: --bptt measures its own shapes; drop --shapes")
        return bptt_benchmark.run(device=args.device or best_device(), threads=args.threads, quick=args.quick,
                                  out=args.out)
    return benchmark.run(device=args.device or best_device(), shapes=args.shapes,
                         threads=args.threads, measure_memory=not args.no_memory,
                         quick=args.quick, out=args.out)


def _check(args: argparse.Namespace) -> int:
    from . import check

    return check.run(device=args.device or best_device(), threads=args.threads,
                     emulated=not args.no_emulated, quick=args.quick, out=args.out)


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(seeds=args.seeds, threads=args.threads, quick=args.quick, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnn-fused", description="rnn_fused command line")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run, default_out: str, threads: int, with_device: bool = True):
        sub = commands.add_parser(name, help=help, description=help)
        if with_device:
            sub.add_argument("--device", type=device_argument, default=None,
                             help="cpu or cuda (default: cuda if available, else cpu)")
        sub.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
        sub.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (seconds)")
        sub.add_argument("--threads", type=positive_int, default=threads,
                         help=f"CPU intra-op threads (default {threads})")
        sub.set_defaults(run=run)
        return sub

    bench = command("bench", "rnn_fused.RNN vs torch.nn.RNN: time, ratio, GFLOP/s, peak memory",
                    _bench, "bench_out", 2)
    bench.add_argument("--shapes", type=shapes_argument, default=None,
                       help="T,B,I,H[;T,B,I,H...] (default: a grid for the device)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    bench.add_argument("--bptt", action="store_true",
                       help="instead: the overhead of recorded gradient norms and truncation over plain "
                            "forward+backward, and the speed-up over hooks and detach loops at T = 1000")

    check = command("check", "gradient agreement: float64 gradcheck and parity with nn.RNN and a "
                    "float64 reference, on the device and through the emulated CUDA kernels",
                    _check, "check_out", 2)
    check.add_argument("--no-emulated", action="store_true",
                       help="skip the rows of the CUDA kernels run by the SIMT emulator")

    # On the CPU with one thread: the demo's models are tiny, and more threads only add
    # synchronisation (and, on a busy machine, waiting for a core).
    demo = command("demo", "the backpropagation-through-time experiments, reproduced with "
                   "rnn_fused kernels on the CPU, as a Markdown report with figures", _demo, "demo_out", 1,
                   with_device=False)
    demo.add_argument("--seeds", type=seeds_argument, default=None,
                      help="training seeds, e.g. 0,1,2 (default 0-4; --quick: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
