"""Autograd for one fused RNN layer, and the composition of layers and directions."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _ops
from .reference import reference_layer


def _setup_layer_context(ctx, inputs, output):
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity, reverse = inputs
    out, _ = output
    ctx.save_for_backward(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, out)
    ctx.nonlinearity = nonlinearity
    ctx.reverse = reverse
    ctx.set_materialize_grads(True)


def _layer_backward(ctx, grad_output, grad_h_n):
    """Backward of rnn_layer_forward: the fused BPTT op, or, when the graph of the
    backward is requested (double backward), autograd through reference.py's loop."""
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, out = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():
        return _differentiable_backward(ctx, grad_output, grad_h_n)
    mask = [needs[0], needs[1] and hx is not None, needs[2], needs[3], needs[4] or needs[5]]
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = _ops.layer_backward(
        grad_output, grad_h_n, input, hx, weight_ih, weight_hh, out, lengths,
        ctx.nonlinearity, ctx.reverse, mask)
    return (
        grad_input if needs[0] else None,
        grad_hx if needs[1] else None,
        grad_w_ih if needs[2] else None,
        grad_w_hh if needs[3] else None,
        grad_bias if needs[4] else None,
        grad_bias if needs[5] else None,
        None, None, None,
    )


def _differentiable_backward(ctx, grad_output, grad_h_n):
    """Gradient with a graph of its own (create_graph=True), for double backward."""
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, _ = ctx.saved_tensors
    args = [input, hx, weight_ih, weight_hh, bias_ih, bias_hh]
    wanted = [i for i, a in enumerate(args) if a is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        out, h_n = reference_layer(*args, lengths, ctx.nonlinearity, ctx.reverse)
        grads = torch.autograd.grad((out, h_n), [args[i] for i in wanted], (grad_output, grad_h_n),
                                    create_graph=True, allow_unused=True)
    result = [None] * 9
    for i, g in zip(wanted, grads):
        result[i] = g if g is not None else torch.zeros_like(args[i])
    return tuple(result)


# The op itself is differentiable: register_autograd wraps it in an autograd.Function
# whose forward and backward call only registered ops, so torch.compile traces it whole.
torch.library.register_autograd("rnn_fused::rnn_layer_forward", _layer_backward,
                                setup_context=_setup_layer_context)


def rnn_layer(input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor | None = None,
              nonlinearity: str = "tanh", reverse: bool = False) -> tuple[Tensor, Tensor]:
    """One fused layer and direction.

    input [T,B,I] time-major; hx [B,H] or None (zeros); lengths int64 [B] or None (all T).
    Returns output [T,B,H] (zeros at t >= lengths[b]) and h_n [B,H].
    """
    return _ops.layer_forward(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                              nonlinearity, reverse)
