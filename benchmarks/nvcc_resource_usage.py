"""nvcc's resource report (registers, shared memory, stack, spills) for the recurrence kernels.

Compiles csrc/cuda/elman_cuda.cu for sm_80 and sm_90 with the build's flags plus
-Xptxas -v, keeps ptxas's lines for the kernels of elman_forward_kernel.cuh /
elman_backward_kernel.cuh / elman_lane_rows_kernel.cuh / elman_gradients_kernel.cuh /
elman_norms_kernel.cuh (names demangled), writes them to benchmarks/nvcc_resource_usage.txt, and fails (exit 1) when any of
them spills to local memory. Then counts the dot-product loops in the same object's sm_90 machine code
(benchmarks/sass_dot_loop.py: benchmarks/sass_dot_loop.txt) and fails when they no longer
match the cost model's instruction counts. No GPU needed, only nvcc and cuobjdump.

Usage: python benchmarks/nvcc_resource_usage.py [--out benchmarks/nvcc_resource_usage.txt]
                                                [--sass-out benchmarks/sass_dot_loop.txt]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sass_dot_loop  # noqa: E402  (benchmarks/ is not a package)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("80", "90")
KERNELS = ("forward_recurrence_kernel", "backward_recurrence_kernel", "forward_stack_kernel", "backward_stack_kernel",
           "forward_cluster_stack_kernel", "backward_cluster_stack_kernel",
           "forward_step_epilogue_kernel", "backward_step_epilogue_kernel", "forward_lane_rows_kernel",
           "backward_lane_rows_kernel", "short_gradients_kernel", "step_norms_kernel")


def include_dirs() -> list[str]:
    from torch.utils.cpp_extension import include_paths

    dirs = [os.path.join(ROOT, "csrc"), *include_paths(), sysconfig.get_paths()["include"]]
    for entry in sys.path:
        candidate = os.path.join(entry, "nvidia", "cu13", "include")
        if os.path.isdir(candidate):
            dirs.append(candidate)
    return dirs


def demangle(lines: list[str]) -> list[str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return lines
    out = subprocess.run([tool], input="\n".join(lines), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


REGISTERS_PER_SM = 65536  # sm_80 and sm_90
RECURRENCE_THREADS = 256  # kRecurrenceThreads


def ctas_per_sm_by_registers(registers: int) -> int:
    """CTAs of RECURRENCE_THREADS threads an SM holds at `registers` per thread (a warp's
    registers allocated in units of 256)."""
    per_warp = -(-registers * 32 // 256) * 256
    return REGISTERS_PER_SM // (RECURRENCE_THREADS // 32 * per_warp)


def plain_copies_with_fewer_ctas(report: list[str]) -> list[str]:
    """Each backward kernel's plain copy (kPlain = true: layer and stack kernels) whose registers
    fit fewer CTAs per SM than its general kernel's: the planner sizes occupancy on the general
    kernel and launches the copy (elman_launch.h with_persistent_kernel, with_stack_kernel)."""
    registers, current = {}, None
    for line in report:
        entry = re.match(r"(sm_\d+)  .*(backward_(?:recurrence|stack|cluster_stack)_kernel<.*)>\(", line)
        if entry:
            current = (entry.group(1), entry.group(2))
            continue
        used = re.search(r"Used (\d+) registers", line)
        if used and current:
            registers[current] = int(used.group(1))
            current = None
    fewer = []
    for (arch, arguments), plain in registers.items():
        # (kPlain is the last argument but the layer kernels' chunk iterations)
        copy = re.fullmatch(r"(.*), true((?:, \d+)?)", arguments)
        if not copy:
            continue
        if arch == "sm_80" and ("cluster" in arguments or "RecurrencePath)1" in arguments):
            continue  # (no clusters below sm_90: these kernels only trap there, and the host never launches them)
        general = registers.get((arch, copy.group(1) + ", false" + copy.group(2)))
        if general is None:
            fewer.append(f"{arch} <{arguments}>: no general kernel in the report")
        elif ctas_per_sm_by_registers(plain) < ctas_per_sm_by_registers(general):
            fewer.append(f"{arch} <{arguments}>: {plain} registers against the general kernel's {general}")
    return fewer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "nvcc_resource_usage.txt"))
    parser.add_argument("--sass-out", default=os.path.join(ROOT, "benchmarks", "sass_dot_loop.txt"))
    args = parser.parse_args()
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc_resource_usage: nvcc is not on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nvcc_resource_usage_") as work:
        return reports(args, nvcc, os.path.join(work, "elman_cuda.o"))


def reports(args: argparse.Namespace, nvcc: str, object_file: str) -> int:
    """Compiles into object_file, writes both reports; the exit status."""
    command = [nvcc, "-c", os.path.join(ROOT, "csrc", "cuda", "elman_cuda.cu"), "-o", object_file,
               "-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xptxas=-v",
               "-Xptxas=-warn-spills"]
    for arch in ARCHS:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    command += [f"-I{d}" for d in include_dirs()]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout + result.stderr, file=sys.stderr)
        return result.returncode
    # ptxas prints "Compiling entry function '<mangled>' for 'sm_XX'" then "Used N registers, ...".
    lines = demangle((result.stdout + result.stderr).splitlines())
    report, current, spills = [], None, []
    for line in lines:
        entry = re.search(r"Compiling entry function '(.*)' for '(sm_\d+)'", line)
        if entry:
            current = entry.group(1) if any(k in entry.group(1) for k in KERNELS) else None
            if current:
                report.append(f"{entry.group(2)}  {current}")
            continue
        if "Registers are spilled" in line:
            continue  # ptxas's warning may print under another entry; each entry's own info line has the numbers
        if current and ("registers" in line or "stack frame" in line or "spill" in line):
            report.append("    " + line.split("ptxas info    : ")[-1].strip())
            spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if spill and (int(spill.group(1)) or int(spill.group(2))):
                spills.append(f"{current}: {line.strip()}")
    header = ["# ptxas -v for the recurrence kernels (csrc/cuda/elman_cuda.cu), produced by",
              "# benchmarks/nvcc_resource_usage.py. nvcc: " +
              subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1],
              "# Shared memory of the persistent kernels is dynamic (SharedLayout in recurrence_paths.cuh:",
              "# W_hh rows and state rows), so ptxas reports 0 bytes smem for them; the planner sizes it.",
              "# Stack frames of 48-112 bytes are the argument buffers of the printf before a device-side",
              "# check's trap (SIMT_KERNEL_CHECK: the compiled kernels' pass check, the grid path's waits,",
              "# the cluster kernels' trap on sm_80, where clusters do not exist), used only when a check",
              "# fails; they are not spilled registers: see the spill numbers.",
              "# Registers do not depend on H (a runtime argument; W_hh slices live in shared memory).", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(header + report) + "\n")
    print("\n".join(report))
    if not report:
        print("nvcc_resource_usage: no kernel lines found in ptxas's output", file=sys.stderr)
        return 1
    if spills:
        print("recurrence kernels spill:\n  " + "\n  ".join(spills), file=sys.stderr)
        return 1
    fewer = plain_copies_with_fewer_ctas(report)
    if fewer:
        print("plain backward kernels fit fewer CTAs per SM than the general kernels the planner sizes:\n  " +
              "\n  ".join(fewer), file=sys.stderr)
        return 1
    loops, error = sass_dot_loop.report(object_file)
    sass_header = ["# The recurrence kernels' innermost loops with multiply-adds in sm_90 SASS (cuobjdump -sass),",
                   "# produced by benchmarks/nvcc_resource_usage.py (benchmarks/sass_dot_loop.py): instructions =",
                   "# shared-memory loads + FMAs + other (address arithmetic, loop control), per loop trip.", ""]
    with open(args.sass_out, "w") as f:
        f.write("\n".join(sass_header + loops) + "\n")
    print("\n".join(loops[-2:]))
    if error:
        print(f"nvcc_resource_usage: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
