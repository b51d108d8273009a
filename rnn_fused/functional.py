"""Autograd for one fused RNN layer, and the composition of layers and directions."""

from __future__ import annotations

import functools

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


def _layer_backward(ctx, grad_output, grad_h_n, backend="native"):
    """Backward of rnn_layer_forward (or of the backend's forward op): the backend's fused
    BPTT op, or, when the graph of the backward is requested (double backward), autograd
    through reference.py's loop."""
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, out = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if torch.is_grad_enabled():
        return _differentiable_backward(ctx, grad_output, grad_h_n)
    mask = [needs[0], needs[1] and hx is not None, needs[2], needs[3], needs[4] or needs[5]]
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = _ops.layer_backward(
        grad_output, grad_h_n, input, hx, weight_ih, weight_hh, out, lengths,
        ctx.nonlinearity, ctx.reverse, mask, backend)
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
for _backend in _ops.BACKENDS:
    torch.library.register_autograd(f"rnn_fused::{_ops._FORWARD_OPS[_backend]}",
                                    functools.partial(_layer_backward, backend=_backend),
                                    setup_context=_setup_layer_context)


def rnn_layer(input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor | None = None,
              nonlinearity: str = "tanh", reverse: bool = False,
              backend: str = "native") -> tuple[Tensor, Tensor]:
    """One fused layer and direction.

    input [T,B,I] time-major; hx [B,H] or None (zeros); lengths int64 [B] or None (all T).
    backend: "native" (the op for the tensors' device) or "simt" (the CUDA kernels run on
    CPU tensors by the SIMT emulator).
    Returns output [T,B,H] (zeros at t >= lengths[b]) and h_n [B,H].
    """
    return _ops.layer_forward(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                              nonlinearity, reverse, backend)


def rnn(input: Tensor, hx: Tensor | None, weights, num_layers: int, bidirectional: bool,
        nonlinearity: str = "tanh", dropout: float = 0.0, training: bool = False,
        lengths: Tensor | None = None, layer_fn=rnn_layer) -> tuple[Tensor, Tensor]:
    """Multi-layer, optionally bidirectional Elman RNN over a time-major padded batch.

    input [T,B,I]; hx [num_layers*D,B,H] or None (zeros), D = 2 if bidirectional else 1;
    weights: one sequence per (layer, direction) in nn.RNN's order (l0, l0_reverse, l1, ...),
    each (weight_ih, weight_hh) or (weight_ih, weight_hh, bias_ih, bias_hh);
    lengths int64 [B] (valid steps per sample, on input's device) or None (all T).
    Dropout with probability `dropout` is applied to every layer's output but the last,
    only when `training`, as nn.RNN does.
    `layer_fn` runs one layer and direction (rnn_layer's signature); tests pass the step loop
    of reference.py to compose stock torch ops the same way.
    Returns output [T,B,D*H] (zeros at t >= lengths[b]) and h_n [num_layers*D,B,H].
    """
    directions = 2 if bidirectional else 1
    if len(weights) != num_layers * directions:
        raise ValueError(f"expected {num_layers * directions} weight groups "
                         f"(num_layers={num_layers}, bidirectional={bidirectional}), got {len(weights)}")
    layer_input = input
    final_states = []
    for layer in range(num_layers):
        direction_outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            weight_ih, weight_hh, *biases = weights[index]
            bias_ih, bias_hh = biases if biases else (None, None)
            h0 = None if hx is None else hx[index]
            out, h_n = layer_fn(layer_input, h0, weight_ih, weight_hh, bias_ih, bias_hh,
                                 lengths, nonlinearity, direction == 1)
            direction_outputs.append(out)
            final_states.append(h_n)
        layer_output = (direction_outputs[0] if directions == 1
                        else torch.cat(direction_outputs, dim=2))
        if dropout > 0 and training and layer < num_layers - 1:
            # Padded positions are zero and stay zero under dropout, so applying it to the
            # padded tensor matches nn.RNN applying it to the packed data.
            layer_output = torch.nn.functional.dropout(layer_output, p=dropout, training=True)
        layer_input = layer_output
    return layer_input, torch.stack(final_states)


def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A PackedSequence's data as a time-major padded batch, in the packed (sorted) order.

    data [N,I] (N = sum of batch_sizes); batch_sizes int64 [T] on the CPU, non-increasing.
    Returns padded [T,B,I] with zeros past each sample's length, lengths int64 [B] and
    valid bool [T,B] (both on data's device), B = batch_sizes[0].
    """
    steps = batch_sizes.numel()
    batch = int(batch_sizes[0])
    # Packed data lists, step by step, samples 0..batch_sizes[t]-1: exactly the row-major
    # order of the True entries of `valid`.
    valid = torch.arange(batch).unsqueeze(0) < batch_sizes.unsqueeze(1)
    lengths = valid.sum(0).to(data.device)
    valid = valid.to(data.device)
    padded = data.new_zeros(steps, batch, data.shape[1]).masked_scatter(valid.unsqueeze(2), data)
    return padded, lengths, valid


def padded_to_packed_data(padded: Tensor, valid: Tensor) -> Tensor:
    """Inverse of packed_to_padded: padded [T,B,F] and valid [T,B] -> packed data [N,F]."""
    return padded[valid]
