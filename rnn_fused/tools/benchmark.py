"""Side-by-side timing of rnn_fused.RNN against torch.nn.RNN, from one process and run
(`rnn-fused bench`).

Timing: warm-up, then repeated runs timed with a monotonic clock on the CPU (the ops are
synchronous there) or CUDA events on a GPU, the two implementations alternating run by
run; the median is reported. On a GPU the baseline is nn.RNN on cuDNN with TF32 off for
both. Achieved GFLOP/s use the FLOP model below; the GEMM rate that they are compared with
is measured in the same run with the same thread count (the better of a measurement before
and one after). Peak memory on the CPU is measured in a fresh child process per
(implementation, shape) by an allocation meter (malloc_meter.c, built with the package as
libmalloc_meter.so and preloaded): the peak of live allocated bytes during one
forward+backward, above what was live just before; on a GPU by the caching allocator's
peak statistics, the same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .testing import true_float32_on_cuda

CPU_SHAPES = [  # (T, B, I, H)
    (1000, 8, 32, 64),
    (1000, 1, 32, 128),
    (500, 16, 64, 128),
    (200, 32, 128, 256),
    (100, 64, 512, 1024),
]
# A shape may carry a fifth element, its directions: 2 for one bidirectional layer, a sixth,
# its layers, and a seventh, PACKED: the input a PackedSequence of uneven lengths
# (packed_lengths), as a training loop over sentences feeds nn.RNN. The CPU table adds a
# bidirectional layer (its two time loops at once: docs/architecture.md, "The CPU backend") and
# two packed batches (whose GEMMs multiply only the valid steps' rows, as nn.RNN's do; the short
# one of large layers, whose inference ran below nn.RNN's speed in the padded layout).
BIDIRECTIONAL = 2
PACKED = "packed"
CPU_BENCH_SHAPES = CPU_SHAPES + [(1000, 8, 32, 64, BIDIRECTIONAL), (100, 64, 256, 512, 1, 1, PACKED),
                                 (10, 256, 512, 512, 1, 1, PACKED)]
# Long and short sequences, batch 1 to 128, hidden 128 to 1024 (all of which the planner
# keeps on chip on an H100-class GPU).
CUDA_SHAPES = [
    (1000, 1, 128, 128),
    (1000, 8, 256, 256),
    (1000, 32, 512, 512),
    (1000, 128, 1024, 1024),
    (100, 32, 256, 256),
    (100, 128, 1024, 1024),
]
QUICK_SHAPES = [(20, 2, 4, 8), (10, 4, 8, 16)]
# One very long sequence per device (docs/long_sequences.md). cuDNN refuses the CUDA one
# (CUDNN_STATUS_NOT_SUPPORTED on an H200, 2026-11-30: rnn_fused ran it in 1.09 s forward +
# backward), so its row must show the baseline as refused rather than fail the run; on the
# CPU nn.RNN's autograd over 100,000 steps is slow, so time that row with few repeats.
LONG_SEQUENCE_SHAPES = {"cpu": (100_000, 4, 32, 64), "cuda": (100_000, 4, 256, 256)}


def default_shapes(device: torch.device) -> list[tuple[int, ...]]:
    return CUDA_SHAPES if device.type == "cuda" else CPU_BENCH_SHAPES


def directions_of(shape) -> int:
    """1, or 2 for a shape (T, B, I, H, 2): one bidirectional layer."""
    return shape[4] if len(shape) > 4 else 1


def layers_of(shape) -> int:
    """1, or L for a shape (T, B, I, H, directions, L): a stack of L layers."""
    return shape[5] if len(shape) > 5 else 1


def packed_of(shape) -> bool:
    """Whether a shape's input is a PackedSequence (its seventh element PACKED)."""
    return len(shape) > 6 and shape[6] == PACKED


