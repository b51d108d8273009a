"""The test cases' configurations: RNNCase and layer_args live in rnn_fused.tools.testing (rnn-fused
check draws from them too); the tests import them from here."""

import torch

from rnn_fused import _ops
from rnn_fused.truncation import TruncationArgs
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, RNNCase, layer_args  # noqa: F401

# The GPU kernels' recurrence paths the emulated backend is tested on (rnn_fused.plan).
EMULATED_PATHS = ("block", "cluster", "grid", "stepwise")

# PackedSequence cases of the packed layout's own route (test_packed_inference.py,
# test_packed_training.py): RNNCase fields.
PACKED_LAYOUT_CASES = [
    dict(packing="sorted", seq_len=9, batch=5, input_size=4, hidden_size=7),
    dict(packing="unsorted", with_hx=True, nonlinearity="relu", bias=False, seq_len=6, batch=4, input_size=3,
         hidden_size=5),
    dict(packing="unsorted", num_layers=3, bidirectional=True, with_hx=True, batch_first=True, seq_len=11, batch=6,
         input_size=5, hidden_size=9),
    # Large enough that the time loops run on a team (by rows; by units at 2 threads where forced),
    # and that the whole-sequence products of a backward run in float32 (not a small layer's
    # float64 sums).
    dict(packing="sorted", num_layers=2, with_hx=True, seq_len=20, batch=24, input_size=48, hidden_size=64),
]


# The CPU time loops' teams the packed tests force (launch_plan.forced_cpu_loop_team): their own,
# split by units on 2 threads, by rows on 3.
FORCED_LOOP_TEAMS = [None, ("units", 2), ("rows", 3)]
FORCED_LOOP_TEAM_IDS = ["own-team", "units-2", "rows-3"]


def case_id(case: dict) -> str:
    """A test id of an RNNCase's fields."""
    return "-".join(f"{key}={value}" for key, value in case.items())


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


def module_outputs_and_gradients(module, x, hx, lengths):
    """Outputs and every gradient (input, hx, parameters) of one forward and backward of a module
    (time-major x; lengths: a packed batch, unsorted, padded back), under a fixed cotangent."""
    module.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    hx = None if hx is None else hx.detach().requires_grad_()
    if lengths is None:
        out, h_n = module(x, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, h_n = module(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    ((out * weights).sum() + (h_n * h_n).sum()).backward()
    grads = [x.grad] + ([] if hx is None else [hx.grad]) + [p.grad for p in module.parameters()]
    return [out, h_n] + grads
