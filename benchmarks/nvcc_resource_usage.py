"""The compiled recurrence kernels' resources (registers, stack, constant memory, spills).

Reads csrc/cuda/elman_cuda.cu's object for sm_80 and sm_90: the in-place build's
(build/temp.*/csrc/cuda/elman_cuda.o, from `make build`) when it is newer than every file its
compile read and holds both architectures, else one compiled here with the build's code-generation flags (which
takes as long as the build's own compile, about a quarter of an hour on 2 cores). From it,
cuobjdump's resource usage and machine code give each kernel of elman_forward_kernel.cuh /
elman_backward_kernel.cuh / elman_lane_rows_kernel.cuh / elman_gradients_kernel.cuh /
elman_norms_kernel.cuh (names demangled) its registers, stack frame, constant bank and local
memory loads, written to benchmarks/nvcc_resource_usage.txt; it fails (exit 1) when any kernel
reads local memory (LDL: a spilled register is reloaded with one, so no LDL means no spill; the
stores to the stack, STL, are the printf arguments of a failing device-side check). Then counts
the dot-product loops in the same machine code (benchmarks/sass_dot_loop.py:
benchmarks/sass_dot_loop.txt) and fails when they no longer match the cost model's instruction
counts. No GPU needed, only cuobjdump (the CUDA toolkit's or the triton wheel's) and, without a
built object, nvcc.

Usage: python benchmarks/nvcc_resource_usage.py [--object PATH] [--out benchmarks/nvcc_resource_usage.txt]
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


def built_object() -> str | None:
    """The in-place build's elman_cuda.o (setup.py's build folder) when it is newer than every
    file its compile read (ninja's dependency log), else None."""
    build_dir = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")
    object_file = os.path.join(build_dir, "csrc", "cuda", "elman_cuda.o")
    # The ninja on PATH, as torch's build runs it: another version would rewrite (or drop) the
    # build log in its own format, and the next build would recompile every source.
    ninja = shutil.which("ninja")
    if not os.path.isfile(object_file) or ninja is None:
        return None
    listed = subprocess.run([ninja, "-C", build_dir, "-t", "deps", object_file], capture_output=True, text=True)
    inputs = [line.strip() for line in listed.stdout.splitlines()[1:] if line.strip()]
    if listed.returncode != 0 or not any(path.endswith("elman_cuda.cu") for path in inputs):
        return None
    built = os.path.getmtime(object_file)
    fresh = all(os.path.isfile(path) and os.path.getmtime(path) <= built for path in inputs)
    return object_file if fresh else None


def missing_archs(cuobjdump: str, object_file: str) -> list[str]:
    """The architectures of ARCHS with no machine code in object_file."""
    listing = subprocess.run([cuobjdump, "-lelf", object_file], capture_output=True, text=True).stdout
    return [f"sm_{arch}" for arch in ARCHS if f".sm_{arch}.cubin" not in listing]


def compile_object(nvcc: str, object_file: str) -> subprocess.CompletedProcess:
    """elman_cuda.cu compiled for ARCHS with the build's optimisation flags (setup.py)."""
    command = [nvcc, "-c", os.path.join(ROOT, "csrc", "cuda", "elman_cuda.cu"), "-o", object_file,
               "-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "--split-compile=0"]
    for arch in ARCHS:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    command += [f"-I{d}" for d in include_dirs()]
    return subprocess.run(command, capture_output=True, text=True)


def resource_usage(cuobjdump: str, object_file: str) -> dict[tuple[str, str], dict[str, int]]:
    """(arch, mangled name) -> cuobjdump -res-usage's fields (REG, STACK, SHARED, LOCAL, CONSTANT[0], ...)."""
    text = subprocess.run([cuobjdump, "-res-usage", object_file], capture_output=True, text=True, check=True).stdout
    usage, arch, function = {}, None, None
    for line in text.splitlines():
        arch_line = re.match(r"\s*arch = (sm_\d+)", line)
        if arch_line:
            arch = arch_line.group(1)
        entry = re.match(r"\s*Function (\S+):", line)
        if entry:
            function = entry.group(1)
        elif function and line.strip().startswith("REG:"):
            usage[(arch, function)] = {key: int(value) for key, value in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            function = None
    return usage


def with_local_memory_counts(lines, counts: dict[tuple[str, str], dict[str, int]]):
    """Yields the machine-code listing's lines unchanged, counting each function's local-memory
    loads and stores (LDL, STL) into counts[(arch, mangled name)] on the way."""
    arch, current = None, None
    for line in lines:
        arch_line = re.match(r"\s*arch = (sm_\d+)", line)
        if arch_line:
            arch, current = arch_line.group(1), None
        function = re.search(r"Function : (\S+)", line)
        if function:
            current = counts.setdefault((arch, function.group(1)), {"LDL": 0, "STL": 0})
        elif current is not None and ("LDL" in line or "STL" in line):
            instruction = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?);", line)
            kind = sass_dot_loop.opcode(instruction.group(1)) if instruction else None
            if kind in current:
                current[kind] += 1
        yield line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object", help="a compiled elman_cuda.cu to read (default: the in-place build's, "
                                         "if up to date, else one compiled here)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "nvcc_resource_usage.txt"))
    parser.add_argument("--sass-out", default=os.path.join(ROOT, "benchmarks", "sass_dot_loop.txt"))
    args = parser.parse_args()
    cuobjdump = sass_dot_loop.find_cuobjdump()
    if cuobjdump is None:
        print("nvcc_resource_usage: cuobjdump not found (PATH, CUDA_HOME/bin, or the triton wheel's copy)",
              file=sys.stderr)
        return 2
    object_file = args.object or built_object()
    if object_file is not None:
        missing = missing_archs(cuobjdump, object_file)
        if not missing:
            print(f"nvcc_resource_usage: reading {os.path.relpath(object_file, ROOT)}")
            return reports(args, cuobjdump, object_file)
        if args.object:
            print(f"nvcc_resource_usage: {args.object} has no code for {', '.join(missing)}", file=sys.stderr)
            return 2
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        print("nvcc_resource_usage: no up-to-date build of elman_cuda.cu and nvcc is not on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nvcc_resource_usage_") as work:
        object_file = os.path.join(work, "elman_cuda.o")
        print("nvcc_resource_usage: no up-to-date build of elman_cuda.cu for "
              f"{', '.join('sm_' + a for a in ARCHS)}: compiling one")
        result = compile_object(nvcc, object_file)
        if result.returncode != 0:
            print(result.stdout + result.stderr, file=sys.stderr)
            return result.returncode
        return reports(args, cuobjdump, object_file)


def report_lines(usage: dict[tuple[str, str], dict[str, int]], local_memory: dict[tuple[str, str], dict[str, int]],
                 kernels: tuple[str, ...] = KERNELS) -> tuple[list[str], list[str]]:
    """(report lines, spills) for the functions whose names hold one of `kernels`, sm_80's first."""
    keys = sorted((key for key in usage if any(kernel in key[1] for kernel in kernels)), key=lambda key: key[0])
    names = demangle([name for _, name in keys])
    report, spills = [], []
    for (arch, mangled), name in zip(keys, names):
        fields, local = usage[(arch, mangled)], local_memory.get((arch, mangled), {"LDL": 0, "STL": 0})
        report.append(f"{arch}  {name}")
        report.append(f"    Used {fields['REG']} registers, {fields['STACK']} bytes stack frame, "
                      f"{fields['SHARED']} bytes static shared memory, {fields['LOCAL']} bytes local memory, "
                      f"{fields['CONSTANT[0]']} bytes cmem[0]; "
                      f"{local['LDL']} local loads (LDL), {local['STL']} local stores (STL)")
        if local["LDL"] or fields["LOCAL"]:
            spills.append(f"{arch} {name}: {local['LDL']} local loads, {fields['LOCAL']} bytes local memory")
    return report, spills


def reports(args: argparse.Namespace, cuobjdump: str, object_file: str) -> int:
    """Writes both reports of object_file; the exit status."""
    usage = resource_usage(cuobjdump, object_file)
    local_memory: dict[tuple[str, str], dict[str, int]] = {}
    listing = subprocess.Popen([cuobjdump, "-sass", object_file], stdout=subprocess.PIPE, text=True)
    kernels = sass_dot_loop.kernel_sass(with_local_memory_counts(listing.stdout, local_memory))
    if listing.wait() != 0:
        print(f"nvcc_resource_usage: cuobjdump -sass failed ({listing.returncode})", file=sys.stderr)
        return 1
    report, spills = report_lines(usage, local_memory)
    header = ["# The recurrence kernels' resources in the compiled elman_cuda.cu (cuobjdump -res-usage and",
              "# -sass), produced by benchmarks/nvcc_resource_usage.py.",
              "# Shared memory of the persistent kernels is dynamic (SharedLayout in recurrence_paths.cuh:",
              "# W_hh rows and state rows), so it is not in the static shared memory here; the planner sizes it.",
              "# Stack frames of 48-168 bytes are the argument buffers of the printf before a device-side",
              "# check's trap (SIMT_KERNEL_CHECK: the compiled kernels' pass check, the grid path's waits,",
              "# the cluster kernels' trap on sm_80, where clusters do not exist), written (STL) only when a",
              "# check fails; a spilled register would be read back from local memory (LDL): none is.",
              "# Registers do not depend on H (a runtime argument; W_hh slices live in shared memory).", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(header + report) + "\n")
    print("\n".join(report[-4:]))
    if not report:
        print("nvcc_resource_usage: no recurrence kernel found in the object", file=sys.stderr)
        return 1
    if spills:
        print("recurrence kernels spill:\n  " + "\n  ".join(spills), file=sys.stderr)
        return 1
    fewer = plain_copies_with_fewer_ctas(report)
    if fewer:
        print("plain backward kernels fit fewer CTAs per SM than the general kernels the planner sizes:\n  " +
              "\n  ".join(fewer), file=sys.stderr)
        return 1
    loops, error = sass_dot_loop.report(kernels)
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
