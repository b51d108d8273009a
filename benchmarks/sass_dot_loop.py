"""The dot-product loop of the recurrence kernels in machine code (sm_90 SASS), counted.

The cost model's issue term (csrc/cuda/recurrence_cost_model.h) prices a chunk iteration of
the dot products (kernel_common.cuh add_unit_dots) as its shared-memory loads, each with
`address_instructions_per_load` address instructions, its multiply-adds and
`loop_instructions` more. Those constants are counts, not timings: this module reads them off
the compiled kernels. benchmarks/nvcc_resource_usage.py calls it on the object it reads (no
second listing), writes every kernel's loops to benchmarks/sass_dot_loop.txt and fails when,
over a dtype's dot loops, the other instructions per iteration differ from the model's count
by more than MAX_DIFFERENCE on average.

A dot loop is recognised by its counts: per iteration S state loads and `used` weight loads
for used x S x (4 float32 or 2 float64) multiply-adds, S the kernel's samples per chunk; the
loop is unrolled by 2, so a trip holds 2 iterations (or 1, or 4). The tiled dot products' loop
(kernel_common.cuh add_tile_dots: the grid path's float32 kernels at 4 and 8 samples, the
cluster path's at 4; not unrolled) has S + 32 / S loads for 128 multiply-adds a trip; the model
prices its other instructions as one count, kTiledLoopOtherInstructions, checked apart.

For the kernels compiled for their passes (recurrence_paths.cuh compiled_passes: the block
path with its weight rows in registers, which has no dot loop, and the cluster path at 1 to 8
passes) and the layer stack's kernels the report also counts the step loop of their untimed copy (the loop with the step's
barrier and no read of the cycle counter; the layer backward's plain copy has two, smaller
first: its steps without and with the test for a cut every K steps) by kind of instruction,
and fails where it is missing: a count of the code every warp may issue per step (branches
skip parts of it), not a timing.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import os
import re
import shutil
from collections.abc import Iterable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COST_MODEL = os.path.join(ROOT, "csrc", "cuda", "recurrence_cost_model.h")
ARCH = "sm_90"
# Mangled-name pieces: forward/backward kernel, float (f) or double (d), samples, path
# (RecurrencePath: 0 block, 1 cluster, 2 grid), compiled passes (0: read at run time), and the
# backward's kPlain (1: the copy without truncation and norms, reported as "backward plain"), and
# the chunk iterations held in registers where they differ from the passes (the cluster path's
# split kernels, 32, reported as "cluster split"; those with every row in registers, 8, as
# "cluster registers").
PATH_NAMES = {"0": "block", "1": "cluster", "2": "grid"}
CLUSTER_SPLIT_ITERATIONS = 32  # (kernel_common.cuh kClusterSplitIterations)
KERNEL = re.compile(r"(forward|backward)_recurrence_kernelI([fd])Li(\d+)ELNS0_14RecurrencePathE(\d)ELi(\d+)E"
                    r"(?:Lb([01])E)?(?:Li(\d+)E)?E")
# The layer stack's kernels (float32, the block path's tiling): samples, compiled passes, kPlain.
STACK_KERNEL = re.compile(r"(forward|backward)_stack_kernelILi(\d+)ELi(\d+)E(?:Lb([01])E)?E")
# The cluster path's layer stack: samples, compiled passes, kPlain.
CLUSTER_STACK_KERNEL = re.compile(r"(forward|backward)_cluster_stack_kernelILi(\d+)ELi(\d+)E(?:Lb([01])E)?E")
MAX_DIFFERENCE = 2.0  # instructions per iteration


@dataclasses.dataclass(frozen=True)
class Loop:
    """An innermost loop of a kernel with multiply-adds in it: its instruction counts."""

    instructions: int
    loads: int  # shared-memory loads (LDS*)
    fmas: int   # FFMA or DFMA

    @property
    def other(self) -> int:
        return self.instructions - self.loads - self.fmas


def find_cuobjdump() -> str | None:
    """cuobjdump from PATH, the CUDA toolkit, or the copy the triton wheel (a torch dependency) ships."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if root and os.path.isfile(os.path.join(root, "bin", "cuobjdump")):
            return os.path.join(root, "bin", "cuobjdump")
    spec = importlib.util.find_spec("triton")
    if spec and spec.submodule_search_locations:
        bundled = os.path.join(spec.submodule_search_locations[0], "backends", "nvidia", "bin", "cuobjdump")
        if os.path.isfile(bundled):
            return bundled
    return None


