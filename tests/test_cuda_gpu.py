"""The CUDA backend on a real GPU: the cases of test_cuda_kernels_emulated.py against
torch.nn.RNN on cuDNN (TF32 off) under the tolerance rule, and the planner's real choice.
Skipped, with the reason stated, where no CUDA device is present."""

from __future__ import annotations

import pytest
import torch

import rnn_fused
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import (FLOAT64_PARITY_ULPS, assert_within_tolerance, compare_with_torch,
                                true_float32_on_cuda)

from rnn_cases import RNNCase
from test_cuda_kernels_emulated import LAYER_CASES, MODULE_CASES, _case_id, layer_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def no_tf32():
    """cuDNN and cuBLAS in true float32, so stock is an honest float32 baseline."""
    with true_float32_on_cuda():
        yield


def _to_cuda(x):
    return None if x is None else x.to("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_matches_reference(case, dtype):
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    lengths = None if lengths is None else torch.tensor(lengths, device="cuda")
    args = [_to_cuda(a) for a in layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx)]
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g).cuda(),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g).cuda()]

    def run(fn, cast):
        leaves = [None if a is None else a.detach().to(cast).requires_grad_() for a in args]
        out, h_n = fn(*leaves, lengths, nonlinearity, reverse)
        present = [a for a in leaves if a is not None]
        return [out.detach(), h_n.detach(),
                *torch.autograd.grad((out, h_n), present, [c.to(cast) for c in cotangents])]

    reference = run(reference_layer, torch.float64)
    stock = run(reference_layer, dtype)
    ours = run(rnn_fused.rnn_layer, dtype)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    for i, (r, s, o) in enumerate(zip(reference, stock, ours)):
        assert o.device.type == "cuda" and o.dtype == dtype
        assert_within_tolerance(r, s, o, name=f"result {i}", ulps=ulps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(MODULE_CASES)))
def test_module_matches_cudnn(case, dtype, generator):
    rnn_case: RNNCase = MODULE_CASES[case]
    input, hx = rnn_case.inputs(generator)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    compare_with_torch(rnn_case.torch_module().cuda(), input.to("cuda"), _to_cuda(hx), dtype=dtype, ulps=ulps)


@pytest.mark.parametrize("hidden", [7, 33, 100, 1024])
def test_forward_backward_run_on_both_paths_where_planned(hidden):
    """Large and odd hidden sizes on the real device's plan, against the step loop."""
    plan = rnn_fused.plan(hidden, device="cuda")
    assert plan.path in ("persistent", "fallback") and plan.reason
    args = [_to_cuda(a) for a in layer_args(6, 5, 8, hidden, dtype=torch.float32)]
    lengths = torch.tensor([6, 6, 3, 2, 0], device="cuda")
    reference, _ = reference_layer(*[a.double() for a in args], lengths)
    stock, _ = reference_layer(*args, lengths)
    ours, _ = rnn_fused.rnn_layer(*args, lengths)
    assert_within_tolerance(reference, stock, ours, name=f"output H={hidden} ({plan.path})")


def test_deterministic_bitwise_on_gpu():
    args = [_to_cuda(a).requires_grad_() for a in layer_args(30, 6, 7, 33, dtype=torch.float32)]

    def once():
        out, h_n = rnn_fused.rnn_layer(*args, torch.tensor([30, 29, 12, 12, 5, 1], device="cuda"), "tanh", True)
        return [out, h_n, *torch.autograd.grad(out.sum() + h_n.square().sum(), args)]

    for a, b in zip(once(), once()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_runs_in_float32_on_gpu(dtype):
    args = [_to_cuda(a) for a in layer_args(6, 2, 3, 9)]
    reference, _ = reference_layer(*args)
    stock, _ = reference_layer(*[a.to(dtype) for a in args])
    ours, h_n = rnn_fused.rnn_layer(*[a.to(dtype) for a in args])
    assert ours.dtype == dtype and h_n.dtype == dtype
    assert_within_tolerance(reference, stock, ours, name="output")


@pytest.mark.parametrize("truncation", [None, 3, rnn_fused.RandomTruncation(0.7, seed=5)],
                         ids=["full", "K3", "random"])
@pytest.mark.parametrize("hidden", [33, 1024])
def test_truncation_and_norms_on_gpu_equal_the_cpu_op(truncation, hidden):
    """float64: the CUDA backward (persistent or fallback, as planned) with truncation and
    norms recorded gives the CPU op's gradients, step norms and squared norms, to float64
    rounding; twice in a row, bitwise-equal."""
    from rnn_fused import _ops
    from rnn_fused.truncation import resolve_truncation

    args = layer_args(12, 5, 8, hidden)
    lengths = torch.tensor([12, 12, 7, 3, 0])
    targs = resolve_truncation(truncation)
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(12, 5, hidden, dtype=torch.float64, generator=g),
           torch.randn(5, hidden, dtype=torch.float64, generator=g)]

    def run(device):
        a = [_to_cuda(t) if device == "cuda" else t for t in args]
        ln = lengths.to(device)
        inputs = _ops.LayerInputs(*a, ln)
        options = _ops.LayerOptions.make("tanh", True, targs, 1)
        out, h_n = _ops.layer_forward(inputs, options)
        return _ops.layer_backward(cot[0].to(device), cot[1].to(device), out, [True] * 5, True, inputs, options)

    cpu, gpu, again = run("cpu"), run("cuda"), run("cuda")
    for c, d, e in zip(cpu, gpu, again):
        assert torch.equal(d, e)
        if c.dtype == torch.bool:
            assert torch.equal(c, d.cpu())
            continue
        bound = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps * max(1.0, c.abs().max().item())
        assert (d.cpu() - c).abs().max().item() <= bound
