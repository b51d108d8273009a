"""Running rnn_fused.RNN beside the autograd references of bptt_reference.py.

compare_with_reference applies the project's tolerance rule (rnn_fused.tools.testing): the
float64 reference loop is the reference, the same loop in the test dtype (as is, and with
weights, input and hx moved by one unit of roundoff) gives the stock error, and ours may
be off by at most twice that plus a floor of a few ulps. The same rule covers the per-step
gradient norms.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

import rnn_fused
from bptt_reference import BPTTReferenceRNN
from rnn_fused import simt
from rnn_fused.tools.testing import (DEFAULT_ULPS, FLOAT64_PARITY_ULPS, ToleranceResult, cast_input,
                               measure, run_rnn)

BACKENDS = ["cpu", "emulated"]
EXACT_FIELDS = ("batch_sizes", "sorted_indices", "unsorted_indices")


def on_backend(backend: str):
    """The emulated CUDA kernels run on a small emulated GPU (2 SMs: grid-wide barriers
    span several blocks); the CPU backend needs nothing."""
    if backend == "emulated":
        return simt.emulated_device(sm_count=2)
    return contextlib.nullcontext()


def ulps_for(dtype: torch.dtype) -> float:
    return FLOAT64_PARITY_ULPS if dtype == torch.float64 else DEFAULT_ULPS


def ours_from(torch_module: nn.Module, dtype: torch.dtype, backend: str, **kwargs) -> rnn_fused.RNN:
    """rnn_fused.RNN with torch_module's weights in dtype, on backend; kwargs are set as
    attributes (e.g. truncation=2)."""
    module = rnn_fused.RNN.from_torch(copy.deepcopy(torch_module).to(dtype))
    module.backend = backend
    for name, value in kwargs.items():
        setattr(module, name, value)
    return module


def leaves(input: Tensor | PackedSequence, hx: Tensor | None, dtype: torch.dtype):
    x = cast_input(input, dtype, True)
    return x, None if hx is None else hx.detach().to(dtype).requires_grad_()


def _ulp_perturbed(module: BPTTReferenceRNN, input, hx, seed: int):
    """A copy of module and leaves of input and hx with every entry moved by one unit of
    roundoff, up or down at random (as the cast to the dtype moves them anyway)."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(t: Tensor) -> Tensor:
        signs = torch.randint(0, 2, t.shape, generator=generator).to(t.dtype) * 2 - 1
        return t * (1 + signs * torch.finfo(t.dtype).eps / 2)

    perturbed = copy.deepcopy(module)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.copy_(perturb(param))
    if isinstance(input, PackedSequence):
        data = perturb(input.data.detach()).requires_grad_()
        input = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    else:
        input = perturb(input.detach()).requires_grad_()
    hx = None if hx is None else perturb(hx.detach()).requires_grad_()
    return perturbed, input, hx


def reference_runs(torch_module: nn.Module, input, hx, cotangents, dtype: torch.dtype, *,
                   truncation: int | None = None, edge_scales: Tensor | None = None):
    """(float64 reference run, [stock runs in dtype]); each run is run_rnn's dict plus
    "step_norms" (the hook norms [L, D, T, B])."""
    reference = BPTTReferenceRNN.from_module(torch_module).double()
    reference.truncation = truncation
    reference.edge_scales = edge_scales

    def run(module, x, h):
        results = run_rnn(module, x, h, cotangents)
        results["step_norms"] = module.step_norms
        return results

    expected = run(reference, *leaves(input, hx, torch.float64))
    stock_module = copy.deepcopy(reference).to(dtype)
    stocks = [run(stock_module, *leaves(input, hx, dtype))]
    if dtype != torch.float64:
        for seed in (1, 2):
            stocks.append(run(*_ulp_perturbed(stock_module, *leaves(input, hx, dtype), seed)))
    return expected, stocks


def run_ours(module: rnn_fused.RNN, input, hx, cotangents, dtype: torch.dtype, *,
             record: bool = False, **call_kwargs):
    """run_rnn on ours (forward keyword arguments, e.g. truncation=..., passed through);
    returns (results, recorder or None)."""
    call = module if not call_kwargs else _with_call_kwargs(module, call_kwargs)
    with on_backend(module.backend):
        if not record:
            return run_rnn(call, *leaves(input, hx, dtype), cotangents), None
        with rnn_fused.record_gradients(module) as recorder:
            results = run_rnn(call, *leaves(input, hx, dtype), cotangents)
        return results, recorder


class _with_call_kwargs(nn.Module):
    """module(input, hx, **kwargs) under module's own parameter names (for run_rnn)."""

    def __init__(self, module: nn.Module, kwargs: dict):
        super().__init__()
        self.inner = module
        self.kwargs = kwargs

    def named_parameters(self, *args, **kwargs):
        return self.inner.named_parameters(*args, **kwargs)

    def forward(self, input, hx=None):
        return self.inner(input, hx, **self.kwargs)


def assert_results_match(expected: dict, stocks: list[dict], ours: dict, dtype: torch.dtype,
                         keys=None, what: str = "") -> list[ToleranceResult]:
    """Every result of ours (or those in keys) within the tolerance rule."""
    failures, results = [], []
    keys = [k for k in expected if k != "step_norms"] if keys is None else keys
    for key in keys:
        if key in EXACT_FIELDS:
            a, b = expected[key], ours[key]
            if not ((a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))):
                failures.append(f"{key}: reference {a}, ours {b}")
            continue
        if key not in ours:
            failures.append(f"{key}: missing from ours")
            continue
        result = measure(expected[key], [s[key] for s in stocks], ours[key], name=key,
                         ulps=ulps_for(dtype))
        results.append(result)
        if not result.passed:
            failures.append(str(result))
    if failures:
        raise AssertionError(f"outside tolerance vs the autograd reference{what}:\n  "
                             + "\n  ".join(failures))
    return results


def gradient_keys(results: dict) -> list[str]:
    return sorted(k for k in results if k.startswith("grad_"))
