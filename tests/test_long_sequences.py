"""Very long sequences: T = 100,000 steps on the CPU backend and, as long as the emulator
allows in a test's time, through the emulated CUDA kernels; forward and backward against a
float64 step loop under the tolerance rule.

The reference is a step loop of plain torch ops with the backward written out (no
autograd: autograd through 100,000 steps, or nn.RNN's own, takes about a minute here);
it is checked against nn.RNN and autograd at a short length first.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import rnn_fused
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance, layer_args

LONG_STEPS = 100_000
# The emulator runs each of the 2 blocks' 256 threads as a fiber: 1.7-2.4 ms per step,
# forward and backward together, at this size on the (shared, 2-core) development machine,
# so 100,000 steps would take 3-4 minutes. 30,000 took 60 s under load; 25,000 keeps the
# test under a minute.
EMULATED_LONG_STEPS = 25_000
BATCH, INPUT, HIDDEN = 2, 4, 8
NAMES = ("output", "h_n", "grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh", "grad_bias")


def step_loop_bptt(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                   bias_hh: Tensor, grad_output: Tensor, grad_h_n: Tensor) -> dict[str, Tensor]:
    """One tanh layer forward and backward by explicit loops (the BPTT recurrences written
    out). input [T,B,I], hx [B,H]; grad_output [T,B,H] and grad_h_n [B,H] the cotangents.
    Returns output, h_n and the gradients of input, hx, weight_ih, weight_hh and the bias
    (bias_ih and bias_hh alike), keyed as NAMES."""
    steps, batch, input_size = input.shape
    hidden = weight_hh.shape[0]
    projected = torch.addmm(bias_ih + bias_hh, input.reshape(-1, input_size), weight_ih.t()).view(steps, batch, -1)
    output = input.new_empty(steps, batch, hidden)
    h = hx
    for t in range(steps):
        h = torch.tanh(torch.addmm(projected[t], h, weight_hh.t()))
        output[t] = h
    slope = 1 - output.square()  # tanh'(z_t) = 1 - h_t^2
    grad_z = input.new_empty(steps, batch, hidden)
    grad_h = grad_h_n + grad_output[steps - 1]  # dL/dh_t: from above and from step t+1
    for t in range(steps - 1, -1, -1):
        grad_z[t] = grad_h * slope[t]
        previous = grad_output[t - 1] if t > 0 else torch.zeros_like(grad_h)
        grad_h = torch.addmm(previous, grad_z[t], weight_hh)
    flat_grad_z = grad_z.reshape(-1, hidden)
    previous_states = torch.cat([hx.unsqueeze(0), output[:-1]]).reshape(-1, hidden)
    return {
        "output": output, "h_n": h if steps == 0 else output[-1],
        "grad_input": (flat_grad_z @ weight_ih).view(steps, batch, input_size),
        "grad_hx": grad_h,
        "grad_weight_ih": flat_grad_z.t() @ input.reshape(-1, input_size),
        "grad_weight_hh": flat_grad_z.t() @ previous_states,
        "grad_bias": flat_grad_z.sum(0),
    }


def _problem(steps: int, dtype: torch.dtype):
    """(layer arguments, cotangents) in dtype, drawn in float64 from fixed seeds."""
    args = layer_args(steps, BATCH, INPUT, HIDDEN, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(8)
    cotangents = [torch.randn(steps, BATCH, HIDDEN, generator=generator, dtype=torch.float64),
                  torch.randn(BATCH, HIDDEN, generator=generator, dtype=torch.float64)]
    return [a.to(dtype) for a in args], [c.to(dtype) for c in cotangents]


def _fused(args, cotangents, backend: str | None) -> dict[str, Tensor]:
    leaves = [a.detach().clone().requires_grad_() for a in args]
    output, h_n = rnn_fused.rnn_layer(*leaves, backend=backend)
    torch.autograd.backward([output, h_n], cotangents)
    grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh = (a.grad for a in leaves)
    assert torch.equal(grad_bias_ih, grad_bias_hh)
    return dict(zip(NAMES, (output.detach(), h_n.detach(), grad_input, grad_hx, grad_weight_ih, grad_weight_hh,
                            grad_bias_ih)))


def _check_long(steps: int, backend: str | None) -> None:
    args64, cotangents64 = _problem(steps, torch.float64)
    args32, cotangents32 = _problem(steps, torch.float32)
    reference = step_loop_bptt(*args64, *cotangents64)
    stock = step_loop_bptt(*args32, *cotangents32)
    ours = _fused(args32, cotangents32, backend)
    for name in NAMES:
        assert_within_tolerance(reference[name], stock[name], ours[name], name=f"{name} (T={steps})")


def test_step_loop_reference_is_bptt():
    """The written-out backward equals autograd through nn.RNN (float64, a short sequence)."""
    (input, hx, weight_ih, weight_hh, bias_ih, bias_hh), (grad_output, grad_h_n) = _problem(50, torch.float64)
    module = nn.RNN(INPUT, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        for name, value in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                               (weight_ih, weight_hh, bias_ih, bias_hh)):
            getattr(module, name).copy_(value)
    leaf_input, leaf_hx = input.clone().requires_grad_(), hx.clone().requires_grad_()
    output, h_n = module(leaf_input, leaf_hx.unsqueeze(0))
    torch.autograd.backward([output, h_n[0]], [grad_output, grad_h_n])
    expected = {"output": output.detach(), "h_n": h_n[0].detach(), "grad_input": leaf_input.grad,
                "grad_hx": leaf_hx.grad, "grad_weight_ih": module.weight_ih_l0.grad,
                "grad_weight_hh": module.weight_hh_l0.grad, "grad_bias": module.bias_ih_l0.grad}
    got = step_loop_bptt(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, grad_output, grad_h_n)
    for name in NAMES:
        assert_within_tolerance(expected[name], expected[name], got[name], name=name, ulps=FLOAT64_PARITY_ULPS)


def test_cpu_backend_runs_100000_steps():
    _check_long(LONG_STEPS, backend=None)


@pytest.mark.slow
def test_emulated_cuda_kernels_run_a_long_sequence():
    from rnn_fused import simt

    with simt.emulated_device(sm_count=2):
        _check_long(EMULATED_LONG_STEPS, backend="emulated")