def packed_lengths(steps: int, batch: int) -> list[int]:
    """A packed row's sample lengths: from T down to about T / 4, evenly, in decreasing order
    (what pack_padded_sequence's enforce_sorted asks)."""
    shortest = max(1, steps // 4)
    return [steps - (b * (steps - shortest)) // max(batch - 1, 1) for b in range(batch)]


def shape_label(shape) -> str:
    """'T, B, I, H', with ', L layers' for a stack, ', bidirectional' for bidirectional layers
    and ', packed' for a PackedSequence."""
    layers = layers_of(shape)
    return (", ".join(map(str, shape[:4])) + (f", {layers} layers" if layers > 1 else "")
            + (", bidirectional" if directions_of(shape) == BIDIRECTIONAL else "")
            + (", packed" if packed_of(shape) else ""))


def shape_flops(shape, backward: bool) -> float:
    """layer_flops of every layer and direction of a shape (the layers above the first with their
    input's gradient, 2 rows H I more backward); a packed batch's over its valid steps alone
    (the sum of its lengths)."""
    steps, batch, input_size, hidden = shape[:4]
    directions = directions_of(shape)
    rows = sum(packed_lengths(steps, batch)) if packed_of(shape) else steps * batch
    upper_input = directions * hidden
    upper = layer_flops(rows, 1, upper_input, hidden, backward) + (2.0 * rows * hidden * upper_input if backward else 0)
    return directions * (layer_flops(rows, 1, input_size, hidden, backward) + (layers_of(shape) - 1) * upper)


@dataclass(frozen=True)
class Timing:
    """How long each measurement runs: runs alternate until both minimums are met."""

    min_repeats: int = 7
    min_seconds: float = 2.0
    gemm_size: int | None = None  # None: 2048 on a CPU, 4096 on a GPU


QUICK_TIMING = Timing(min_repeats=3, min_seconds=0.0, gemm_size=256)


def layer_flops(steps: int, batch: int, input_size: int, hidden: int, backward: bool) -> float:
    """Multiply-adds x 2 of one layer. Forward: input projection + recurrence, 2TBH(I+H).
    Backward without the input gradient (the input needs none here): recurrence, dW_hh and
    dW_ih, 2TBH(I+2H)."""
    forward = 2.0 * steps * batch * hidden * (input_size + hidden)
    if not backward:
        return forward
    return forward + 2.0 * steps * batch * hidden * (input_size + 2 * hidden)


def median_seconds(fn, *, device: torch.device, min_repeats: int = 5, min_seconds: float = 1.0,
                   max_repeats: int = 200, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_seconds):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_median_seconds(fn_a, fn_b, *, device: torch.device, min_repeats: int = 7,
                          min_seconds: float = 2.0, max_repeats: int = 200) -> tuple[float, float]:
    """Medians of fn_a and fn_b timed alternately (a, b, a, b, ...), so that a slow spell
    of a noisy machine hits both alike instead of one of them."""
    for fn in (fn_a, fn_b, fn_a, fn_b):
        fn()
    times_a: list[float] = []
    times_b: list[float] = []
    start = time.perf_counter()
    while len(times_a) < max_repeats and (len(times_a) < min_repeats or time.perf_counter() - start < min_seconds):
        times_a.append(median_seconds(fn_a, device=device, min_repeats=1, min_seconds=0, max_repeats=1, warmup=0))
        times_b.append(median_seconds(fn_b, device=device, min_repeats=1, min_seconds=0, max_repeats=1, warmup=0))
    return statistics.median(times_a), statistics.median(times_b)


def gemm_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None) -> float:
    """Achieved FLOP/s of a large square matrix product on this device."""
    size = size or (4096 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b, out=out), device=device, min_seconds=0.5)
    return 2.0 * size**3 / seconds


def build_pair(shape, device, dtype, seed: int = 0):
    from ..modules import RNN

    steps, batch, input_size, hidden = shape[:4]
    directions = directions_of(shape)
    torch.manual_seed(seed)
    stock = torch.nn.RNN(input_size, hidden, layers_of(shape), bidirectional=directions == BIDIRECTIONAL)
    stock = stock.to(device, dtype)
    ours = RNN.from_torch(stock)
    x = torch.randn(steps, batch, input_size, device=device, dtype=dtype)
    grad_out = torch.randn(steps, batch, directions * hidden, device=device, dtype=dtype)
    if packed_of(shape):  # the packed batch, and the gradient of the packed output's data [N, D*H]
        lengths = packed_lengths(steps, batch)
        x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths)
        grad_out = torch.randn(sum(lengths), directions * hidden, device=device, dtype=dtype)
    return stock, ours, x, grad_out


