"""`rnn-fused fit-model`: the cost model's constants refitted to what a GPU measured.

Input: the JSON of `rnn-fused gpu-check` (gpu_out/gpu_check.json), or a stored set of
autotuning timings (tests/data/h200_autotune_2026-11-30.json: "recurrences", each with every
launch shape timed). Every (shape, path) row
with a measured time per step is an observation, forward and backward apart: the launch
shape that ran (the plan's samples, chunks, CTAs per group, units per CTA, waves), H, B and
the dtype, and the measured microseconds per step. So is each part of a step that the
step-phase table measured (staging, compute, barrier): these separate the terms that the
totals alone cannot; and each path's time per step that autotuning measured (tune_rows).
The model prices exactly that shape under trial constants through the op
rnn_fused::step_cost (launch_plan.step_cost_us), so a fit needs no rebuild and no copy of the
C++ formulas. "Before" is this build's constants.

The fit: the constants that the probes of the same run measure directly (launch_us;
op_fixed_us from the one-step layer call) are set first, and those held (--hold NAME[=VALUE]:
at VALUE, or at this build's value) stay; the others listed in FITTED are
fitted by damped Gauss-Newton on log(predicted / measured), on a log scale (every constant
stays positive), each pulled toward its current value by a weak prior so that a constant the
rows cannot tell apart stays where it was. The report gives the constants before and after,
every row's ratio before and after, the path measured fastest beside the model's pick where
a shape ran on several paths, and the Constants lines to paste into
csrc/cuda/recurrence_cost_model.h (docs/gpu_check.md says what to rebuild and rerun after).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..launch_plan import STEP_SYNCS, cost_constants, stack_plan, step_cost_us
from .command_output import UsageError, markdown_table, output_directory, write_json, write_text
from .gpu_check import GEMMS_ALONE

# The constants the per-step rows can inform (the launch shape's compute, staging, exchange
# and barrier terms), in the order the report lists them. Not fitted here: clock_per_us
# (it only converts cycles, and trades off exactly against the latencies), fp64_fma_fraction
# (the float64 rows' FMA rate; a fit of its own when float64 rows exist) and gemm_tflops and
# op_fixed_us (whole-layer terms outside the step).
FITTED = ("block_barrier_us", "cluster_barrier_scale", "grid_barrier_us", "flag_barrier_us", "tagged_exchange_us",
          "async_exchange_us",
          "fma_per_sm_per_us", "smem_wavefronts_per_us", "l2_dependent_load_us", "l2_bytes_per_sm_per_us", "fma_latency_cycles",
          "smem_latency_cycles", "shuffle_latency_cycles", "epilogue_cycles", "remote_store_cycles",
          "output_issue_cycles", "address_instructions_per_load", "loop_instructions", "launch_us")
# How strongly a constant is held to its current value: the weight of log(new / current) beside
# a row's log(predicted / measured). Weak: 20% of one row's pull at a factor of e.
PRIOR_WEIGHT = 0.2
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float32,
           "bfloat16": torch.float32}


@dataclass(frozen=True)
class Observation:
    """One measured time per step of one launch shape, or one part of it."""

    label: str           # the shape row's label, e.g. "1000, 8, 256, 256"
    direction: str       # "forward" or "backward"
    plan: dict           # the launch shape that ran (a plan's fields)
    hidden: int
    batch: int
    dtype: torch.dtype
    measured_us: float
    term: str = "total"  # or the step phase measured: "stage", "compute", "barrier"

    def predicted_us(self, constants: dict[str, float]) -> float:
        return step_cost_us(self.plan, self.hidden, self.batch, self.dtype, constants, self.term)


# The wait per step of a layer stack beyond its model step (the hand-over between layers), by
# the stack kernel's path: fitted apart from the per-step rows (stack_steps).
STACK_WAITS = {"block": "block_stack_wait_us", "cluster": "cluster_stack_wait_us"}
# Stack rows shorter than this are not observations of a step: their time is the calls' own
# (11 steps of 2 layers took 0.5 ms on the H200 on 2026-12-04, 40 us a step).
STACK_MIN_STEPS = 100


@dataclass(frozen=True)
class StackStep:
    """One layer stack's forward as gpu-check measured it (a shape row that ran the stack)."""

    label: str
    path: str            # the stack kernel's: "block" or "cluster"
    measured_us: float   # per stack step: (the forward less the first layer's GEMM and op) / (T + lead steps)
    model_us: float      # the build's model step of the stack's launch shape, without its wait

    @property
    def wait_us(self) -> float:
        return self.measured_us - self.model_us


