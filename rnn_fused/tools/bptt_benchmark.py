"""What truncation and in-kernel gradient norms cost, and what they save.

1. Overhead: forward+backward of rnn_fused.RNN with norms recorded and/or truncation,
   against the same module with full BPTT and nothing recorded, timed alternately
   (benchmark.paired_median_seconds) at the CPU benchmark shapes.
2. The PyTorch way of getting the same numbers at T = 1000: per-step gradient norms need
   the hidden states, so a step loop with a hook on every h_t; truncation every K steps is
   nn.RNN run chunk by chunk with the state detached in between (and the step loop
   detaching every K steps when norms are wanted as well).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .benchmark import (CPU_SHAPES, QUICK_TIMING, Timing, _benchmark_settings, build_pair, layers_of,
                        paired_median_seconds, shape_label)
from ..recording import record_gradients
from ..truncation import RandomTruncation
from .command_output import markdown_table

# Variants of the fused forward+backward, each against full BPTT with nothing recorded.
OVERHEAD_VARIANTS = {
    "norms": dict(record=True, truncation=None),
    "K=10": dict(record=False, truncation=10),
    "random p=0.9": dict(record=False, truncation=RandomTruncation(0.9, seed=1)),
    "norms + random p=0.9": dict(record=True, truncation=RandomTruncation(0.9, seed=1)),
}
PYTORCH_WAY_SHAPES = [(1000, 8, 32, 64), (1000, 1, 32, 128), (1000, 16, 64, 128)]
PYTORCH_WAY_K = 50
QUICK_OVERHEAD_SHAPES = [(20, 2, 4, 8)]
QUICK_PYTORCH_WAY_SHAPES = [(30, 2, 4, 8)]
QUICK_K = 5


def fused_step(module, x, grad_out, *, record: bool, truncation):
    """One forward+backward of an rnn_fused.RNN; returns the per-step norms when recorded."""
    params = list(module.parameters())

    def run():
        for p in params:
            p.grad = None
        if record:
            with record_gradients(module) as rec:
                out, _ = module(x, truncation=truncation)
            torch.autograd.backward(out, grad_out)
            return rec.step_norms
        out, _ = module(x, truncation=truncation)
        torch.autograd.backward(out, grad_out)
        return None
    return run


def hook_step_loop(stock: torch.nn.RNN, x, grad_out, *, every: int | None):
    """The same numbers from stock PyTorch: a tanh step loop over nn.RNN's weights with a
    hook on every h_t (the gradient arriving there), detaching every `every` steps."""
    w_ih, w_hh, b_ih, b_hh = stock.weight_ih_l0, stock.weight_hh_l0, stock.bias_ih_l0, stock.bias_hh_l0
    params = list(stock.parameters())
    steps, batch = x.shape[:2]

    def run():
        for p in params:
            p.grad = None
        norms = x.new_zeros(steps, batch)
        projected = torch.addmm(b_ih + b_hh, x.reshape(steps * batch, -1), w_ih.t()).view(steps, batch, -1)
        h = x.new_zeros(batch, w_hh.shape[0])
        outputs = []
        for t in range(steps):
            if every is not None and t > 0 and t % every == 0:
                h = h.detach()
            h = torch.tanh(torch.addmm(projected[t], h, w_hh.t()))
            h.register_hook(lambda g, t=t: norms.__setitem__(t, g.norm(dim=1)))
            outputs.append(h)
        torch.autograd.backward(torch.stack(outputs), grad_out)
        return norms
    return run


def chunked_stock(stock: torch.nn.RNN, x, grad_out, *, every: int):
    """Truncation every `every` steps with stock nn.RNN: one call per chunk, the state
    detached between chunks."""
    params = list(stock.parameters())

    def run():
        for p in params:
            p.grad = None
        h = None
        outputs = []
        for start in range(0, x.shape[0], every):
            out, h = stock(x[start:start + every], h)
            outputs.append(out)
            h = h.detach()
        torch.autograd.backward(torch.cat(outputs), grad_out)
    return run


@dataclass
class OverheadRow:
    shape: tuple[int, ...]  # (T, B, I, H), or with directions and layers (benchmark.shape_label)
    variant: str
    baseline_ms: float
    variant_ms: float

    @property
    def overhead(self) -> float:
        return self.variant_ms / self.baseline_ms - 1.0


@dataclass
class PyTorchWayRow:
    shape: tuple[int, int, int, int]
    what: str
    pytorch_way: str
    pytorch_ms: float
    ours_ms: float

    @property
    def speedup(self) -> float:
        return self.pytorch_ms / self.ours_ms


def overhead_rows(shapes=CPU_SHAPES, variants=OVERHEAD_VARIANTS, progress=None, device=torch.device("cpu"),
                  backend: str | None = None, **timing) -> list[OverheadRow]:
    """Each variant against full BPTT with nothing recorded, per shape; `backend` sets the
    module's (None: the device's default; "emulated": the CUDA kernels on the CPU). A shape of
    several layers (benchmark.layers_of) runs them in one launch each way (RNN.stack = True)."""
    rows = []
    for shape in shapes:
        _, ours, x, grad_out = build_pair(shape, device, torch.float32)
        if backend is not None:
            ours.backend = backend
        if layers_of(shape) > 1:
            ours.stack = True
        baseline = fused_step(ours, x, grad_out, record=False, truncation=None)
        for name, variant in variants.items():
            t_base, t_variant = paired_median_seconds(baseline, fused_step(ours, x, grad_out, **variant),
                                                      device=device, **timing)
            rows.append(OverheadRow(shape, name, t_base * 1e3, t_variant * 1e3))
            if progress is not None:
                progress(rows[-1])
    return rows


def pytorch_way_rows(shapes=PYTORCH_WAY_SHAPES, every: int = PYTORCH_WAY_K, progress=None,
                     device=torch.device("cpu"), **timing) -> list[PyTorchWayRow]:
    rows = []
    for shape in shapes:
        stock, ours, x, grad_out = build_pair(shape, device, torch.float32)
        cases = [
            ("step norms", "step loop + hook on every h_t", hook_step_loop(stock, x, grad_out, every=None),
             fused_step(ours, x, grad_out, record=True, truncation=None)),
            (f"truncation K={every}", "nn.RNN per chunk, state detached", chunked_stock(stock, x, grad_out, every=every),
             fused_step(ours, x, grad_out, record=False, truncation=every)),
            (f"norms + K={every}", "step loop + hooks + detach", hook_step_loop(stock, x, grad_out, every=every),
             fused_step(ours, x, grad_out, record=True, truncation=every)),
        ]
        for what, how, theirs, mine in cases:
            t_theirs, t_ours = paired_median_seconds(theirs, mine, device=device, **timing)
            rows.append(PyTorchWayRow(shape, what, how, t_theirs * 1e3, t_ours * 1e3))
            if progress is not None:
                progress(rows[-1])
    return rows


def format_overhead(rows: list[OverheadRow]) -> str:
    cells = [[shape_label(r.shape), r.variant, f"{r.baseline_ms:.2f}", f"{r.variant_ms:.2f}",
              f"{100 * r.overhead:+.1f}%"] for r in rows]
    return "\n".join(markdown_table(["T, B, I, H", "variant", "full BPTT ms", "variant ms", "overhead"], cells, range(2, 5)))


def format_pytorch_way(rows: list[PyTorchWayRow]) -> str:
    cells = [[", ".join(map(str, r.shape)), r.what, r.pytorch_way, f"{r.pytorch_ms:.2f}", f"{r.ours_ms:.2f}",
              f"{r.speedup:.2f}x"] for r in rows]
    columns = ["T, B, I, H", "numbers", "PyTorch way", "PyTorch ms", "rnn_fused ms", "speed-up"]
    return "\n".join(markdown_table(columns, cells, range(3, 6)))


def as_json(overhead: list[OverheadRow], pytorch_way: list[PyTorchWayRow], device: torch.device,
            threads: int) -> dict:
    return {"device": device.type, "threads": threads,
            "overhead": [dict(asdict(r), overhead=r.overhead) for r in overhead],
            "pytorch_way": [dict(asdict(r), speedup=r.speedup) for r in pytorch_way]}


def run(*, device: torch.device, threads: int, quick: bool, out: str) -> int:
    """`rnn-fused bench --bptt`: both tables, printed and written to <device>_bptt_benchmark
    .{md,json} with a figure of the overheads and speed-ups."""
    from .command_output import prepare_output, progress_bar, write_json, write_text

    prepare_output(out)
    timing = QUICK_TIMING if quick else Timing()
    overhead_shapes = QUICK_OVERHEAD_SHAPES if quick else CPU_SHAPES
    way_shapes = QUICK_PYTORCH_WAY_SHAPES if quick else PYTORCH_WAY_SHAPES
    every = QUICK_K if quick else PYTORCH_WAY_K
    total = len(overhead_shapes) * len(OVERHEAD_VARIANTS) + 3 * len(way_shapes)
    with _benchmark_settings(device, threads), progress_bar(total, f"bptt bench on {device.type}") as bar:
        def progress(row) -> None:
            bar.set_postfix_str(f"{row.shape} {getattr(row, 'variant', None) or row.what}")
            bar.update()

        kwargs = dict(progress=progress, device=device, min_repeats=timing.min_repeats,
                      min_seconds=timing.min_seconds)
        overhead = overhead_rows(overhead_shapes, **kwargs)
        way = pytorch_way_rows(way_shapes, every, **kwargs)
    header = (f"{device.type}, float32, {threads} threads (CPU), one layer, forward+backward; medians of "
              "alternating runs")
    text = header + "\n\n" + format_overhead(overhead) + "\n\n" + format_pytorch_way(way)
    print(text)
    stem = f"{device.type}_bptt_benchmark"
    write_text(out, stem + ".md", text)
    write_json(out, stem + ".json", as_json(overhead, way, device, threads))
    plot(overhead, way, out, stem + ".png")
    return 0


def plot(overhead: list[OverheadRow], way: list[PyTorchWayRow], out: str, name: str) -> str:
    from .command_output import save_figure

    return save_figure(draw(overhead, way)[0], out, name)


def draw(overhead: list[OverheadRow], way: list[PyTorchWayRow]):
    """(figure, left axes, right axes): overheads (left) and speed-ups (right) as horizontal
    bars, one row a measurement in the tables' order, each bar labelled with its value. The
    speed-ups are on a linear axis that starts at 1x (break-even), their bars growing from
    there (leftwards for a slow-down, the axis then reaching below 1x)."""
    from matplotlib.ticker import FormatStrFormatter

    from .command_output import figure

    def label(what: str, shape) -> str:
        return f"{what}  ({', '.join(map(str, shape))})"

    rows = max(len(overhead), len(way))
    fig, (left, right) = figure(ncols=2, width=6.5, height=max(3.0, 0.3 * rows + 1.4))
    bars = left.barh(range(len(overhead)), [100 * r.overhead for r in overhead], color="tab:orange")
    left.bar_label(bars, fmt="%+.1f%%", fontsize=7, padding=2)
    left.set_yticks(range(len(overhead)), [label(r.variant, r.shape) for r in overhead], fontsize=7)
    left.axvline(5, color="gray", linestyle="--")
    left.axvline(0, color="black", linewidth=0.5)
    left.margins(x=0.2)  # room for the value labels
    left.xaxis.set_major_formatter(FormatStrFormatter("%g%%"))
    left.set_xlabel("overhead over full BPTT without norms (dashed: the 5% goal)")
    left.set_title("What norms and truncation cost", fontsize=10)

    speedups = [r.speedup for r in way]
    bars = right.barh(range(len(way)), [s - 1.0 for s in speedups], left=1.0, color="tab:blue")
    right.bar_label(bars, labels=[f"{s:.2f}x" for s in speedups], fontsize=7, padding=2)
    right.set_yticks(range(len(way)), [label(r.what, r.shape) for r in way], fontsize=7)
    right.axvline(1.0, color="black", linewidth=0.5)
    low, high = min([1.0, *speedups]), max([1.0, *speedups])
    right.set_xlim(low - 0.2 * (high - low) if low < 1.0 else 1.0, high + 0.2 * (high - low) + 0.1)
    start, end = right.get_xlim()
    right.set_xticks(sorted({1.0, *(t for t in right.get_xticks() if start <= t <= end)}))  # 1x always named
    right.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
    right.set_xlabel("speed-up over the PyTorch way (PyTorch time / rnn_fused time)")
    right.set_title("What they save against hooks and detach loops", fontsize=10)
    for ax in (left, right):
        ax.invert_yaxis()  # first row on top, as in the tables
    return fig, left, right
