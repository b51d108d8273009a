"""Autocast at the op level: rnn_fused.rnn_layer, functional.rnn and rnn_fused.RNN behave like
torch.rnn_tanh / torch.nn.RNN under torch.autocast (result dtypes, float64 left alone, values
under the tolerance rule), through the forward op's own Autocast kernels.

CUDA autocast cannot run on a machine without a GPU; its kernel is the same Python function
as the CPU one, registered for AutocastCUDA (checked below), so the CPU tests exercise the
code path both devices take; tests/test_cuda_gpu.py runs it under CUDA autocast on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnn_fused
from rnn_fused import _ops, functional
from rnn_fused.tools.testing import assert_within_tolerance, layer_args

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def _stock_layer(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity="tanh"):
    """One layer of torch's own RNN op: (output [T,B,H], h_n [B,H])."""
    op = torch.rnn_tanh if nonlinearity == "tanh" else torch.rnn_relu
    output, h_n = op(input, hx.unsqueeze(0), [weight_ih, weight_hh, bias_ih, bias_hh], True, 1, 0.0, False,
                     False, False)
    return output, h_n[0]


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_layer_under_autocast_matches_torch_rnn_op(autocast_dtype, nonlinearity):
    args = layer_args(7, 3, 5, 6, dtype=torch.float64)
    reference = _stock_layer(*args, nonlinearity)
    float32_args = [a.float() for a in args]
    with torch.autocast("cpu", dtype=autocast_dtype):
        stock = _stock_layer(*float32_args, nonlinearity)
        ours = rnn_fused.rnn_layer(*float32_args, None, nonlinearity)
    for name, r, s, o in zip(("output", "h_n"), reference, stock, ours):
        assert s.dtype == autocast_dtype and o.dtype == s.dtype, (name, s.dtype, o.dtype)
        assert_within_tolerance(r, s, o, name=name)


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
def test_rnn_layer_gradients_under_autocast_reach_float32_leaves(autocast_dtype):
    """The casts are differentiable: float32 leaves get float32 gradients, as with torch's op."""
    args = [a.float().requires_grad_() for a in layer_args(6, 2, 3, 4)]
    with torch.autocast("cpu", dtype=autocast_dtype):
        output, h_n = rnn_fused.rnn_layer(*args)
    (output.float().square().sum() + h_n.float().sum()).backward()
    assert all(a.grad is not None and a.grad.dtype == torch.float32 for a in args)