def stack_steps(report: dict, constants: dict[str, float]) -> list[StackStep]:
    """The shape rows with a layer stack's forward timed, T >= STACK_MIN_STEPS: the row's own
    where it ran as a stack, else its stack timed beside it (as_stack_fwd_ms), as measured steps
    beside the model's. The stack's launch shape is the one this build plans for an emulated
    H100/H200-class device (the run's rows record only that a stack ran); the first layer's input
    GEMM and the op's fixed cost are the model's (constants: op_fixed_us, gemm_tflops,
    launch_us)."""
    found = []
    for row in report.get("shape_rows", []):
        shape = row.get("shape") or {}
        forward_ms = row.get("ours_fwd_ms") if row.get("forward_path") == "stack" else row.get("as_stack_fwd_ms")
        if row.get("error") or not forward_ms:
            continue
        steps, batch, inputs, hidden, layers = (shape.get(k) for k in ("steps", "batch", "input_size", "hidden",
                                                                        "layers"))
        if None in (steps, batch, inputs, hidden, layers) or steps < STACK_MIN_STEPS:
            continue
        plan = stack_plan(hidden, batch, 1, layers, "emulated")
        if not plan.feasible:
            continue
        model_us = plan.predicted_stack_us / (1 + plan.lead_steps) - constants[STACK_WAITS[plan.path]]
        outside_us = (constants["op_fixed_us"] + constants["launch_us"] +
                      2.0 * steps * batch * inputs * hidden / (constants["gemm_tflops"] * 1e6))
        measured_us = (forward_ms * 1e3 - outside_us) / (steps + plan.lead_steps)
        if measured_us > 0:
            found.append(StackStep(row.get("label", ""), plan.path, measured_us, model_us))
    return found


def fit_stack_waits(steps: list[StackStep]) -> dict[str, float]:
    """Each stack path's wait: the median of its rows' measured less modelled step (>= 0)."""
    return {STACK_WAITS[path]: max(0.0, float(np.median([s.wait_us for s in steps if s.path == path])))
            for path in sorted({s.path for s in steps})}


@dataclass(frozen=True)
class FitResult:
    before: dict[str, float]        # the constants the run was predicted with (this build's)
    after: dict[str, float]         # fitted (and probe-set) constants
    set_from_probes: tuple[str, ...]
    observations: tuple[Observation, ...]
    iterations: int
    held: tuple[str, ...] = ()      # kept at a given value (--hold), not fitted
    stacks: tuple[StackStep, ...] = ()  # the stack rows that set STACK_WAITS (unless held)

    def ratios(self, constants: dict[str, float]) -> list[float]:
        """predicted / measured for every observation."""
        return [o.predicted_us(constants) / o.measured_us for o in self.observations]


def observations_from_report(report: dict) -> list[Observation]:
    """Every (shape, path) of gpu-check's path_rows with a measured forward time per step and
    the plan that ran (one layer, one direction: the per-step time of a deeper or
    bidirectional model mixes several launches), and their backward where the run replayed the
    layer ops' own GEMMs (meta "gemms_alone"): before, a hand-written replay of more launches
    outlasted them, and the backward's time by subtraction came out below zero or near it at
    H <= 256 (H200, 2026-12-04); autotuning's direct backward times (tune_rows) stand for
    those runs' backward."""
    found = []
    directions = [("forward", "measured_fwd_us_per_step", "forward_plan")]
    if report.get("meta", {}).get("gemms_alone") == GEMMS_ALONE:
        directions.append(("backward", "measured_bwd_us_per_step", "backward_plan"))
    for row in report.get("path_rows", []):
        shape = row.get("shape") or {}
        if shape.get("layers", 1) != 1 or shape.get("bidirectional") or row.get("error"):
            continue
        for direction, key, plan_key in directions:
            measured, plan = row.get(key), row.get(plan_key)
            if not measured or measured <= 0 or not plan or not plan.get("feasible") or not _priced(plan):
                continue
            if "samples" not in plan:
                raise UsageError(f"row {row.get('label')!r}: its {plan_key} has no 'samples' field: the JSON was "
                                 "written before plans reported their register tile; run gpu-check again")
            found.append(Observation(row["label"], direction, plan, shape["hidden"], shape["batch"],
                                     _DTYPES[shape.get("dtype", "float32")], float(measured)))
    return found + phase_observations(report) + tune_observations(report) + stored_tune_observations(report)


