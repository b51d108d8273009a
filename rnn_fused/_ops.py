"""Typed wrappers over torch.ops.rnn_fused and their fake (meta) kernels.

Loading rnn_fused._C registers the ops (TORCH_LIBRARY in csrc/ops.cpp); the fake
kernels here let torch.compile and FakeTensor trace through them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _C  # noqa: F401  (registers torch.ops.rnn_fused)

ops = torch.ops.rnn_fused


@torch.library.register_fake("rnn_fused::rnn_layer_forward")
def _layer_forward_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity, reverse):
    steps, batch, _ = input.shape
    hidden = weight_hh.shape[0]
    return input.new_empty(steps, batch, hidden), input.new_empty(batch, hidden)


@torch.library.register_fake("rnn_fused::rnn_layer_backward")
def _layer_backward_fake(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output, lengths,
                         nonlinearity, reverse, output_mask):
    batch = input.shape[1]
    hidden = weight_hh.shape[0]
    shapes = (input.shape, (batch, hidden), weight_ih.shape, weight_hh.shape, (hidden,))
    return tuple(input.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, output_mask))


def layer_forward(input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
                  bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor | None,
                  nonlinearity: str, reverse: bool) -> tuple[Tensor, Tensor]:
    return ops.rnn_layer_forward(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                 nonlinearity, reverse)


def layer_backward(grad_output: Tensor, grad_h_n: Tensor, input: Tensor, hx: Tensor | None,
                   weight_ih: Tensor, weight_hh: Tensor, output: Tensor, lengths: Tensor | None,
                   nonlinearity: str, reverse: bool, output_mask: list[bool]):
    """output_mask: which of (grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias)
    to compute; the others come back as empty tensors."""
    return ops.rnn_layer_backward(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output,
                                  lengths, nonlinearity, reverse, output_mask)