def test_float64_arguments_are_not_cast():
    args = layer_args(5, 2, 3, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stock = _stock_layer(*args)
        ours = rnn_fused.rnn_layer(*args)
    assert [t.dtype for t in stock] == [t.dtype for t in ours] == [torch.float64] * 2


def test_functional_rnn_runs_in_the_autocast_dtype():
    weights = [tuple(torch.randn(4, 3 if i == 0 else 4) if k == 0 else torch.randn(4, 4) if k == 1
                     else torch.randn(4) for k in range(4)) for i in range(2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, h_n = functional.rnn(torch.randn(5, 2, 3), None, weights, num_layers=2, bidirectional=False)
    assert output.dtype == h_n.dtype == torch.bfloat16


@pytest.mark.parametrize("autocast_dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("packed", [False, True, "padded route"], ids=["padded", "packed", "packed-padded-route"])
@pytest.mark.parametrize("backend", [None, "emulated"])
def test_module_under_autocast_matches_nn_rnn(autocast_dtype, packed, backend):
    """Result dtypes (outputs and every gradient) equal nn.RNN's; values within the rule. On the
    CPU kernels and on the GPU kernels (emulated), whose bidirectional layers run as one op pair
    with their arguments cast before it (functional._autocast_directions). A PackedSequence on
    the CPU kernels runs in the packed layout (its arguments cast by functional._packed_autocast)
    unless packed_layout is off ("padded route"); on the emulated GPU kernels through the padded
    batch.

    The float32 gradients of the leaves are gradients of their casts, computed in the
    autocast dtype and cast back: they carry that dtype's precision, so the rule is applied
    in it, as to the outputs. (Ours casts the input once per direction, so its input
    gradient is the float32 sum of two such gradients; rounding it back only adds to ours.)"""
    torch.manual_seed(0)
    theirs = nn.RNN(3, 6, 2, bidirectional=True)
    ours = rnn_fused.RNN.from_torch(theirs)
    ours.backend = backend
    ours.packed_layout = packed != "padded route"
    reference_module = rnn_fused.RNN.from_torch(theirs).double().to_torch()
    x = torch.randn(5, 3, 3)
    hx = torch.randn(4, 3, 6)
    lengths = torch.tensor([5, 2, 4])

    def run(module, dtype, autocast):
        module.zero_grad(set_to_none=True)
        leaf_x, leaf_h = x.to(dtype).clone().requires_grad_(), hx.to(dtype).clone().requires_grad_()
        input = (torch.nn.utils.rnn.pack_padded_sequence(leaf_x, lengths, enforce_sorted=False) if packed
                 else leaf_x)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            output, h_n = module(input, leaf_h)
        output = output.data if packed else output
        (output.double().square().sum() + h_n.double().sum()).backward()
        return {"output": output.detach(), "h_n": h_n.detach(), "grad_x": leaf_x.grad, "grad_hx": leaf_h.grad,
                **{f"grad_{n}": p.grad for n, p in module.named_parameters()}}

    reference = run(reference_module, torch.float64, autocast=False)
    stock = run(theirs, torch.float32, autocast=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        got = run(ours, torch.float32, autocast=True)
    packed_layer_backwards = sum(1 for e in profile.events() if e.name == "rnn_fused::rnn_packed_layer_backward")
    assert packed_layer_backwards == (2 if packed is True and backend is None else 0)
    assert stock["output"].dtype == autocast_dtype
    for name in reference:
        assert got[name].dtype == stock[name].dtype, (name, stock[name].dtype, got[name].dtype)
        stock_value, got_value = stock[name].to(autocast_dtype), got[name].to(autocast_dtype)
        assert_within_tolerance(reference[name], stock_value, got_value, name=name)


def test_recorded_forward_under_autocast_equals_the_unrecorded_one():
    """record_gradients takes its own path through an autograd.Function: the casts happen
    before it, so its backward sees the tensors the op ran on."""
    model = rnn_fused.RNN(3, 5, 2, bidirectional=True)
    x = torch.randn(6, 2, 3)

    def run(record):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if record:
                with rnn_fused.record_gradients(model) as recorder:
                    output, h_n = model(x)
            else:
                output, h_n = model(x)
        (output.float().square().sum() + h_n.float().sum()).backward()
        return [output, h_n, *(p.grad for p in model.parameters())], (recorder if record else None)

    plain, _ = run(record=False)
    recorded, recorder = run(record=True)
    assert recorded[0].dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(plain, recorded))
    assert recorder.step_norms.shape == (2, 2, 6, 2) and (recorder.step_norms > 0).all()


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled:UserWarning")
def test_module_compiles_fullgraph_under_autocast():
    """torch.compile(fullgraph=True) traces the module under autocast (nn.RNN itself does not
    compile: dynamo refuses RNN modules); the compiled run has eager's dtypes and values."""
    torch._dynamo.reset()
    model = rnn_fused.RNN(3, 5, 2, bidirectional=True)
    x = torch.randn(6, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(x)
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled_model = torch.compile(model, fullgraph=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            compiled = compiled_model(x)
    for e, c in zip(eager, compiled):
        assert c.dtype == e.dtype == torch.bfloat16
        # Same kernels on the same casts: equal up to how inductor orders the casts' rounding.
        assert torch.equal(c, e)
    torch._dynamo.reset()


@pytest.mark.parametrize("key", ["AutocastCPU", "AutocastCUDA"])
def test_forward_op_has_autocast_kernels_for_both_devices(key):
    assert torch._C._dispatch_has_kernel_for_dispatch_key("rnn_fused::rnn_layer_forward", key)


def test_cuda_autocast_runs_rnns_in_float16_where_torch_runs_cudnn(monkeypatch):
    """ATen's autocast kernel of the cuDNN RNN casts to float16 whatever dtype autocast was given
    (seen on an H200: torch.rnn_tanh under autocast(dtype=torch.bfloat16) returned float16), so
    the op's CUDA autocast kernel does too wherever torch would take cuDNN; without cuDNN, or for
    an input cuDNN refuses (bfloat16), the autocast dtype. No GPU here: autocast's state is
    stubbed; tests/test_cuda_gpu.py compares the dtypes with torch's on a GPU."""
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    with torch.backends.cudnn.flags(enabled=True):
        assert _ops.autocast_dtype("cuda", torch.float32) == torch.float16
        assert _ops.autocast_dtype("cuda", torch.float64) == torch.float16  # (float64 arguments stay)
        assert _ops.autocast_dtype("cuda", torch.bfloat16) == torch.bfloat16
        assert _ops.autocast_dtype("cpu", torch.float32) is None
    with torch.backends.cudnn.flags(enabled=False):
        assert _ops.autocast_dtype("cuda", torch.float32) == torch.bfloat16
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: False)
    assert _ops.autocast_dtype("cuda", torch.float32) == torch.bfloat16


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
@pytest.mark.parametrize("route", ["padded", "packed", "packed-padded-route"])
def test_backward_inside_autocast_gives_the_gradients_of_one_outside(route, bidirectional):
    """The backward ops have Autocast kernels that only run them below autocast (_ops.py
    BELOW_AUTOCAST_OPS): a backward called inside an autocast region makes its products in the
    compute dtype, as one outside it does, so the gradients are the same bit for bit."""
    torch.manual_seed(0)
    model = rnn_fused.RNN(64, 64, 2, bidirectional=bidirectional)
    model.packed_layout = route == "packed"
    x = torch.randn(20, 8, 64)
    input = (x if route == "padded" else
             torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([20] * 4 + [10] * 4)))

    def gradients(backward_under_autocast):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, _ = model(input)
        output = output.data if route != "padded" else output
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=backward_under_autocast):
            output.float().square().sum().backward()
        return [p.grad for p in model.parameters()]

    for outside, inside in zip(gradients(False), gradients(True)):
        assert torch.equal(outside, inside)
