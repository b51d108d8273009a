"""float64 gradcheck and gradgradcheck of rnn_fused.RNN through its fused layers."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from rnn_cases import RNNCase
import rnn_fused

CASES = {
    "tanh_1layer_hx": RNNCase(with_hx=True),
    "relu_2layers_bidirectional": RNNCase(num_layers=2, bidirectional=True, nonlinearity="relu"),
    "no_bias_batch_first": RNNCase(num_layers=2, bias=False, batch_first=True, with_hx=True),
    "packed_unsorted_bidirectional": RNNCase(num_layers=2, bidirectional=True, packing="unsorted",
                                             with_hx=True, seq_len=4, batch=3),
    "unbatched": RNNCase(bidirectional=True, unbatched=True, with_hx=True),
}


def _module_as_function(case: RNNCase, generator):
    """(f, inputs): f maps (input data, hx, *parameters) to (output data, h_n)."""
    module = rnn_fused.RNN.from_torch(case.torch_module().double())
    input, hx = case.inputs(generator)
    names = [name for name, _ in module.named_parameters()]

    def f(data, hx, *params):
        x = (PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
             if isinstance(input, PackedSequence) else data)
        output, h_n = torch.func.functional_call(module, dict(zip(names, params)), (x, hx))
        return (output.data if isinstance(output, PackedSequence) else output), h_n

    data = input.data if isinstance(input, PackedSequence) else input
    leaves = [data, hx, *[p.detach() for p in module.parameters()]]
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in leaves]
    return f, tuple(leaves)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradcheck(case, generator):
    f, inputs = _module_as_function(case, generator)
    assert torch.autograd.gradcheck(f, inputs)


# Smaller than the gradcheck cases: gradgradcheck differentiates every entry of the gradient.
GRADGRAD_CASES = {
    "tanh_1layer_hx": RNNCase(with_hx=True),
    "packed_unsorted_bidirectional": RNNCase(num_layers=2, bidirectional=True, packing="unsorted",
                                             with_hx=True, seq_len=3, batch=3, input_size=1,
                                             hidden_size=2),
}


@pytest.mark.parametrize("case", GRADGRAD_CASES.values(), ids=GRADGRAD_CASES.keys())
def test_gradgradcheck(case, generator):
    f, inputs = _module_as_function(case, generator)
    assert torch.autograd.gradgradcheck(f, inputs)
