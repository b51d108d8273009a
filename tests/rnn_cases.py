"""RNNCase: one module configuration and input form, shared by the parity and fuzz tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


@dataclass(frozen=True)
class RNNCase:
    """One configuration of module and input, as drawn by the parity grid and the fuzz test.

    packing: "none", "sorted" (enforce_sorted=True) or "unsorted" (enforce_sorted=False).
    unbatched: a 2-D input (batch is then ignored); never combined with packing.
    """

    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    batch_first: bool = False
    nonlinearity: str = "tanh"
    packing: str = "none"
    unbatched: bool = False
    with_hx: bool = False
    seq_len: int = 3
    batch: int = 2
    input_size: int = 2
    hidden_size: int = 3

    def __post_init__(self):
        if self.unbatched and self.packing != "none":
            raise ValueError("a PackedSequence is always batched")

    def torch_module(self) -> nn.RNN:
        return nn.RNN(self.input_size, self.hidden_size, self.num_layers, self.nonlinearity,
                      bias=self.bias, batch_first=self.batch_first,
                      bidirectional=self.bidirectional)

    def inputs(self, generator: torch.Generator, dtype=torch.float64):
        """(input, hx) for this case: a tensor or PackedSequence, and hx or None."""
        directions = 2 if self.bidirectional else 1
        if self.unbatched:
            x = torch.randn(self.seq_len, self.input_size, generator=generator, dtype=dtype)
            hx_shape = (self.num_layers * directions, self.hidden_size)
        else:
            shape = ((self.batch, self.seq_len) if self.batch_first
                     else (self.seq_len, self.batch))
            x = torch.randn(*shape, self.input_size, generator=generator, dtype=dtype)
            hx_shape = (self.num_layers * directions, self.batch, self.hidden_size)
        hx = torch.randn(hx_shape, generator=generator, dtype=dtype) if self.with_hx else None
        if self.packing == "none":
            return x, hx
        # One sample runs the full length so the packed sequence keeps seq_len steps.
        lengths = torch.randint(1, self.seq_len + 1, (self.batch,), generator=generator)
        lengths[torch.randint(0, self.batch, (1,), generator=generator)] = self.seq_len
        if self.packing == "sorted":
            lengths = lengths.sort(descending=True).values
        packed = pack_padded_sequence(x, lengths, batch_first=self.batch_first,
                                      enforce_sorted=self.packing == "sorted")
        return packed, hx


def layer_args(steps, batch, input_size, hidden, *, dtype=torch.float64, bias=True, hx=True,
               requires_grad=False, generator=None):
    """Arguments of one layer: [input [T,B,I], hx [B,H] or None, weight_ih [H,I],
    weight_hh [H,H] (scaled so the recurrence neither explodes nor vanishes quickly),
    bias_ih [H] or None, bias_hh [H] or None], drawn in float64 and cast to dtype."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        t = torch.randn(*shape, dtype=torch.float64, generator=generator) * scale
        return t.to(dtype).requires_grad_(requires_grad)

    return [
        leaf(steps, batch, input_size),
        leaf(batch, hidden) if hx else None,
        leaf(hidden, input_size, scale=0.5),
        leaf(hidden, hidden, scale=0.5 / max(hidden, 1) ** 0.5),
        leaf(hidden) if bias else None,
        leaf(hidden) if bias else None,
    ]
