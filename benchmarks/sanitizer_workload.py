"""A small workload for NVIDIA compute-sanitizer: every CUDA recurrence path, and the grid
path with each step synchronisation and with its tiled dot products, forward and backward, on a 2-layer bidirectional packed
batch with randomized truncation and recorded norms; and a 2-layer unidirectional stack in one
launch (the block path's stack at H <= 128, the cluster path's beyond). Checks each result against the CPU op
op under the project's tolerance rule (float64 reference, the CPU op in float32 as the
baseline), so a run under the sanitizer also says the numbers held. `--emulated` runs the
same cases on the SIMT emulator (CPU tensors), to rehearse the script without a GPU.

Usage (on a GPU machine, the extension built in place):
  compute-sanitizer --tool racecheck --error-exitcode 9 python3 benchmarks/sanitizer_workload.py
  (also --tool memcheck and --tool synccheck). Exit status 0 when every case ran and matched.
"""

from __future__ import annotations

import argparse
import sys

import torch

import rnn_fused
from rnn_fused.launch_plan import STEP_SYNCS
from rnn_fused.modules import RNN
from rnn_fused.tools.testing import measure, true_float32_on_cuda
from rnn_fused.truncation import RandomTruncation

# (path, step synchronisation of the grid or cluster path); None: the planner's own choice;
# "stack": a unidirectional stack in one launch (RNN.stack = True), the planner's path;
# ("block", "lane_rows_step"): the block path's opt-in lane-row kernels (H <= 128 only);
# ("grid", "tiled_dots"), ("cluster", "tiled_dots"): the opt-in tiled dot products (float32; the
# grid path at 4 or 8 samples per chunk, the cluster path at 4); ("block", "operand_ring"): the
# block path's general kernels with their step operands through the opt-in ring in shared memory
# (cp.async copies ahead).
LANE_ROWS = "lane_rows_step"
TILED_DOTS = "tiled_dots"
OPERAND_RING = "operand_ring"
CASES = [(None, None), ("block", None), ("cluster", None), ("stepwise", None), ("grid", "grid_barrier"),
         ("grid", "flag_barrier"), ("grid", "tagged_exchange"), ("cluster", "async_exchange"), ("stack", None),
         ("block", LANE_ROWS), ("grid", TILED_DOTS), ("cluster", TILED_DOTS), ("block", OPERAND_RING)]


def run(device: str, backend: str | None, path: str | None, hidden: int, batch: int, steps: int,
        dtype=torch.float32):
    """Output, h_n and every gradient of one forward+backward (on the CPU), and the recorded
    step norms. path "stack": the layers unidirectional, in one launch each way."""
    torch.manual_seed(0)
    stack = path == "stack"
    module = RNN(7, hidden, num_layers=2, bidirectional=not stack, truncation=RandomTruncation(0.8, seed=5))
    module = module.to(device=device, dtype=dtype)
    module.backend, module.path = backend, None if stack else path
    if stack:  # (one launch on the GPU kernels; the CPU op runs the layers one by one)
        module.stack = device == "cuda" or backend == "emulated"
    x = (torch.randn(steps, batch, 7, generator=torch.Generator().manual_seed(1), dtype=dtype) * 0.5)
    x = x.to(device).requires_grad_()
    lengths = torch.tensor([steps - (b % 4) for b in range(batch)])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with rnn_fused.record_gradients(module) as recording:
        out, h_n = module(packed)
    (out.data.sin().sum() + h_n.cos().sum()).backward()
    values = [out.data, h_n, x.grad, *[p.grad for p in module.parameters()]]
    return [v.detach().cpu() for v in values], recording.step_norms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[33, 256])
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--emulated", action="store_true", help="the SIMT emulator on CPU tensors, not a GPU")
    args = parser.parse_args(argv)
    device, backend = ("cpu", "emulated") if args.emulated else ("cuda", None)
    failures = 0
    for hidden in args.hidden:
        shape = (hidden, args.batch, args.steps)
        baselines = {}
        for layers in (None, "stack"):  # (the CPU runs the stack's layers one by one)
            baselines[layers] = (run("cpu", None, layers, *shape, dtype=torch.float64)[0],
                                 run("cpu", None, layers, *shape)[0])
        for path, sync in CASES:
            reference, stock = baselines["stack" if path == "stack" else None]
            name = f"H={hidden} path={path or 'planned'}" + (f" {sync}" if sync else "")
            lane_rows = sync == LANE_ROWS
            if lane_rows and hidden > 128:
                print(f"{name}: not run (the lane-row kernels take H <= 128)", flush=True)
                continue
            tiled, ring = sync == TILED_DOTS, sync == OPERAND_RING
            forced = ({"lane_rows_step": True} if lane_rows else {"tiled_dots": True} if tiled
                      else {"operand_ring": True} if ring else {"step_sync": sync})
            try:
                with rnn_fused.launch_plan.forced_tiling(**forced), true_float32_on_cuda():
                    if lane_rows:  # the block path must really run them, both directions
                        for backward in (False, True):
                            plan = rnn_fused.plan(hidden, args.batch, torch.float32, backend or device,
                                                  backward=backward, path="block")
                            if not plan.lane_rows:
                                raise AssertionError(f"{name}: the block plan is not a lane-row one: {plan.reason}")
                    elif tiled:  # the path must really take them, both directions
                        for backward in (False, True):
                            plan = rnn_fused.plan(hidden, args.batch, torch.float32, backend or device,
                                                  backward=backward).candidate(path)
                            if not plan.tiled_dots:
                                raise AssertionError(f"{name}: the {path} plan has no tiled dot products: {plan.reason}")
                    elif ring:  # the block path must really take its operands through the ring, both directions
                        for backward in (False, True):
                            plan = rnn_fused.plan(hidden, args.batch, torch.float32, backend or device,
                                                  backward=backward, path="block")
                            if "step operands" not in plan.reason:
                                raise AssertionError(f"{name}: the block plan has no operand ring: {plan.reason}")
                    elif sync is not None:  # the path must really end its steps so, both directions
                        for backward in (False, True):
                            plan = rnn_fused.plan(hidden, args.batch, torch.float32, backend or device,
                                                  backward=backward).candidate(path)
                            if plan.feasible and plan.step_sync != STEP_SYNCS.index(sync):
                                raise AssertionError(f"{name}: the plan's step_sync is {plan.step_sync}")
                    ours, _ = run(device, backend, path, *shape)
            except ValueError as refusal:  # a path the planner rules out for this shape says why
                print(f"{name}: refused ({refusal})", flush=True)
                continue
            results = [measure(r, s, o, name=str(i)) for i, (r, s, o) in enumerate(zip(reference, stock, ours))]
            bad = [str(r) for r in results if not r.passed]
            failures += bool(bad)
            print(f"{name}: {'ok' if not bad else 'OUTSIDE TOLERANCE: ' + '; '.join(bad)}", flush=True)
    print("all cases matched" if failures == 0 else f"{failures} case(s) did not match", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
