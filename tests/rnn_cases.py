"""The test cases' configurations: RNNCase and layer_args live in rnn_fused.tools.testing (rnn-fused
check draws from them too); the tests import them from here."""

import torch

from rnn_fused import _ops
from rnn_fused.truncation import TruncationArgs
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, RNNCase, layer_args  # noqa: F401

# The GPU kernels' recurrence paths the emulated backend is tested on (rnn_fused.plan).
EMULATED_PATHS = ("block", "cluster", "grid", "stepwise")


def run_layer_op(args, lengths, nonlinearity, reverse, truncation_args, cotangents, layer=0, path=None,
                 backend=None):
    """Forward and backward of the op pair with norms recorded: the backward's eight results
    (five gradients, step norms, squared norms, non-finite flag)."""
    inputs = _ops.LayerInputs(*args, lengths)
    options = _ops.LayerOptions.make(nonlinearity, reverse, truncation_args, layer, backend, path)
    out, h_n = _ops.layer_forward(inputs, options)
    return _ops.layer_backward(cotangents[0], cotangents[1], out, [True] * 5, True, inputs, options)


def assert_close64(actual, expected):
    """float64 results within the suite's float64 parity bound of max|expected| (at least 1)."""
    bound = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps * max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= bound



def norm_partials_case():
    """float32, H = 40, uneven lengths, truncation every 2 steps: the case on which every path's
    step norms are compared with the CPU loop's. Returns (args, lengths, cotangents, truncation)."""
    steps, batch, hidden = 5, 3, 40
    args = layer_args(steps, batch, 3, hidden, bias=True, hx=False, dtype=torch.float32)
    g = torch.Generator().manual_seed(9)
    cot = [torch.randn(steps, batch, hidden, generator=g), torch.randn(batch, hidden, generator=g)]
    return args, torch.tensor([5, 3, 4]), cot, TruncationArgs(every=2)


def assert_norm_partials_match(actual, cpu):
    """Two float32 evaluations of norms whose gradients differ by float32 rounding of the
    recurrence: within the worst-case bound of a length-H float32 sum, twice (one per side);
    zero past each sample's length."""
    hidden = 40
    torch.testing.assert_close(actual.cpu(), cpu, rtol=2 * hidden * torch.finfo(torch.float32).eps, atol=0)
    assert (actual[3:, 1] == 0).all() and (actual[4:, 2] == 0).all()