def phase_observations(report: dict) -> list[Observation]:
    """The step-phase table's parts as observations of the model's terms (float32, T = 200):
    compute and barrier on every persistent path, stage on the grid path (the others stage
    nothing). Cycles are converted at the clock the run reported them with. These are what
    tell a barrier from compute, which the totals alone cannot. Thread 0's view: another warp's
    lag shows up as barrier time."""
    clock = report.get("meta", {}).get("model_constants", {}).get("clock_per_us") or cost_constants()["clock_per_us"]
    found = []
    for row in report.get("phase_rows", []):
        # (A row forced to the kernels that read their passes at run time is not the planner's kernel;
        # one forced to the grid or cluster path's tiled dot products is, its plan's tiled_dots priced by step_cost;
        # one forced to the block path's operand ring is not either, and the model has no term for what it changes.)
        if row.get("error") or not row.get("plan", {}).get("feasible") or row.get("forced_run_time_passes") or \
                row.get("forced_operand_ring") or not _priced(row["plan"]):
            continue
        for term in ("stage", "compute", "barrier"):
            cycles = row.get(f"{term}_cycles")
            if term == "stage" and row["path"] != "grid" or not cycles or cycles <= 0:
                continue
            if term == "barrier" and _tagged_exchange(row["plan"]):
                continue  # no step barrier: the clock reads only its own overhead there
            found.append(Observation(f"{row['label']} ({term})", row["direction"], row["plan"], row["hidden"],
                                     row["batch"], torch.float32, cycles / clock, term))
    return found


def _priced(plan: dict) -> bool:
    """Whether the model has terms for what the launch shape runs: not for the block path's
    operand ring (priced as the loads it replaces, so its time would only blur the fit)."""
    return not plan.get("operand_ring")


def _tagged_exchange(plan: dict) -> bool:
    return plan.get("path") == "grid" and plan.get("step_sync") == STEP_SYNCS.index("tagged_exchange")


def tune_observations(report: dict) -> list[Observation]:
    """Every path's time per step that autotuning measured (gpu-check's tune_rows, float32):
    the recurrence alone, timed directly (runs of two lengths, no GEMMs to subtract), each
    priced at the launch shape that ran."""
    found = []
    for row in report.get("tune_rows", []):
        if row.get("error"):
            continue
        for plan in row.get("timed", []):
            measured = plan.get("measured_us_per_step")
            if plan.get("feasible") and measured and measured > 0 and _priced(plan):
                found.append(Observation(f"{row['hidden']}, {row['batch']} (autotune)", row["direction"], plan,
                                         row["hidden"], row["batch"], torch.float32, float(measured)))
    return found


def stored_tune_observations(report: dict) -> list[Observation]:
    """A stored set of autotuning timings ("recurrences": hidden, batch, direction and every
    launch shape timed, tests/data/h200_autotune_2026-11-30.json): each timed shape ran, so
    each is an observation as in tune_observations."""
    recurrences = [dict(r, timed=[{"feasible": True, **p} for p in r.get("timed", [])])
                   for r in report.get("recurrences", [])]
    return tune_observations({"tune_rows": recurrences})


def held_constants(specs: list[str], current: dict[str, float]) -> dict[str, float]:
    """--hold NAME or NAME=VALUE (each, or comma-separated): the constants to keep, at VALUE or
    at their value in `current`. A name the model lacks or a value that is not a positive
    number is a usage error."""
    held = {}
    for spec in (part.strip() for item in specs for part in item.split(",") if part.strip()):
        name, _, value = spec.partition("=")
        if name not in current:
            raise UsageError(f"--hold: {name!r} is not a constant of the cost model (known: {', '.join(current)})")
        try:
            held[name] = float(value) if value else current[name]
        except ValueError:
            raise UsageError(f"--hold: {name}={value!r} is not a number") from None
        if not held[name] > 0:
            raise UsageError(f"--hold: {name} must be positive, got {held[name]}")
    return held


def probe_constants(report: dict) -> dict[str, float]:
    """Constants the run's probes measured directly: launch_us (back-to-back launches),
    op_fixed_us (the one-step layer call less its two launches) and memory_bytes_per_us (a read
    of a tensor larger than L2)."""
    probes = {p["name"]: p for p in report.get("probes", [])}
    constants = {}
    memory = next((p for p in probes.values() if p.get("model_constant") == "memory_bytes_per_us"), None)
    if memory and memory.get("measured") and memory["measured"] > 0:
        constants["memory_bytes_per_us"] = float(memory["measured"])
    launch = probes.get("launch", {}).get("measured")
    if launch and launch > 0:
        constants["launch_us"] = float(launch)
    call = next((p for p in probes.values() if p.get("model_constant") == "op_fixed_us"), None)
    if call and call.get("measured") and launch:
        fixed = float(call["measured"]) - 2 * float(launch)
        if fixed > 0:
            constants["op_fixed_us"] = fixed
    return constants


