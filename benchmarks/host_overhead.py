"""Where the host time of a short sequence goes, on a CUDA device: rnn_fused.RNN against
torch.nn.RNN (cuDNN) at shapes whose GPU work is a few microseconds, so that each call's time is
the host's (Python, dispatch, planning, allocations and launches).

    PYTHONPATH=. python3 benchmarks/host_overhead.py --out gpu_out

Writes host_overhead.md (and prints it):
- what any backward costs on this host: forward and forward+backward of one element-wise op on a
  one-element leaf (a launch each way; the rest is autograd's own time, the engine's hand-off to
  its device thread among it), the floor under every forward+backward row below;
- per-call wall time of forward and of forward+backward (the loss on the output alone, h_n
  unused, as in a training loop and in gpu-check), calls back to back with one
  synchronisation at the end (the rate a training loop sees when the host is the bottleneck),
  median of 7 repetitions, for cuDNN, rnn_fused as planned, rnn_fused with every input
  projection on the host (forced_tiling(input_projection_on_host=True): the bias sum and the
  GEMM that the block kernel saves at these shapes), rnn_fused with every backward's gradients by
  the host's GEMMs (forced_tiling(gradients_on_host=True): the launches the gradients kernel
  saves), rnn_fused with its loop over layers in Python (one layer op call after another: what
  one call of rnn_layers_forward saves), and rnn_fused with its layers one launch
  after another and in one launch (RNN.stack False / True, where the stack runs), and for a
  bidirectional model with its directions one after the other (RNN.side_by_side = False: no
  second stream) and at once (True: the side stream's fork and join, whose host time
  functional._SIDE_STREAM_LAUNCHES predicts; at 11, 3, 20, 48 the planned call runs them in
  turn);
- torch.profiler's operators by host time (self CPU) over 20 calls of forward+backward: the ATen
  ops and the host layer's own scopes (rnn_fused::plan, ::launch, ::input_projection,
  ::gradients_from_dz), so that the op's self time is what lies between them;
- cProfile's Python functions by own time over 200 calls of the forward.
Measured only: nothing here is a prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import time

import torch

import rnn_fused
import rnn_fused.tools.benchmark
import rnn_fused.tools.gpu_check

# (T, B, I, H, layers[, "bidirectional" | "packed"]): the short rows of gpu-check (11, 3, 20, 48,
# 2 layers measured 0.70x forward on the H200 on 2026-12-04), one step of one layer, a short
# single layer, and (added 2026-12-05, not yet run) the short rows' bidirectional model, whose
# directions may run on two streams, and a packed batch of uneven lengths.
SHAPES = ((11, 3, 20, 48, 2), (1, 1, 16, 32, 1), (50, 8, 64, 64, 1), (11, 3, 20, 48, 2, "bidirectional"),
          (11, 3, 20, 48, 2, "packed"))
CALLS = 200
REPEATS = 7


def per_call_us(fn, calls: int = CALLS) -> float:
    """Median over REPEATS of the wall time per call of `calls` calls, synchronised at the end."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(times)


def models(shape, device):
    steps, batch, inputs, hidden, layers, *kind = shape
    bidirectional = kind == ["bidirectional"]
    torch.manual_seed(0)
    cudnn = torch.nn.RNN(inputs, hidden, layers, bidirectional=bidirectional).to(device)
    ours = rnn_fused.RNN(inputs, hidden, layers, bidirectional=bidirectional).to(device)
    ours.load_state_dict(cudnn.state_dict())
    x = torch.randn(steps, batch, inputs, device=device, requires_grad=True)
    if kind == ["packed"]:  # lengths from T down to T / 4, as gpu-check's packed rows; the data a leaf
        packed = torch.nn.utils.rnn.pack_padded_sequence(x.detach(), rnn_fused.tools.benchmark.packed_lengths(steps, batch))
        x = packed._replace(data=packed.data.requires_grad_())
    return cudnn, ours, x


def calls(model, x):
    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        out, _ = model(x)
        rnn_fused.tools.benchmark.output_tensor(out).sum().backward()

    return forward, forward_backward


