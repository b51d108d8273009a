"""GPU side-by-side benchmark: rnn_fused.RNN (persistent CUDA kernels) vs torch.nn.RNN on cuDNN.

TF32 off for both. Each measurement: warm-up runs, then many runs each bracketed by CUDA
events on the current stream, inputs rotating over several copies (so no run reads what
the previous one left in L2), the median reported. Forward (no grad) and forward+backward,
over T in {100, 1000}, B in {1, 8, 32, 128}, H in {128, 256, 512, 1024} (input size = H),
float32 and bfloat16. Prints a Markdown table (ratio = cuDNN time / rnn_fused time, > 1 means
rnn_fused is faster) with the GPU's name and the planner's path per row, and writes it and
the rows as JSON to --out. Exits with status 2 and a message when no CUDA device is present.

Usage: python benchmarks/gpu_side_by_side.py [--out benchmarks/results] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

STEPS = (100, 1000)
BATCHES = (1, 8, 32, 128)
HIDDEN = (128, 256, 512, 1024)
DTYPES = (torch.float32, torch.bfloat16)
ROTATING_COPIES = 4


def cuda_median_ms(run, inputs, *, warmup: int = 3, repeats: int = 30) -> float:
    """Median of `repeats` runs of run(*inputs[i % len(inputs)]), each timed by CUDA events."""
    for i in range(warmup):
        run(*inputs[i % len(inputs)])
    events = []
    for i in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        run(*inputs[i % len(inputs)])
        end.record()
        events.append((begin, end))
    torch.cuda.synchronize()
    return statistics.median(b.elapsed_time(e) for b, e in events)


def forward(module):
    def run(x, grad_out):
        with torch.no_grad():
            module(x)
    return run


def forward_backward(module):
    params = list(module.parameters())

    def run(x, grad_out):
        for p in params:
            p.grad = None
        out, _ = module(x)
        out.backward(grad_out)
    return run


def measure(steps: int, batch: int, hidden: int, dtype: torch.dtype, quick: bool) -> list[dict]:
    import rnn_fused

    torch.manual_seed(0)
    stock = torch.nn.RNN(hidden, hidden).to("cuda", dtype)
    ours = rnn_fused.RNN.from_torch(stock)
    inputs = [(torch.randn(steps, batch, hidden, device="cuda", dtype=dtype),
               torch.randn(steps, batch, hidden, device="cuda", dtype=dtype)) for _ in range(ROTATING_COPIES)]
    plan = rnn_fused.plan(hidden, dtype=dtype, device="cuda")
    repeats = 10 if quick else (30 if steps >= 1000 else 100)
    rows = []
    for pass_name, make in (("forward", forward), ("forward+backward", forward_backward)):
        cudnn_ms = cuda_median_ms(make(stock), inputs, repeats=repeats)
        ours_ms = cuda_median_ms(make(ours), inputs, repeats=repeats)
        rows.append(dict(dtype=str(dtype).replace("torch.", ""), T=steps, B=batch, H=hidden, pass_=pass_name,
                         cudnn_ms=cudnn_ms, ours_ms=ours_ms, speedup=cudnn_ms / ours_ms, path=plan.path,
                         grid=plan.grid))
    return rows


def format_table(gpu: str, rows: list[dict]) -> str:
    lines = [f"GPU: {gpu}; torch {torch.__version__}; TF32 off; median of CUDA-event timings, rotating inputs.",
             "speedup = cuDNN ms / rnn_fused ms (> 1: rnn_fused faster).", "",
             "| dtype | T | B | H | pass | cuDNN ms | rnn_fused ms | speedup | path (grid) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['T']} | {r['B']} | {r['H']} | {r['pass_']} | {r['cudnn_ms']:.3f} | "
                     f"{r['ours_ms']:.3f} | {r['speedup']:.2f} | {r['path']} ({r['grid']}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_side_by_side: no CUDA device is available; nothing was measured.", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name()
    rows = []
    for dtype, steps, batch, hidden in itertools.product(DTYPES, STEPS, BATCHES, HIDDEN):
        for row in measure(steps, batch, hidden, dtype, args.quick):
            print(f"  {row['dtype']} T={steps} B={batch} H={hidden} {row['pass_']}: {row['speedup']:.2f}x",
                  file=sys.stderr, flush=True)
            rows.append(row)
    table = format_table(gpu, rows)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "gpu_benchmark_" + "".join(c if c.isalnum() else "_" for c in gpu))
    with open(stem + ".md", "w") as f:
        f.write(table + "\n")
    with open(stem + ".json", "w") as f:
        json.dump(dict(gpu=gpu, torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
