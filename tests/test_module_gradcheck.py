"""float64 gradcheck and gradgradcheck of rnn_fused.RNN through its fused layers."""

from __future__ import annotations

import pytest
import torch

from rnn_cases import RNNCase
import rnn_fused
from rnn_fused.tools.testing import module_as_function

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
    return module_as_function(module, *case.inputs(generator))


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
