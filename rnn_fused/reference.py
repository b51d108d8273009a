"""Plain PyTorch step loop for one RNN layer and direction: the test oracle.

Every operation is an ordinary differentiable torch op, so autograd through this
loop gives the exact BPTT gradients the fused kernels must reproduce.
"""

from __future__ import annotations

import torch
from torch import Tensor


def activation_fn(nonlinearity: str):
    if nonlinearity == "tanh":
        return torch.tanh
    if nonlinearity == "relu":
        return torch.relu
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def processing_to_time_index(lengths: Tensor, steps: int, reverse: bool) -> tuple[Tensor, Tensor]:
    """For each (t, b): the processing step that produces time t, and whether t is valid.

    Returns index [T,B] (long) and valid [T,B] (bool), on lengths' device.
    """
    t = torch.arange(steps, device=lengths.device).unsqueeze(1)
    valid = t < lengths.unsqueeze(0)
    index = (lengths.unsqueeze(0) - 1 - t) if reverse else t.expand(-1, lengths.numel())
    return torch.where(valid, index, torch.zeros_like(index)), valid


def scale_gradient(h: Tensor, scale: Tensor) -> Tensor:
    """h unchanged, its gradient multiplied by scale (broadcast against h). A zero scale
    passes no gradient at all (as detach does), not 0 * grad, which keeps NaN."""
    kept = h.detach() + scale.to(h.dtype) * (h - h.detach())
    return torch.where(scale == 0, h.detach(), kept)


def reference_layer(
    input: Tensor,
    hx: Tensor | None,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    lengths: Tensor | None = None,
    nonlinearity: str = "tanh",
    reverse: bool = False,
    edge_scales: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One layer, one direction. input [T,B,I], hx [B,H] or None, lengths [B] or None.
    edge_scales [T,B] or None: the gradient of the state entering processing step s of
    sample b is multiplied by edge_scales[s, b] (truncation; forward values unchanged).

    Returns output [T,B,H] (zeros where t >= lengths[b]) and h_n [B,H].
    """
    act = activation_fn(nonlinearity)
    steps, batch, _ = input.shape
    hidden = weight_hh.shape[0]
    h = input.new_zeros(batch, hidden) if hx is None else hx
    if lengths is None:
        lengths = torch.full((batch,), steps, dtype=torch.long, device=input.device)
    lengths = lengths.to(input.device, torch.long)
    # Inputs in processing order: x_proc[s, b] = input[time of step s for sample b].
    time_of_step, step_valid = processing_to_time_index(lengths, steps, reverse)
    x_proc = input.gather(0, time_of_step.unsqueeze(2).expand(-1, -1, input.shape[2]))
    states = []
    for s in range(steps):
        h_in = h if edge_scales is None or s == 0 else scale_gradient(h, edge_scales[s].unsqueeze(1))
        z = x_proc[s] @ weight_ih.t() + h_in @ weight_hh.t()
        if bias_ih is not None:
            z = z + bias_ih
        if bias_hh is not None:
            z = z + bias_hh
        h_new = act(z)
        active = step_valid[s].unsqueeze(1)
        h = torch.where(active, h_new, h)
        states.append(torch.where(active, h_new, torch.zeros_like(h_new)))
    if steps == 0:
        return input.new_zeros(0, batch, hidden), h
    # The map from processing step to time is its own inverse (s <-> len-1-s).
    proc = torch.stack(states)
    output = proc.gather(0, time_of_step.unsqueeze(2).expand(-1, -1, hidden))
    return torch.where(step_valid.unsqueeze(2), output, torch.zeros_like(output)), h