def forward_fn(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def output_tensor(output):
    """A module's output as one tensor: a PackedSequence's data [N, D*H], else itself."""
    return output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output


def forward_backward_fn(module, x, grad_out):
    params = list(module.parameters())

    def run():
        for p in params:
            p.grad = None
        out, _ = module(x)
        torch.autograd.backward(output_tensor(out), grad_out)
    return run


def backward_fn(forward, leaves, grad_out):
    """The backward pass alone: `forward()` (returning the output) runs once here, with autograd
    on, and each call of the returned function computes the gradients of `leaves` through that
    graph (retained, and nothing accumulated into .grad), so a timing of it holds no forward."""
    out = forward()
    leaves = list(leaves)

    def run():
        return torch.autograd.grad(out, leaves, grad_out, retain_graph=True)
    return run


@dataclass
class Row:
    shape: tuple[int, ...]  # (T, B, I, H) or (T, B, I, H, directions)
    pass_: str
    torch_ms: float  # nan where nn.RNN refused the shape (baseline_note says why)
    ours_ms: float
    ratio: float
    gflops: float
    gemm_fraction: float
    torch_peak_mb: float | None = None
    ours_peak_mb: float | None = None
    baseline_note: str | None = None


def baseline_refusal(error: BaseException) -> str | None:
    """'cuDNN: not supported' when `error` is cuDNN refusing a shape (CUDNN_STATUS_NOT_SUPPORTED),
    else None: any other error is a real failure and must propagate."""
    if isinstance(error, RuntimeError) and "CUDNN_STATUS_NOT_SUPPORTED" in str(error):
        return "cuDNN: not supported"
    return None


def refused_by_baseline(run) -> str | None:
    """Runs the baseline once: None if it ran, the refusal if cuDNN refused the shape."""
    try:
        run()
    except RuntimeError as error:
        refusal = baseline_refusal(error)
        if refusal is None:
            raise
        return refusal
    return None



# Built by setup.py next to this file (the package's build_ext), never at run time.
MALLOC_METER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmalloc_meter.so")


def _metered_environment() -> dict[str, str]:
    """The environment of a child process whose allocations the meter counts."""
    return dict(os.environ, LD_PRELOAD=MALLOC_METER)


def malloc_meter_problem() -> str | None:
    """None when the allocation meter can be preloaded into a child process, else why not,
    in one line. Asked before any measurement (the probe child does not import torch)."""
    if not os.path.isfile(MALLOC_METER):
        return (f"the allocation meter {MALLOC_METER} is missing (it is built with the package: `make build` "
                "in a checkout, or reinstall with `pip install --no-build-isolation .`)")
    probe = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL(None).malloc_meter_peak_bytes"],
                           capture_output=True, text=True, env=_metered_environment())
    if probe.returncode != 0:
        lines = [line.strip() for line in probe.stderr.splitlines() if line.strip()]
        return f"the allocation meter {MALLOC_METER} could not be preloaded ({lines[-1] if lines else 'no message'})"
    return None