def _held_rows(iterations: str | None, passes: str) -> str:
    """The name's suffix for a cluster kernel compiled for more chunk iterations than passes."""
    if iterations in (None, passes):
        return ""
    return " split" if int(iterations) == CLUSTER_SPLIT_ITERATIONS else " registers"


def kernel_sass(lines: Iterable[str], arch: str = ARCH) -> dict[tuple, list[tuple[int, str]]]:
    """(direction, dtype, samples, path, passes) -> [(address, instruction)] of each recurrence
    kernel compiled for `arch` in cuobjdump -sass output (its lines: the listing of the whole
    object is some 600 MB, read as it comes)."""
    kernels: dict[tuple, list[tuple[int, str]]] = {}
    current, in_arch = None, False
    for line in lines:
        arch_line = re.match(r"\s*arch = (sm_\d+)", line)
        if arch_line:
            in_arch, current = arch_line.group(1) == arch, None
            continue
        function = re.search(r"Function : (\S+)", line)
        if function:
            match = KERNEL.search(function.group(1)) if in_arch else None
            stack = STACK_KERNEL.search(function.group(1)) if in_arch else None
            cluster_stack = CLUSTER_STACK_KERNEL.search(function.group(1)) if in_arch else None
            current = None
            if match:
                direction, dtype, samples, path, passes, plain, iterations = match.groups()
                current = (direction + (" plain" if plain == "1" else ""), "float" if dtype == "f" else "double",
                           int(samples), PATH_NAMES[path] + _held_rows(iterations, passes),
                           int(passes))
            elif stack:
                direction, samples, passes, plain = stack.groups()
                current = (f"{direction} stack" + (" plain" if plain == "1" else ""), "float", int(samples), "block",
                           int(passes))
            elif cluster_stack:
                direction, samples, passes, plain = cluster_stack.groups()
                current = (f"{direction} stack" + (" plain" if plain == "1" else ""), "float", int(samples), "cluster",
                           int(passes))
            if current is not None:
                kernels[current] = []
            continue
        instruction = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if current is not None and instruction:
            kernels[current].append((int(instruction.group(1), 16), instruction.group(2).strip()))
    return kernels