def autograd_floor_rows(device) -> list[str]:
    leaf = torch.zeros(1, device=device, requires_grad=True)
    cotangent = torch.ones(1, device=device)

    def forward():
        with torch.no_grad():
            leaf.mul(2)

    def forward_backward():
        leaf.grad = None
        leaf.mul(2).backward(cotangent)

    return ["| what | forward us/call | forward+backward us/call |", "|---|---:|---:|",
            f"| one element-wise op on a one-element leaf | {per_call_us(forward):.1f} | "
            f"{per_call_us(forward_backward):.1f} |"]


# The variant whose loop over layers runs in Python, one layer op call after another, instead of in
# one call of rnn_layers_forward (C++): the host time the op saves.
LOOP_IN_PYTHON = "rnn_fused, the layers' loop in Python"


@contextlib.contextmanager
def layers_loop_in_python(enabled: bool):
    saved = rnn_fused.functional._layers_route
    if enabled:
        rnn_fused.functional._layers_route = lambda *args, **kwargs: None
    try:
        yield
    finally:
        rnn_fused.functional._layers_route = saved


def timing_rows(device) -> list[str]:
    lines = ["| T, B, I, H, layers | model | forward us/call | forward+backward us/call |", "|---|---|---:|---:|"]
    for shape in SHAPES:
        cudnn, ours, x = models(shape, device)
        # (name, model, RNN.stack, the forced_tiling that keeps work on the host: input projections,
        # the backward's whole-sequence gradients)
        on_host = dict(input_projection_on_host=True)
        variants = [("nn.RNN (cuDNN)", cudnn, None, {}), ("rnn_fused (planned)", ours, None, {}),
                    ("rnn_fused, inputs projected on the host", ours, None, on_host),
                    ("rnn_fused, gradients by the host's GEMMs", ours, None, dict(gradients_on_host=True)),
                    (LOOP_IN_PYTHON, ours, None, {})]
        if "bidirectional" in shape:  # the directions on two streams, or one after the other
            variants += [("rnn_fused, side_by_side=False", ours, None, {}),
                         ("rnn_fused, side_by_side=True", ours, None, {})]
        elif shape[4] > 1:
            variants += [("rnn_fused, stack=False", ours, False, {}), ("rnn_fused, stack=True", ours, True, {})]
        label = ", ".join(map(str, shape))
        for name, model, stack, setting in variants:
            if model is ours:
                ours.stack = stack
                ours.side_by_side = (False if "side_by_side=False" in name else True if "side_by_side=True" in name
                                     else None)
            try:
                with rnn_fused.launch_plan.forced_tiling(**setting), layers_loop_in_python(name == LOOP_IN_PYTHON):
                    forward, forward_backward = calls(model, x)
                    lines.append(f"| {label} | {name} | {per_call_us(forward):.1f} | "
                                 f"{per_call_us(forward_backward):.1f} |")
            except (RuntimeError, ValueError) as error:  # a stack the device cannot run: said, not hidden
                lines.append(f"| {label} | {name} | error: {str(error).splitlines()[0][:120]} | |")
        ours.stack = ours.side_by_side = None
    return lines


def profiler_rows(device) -> list[str]:
    _, ours, x = models(SHAPES[0], device)
    _, forward_backward = calls(ours, x)
    for _ in range(5):
        forward_backward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(20):
            forward_backward()
        torch.cuda.synchronize()
    table = profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    return [f"torch.profiler, rnn_fused forward+backward at {SHAPES[0]}, 20 calls (host time):", "", "```",
            table, "```"]


def cprofile_rows(device) -> list[str]:
    _, ours, x = models(SHAPES[0], device)
    forward, _ = calls(ours, x)
    for _ in range(5):
        forward()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(CALLS):
        forward()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    return [f"cProfile, rnn_fused forward at {SHAPES[0]}, {CALLS} calls (own time per function):", "", "```",
            text.getvalue().strip(), "```"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_out", help="directory for host_overhead.md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("a CUDA device is needed: this measures the host time of GPU calls")
    device = torch.device("cuda")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    lines = [f"# Host time per call: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", "",
             f"Wall time per call, {CALLS} calls back to back, one synchronisation after them; "
             f"median of {REPEATS}.", ""]
    lines += autograd_floor_rows(device) + [""]
    lines += timing_rows(device) + [""]
    lines += profiler_rows(device) + [""]
    lines += cprofile_rows(device) + [""]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "host_overhead.md"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
