"""Typed wrappers over torch.ops.rnn_fused and their fake (meta) kernels.

Loading rnn_fused._C registers the ops (TORCH_LIBRARY in csrc/ops.cpp); the fake
kernels here let torch.compile and FakeTensor trace through them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _C  # noqa: F401  (registers torch.ops.rnn_fused)
from .truncation import FULL_BPTT, TruncationArgs

ops = torch.ops.rnn_fused


# Backends of the single-layer ops: "native" dispatches on the tensors' device (CPU loops
# or the CUDA kernels); "simt" runs the CUDA kernels on CPU tensors through the emulator
# (ops simt_rnn_layer_forward/backward, same schemas).
BACKENDS = ("native", "simt")
_FORWARD_OPS = {"native": "rnn_layer_forward", "simt": "simt_rnn_layer_forward"}
_BACKWARD_OPS = {"native": "rnn_layer_backward", "simt": "simt_rnn_layer_backward"}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"rnn_fused: backend must be one of {BACKENDS}, got {backend!r}")


def _layer_forward_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity, reverse,
                        truncate_every=0, keep_prob=1.0, seed=0, layer=0):
    steps, batch, _ = input.shape
    hidden = weight_hh.shape[0]
    return input.new_empty(steps, batch, hidden), input.new_empty(batch, hidden)


def _layer_backward_fake(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output, lengths,
                         nonlinearity, reverse, output_mask, truncate_every=0, keep_prob=1.0, seed=0,
                         layer=0, record_norms=False):
    steps, batch, _ = input.shape
    hidden = weight_hh.shape[0]
    shapes = (input.shape, (batch, hidden), weight_ih.shape, weight_hh.shape, (hidden,))
    grads = tuple(input.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, output_mask))
    # Norms are in the compute dtype: float32 for float16/bfloat16 inputs.
    norm_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    if record_norms:
        extras = (input.new_empty(steps, batch, dtype=norm_dtype), input.new_empty(5, dtype=torch.float64),
                  input.new_empty((), dtype=torch.bool))
    else:
        extras = (input.new_empty(0, dtype=norm_dtype), input.new_empty(0, dtype=torch.float64),
                  input.new_empty(0, dtype=torch.bool))
    return grads + extras


for _backend in BACKENDS:
    torch.library.register_fake(f"rnn_fused::{_FORWARD_OPS[_backend]}")(_layer_forward_fake)
    torch.library.register_fake(f"rnn_fused::{_BACKWARD_OPS[_backend]}")(_layer_backward_fake)


def forward_op(backend: str):
    _check_backend(backend)
    return getattr(ops, _FORWARD_OPS[backend])


def backward_op(backend: str):
    _check_backend(backend)
    return getattr(ops, _BACKWARD_OPS[backend])


def layer_forward(input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
                  bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor | None,
                  nonlinearity: str, reverse: bool, truncation: TruncationArgs = FULL_BPTT, layer: int = 0,
                  backend: str = "native") -> tuple[Tensor, Tensor]:
    return forward_op(backend)(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                               nonlinearity, reverse, truncation.every, truncation.keep_prob,
                               truncation.seed, layer)


def layer_backward(grad_output: Tensor, grad_h_n: Tensor, input: Tensor, hx: Tensor | None,
                   weight_ih: Tensor, weight_hh: Tensor, output: Tensor, lengths: Tensor | None,
                   nonlinearity: str, reverse: bool, output_mask: list[bool],
                   truncation: TruncationArgs = FULL_BPTT, layer: int = 0, record_norms: bool = False,
                   backend: str = "native"):
    """output_mask: which of (grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias)
    to compute; the others come back as empty tensors. Returns those five, then step_norms
    [T,B], grad_sq_norms [5] and nonfinite (empty unless record_norms)."""
    return backward_op(backend)(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output,
                                lengths, nonlinearity, reverse, output_mask, truncation.every,
                                truncation.keep_prob, truncation.seed, layer, record_norms)