def loop_spans(instructions: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) instruction index of each loop: a branch back to an earlier address."""
    index = {address: i for i, (address, _) in enumerate(instructions)}
    spans = []
    for i, (address, text) in enumerate(instructions):
        branch = re.search(r"BRA\b.*?(0x[0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) in index and int(branch.group(1), 16) < address:
            spans.append((index[int(branch.group(1), 16)], i))
    return spans


def opcode(text: str) -> str:
    """The opcode of an instruction without its predicate and modifiers: FFMA, LDS, SHFL, ..."""
    return re.sub(r"^@!?U?P\w+ ", "", text).split()[0].split(".")[0]


def untimed_step_loops(instructions: list[tuple[int, str]]) -> list[collections.Counter]:
    """Opcode counts of each loop that holds a barrier (BAR.SYNC) and no read of the cycle counter
    (SR_CLOCKLO) and lies in no other such loop, smallest first: the step loops of a kernel's
    untimed copy (one; two in the backward's plain copy, whose calls truncated every K steps run
    a copy of the steps with the test for a cut). Only loops closed by a conditional branch count
    (the step loop's test of s): the unconditional branches back are the returns of out-of-line
    code (a divergent shuffle's fallback) into the middle of a loop, whose spans cover parts of
    two loops."""
    spans = []
    for start, end in loop_spans(instructions):
        if not instructions[end][1].startswith("@"):
            continue
        body = [text for _, text in instructions[start:end + 1]]
        if any("BAR.SYNC" in text for text in body) and not any("SR_CLOCKLO" in text for text in body):
            spans.append((start, end))
    outermost = [(start, end) for start, end in spans
                 if not any(s <= start and end <= e and (s, e) != (start, end) for s, e in spans)]
    loops = [collections.Counter(opcode(text) for _, text in instructions[start:end + 1]) for start, end in outermost]
    return sorted(loops, key=lambda loop: sum(loop.values()))


def innermost_fma_loops(instructions: list[tuple[int, str]], min_fmas: int = 8) -> list[Loop]:
    """The loops (backward branches) that contain no other loop and at least min_fmas FMAs."""
    spans = loop_spans(instructions)
    loops = []
    for start, end in spans:
        if any(start <= s and e <= end and (s, e) != (start, end) for s, e in spans):
            continue
        body = [text for _, text in instructions[start:end + 1]]
        fmas = sum(1 for text in body if re.match(r"(@!?U?P\w+ )?[FD]FMA\b", text))
        if fmas >= min_fmas:
            loads = sum(1 for text in body if re.match(r"(@!?U?P\w+ )?LDS\b", text))
            loops.append(Loop(len(body), loads, fmas))
    return loops


def model_constants() -> dict[str, float]:
    """The dot-loop constants as recurrence_cost_model.h sets them."""
    text = open(COST_MODEL).read()
    constants = {name: float(re.search(rf"double {name} = ([\d.]+);", text).group(1))
                 for name in ("address_instructions_per_load", "loop_instructions")}
    constants["tiled_other"] = float(re.search(r"double kTiledLoopOtherInstructions = ([\d.]+);", text).group(1))
    return constants


def is_tiled_loop(key: tuple, loop: Loop) -> bool:
    """Whether a loop of kernel `key` is the tiled dot products' (one trip: S state and 32 / S
    weight chunks for 128 multiply-adds, in the float32 kernels of the grid and cluster paths)."""
    samples = key[2]
    return (key[1] == "float" and key[3] in ("grid", "cluster") and samples in (4, 8)
            and loop.loads == samples + 32 // samples and loop.fmas == 128)


def per_iteration(key: tuple, loop: Loop) -> tuple[float, float] | None:
    """A dot loop's (loads, other instructions) per iteration, or None for a loop that is not one."""
    samples, vector = key[2], 4 if key[1] == "float" else 2
    for iterations in (2, 1, 4):
        if loop.loads % iterations or loop.fmas % iterations:
            continue
        used = loop.loads // iterations - samples
        if used >= 1 and used * samples * vector == loop.fmas // iterations:
            return loop.loads / iterations, loop.other / iterations
    return None


def report(kernels: dict[tuple, list[tuple[int, str]]]) -> tuple[list[str], str | None]:
    """(report lines, error or None) for the recurrence kernels' machine code (kernel_sass's)."""
    constants = model_constants()
    lines, misses, errors = [], {"float": [], "double": [], "float tiled": []}, []
    for key in sorted(kernels):
        name = f"{key[0]} {key[1]} {key[2]} samples {key[3]}" + (f" compiled for {key[4]} passes" if key[4] else "")
        if key[4] > 0 or " stack" in key[0]:  # (the stack kernels have no timed copy)
            steps = untimed_step_loops(kernels[key])
            if not steps:
                errors.append(f"{name}: no untimed step loop found")
            kinds = ("FFMA", "LDS", "SHFL", "BRA", "MUFU")
            for step in steps:
                shown = " + ".join(f"{step[kind]} {kind}" for kind in kinds)
                other = sum(step.values()) - sum(step[kind] for kind in kinds)
                lines.append(f"{name}: untimed step loop {sum(step.values())} = {shown} + {other} other")
            if (key[3] == "block" and key[4] > 0) or key[3].endswith((" split", " registers")):
                continue  # (the weight rows in registers, all or some: no dot loop)
        loops = sorted(innermost_fma_loops(kernels[key]), key=lambda loop: -loop.fmas)
        shown = ", ".join(f"{loop.instructions} = {loop.loads} LDS + {loop.fmas} FMA + {loop.other} other"
                          for loop in loops)
        for loop in loops:
            if is_tiled_loop(key, loop):
                misses["float tiled"].append(loop.other - constants["tiled_other"])
                continue
            counts = per_iteration(key, loop)
            if counts is None:
                continue
            loads, other = counts
            misses[key[1]].append(other - (loads * constants["address_instructions_per_load"] +
                                           constants["loop_instructions"]))
        lines.append(f"{name}: {shown or 'no loop with FMAs'}")
    lines.append("")
    for dtype, miss in misses.items():
        if not miss:
            errors.append(f"no {dtype} dot loop found")
            continue
        mean = sum(miss) / len(miss)
        count = (f"kTiledLoopOtherInstructions = {constants['tiled_other']:g}" if dtype == "float tiled" else
                 f"loads x {constants['address_instructions_per_load']:g} + {constants['loop_instructions']:g}")
        lines.append(f"{dtype}: over {len(miss)} dot loops, other instructions per iteration minus the cost model's "
                     f"count ({count}): mean {mean:+.2f}, from {min(miss):+g} to {max(miss):+g}")
        if abs(mean) > MAX_DIFFERENCE:
            update = ("kTiledLoopOtherInstructions" if dtype == "float tiled"
                      else "address_instructions_per_load / loop_instructions")
            errors.append(f"the {dtype} dot loops have {mean:+.2f} other instructions per iteration beyond the cost "
                          f"model's count: update {update} in recurrence_cost_model.h")
    return lines, "; ".join(errors) or None
