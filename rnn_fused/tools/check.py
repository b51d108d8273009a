"""`rnn-fused check`: do rnn_fused's gradients agree with autograd, here and now?

Rows of three kinds, on the device (CPU loops or CUDA kernels) and through the CUDA kernels
run by the SIMT emulator on a small emulated GPU:
- parity: every output and gradient of rnn_fused.RNN against a float64 torch.nn.RNN, within
  the tolerance rule of rnn_fused.tools.testing (2x stock float32's error + 8 ulp; float64 runs
  get testing.FLOAT64_PARITY_ULPS). Error and tolerance are relative to max|reference|.
- truncation: one layer with truncation K or randomized truncation, every output and
  gradient against a float64 autograd step loop (reference.py) whose recurrent edges are
  detached every K steps (scales computed here from the definition) or scaled by the
  draws rnn_fused.edge_scales names; stock is the same loop in float32; same rule.
- gradcheck: torch.autograd.gradcheck of the module in float64 (its verdict), with the
  largest |analytic - central difference| Jacobian entry and gradcheck's allowance there
  (atol + rtol |numerical|) shown.
Exit status 1 when any row fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.autograd.gradcheck import GradcheckError

from .. import simt
from ..functional import rnn_layer
from ..modules import RNN
from ..reference import reference_layer
from .testing import (DEFAULT_ULPS, FLOAT64_PARITY_ULPS, RNNCase, layer_args, layer_results, measure,
                      measure_against_torch, module_as_function, true_float32_on_cuda)
from ..truncation import RandomTruncation, edge_scales
from .command_output import markdown_table

# torch.autograd.gradcheck's defaults, for the numbers shown beside its verdict.
GRADCHECK_EPS, GRADCHECK_ATOL, GRADCHECK_RTOL = 1e-6, 1e-5, 1e-3

# The emulated GPU: two SMs, so the recurrence kernels' grids and clusters span several CTAs.
EMULATED_DEVICE = dict(sm_count=2)
EMULATED = "emulated CUDA kernels"

# Parity on the device: together these cover every value of layers, directions, packing,
# nonlinearity, hx, bias, batch_first and unbatched input.
DEVICE_CASES = [
    RNNCase(num_layers=1, with_hx=True, seq_len=12, batch=4, input_size=5, hidden_size=16),
    RNNCase(num_layers=1, bidirectional=True, nonlinearity="relu", packing="unsorted", with_hx=True,
            seq_len=12, batch=4, input_size=5, hidden_size=16),
    RNNCase(num_layers=2, nonlinearity="relu", packing="sorted", batch_first=True,
            seq_len=12, batch=4, input_size=5, hidden_size=16),
    RNNCase(num_layers=2, bidirectional=True, bias=False, with_hx=True,
            seq_len=12, batch=4, input_size=5, hidden_size=16),
    RNNCase(num_layers=2, bidirectional=True, packing="unsorted", with_hx=True,
            seq_len=12, batch=4, input_size=5, hidden_size=16),
    RNNCase(num_layers=1, nonlinearity="relu", unbatched=True, with_hx=True,
            seq_len=12, input_size=5, hidden_size=16),
]
# Every emulated CUDA thread is a fiber: sizes stay tiny (T <= 6, B <= 3, H <= 8).
EMULATED_CASES = [
    RNNCase(num_layers=1, with_hx=True, seq_len=5, batch=3, input_size=4, hidden_size=7),
    RNNCase(num_layers=2, bidirectional=True, nonlinearity="relu", packing="unsorted", with_hx=True,
            seq_len=4, batch=3, input_size=3, hidden_size=8),
    RNNCase(num_layers=1, bidirectional=True, packing="sorted", bias=False,
            seq_len=6, batch=2, input_size=2, hidden_size=5),
]


@dataclass(frozen=True)
class TruncationCase:
    """One layer and direction with truncated BPTT. lengths: valid steps per sample or None."""

    truncation: int | RandomTruncation
    steps: int
    batch: int
    input_size: int
    hidden: int
    nonlinearity: str = "tanh"
    reverse: bool = False
    lengths: tuple[int, ...] | None = None
    layer: int = 0  # keys the randomized draws


TRUNCATION_CASES = [
    TruncationCase(4, 12, 4, 5, 16),
    TruncationCase(5, 12, 4, 5, 16, "relu", reverse=True, lengths=(12, 7, 3, 10)),
    TruncationCase(RandomTruncation(keep_prob=0.7, seed=11), 12, 4, 5, 16, lengths=(12, 9, 1, 6)),
    TruncationCase(RandomTruncation(keep_prob=0.5, seed=12), 12, 4, 5, 16, reverse=True, layer=1),
]
EMULATED_TRUNCATION_CASES = [
    TruncationCase(2, 6, 3, 4, 7, reverse=True, lengths=(6, 2, 5)),
    TruncationCase(RandomTruncation(keep_prob=0.6, seed=5), 6, 3, 4, 7, "relu", lengths=(6, 4, 3), layer=1),
]
GRADCHECK_CASES = [
    RNNCase(with_hx=True),
    RNNCase(num_layers=2, bidirectional=True, nonlinearity="relu", packing="unsorted", with_hx=True,
            seq_len=4, batch=3),
]


@dataclass
class CheckRow:
    kind: str            # "parity", "truncation" or "gradcheck"
    backend: str         # "cpu", "cuda" or EMULATED
    config: str
    dtype: str
    quantity: str        # output, h_n, grad_<name>, or the Jacobians of a gradcheck
    error: float
    tolerance: float
    passed: bool
    detail: str = ""


def describe(case: RNNCase) -> str:
    parts = [f"L{case.num_layers}", "bi" if case.bidirectional else "uni", case.nonlinearity]
    if case.packing != "none":
        parts.append(f"packed-{case.packing}")
    if case.unbatched:
        parts.append("unbatched")
    if case.batch_first:
        parts.append("batch_first")
    if not case.bias:
        parts.append("no-bias")
    if case.with_hx:
        parts.append("hx")
    batch = "" if case.unbatched else f" B{case.batch}"
    return " ".join(parts) + f" T{case.seq_len}{batch} I{case.input_size} H{case.hidden_size}"


def _to_device(input, hx, device: torch.device):
    return input.to(device), None if hx is None else hx.to(device)  # input: tensor or PackedSequence


def parity_rows(case: RNNCase, dtype: torch.dtype, device: torch.device, backend: str) -> list[CheckRow]:
    generator = torch.Generator().manual_seed(1234)
    input, hx = _to_device(*case.inputs(generator), device)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else DEFAULT_ULPS
    results, mismatches = measure_against_torch(
        case.torch_module().to(device), input, hx, dtype=dtype, ulps=ulps,
        backend="emulated" if backend == EMULATED else None)
    dtype_name = str(dtype).removeprefix("torch.")
    rows = [CheckRow("parity", backend, describe(case), dtype_name, r.name, r.relative_error,
                     r.relative_bound, r.passed,
                     f"2 x stock {r.stock_error:.2e} + floor {r.floor:.2e} (absolute)")
            for r in results]
    # Packed-sequence bookkeeping must be identical, not close.
    rows += [CheckRow("parity", backend, describe(case), dtype_name, "packed metadata", 1.0, 0.0,
                      False, mismatch) for mismatch in mismatches]
    return rows


def describe_truncation(case: TruncationCase) -> str:
    if isinstance(case.truncation, RandomTruncation):
        how = f"random p={case.truncation.keep_prob} seed={case.truncation.seed}"
    else:
        how = f"K={case.truncation}"
    parts = [f"layer {case.layer}", "reverse" if case.reverse else "forward", case.nonlinearity, how]
    if case.lengths is not None:
        parts.append("lengths " + ",".join(map(str, case.lengths)))
    return " ".join(parts) + f" T{case.steps} B{case.batch} I{case.input_size} H{case.hidden}"


def reference_edge_scales(case: TruncationCase) -> torch.Tensor:
    """c [T, B] float64 in processing order. K: from the definition (the edge into step s is
    cut when s % K == 0 and s > 0), independently of the kernels; randomized: the draws
    rnn_fused.edge_scales names (a random draw has no second source)."""
    lengths = None if case.lengths is None else torch.tensor(case.lengths)
    if isinstance(case.truncation, RandomTruncation):
        return edge_scales(case.steps, case.batch, case.truncation, case.layer, case.reverse, lengths)
    step = torch.arange(case.steps, dtype=torch.float64).unsqueeze(1)
    kept = (step % case.truncation != 0) | (step == 0)
    return kept.to(torch.float64).expand(case.steps, case.batch).clone()


def truncation_rows(case: TruncationCase, dtype: torch.dtype, device: torch.device, backend: str) -> list[CheckRow]:
    args = [None if a is None else a.to(device)
            for a in layer_args(case.steps, case.batch, case.input_size, case.hidden)]
    generator = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(case.steps, case.batch, case.hidden, dtype=torch.float64, generator=generator),
                  torch.randn(case.batch, case.hidden, dtype=torch.float64, generator=generator)]
    lengths = None if case.lengths is None else torch.tensor(case.lengths, device=device)
    common = dict(lengths=lengths, nonlinearity=case.nonlinearity, reverse=case.reverse)
    scales = reference_edge_scales(case).to(device)
    reference = layer_results(reference_layer, args, cotangents, torch.float64, edge_scales=scales, **common)
    stock = layer_results(reference_layer, args, cotangents, dtype, edge_scales=scales, **common)
    ours = layer_results(rnn_layer, args, cotangents, dtype, truncation=case.truncation, layer=case.layer,
                         backend="emulated" if backend == EMULATED else None, **common)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else DEFAULT_ULPS
    rows = []
    for name in reference:
        r = measure(reference[name], stock[name], ours[name], name=name, ulps=ulps)
        rows.append(CheckRow("truncation", backend, describe_truncation(case), str(dtype).removeprefix("torch."),
                             name, r.relative_error, r.relative_bound, r.passed,
                             f"2 x stock {r.stock_error:.2e} + floor {r.floor:.2e} (absolute)"))
    return rows


def jacobian_mismatch(f: Callable, leaves: tuple) -> tuple[float, float]:
    """Compare the analytic Jacobians of f (through the fused backward) with central
    differences, over every output and every tensor in `leaves` (None entries stay None).

    Returns |analytic - numerical| and gradcheck's allowance atol + rtol |numerical| at the
    entry where their ratio is largest.
    """
    slots = [i for i, leaf in enumerate(leaves) if leaf is not None]

    def on_tensors(*tensors):
        args = list(leaves)
        for i, t in zip(slots, tensors):
            args[i] = t
        return f(*args)

    tensors = tuple(leaves[i].detach() for i in slots)
    analytic = torch.autograd.functional.jacobian(on_tensors, tensors)
    worst = (-1.0, 0.0, 0.0)  # (error / allowance, error, allowance)
    with torch.no_grad():
        for j, tensor in enumerate(tensors):
            flat = tensor.reshape(-1)
            for k in range(flat.numel()):
                shifted = []
                for step in (GRADCHECK_EPS, -GRADCHECK_EPS):
                    moved = flat.clone()
                    moved[k] += step
                    args = list(tensors)
                    args[j] = moved.view_as(tensor)
                    shifted.append(on_tensors(*args))
                for o, (plus, minus) in enumerate(zip(*shifted)):
                    numerical = ((plus - minus) / (2 * GRADCHECK_EPS)).reshape(-1)
                    exact = analytic[o][j].reshape(numerical.numel(), -1)[:, k]
                    error = (exact - numerical).abs()
                    allowance = GRADCHECK_ATOL + GRADCHECK_RTOL * numerical.abs()
                    i = int((error / allowance).argmax())
                    if error[i] / allowance[i] > worst[0]:
                        worst = (float(error[i] / allowance[i]), float(error[i]), float(allowance[i]))
    return worst[1], worst[2]


def gradcheck_row(case: RNNCase, device: torch.device, backend: str) -> CheckRow:
    module = RNN.from_torch(case.torch_module().double().to(device))
    if backend == EMULATED:
        module.backend = "emulated"
    input, hx = _to_device(*case.inputs(torch.Generator().manual_seed(1234)), device)
    f, leaves = module_as_function(module, input, hx)
    detail = ""
    try:
        passed = torch.autograd.gradcheck(f, leaves, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL,
                                          rtol=GRADCHECK_RTOL)
    except GradcheckError as failure:
        # A failed check is a FAIL row carrying gradcheck's own first line, not an exception.
        passed, detail = False, str(failure).splitlines()[0]
    error, allowance = jacobian_mismatch(f, leaves)
    return CheckRow("gradcheck", backend, describe(case), "float64",
                    "Jacobians of output, h_n (abs)", error, allowance, passed, detail)


def plan(device: torch.device, emulated: bool, quick: bool) -> list[tuple[str, Callable[[], list[CheckRow]]]]:
    """(label, rows()) for every configuration to check, in the order they run."""
    device_cases = DEVICE_CASES[::3] if quick else DEVICE_CASES
    emulated_cases = EMULATED_CASES[:1] if quick else EMULATED_CASES
    gradcheck_cases = GRADCHECK_CASES[:1] if quick else GRADCHECK_CASES
    truncation_cases = TRUNCATION_CASES[1::2] if quick else TRUNCATION_CASES
    emulated_truncation_cases = EMULATED_TRUNCATION_CASES[1:] if quick else EMULATED_TRUNCATION_CASES
    cpu = torch.device("cpu")
    backend = device.type
    tasks = []
    for case in gradcheck_cases:
        tasks.append((f"gradcheck {describe(case)}", lambda c=case: [gradcheck_row(c, device, backend)]))
    for case in device_cases:
        tasks.append((f"float32 {describe(case)}", lambda c=case: parity_rows(c, torch.float32, device, backend)))
    for case in device_cases[-2:]:
        tasks.append((f"float64 {describe(case)}", lambda c=case: parity_rows(c, torch.float64, device, backend)))
    for case in truncation_cases:
        for dtype in (torch.float32, torch.float64):
            tasks.append((f"truncation {dtype} {describe_truncation(case)}",
                          lambda c=case, d=dtype: truncation_rows(c, d, device, backend)))
    if emulated:
        for case in gradcheck_cases[:1]:
            tasks.append((f"emulated gradcheck {describe(case)}", lambda c=case: [gradcheck_row(c, cpu, EMULATED)]))
        for case in emulated_cases:
            for dtype in (torch.float32, torch.float64):
                tasks.append((f"emulated {dtype} {describe(case)}",
                              lambda c=case, d=dtype: parity_rows(c, d, cpu, EMULATED)))
        for case in emulated_truncation_cases:
            for dtype in (torch.float32, torch.float64):
                tasks.append((f"emulated truncation {dtype} {describe_truncation(case)}",
                              lambda c=case, d=dtype: truncation_rows(c, d, cpu, EMULATED)))
    return tasks


def format_table(rows: list[CheckRow]) -> str:
    cells = [[r.kind, r.backend, r.config, r.dtype, r.quantity, f"{r.error:.2e}", f"{r.tolerance:.2e}",
              "PASS" if r.passed else "FAIL"] for r in rows]
    columns = ["check", "backend", "configuration", "dtype", "quantity", "error", "tolerance", "result"]
    lines = markdown_table(columns, cells, range(5, 7))
    failed = [r for r in rows if not r.passed]
    lines += ["", f"{len(rows)} rows: {len(rows) - len(failed)} PASS, {len(failed)} FAIL."]
    lines += [f"FAIL {r.kind} {r.backend} {r.config} {r.dtype} {r.quantity}: {r.detail}" for r in failed]
    return "\n".join(lines)


def plot_margins(rows: list[CheckRow], ax) -> None:
    """error / tolerance of every row (log scale): below the line at 1 passes."""
    for backend in dict.fromkeys(r.backend for r in rows):
        points = [(i, r.error / r.tolerance) for i, r in enumerate(rows)
                  if r.backend == backend and r.tolerance > 0]
        ax.scatter([p[0] for p in points], [max(p[1], 1e-6) for p in points], s=12, label=backend)
    ax.axhline(1.0, color="red", linewidth=1, label="tolerance")
    ax.set_yscale("log")
    ax.set_xlabel("row of the check table")
    ax.set_ylabel("error / tolerance")
    ax.set_title("rnn-fused check: every row's error against its tolerance (floored at 1e-6)")
    ax.legend(fontsize=8)


def run(*, device: torch.device, threads: int, emulated: bool, quick: bool, out: str) -> int:
    """`rnn-fused check`: print the table, write check.{md,json} and check_margins.png;
    1 when any row fails."""
    from .command_output import figure, prepare_output, progress_bar, save_figure, write_json, write_text

    prepare_output(out)
    torch.set_num_threads(threads)
    tasks = plan(device, emulated, quick)
    rows: list[CheckRow] = []
    with true_float32_on_cuda(), simt.emulated_device(**EMULATED_DEVICE), \
            progress_bar(len(tasks), f"check on {device.type}") as bar:
        for label, make_rows in tasks:
            bar.set_postfix_str(label)
            rows += make_rows()
            bar.update()
    table = format_table(rows)
    print(table)
    write_text(out, "check.md", table)
    write_json(out, "check.json", {"device": device.type, "torch": torch.__version__,
                                   "emulated_device": EMULATED_DEVICE if emulated else None,
                                   "passed": all(r.passed for r in rows),
                                   "rows": [asdict(r) for r in rows]})
    fig, ax = figure(width=9.0)
    plot_margins(rows, ax)
    save_figure(fig, out, "check_margins.png")
    return 0 if all(r.passed for r in rows) else 1