def fit(observations: list[Observation], start: dict[str, float] | None = None,
        fitted: tuple[str, ...] = FITTED, max_iterations: int = 50) -> tuple[dict[str, float], int]:
    """Constants (start's, or this build's) with `fitted` moved to minimise
    sum over rows of log(predicted / measured)^2 + PRIOR_WEIGHT^2 * sum log(new / start)^2.
    Returns (constants, iterations run)."""
    if not observations:
        raise UsageError("no measured per-step rows to fit (gpu_check.json path_rows)")
    base = dict(start or cost_constants())
    unpriced = [f"{o.label} {o.direction}" for o in observations if not o.predicted_us(base) > 0]
    if unpriced:  # the log ratio needs a time; a term the model lacks for a shape cannot be fitted
        raise UsageError(f"the model prices {len(unpriced)} measured row(s) at 0 us: {', '.join(unpriced)}")
    names = [n for n in fitted if n in base]
    anchor = np.log([base[n] for n in names])
    theta = anchor.copy()

    def constants_at(t):
        c = dict(base)
        c.update({n: float(math.exp(v)) for n, v in zip(names, t)})
        return c

    def residuals(t):
        c = constants_at(t)
        rows = [math.log(o.predicted_us(c) / o.measured_us) for o in observations]
        return np.concatenate([rows, PRIOR_WEIGHT * (t - anchor)])

    damping = 1e-3
    current = residuals(theta)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        step_size = 1e-4
        jacobian = np.empty((current.size, len(names)))
        for j in range(len(names)):
            shifted = theta.copy()
            shifted[j] += step_size
            jacobian[:, j] = (residuals(shifted) - current) / step_size
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ current
        improved = False
        while damping < 1e8:
            step = -np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), gradient)
            trial = residuals(theta + step)
            if trial @ trial < current @ current:
                theta, current = theta + step, trial
                damping = max(damping / 3, 1e-9)
                improved = True
                break
            damping *= 4
        if not improved or np.max(np.abs(step)) < 1e-6:
            break
    return constants_at(theta), iterations


def fit_report(report: dict, held: dict[str, float] | None = None) -> FitResult:
    observations = observations_from_report(report)
    before = cost_constants()
    probes = probe_constants(report)
    kept = {**probes, **(held or {})}
    start = {**before, **kept}
    # What the probes measured, and what is held, is not refitted from the rows.
    after, iterations = fit(observations, start, tuple(n for n in FITTED if n not in kept))
    stacks = stack_steps(report, before)
    after.update({name: wait for name, wait in fit_stack_waits(stacks).items() if name not in kept})
    return FitResult(before, after, tuple(sorted(probes)), tuple(observations), iterations, tuple(sorted(held or {})),
                     tuple(stacks))


@dataclass(frozen=True)
class PathChoice:
    """For one shape and direction that ran on several paths: the path measured fastest and
    the path the model picks among them, before and after the fit."""

    label: str
    direction: str
    measured: str
    before: str
    after: str


def path_choices(result: FitResult) -> list[PathChoice]:
    """Among the paths each (shape, direction) was measured on, the fastest measured and the
    fastest predicted under the old and the fitted constants (each path at the launch shape
    that ran: the planner, searching shapes under the fitted constants, can only do better)."""
    groups: dict[tuple[str, str], list[Observation]] = {}
    for o in result.observations:
        if o.term == "total":
            groups.setdefault((o.label, o.direction), []).append(o)
    choices = []
    for (label, direction), rows in groups.items():
        if len(rows) < 2:
            continue
        fastest = lambda key: min(rows, key=key).plan["path"]  # noqa: E731
        choices.append(PathChoice(label, direction, fastest(lambda o: o.measured_us),
                                  fastest(lambda o: o.predicted_us(result.before)),
                                  fastest(lambda o: o.predicted_us(result.after))))
    return choices


