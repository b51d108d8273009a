"""Command line: `python -m rnn_fused bench | check | demo | gpu-check | fit-model` (installed as `rnn-fused`).

bench      rnn_fused.RNN vs torch.nn.RNN: timings, ratios, GFLOP/s, peak memory (benchmark.py);
           with --bptt, what truncation and recorded norms cost and save (bptt_benchmark.py)
check      gradient agreement: gradcheck and parity under the tolerance rule (check.py)
demo       the backpropagation-through-time experiments, as a Markdown report (demo.py)
gpu-check  rnn_fused vs cuDNN with the planner's predicted and measured time per step and
           every path forced (gpu_check.py); needs neither tqdm nor matplotlib
fit-model  the cost model's constants refitted to gpu-check's measurements (fit_model.py)

Each prints a table, writes JSON and PNG figures to --out and shows progress on stderr.
Exit status (docs/cli.md): 0 done; 1 a check failed; 2 a usage error (bad argument,
unusable --out, missing optional package), found before any work and told in one line on
stderr; 3 anything else, told in one line (the traceback with --debug).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback

import torch

from .command_output import UsageError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
MAX_SEED = 2**32 - 1


class Parser(argparse.ArgumentParser):
    """argparse with its error told in one line (argparse prints the usage text first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def device_argument(text: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N' with N a visible CUDA device."""
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if match is None or (match[1] == "cpu" and match[2] is not None):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (choose cpu, cuda or cuda:N)")
    if match[1] == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} was asked for but no CUDA device is available "
                                         "(torch.cuda.is_available() is False); use --device cpu")
    if match[2] is None:
        return torch.device("cuda")
    count = torch.cuda.device_count()
    if int(match[2]) >= count:
        allowed = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise argparse.ArgumentTypeError(f"{text} was asked for but torch.cuda.device_count() is {count}; "
                                         f"use {allowed}")
    return torch.device("cuda", int(match[2]))


