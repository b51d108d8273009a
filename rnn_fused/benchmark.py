"""Side-by-side timing of rnn_fused.RNN against torch.nn.RNN, from one process and run.

Timing: warm-up, then repeated runs timed with a monotonic clock on the CPU (the ops are
synchronous there) or CUDA events on a GPU, the two implementations alternating run by
run; the median is reported. Achieved GFLOP/s use
the FLOP model below; the GEMM rate that they are compared with is measured in the same
run with the same thread count (the better of a measurement before and one after). Peak memory is measured in a fresh child process per
(implementation, shape) by an allocation meter (malloc_meter.c, preloaded): the peak of
live allocated bytes during one forward+backward, above what was live just before.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

CPU_SHAPES = [  # (T, B, I, H)
    (1000, 8, 32, 64),
    (1000, 1, 32, 128),
    (500, 16, 64, 128),
    (200, 32, 128, 256),
    (100, 64, 512, 1024),
]


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


def gemm_rate(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048) -> float:
    """Achieved FLOP/s of a large square matrix product on this device."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b, out=out), device=device, min_seconds=0.5)
    return 2.0 * size**3 / seconds


def build_pair(shape, device, dtype, seed: int = 0):
    from .modules import RNN

    steps, batch, input_size, hidden = shape
    torch.manual_seed(seed)
    stock = torch.nn.RNN(input_size, hidden).to(device, dtype)
    ours = RNN.from_torch(stock)
    x = torch.randn(steps, batch, input_size, device=device, dtype=dtype)
    grad_out = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
    return stock, ours, x, grad_out


def forward_fn(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def forward_backward_fn(module, x, grad_out):
    params = list(module.parameters())

    def run():
        for p in params:
            p.grad = None
        out, _ = module(x)
        torch.autograd.backward(out, grad_out)
    return run


@dataclass
class Row:
    shape: tuple[int, int, int, int]
    pass_: str
    torch_ms: float
    ours_ms: float
    ratio: float
    gflops: float
    gemm_fraction: float
    torch_peak_mb: float | None = None
    ours_peak_mb: float | None = None


def _malloc_meter_library() -> str:
    """Build (once) the allocation meter that the peak-memory child runs preload."""
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "malloc_meter.c")
    cache = os.path.join(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", "~/.cache")), "rnn_fused")
    os.makedirs(cache, exist_ok=True)
    library = os.path.join(cache, "malloc_meter.so")
    if not os.path.exists(library) or os.path.getmtime(library) < os.path.getmtime(source):
        compiler = os.environ.get("CC", "cc")
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", source, "-o", library], check=True)
    return library


def peak_memory_mb(impl: str, shape, device: str = "cpu") -> float:
    """Peak bytes allocated (MB), above what was live before, during one forward+backward,
    counted by an allocation meter in a fresh process."""
    code = (
        "from rnn_fused.benchmark import _child_peak; "
        f"print(_child_peak({impl!r}, {tuple(shape)!r}, {device!r}))"
    )
    env = dict(os.environ)
    env["LD_PRELOAD"] = _malloc_meter_library()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child_peak(impl: str, shape, device: str) -> float:
    import ctypes

    meter = ctypes.CDLL(None)
    meter.malloc_meter_live_bytes.restype = ctypes.c_long
    meter.malloc_meter_peak_bytes.restype = ctypes.c_long
    torch.set_num_threads(2)
    stock, ours, x, grad_out = build_pair(shape, torch.device(device), torch.float32)
    module = stock if impl == "torch" else ours
    run = forward_backward_fn(module, x, grad_out)
    run()  # the first call creates thread pools and BLAS buffers that stay
    for p in module.parameters():
        p.grad = None
    before = meter.malloc_meter_live_bytes()
    meter.malloc_meter_reset_peak()
    run()
    return (meter.malloc_meter_peak_bytes() - before) / 2**20


def cpu_table(shapes=CPU_SHAPES, threads: int = 2, measure_memory: bool = True, progress=None):
    """Rows for forward and forward+backward at each shape, float32, `threads` threads."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    rate_before = gemm_rate(device)
    rows: list[Row] = []
    for shape in shapes:
        stock, ours, x, grad_out = build_pair(shape, device, torch.float32)
        for pass_, backward in (("fwd", False), ("fwd+bwd", True)):
            make = (lambda m: forward_backward_fn(m, x, grad_out)) if backward else (lambda m: forward_fn(m, x))
            t_torch, t_ours = paired_median_seconds(make(stock), make(ours), device=device)
            flops = layer_flops(*shape, backward=backward)
            row = Row(shape, pass_, t_torch * 1e3, t_ours * 1e3, t_torch / t_ours, flops / t_ours / 1e9, 0.0)
            if backward and measure_memory:
                row.torch_peak_mb = peak_memory_mb("torch", shape)
                row.ours_peak_mb = peak_memory_mb("ours", shape)
            rows.append(row)
            if progress is not None:
                progress(row)
    # The GEMM rate is a ceiling: the better of two measurements, around the table.
    rate = max(rate_before, gemm_rate(device))
    for row in rows:
        row.gemm_fraction = row.gflops * 1e9 / rate
    return rate, rows


def format_table(rate: float, rows: list[Row], threads: int) -> str:
    lines = [
        f"CPU, float32, {threads} threads; large-GEMM rate measured in this run: {rate / 1e9:.1f} GFLOP/s",
        "",
        "| T, B, I, H | pass | nn.RNN ms | rnn_fused ms | ratio | GFLOP/s | % of GEMM rate | peak MB nn.RNN | peak MB rnn_fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mem = ("", "") if r.torch_peak_mb is None else (f"{r.torch_peak_mb:.1f}", f"{r.ours_peak_mb:.1f}")
        lines.append(
            f"| {', '.join(map(str, r.shape))} | {r.pass_} | {r.torch_ms:.2f} | {r.ours_ms:.2f} | "
            f"{r.ratio:.2f}x | {r.gflops:.1f} | {100 * r.gemm_fraction:.0f}% | {mem[0]} | {mem[1]} |"
        )
    return "\n".join(lines)


def rows_as_json(rate: float, rows: list[Row], threads: int) -> str:
    return json.dumps({"device": "cpu", "threads": threads, "gemm_gflops": rate / 1e9,
                       "rows": [asdict(r) for r in rows]}, indent=2)
