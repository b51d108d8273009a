"""Shared-memory counters of the persistent recurrence kernels, read by Nsight Compute: the
last stage of `make gpu-check` (benchmarks/gpu_check.py).

The cost model prices a warp-wide 16-byte shared-memory load at 4 wavefronts, the state loads
too, whose 4 unit groups read the same 128 bytes (docs/benchmarks.md, "The cost model's
shared-memory term": the H200's measured steps say so, refitted; not yet counted). Here the
hardware counts them: for each workload's forward and backward recurrence kernel, the
shared-memory load instructions its warps executed, their wavefronts, and the ratio, which is
4 if the model is right (a few narrower loads in the epilogues pull it below) and about
1.6 at the grid path's 8-sample tile if a state load were one wavefront.

Usage:
  python3 benchmarks/smem_counters.py --out gpu_out   ncu on the workloads; smem_counters.md/.json
  python3 benchmarks/smem_counters.py --workload      the workloads alone (what ncu profiles);
                                                      prints each launch's plan as a JSON line
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (path, H, B): the grid path where shared memory bounds it (B >= 32), the split block kernel
# and the cluster path at H = 256, the block path's lane-row step at H = 64 (the lean general block
# kernel there until 2026-12-04), the split cluster at 1024.
WORKLOADS = (("grid", 1024, 128), ("grid", 1024, 32), ("block", 256, 1), ("cluster", 256, 1), ("block", 64, 1),
             ("cluster", 1024, 8))
STEPS = 16
WAVEFRONTS = "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"
LOADS = "smsp__inst_executed_op_shared_ld.sum"
CONFLICTS = "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum"
INSTRUCTIONS = "smsp__inst_executed.sum"
CYCLES = "sm__cycles_elapsed.max"
METRICS = (LOADS, WAVEFRONTS, CONFLICTS, INSTRUCTIONS, CYCLES)
# forward_recurrence_kernel, backward_recurrence_kernel; forward_lane_rows_kernel, backward_lane_rows_kernel
# (the block path at H <= 128 in float32 since 2026-12-04: the workload at H = 64)
KERNELS = "regex:recurrence_kernel|lane_rows_kernel"
TIMEOUT_S = 35  # the stage's limit in gpu_check.py is 40 s


def run_workloads(workloads=WORKLOADS, emulated: bool = False) -> None:
    """Each workload's forward and backward once, on its forced path: two recurrence kernel
    launches each, in order. Prints the launches' plans, one JSON line each. emulated: on the
    SIMT emulator instead (CPU tensors), which rehearses this without a GPU."""
    import torch

    import rnn_fused

    device = "emulated" if emulated else "cuda"
    for path, hidden, batch in workloads:
        generator = torch.Generator().manual_seed(hidden + batch)
        x = torch.randn(STEPS, batch, hidden, generator=generator)
        w_ih, w_hh = (torch.randn(hidden, hidden, generator=generator) / hidden ** 0.5 for _ in range(2))
        x, w_ih, w_hh = ((t if emulated else t.cuda()) for t in (x, w_ih, w_hh))
        w_ih.requires_grad_(True)
        w_hh.requires_grad_(True)
        out, _ = rnn_fused.rnn_layer(x, None, w_ih, w_hh, None, None, path=path,
                                     backend="emulated" if emulated else None)
        out.sum().backward()
        if not emulated:
            torch.cuda.synchronize()
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch_size=batch, device=device, backward=backward, path=path)
            print(json.dumps({"path": path, "hidden": hidden, "batch": batch,
                              "direction": "backward" if backward else "forward", "samples": plan.samples,
                              "units_per_cta": plan.units_per_cta, "units_per_pass": plan.units_per_pass,
                              "ctas": plan.grid}), flush=True)


def ncu_executable() -> str | None:
    found = shutil.which("ncu")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.access(os.path.join(home, "bin", "ncu"), os.X_OK):
            return os.path.join(home, "bin", "ncu")
    return None


def parse_ncu_csv(text: str) -> list[dict[str, float]]:
    """The metric values per profiled kernel launch, in launch order, from `ncu --csv
    --print-units base` output (its own ==PROF== lines and the program's output mixed in)."""
    rows = [line for line in text.splitlines() if line.startswith('"')]
    launches: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(rows):
        value = row.get("Metric Value", "").replace(",", "")
        if row.get("Metric Name") in METRICS and value:
            launches.setdefault(row["ID"], {"kernel": row.get("Kernel Name", "")})[row["Metric Name"]] = float(value)
    return [launches[key] for key in sorted(launches, key=int)]


def plans_in(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"path"')]


def report(plans: list[dict], launches: list[dict]) -> tuple[str, list[dict]]:
    """The table: each launch's plan beside its counters and wavefronts per shared load."""
    if len(plans) != len(launches):
        raise SystemExit(f"smem-counters: {len(launches)} kernel launches profiled for {len(plans)} plans")
    rows = []
    lines = ["# Shared-memory counters of the recurrence kernels (Nsight Compute)", "",
             f"T = {STEPS}, float32, each workload's forward and backward on its forced path. Wavefronts per "
             "load: 4 if a warp-wide 16-byte load takes 4 whatever its addresses (the cost model since "
             "2026-12-02); about 1.6 on the grid rows if a state load took 1.", "",
             "| path | H | B | direction | samples | units per CTA / per pass | shared loads | wavefronts | "
             "wavefronts per load | bank conflicts | instructions | SM cycles |",
             "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for plan, counts in zip(plans, launches):
        loads = counts.get(LOADS, 0.0)
        ratio = counts.get(WAVEFRONTS, 0.0) / loads if loads else float("nan")
        rows.append({**plan, "counters": counts, "wavefronts_per_load": ratio})
        lines.append(f"| {plan['path']} | {plan['hidden']} | {plan['batch']} | {plan['direction']} | {plan['samples']} | "
                     f"{plan['units_per_cta']} / {plan['units_per_pass']} | {loads:.0f} | "
                     f"{counts.get(WAVEFRONTS, 0.0):.0f} | {ratio:.2f} | {counts.get(CONFLICTS, 0.0):.0f} | "
                     f"{counts.get(INSTRUCTIONS, 0.0):.0f} | {counts.get(CYCLES, 0.0):.0f} |")
    return "\n".join(lines) + "\n", rows


def _text(output) -> str:
    """A timed-out subprocess's captured output: bytes or None, whatever text= asked for."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--workload", action="store_true", help="run the workloads only (under ncu)")
    args = parser.parse_args(argv)
    if args.workload:
        run_workloads()
        return 0
    ncu = ncu_executable()
    if ncu is None:
        print("smem-counters: no ncu (Nsight Compute) on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin", flush=True)
        return 1
    command = [ncu, "--csv", "--print-units", "base", "--clock-control", "none", "--kernel-name", KERNELS,
               "--metrics", ",".join(METRICS), sys.executable, os.path.abspath(__file__), "--workload"]
    print("==> " + " ".join(command), flush=True)
    os.makedirs(args.out, exist_ok=True)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        with open(os.path.join(args.out, "smem_counters.log"), "w") as f:
            f.write(_text(expired.stdout) + _text(expired.stderr))
        print(f"smem-counters: ncu ran past {TIMEOUT_S} s; its output so far is in smem_counters.log", flush=True)
        return 1
    with open(os.path.join(args.out, "smem_counters.log"), "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        print(f"smem-counters: ncu exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}")
        return 1
    text, rows = report(plans_in(done.stdout), parse_ncu_csv(done.stdout))
    with open(os.path.join(args.out, "smem_counters.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "smem_counters.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