def peak_memory_mb(impl: str, shape, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Peak bytes allocated (MB), above what was live before, during one forward+backward,
    counted by an allocation meter in a fresh process."""
    code = (
        "import torch; from rnn_fused.tools.benchmark import _child_peak; "
        f"print(_child_peak({impl!r}, {tuple(shape)!r}, {device!r}, {dtype}))"
    )
    env = _metered_environment()
    # The child imports this same rnn_fused: the folder that holds the package comes first.
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child_peak(impl: str, shape, device: str, dtype: torch.dtype = torch.float32) -> float:
    import ctypes

    meter = ctypes.CDLL(None)
    meter.malloc_meter_live_bytes.restype = ctypes.c_long
    meter.malloc_meter_peak_bytes.restype = ctypes.c_long
    torch.set_num_threads(2)
    stock, ours, x, grad_out = build_pair(shape, torch.device(device), dtype)
    module = stock if impl == "torch" else ours
    run = forward_backward_fn(module, x, grad_out)
    run()  # the first call creates thread pools and BLAS buffers that stay
    for p in module.parameters():
        p.grad = None
    before = meter.malloc_meter_live_bytes()
    meter.malloc_meter_reset_peak()
    run()
    return (meter.malloc_meter_peak_bytes() - before) / 2**20


def cuda_peak_memory_mb(module, x, grad_out) -> float:
    """Peak bytes (MB) the caching allocator handed out during one forward+backward, above
    what was allocated just before."""
    run = forward_backward_fn(module, x, grad_out)
    run()
    for p in module.parameters():
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


@dataclass
class BenchResult:
    device: str                # "cpu" or "cuda"
    device_name: str
    threads: int | None        # intra-op threads (CPU)
    gemm_rate: float           # FLOP/s of a large float32 matrix product, this run
    rows: list[Row]
    memory_note: str | None = None  # why the peak-memory columns are empty, when they are


@contextlib.contextmanager
def _benchmark_settings(device: torch.device, threads: int):
    """CPU: `threads` intra-op threads; GPU: TF32 off (an honest float32 cuDNN baseline)."""
    if device.type == "cuda":
        with true_float32_on_cuda():
            yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def measure_table(shapes, device: torch.device, threads: int = 2, measure_memory: bool = True,
                  timing: Timing = Timing(), progress=None) -> BenchResult:
    """Rows for forward and forward+backward at each (T, B, I, H[, directions]) shape, float32,
    one layer; progress(row) is called after each row."""
    with _benchmark_settings(device, threads):
        rate_before = gemm_rate(device, size=timing.gemm_size)
        rows: list[Row] = []
        for shape in shapes:
            stock, ours, x, grad_out = build_pair(shape, device, torch.float32)
            for pass_, backward in (("fwd", False), ("fwd+bwd", True)):
                make = (lambda m: forward_backward_fn(m, x, grad_out)) if backward else (lambda m: forward_fn(m, x))
                refusal = refused_by_baseline(make(stock)) if device.type == "cuda" else None
                if refusal is None:
                    t_torch, t_ours = paired_median_seconds(make(stock), make(ours), device=device,
                                                            min_repeats=timing.min_repeats,
                                                            min_seconds=timing.min_seconds)
                else:
                    t_torch = math.nan
                    t_ours = median_seconds(make(ours), device=device, min_repeats=timing.min_repeats,
                                            min_seconds=timing.min_seconds)
                flops = shape_flops(shape, backward)
                row = Row(shape, pass_, t_torch * 1e3, t_ours * 1e3, t_torch / t_ours, flops / t_ours / 1e9, 0.0,
                          baseline_note=refusal)
                if backward and measure_memory and refusal is None:
                    if device.type == "cuda":
                        row.torch_peak_mb = cuda_peak_memory_mb(stock, x, grad_out)
                        row.ours_peak_mb = cuda_peak_memory_mb(ours, x, grad_out)
                    else:
                        row.torch_peak_mb = peak_memory_mb("torch", shape)
                        row.ours_peak_mb = peak_memory_mb("ours", shape)
                rows.append(row)
                if progress is not None:
                    progress(row)
        # The GEMM rate is a ceiling: the better of two measurements, around the table.
        rate = max(rate_before, gemm_rate(device, size=timing.gemm_size))
    for row in rows:
        row.gemm_fraction = row.gflops * 1e9 / rate
    if device.type == "cuda":
        return BenchResult("cuda", torch.cuda.get_device_name(device), None, rate, rows)
    return BenchResult("cpu", "CPU", threads, rate, rows)


def format_table(result: BenchResult) -> str:
    if result.device == "cuda":
        header = (f"{result.device_name}, float32, nn.RNN on cuDNN, TF32 off; "
                  f"large-GEMM rate measured in this run: {result.gemm_rate / 1e9:.1f} GFLOP/s")
    else:
        header = (f"CPU, float32, {result.threads} threads; "
                  f"large-GEMM rate measured in this run: {result.gemm_rate / 1e9:.1f} GFLOP/s")
    lines = [
        header,
        "",
        "| T, B, I, H | pass | nn.RNN ms | rnn_fused ms | ratio | GFLOP/s | % of GEMM rate | peak MB nn.RNN | peak MB rnn_fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if result.memory_note is not None:
        lines[1:1] = ["", f"Peak memory not measured: {result.memory_note}."]
    for r in result.rows:
        mem = ("", "") if r.torch_peak_mb is None else (f"{r.torch_peak_mb:.1f}", f"{r.ours_peak_mb:.1f}")
        torch_ms, ratio = (r.baseline_note, "") if r.baseline_note else (f"{r.torch_ms:.2f}", f"{r.ratio:.2f}x")
        lines.append(
            f"| {shape_label(r.shape)} | {r.pass_} | {torch_ms} | {r.ours_ms:.2f} | "
            f"{ratio} | {r.gflops:.1f} | {100 * r.gemm_fraction:.0f}% | {mem[0]} | {mem[1]} |"
        )
    return "\n".join(lines)


def result_as_json(result: BenchResult) -> dict:
    return {"device": result.device, "device_name": result.device_name, "threads": result.threads,
            "torch": torch.__version__, "gemm_gflops": result.gemm_rate / 1e9,
            "ratio": "nn.RNN ms / rnn_fused ms (> 1: rnn_fused faster)", "memory_note": result.memory_note,
            "rows": [asdict(r) for r in result.rows]}


def plot_ratios(result: BenchResult, ax) -> None:
    """Grouped bars: the ratio nn.RNN time / rnn_fused time per shape, forward and
    forward+backward, with the break-even line."""
    shapes = list(dict.fromkeys(r.shape for r in result.rows))
    width = 0.4
    for offset, pass_ in ((-width / 2, "fwd"), (width / 2, "fwd+bwd")):
        ratios = {r.shape: r.ratio for r in result.rows if r.pass_ == pass_}
        xs = [i + offset for i, shape in enumerate(shapes) if shape in ratios]
        bars = ax.bar(xs, [ratios[shape] for shape in shapes if shape in ratios], width, label=pass_)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(shapes)), [shape_label(s).replace(", bidirectional", " x2").replace(", ", ",")
                                       for s in shapes], fontsize=8, rotation=15)
    ax.set_xlabel("T, B, I, H (x2: bidirectional)")
    ax.set_ylabel("nn.RNN time / rnn_fused time")
    baseline = "cuDNN" if result.device == "cuda" else "CPU"
    ax.set_title(f"rnn_fused vs torch.nn.RNN ({baseline}), float32: > 1 means rnn_fused is faster")
    ax.legend()


# `bench --long`: one very long sequence per device, timed once (nn.RNN on the CPU takes about
# a minute for it; cuDNN refuses it: docs/long_sequences.md). --quick shortens it.
LONG_QUICK_STEPS = 2_000


def run(*, device: torch.device, shapes, threads: int, measure_memory: bool, quick: bool,
        out: str, long: bool = False) -> int:
    """`rnn-fused bench`: measure, print the table, write <device>_benchmark.{md,json,png}.
    long: instead, the very long sequence LONG_SEQUENCE_SHAPES[device], one timed run each."""
    from .command_output import figure, prepare_output, progress_bar, save_figure, write_json, write_text

    prepare_output(out)
    memory_note = None if measure_memory else "--no-memory"
    if measure_memory and device.type == "cpu":
        problem = malloc_meter_problem()
        if problem is not None:
            print(f"rnn-fused bench: {problem}; the peak-memory columns stay empty", file=sys.stderr)
            measure_memory, memory_note = False, problem
    timing = QUICK_TIMING if quick else Timing()
    if long:
        steps, batch, input_size, hidden = LONG_SEQUENCE_SHAPES[device.type]
        shapes = [(LONG_QUICK_STEPS if quick else steps, batch, input_size, hidden)]
        timing = Timing(min_repeats=1, min_seconds=0.0, gemm_size=timing.gemm_size)
    shapes = shapes if shapes is not None else (QUICK_SHAPES if quick else default_shapes(device))
    with progress_bar(2 * len(shapes), f"bench on {device.type}") as bar:
        def progress(row: Row) -> None:
            bar.set_postfix_str(f"({shape_label(row.shape)}) {row.pass_}: {row.ratio:.2f}x")
            bar.update()

        result = measure_table(shapes, device, threads, measure_memory, timing, progress)
    result.memory_note = memory_note
    table = format_table(result)
    print(table)
    stem = f"{result.device}_{'long_sequence' if long else 'benchmark'}"
    write_text(out, stem + ".md", table)
    write_json(out, stem + ".json", result_as_json(result))
    fig, ax = figure(width=max(7.0, 1.2 * len(shapes)))
    plot_ratios(result, ax)
    save_figure(fig, out, stem + "_ratios.png")
    return 0