def best_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shapes_argument(text: str) -> list[tuple[int, ...]]:
    """'T,B,I,H[,D][;T,B,I,H[,D]...]' -> [(T, B, I, H), (T, B, I, H, 2), ...]: four positive
    integers, then optionally the directions, 1 or 2 (2: one bidirectional layer; 1 is dropped)."""
    shapes = []
    for group in text.split(";"):
        fields = [f.strip() for f in group.split(",")]
        sizes_ok = len(fields) in (4, 5) and all(f.isdigit() and int(f) > 0 for f in fields[:4])
        if not sizes_ok or (len(fields) == 5 and fields[4] not in ("1", "2")):
            raise argparse.ArgumentTypeError(
                f"{group.strip()!r} is not four positive integers T,B,I,H, optionally followed by the directions "
                "D (1 or 2); expected the form T,B,I,H[,D][;T,B,I,H[,D]...], e.g. '1000,8,32,64;1000,8,32,64,2'")
        shape = tuple(int(f) for f in fields)
        shapes.append(shape[:4] if shape[4:] == (1,) else shape)
    return shapes


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def seeds_argument(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]: distinct integers from 0 to 2^32 - 1."""
    fields = [f.strip() for f in text.split(",")]
    if not all(f.isdigit() for f in fields):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of non-negative integers")
    seeds = [int(f) for f in fields]
    if max(seeds) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {max(seeds)} is out of range (0 to {MAX_SEED})")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice; each seed is one training run")
    return seeds


def _bench(args: argparse.Namespace) -> int:
    if args.long and (args.shapes is not None or args.bptt):
        raise UsageError("--long measures its own shape; drop --shapes and --bptt")
    if args.bptt:
        if args.shapes is not None:
            raise UsageError("--shapes does not apply to --bptt (it measures its own shapes); drop --shapes")
        if args.no_memory:
            raise UsageError("--no-memory does not apply to --bptt (it measures no memory); drop --no-memory")
        from . import bptt_benchmark

        return bptt_benchmark.run(device=args.device or best_device(), threads=args.threads, quick=args.quick,
                                  out=args.out)
    from . import benchmark

    return benchmark.run(device=args.device or best_device(), shapes=args.shapes,
                         threads=args.threads, measure_memory=not args.no_memory,
                         quick=args.quick, out=args.out, long=args.long)


def _check(args: argparse.Namespace) -> int:
    from . import check

    return check.run(device=args.device or best_device(), threads=args.threads,
                     emulated=not args.no_emulated, quick=args.quick, out=args.out)


def _gpu_check(args: argparse.Namespace) -> int:
    if args.emulated:
        if args.device is not None and args.device.type != "cpu":
            raise UsageError(f"--emulated rehearses on the CPU; drop --device {args.device}")
        device = torch.device("cpu")
    else:
        device = args.device or best_device()
        if device.type != "cuda":
            raise UsageError("gpu-check measures a CUDA device and none was chosen (torch.cuda.is_available() is "
                             f"{torch.cuda.is_available()}); add --emulated to rehearse it on the CPU")
    from . import gpu_check

    return gpu_check.run(device=device, emulated=args.emulated, quick=args.quick, budget_s=args.budget_s,
                         threads=args.threads, out=args.out, min_seconds=args.min_seconds)


def _fit_model(args: argparse.Namespace) -> int:
    from . import fit_model

    return fit_model.run(args.report, args.out, args.hold)


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    return demo.run(seeds=args.seeds, threads=args.threads, quick=args.quick, out=args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rnn-fused", description="rnn_fused command line",
                    epilog="exit status: 0 done, 1 a check failed, 2 usage error, 3 unexpected error "
                           "(details: --debug)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run, default_out: str, threads: int, with_device: bool = True):
        sub = commands.add_parser(name, help=help, description=help)
        if with_device:
            sub.add_argument("--device", type=device_argument, default=None,
                             help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
        sub.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
        sub.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (seconds)")
        sub.add_argument("--threads", type=positive_int, default=threads,
                         help=f"CPU intra-op threads (default {threads})")
        sub.add_argument("--debug", action="store_true",
                         help="on an unexpected error, print the full traceback instead of one line")
        sub.set_defaults(run=run)
        return sub

    bench = command("bench", "rnn_fused.RNN vs torch.nn.RNN: time, ratio, GFLOP/s, peak memory",
                    _bench, "bench_out", 2)
    bench.add_argument("--shapes", type=shapes_argument, default=None,
                       help="T,B,I,H[,D][;T,B,I,H[,D]...], D = 2 for a bidirectional layer (default: a grid "
                            "for the device)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    bench.add_argument("--long", action="store_true",
                       help="instead: one very long sequence (T = 100,000), rnn_fused against nn.RNN, one timed "
                            "run each (on a GPU cuDNN refuses it: reported as not supported)")
    bench.add_argument("--bptt", action="store_true",
                       help="instead: the overhead of recorded gradient norms and truncation over plain "
                            "forward+backward, and the speed-up over hooks and detach loops at T = 1000")

    check = command("check", "gradient agreement: float64 gradcheck and parity with nn.RNN and a "
                    "float64 reference, on the device and through the emulated CUDA kernels",
                    _check, "check_out", 2)
    check.add_argument("--no-emulated", action="store_true",
                       help="skip the rows of the CUDA kernels run by the SIMT emulator")

    gpu = command("gpu-check", "rnn_fused vs cuDNN on a GPU, with the planner's predicted and the measured "
                  "time per step, every recurrence path forced on a few shapes, and the cost model's constants "
                  "measured (docs/gpu_check.md)", _gpu_check, "gpu_out", 2)
    gpu.add_argument("--emulated", action="store_true",
                     help="rehearse on the CPU: the CUDA kernels through the SIMT emulator at tiny sizes, nn.RNN "
                          "on the CPU for cuDNN (the test suite's run; the numbers mean nothing)")
    gpu.add_argument("--budget-s", type=positive_int, default=240,
                     help="stop starting new rows after this many seconds (default 240); the rest are listed as "
                          "skipped")
    gpu.add_argument("--min-seconds", type=positive_float, default=None,
                     help="run each measurement at least this long (default 0.3 on a GPU; at least 7 runs "
                          "whatever it is): less fits more rows into a short session, at more noise")

    fit = commands.add_parser("fit-model", help="the cost model's constants refitted to a gpu-check run's "
                              "measured times per step (docs/gpu_check.md)",
                              description="the cost model's constants refitted to a gpu-check run's measured "
                              "times per step: every row's ratio before and after, and the constants to put in "
                              "csrc/cuda/recurrence_cost_model.h (docs/gpu_check.md)")
    fit.add_argument("report", help="gpu-check's JSON (gpu_out/gpu_check.json), or stored autotuning timings "
                     "(tests/data/h200_autotune_2026-11-30.json)")
    fit.add_argument("--hold", action="append", default=[], metavar="NAME[=VALUE]",
                     help="keep a constant at VALUE (or at this build's value) instead of fitting it; repeat, or "
                     "separate names with commas")
    fit.add_argument("--out", default="gpu_out", help="output directory for fit_model.md and fit_model.json "
                     "(default gpu_out)")
    fit.add_argument("--debug", action="store_true",
                     help="on an unexpected error, print the full traceback instead of one line")
    fit.set_defaults(run=_fit_model)

    # On the CPU with one thread: the demo's models are tiny, and more threads only add
    # synchronisation (and, on a busy machine, waiting for a core).
    demo = command("demo", "the backpropagation-through-time experiments, reproduced with "
                   "rnn_fused kernels on the CPU, as a Markdown report with figures", _demo, "demo_out", 1,
                   with_device=False)
    demo.add_argument("--seeds", type=seeds_argument, default=None,
                      help="training seeds, e.g. 0,1,2 (default 0-4; --quick: 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status (argparse's --help and errors included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2)
        return EXIT_OK if exit_.code is None else exit_.code
    prog = f"{parser.prog} {args.command}"
    device = getattr(args, "device", None)
    # cuda:N: CUDA events, streams and allocator statistics follow the current device.
    on_device = contextlib.nullcontext()
    if device is not None and device.type == "cuda":
        on_device = torch.cuda.device(device)
    try:
        with on_device:
            return args.run(args)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        else:
            print(f"{prog}: unexpected error: {one_line(error)} (run again with --debug for the traceback)",
                  file=sys.stderr)
        return EXIT_UNEXPECTED


def one_line(error: BaseException) -> str:
    """'Type: first line of the message' (torch's messages can run to a C++ stack trace)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