def format_report(result: FitResult, source: str) -> str:
    before, after = result.ratios(result.before), result.ratios(result.after)

    def spread(ratios):
        errors = [abs(r - 1) for r in ratios]
        return f"median |error| {np.median(errors):.0%}, worst {max(errors):.0%}"

    lines = [f"# Cost model refitted to {source}", "",
             f"{len(result.observations)} measured rows (one layer and direction each; a step or a part of one); "
             f"{result.iterations} Gauss-Newton iterations. Ratio = predicted / measured.", "",
             f"- before: {spread(before)}", f"- after: {spread(after)}", ""]
    constants = []
    for name, new in result.after.items():
        how = ("probe" if name in result.set_from_probes else "held" if name in result.held
               else "fitted" if name in FITTED else "stack rows" if _stack_fitted(result, name) else "kept")
        constants.append([name, f"{result.before[name]:.6g}", f"{new:.6g}", how])
    lines += markdown_table(["constant", "before", "after", "how"], constants, range(1, 3)) + [""]
    rows = [[o.label, o.direction, o.plan["path"], o.term, f"{o.measured_us:.3f}", f"{o.measured_us * r0:.3f}", f"{r0:.2f}",
             f"{o.measured_us * r1:.3f}", f"{r1:.2f}"] for o, r0, r1 in zip(result.observations, before, after)]
    lines += markdown_table(["shape", "direction", "path", "term", "measured us/step", "predicted before", "ratio",
                             "predicted after", "ratio"], rows, range(4, 9)) + [""]
    choices = path_choices(result)
    if choices:
        agree = sum(c.after == c.measured for c in choices), sum(c.before == c.measured for c in choices)
        lines += [f"The path measured fastest is the model's choice at {agree[0]} of {len(choices)} shapes after the "
                  f"fit ({agree[1]} before):", ""]
        lines += markdown_table(["shape", "direction", "measured fastest", "model before", "model after"],
                                [[c.label, c.direction, c.measured, c.before, c.after] for c in choices],
                                range(0)) + [""]
    if result.stacks:
        lines += ["Layer stacks (forward, T >= %d): the measured step against the model's step of the stack's "
                  "launch shape without its wait; each path's wait is the median difference." % STACK_MIN_STEPS, ""]
        lines += markdown_table(["shape", "stack path", "measured us/step", "model us/step (no wait)", "wait us"],
                                [[s.label, s.path, f"{s.measured_us:.3f}", f"{s.model_us:.3f}", f"{s.wait_us:.3f}"]
                                 for s in result.stacks], range(2, 5)) + [""]
    lines += ["Constants for csrc/cuda/recurrence_cost_model.h (the fitted, probe-set and held ones):", "", "```cpp"]
    for name, new in result.after.items():
        if (name not in result.set_from_probes and name not in FITTED and name not in result.held
                and not _stack_fitted(result, name)):
            continue
        if name == "cluster_barrier_scale":
            lines.append(f"// cluster_barrier_us: every entry times {new:.4g}")
        else:
            lines.append(f"double {name} = {new:.6g};")
    return "\n".join(lines + ["```", ""])


def _stack_fitted(result: FitResult, name: str) -> bool:
    return name not in result.held and any(STACK_WAITS[s.path] == name for s in result.stacks)


def run(report_path: str, out: str, hold: list[str] | None = None) -> int:
    """Fits the model to gpu-check's JSON (or stored autotuning timings) at report_path, with
    the constants `hold` names kept (held_constants); prints the report and writes
    fit_model.md and fit_model.json to `out`."""
    path = Path(report_path)
    if not path.is_file():
        raise UsageError(f"{report_path} is not a file (expected gpu_out/gpu_check.json from rnn-fused gpu-check)")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{report_path} is not JSON: {error}") from None
    held = held_constants(hold or [], cost_constants())
    directory = output_directory(out)
    started = time.monotonic()
    result = fit_report(report, held)
    text = format_report(result, str(path))
    print(text)
    write_text(directory, "fit_model.md", text)
    write_json(directory, "fit_model.json", {
        "source": str(path), "seconds": time.monotonic() - started, "iterations": result.iterations,
        "before": result.before, "after": result.after, "set_from_probes": list(result.set_from_probes),
        "held": list(result.held),
        "path_choices": [dataclasses.asdict(c) for c in path_choices(result)],
        "stacks": [dataclasses.asdict(s) for s in result.stacks],
        "rows": [{"label": o.label, "direction": o.direction, "path": o.plan["path"], "term": o.term,
                  "measured_us": o.measured_us,
                  "predicted_before_us": o.predicted_us(result.before),
                  "predicted_after_us": o.predicted_us(result.after)} for o in result.observations],
    })
    return 0
