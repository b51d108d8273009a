"""Inference on a PackedSequence in the packed layout itself (rnn_fused::rnn_packed_inference,
csrc/packed_inference.cpp): where rnn_fused.RNN takes it, that its values meet the tolerance rule
against torch.nn.RNN, that its dropout draws are the padded route's, and its errors."""

import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnn_fused
from rnn_cases import FORCED_LOOP_TEAM_IDS, FORCED_LOOP_TEAMS, PACKED_LAYOUT_CASES, RNNCase, case_id
from rnn_fused import RNN, functional, launch_plan
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, compare_with_torch

OPS = torch.ops.rnn_fused

def _packed_inference_calls(module, *args, **kwargs) -> int:
    """Calls of the packed layout's op in one run of module(*args, **kwargs)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        module(*args, **kwargs)
    return sum(1 for e in profile.events() if e.name == "rnn_fused::rnn_packed_inference")


@pytest.mark.parametrize("team", FORCED_LOOP_TEAMS, ids=FORCED_LOOP_TEAM_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", PACKED_LAYOUT_CASES, ids=case_id)
def test_packed_inference_meets_the_tolerance_rule(case, dtype, team, generator):
    rnn_case = RNNCase(**case)
    input, hx = rnn_case.inputs(generator)
    ours = RNN.from_torch(rnn_case.torch_module().to(dtype))
    with torch.no_grad():
        # The route is the one compared below.
        assert _packed_inference_calls(ours, input.to(dtype), None if hx is None else hx.to(dtype)) == 1
        with (launch_plan.forced_cpu_loop_team(team[1], team[0]) if team else contextlib.nullcontext()):
            compare_with_torch(rnn_case.torch_module(), input, hx, dtype=dtype, backward=False,
                               **({"ulps": FLOAT64_PARITY_ULPS} if dtype == torch.float64 else {}))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_packed_inference_in_low_precision_meets_the_tolerance_rule(dtype):
    theirs = torch.nn.RNN(5, 8, 2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(7, 3, 5), torch.tensor([7, 3, 5]), enforce_sorted=False)
    with torch.no_grad():
        assert _packed_inference_calls(RNN.from_torch(theirs).to(dtype), packed.to(dtype)) == 1
        compare_with_torch(theirs, packed, torch.randn(4, 3, 8), dtype=dtype, backward=False)


def test_packed_inference_is_taken_only_where_no_gradient_is_wanted():
    """The model in one call where no gradient is wanted; where one is, packed training calls the op
    once per layer (test_packed_training.py)."""
    ours = RNN(4, 6, 2)
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 4, 2]))
    assert _packed_inference_calls(ours, packed) == 2  # the parameters require grad
    with torch.no_grad():
        assert _packed_inference_calls(ours, packed) == 1
    ours.requires_grad_(False)
    assert _packed_inference_calls(ours, packed) == 1
    assert _packed_inference_calls(ours, pack_padded_sequence(torch.randn(5, 3, 4, requires_grad=True),
                                                              torch.tensor([5, 4, 2]))) == 2
    with torch.no_grad():
        # The padded route where the call asks for it (packed_layout False) or for what only it runs:
        # the emulated GPU kernels, or a stack (whose error on the CPU the padded route raises). A
        # recorder records nothing without gradients.
        with rnn_fused.record_gradients(ours):
            assert _packed_inference_calls(ours, packed) == 1
        ours.packed_layout = False
        assert _packed_inference_calls(ours, packed) == 0
        ours.packed_layout = True
        ours.backend = "emulated"
        assert _packed_inference_calls(ours, packed) == 0
        ours.backend = None
        ours.stack = True
        with pytest.raises(ValueError, match="stack=True"):
            ours(packed)


def test_packed_inference_output_is_the_padded_routes(generator):
    """The packed layout's output against the padded route's (the same module and input,
    RNN.packed_layout False) under the float64 parity bound: the same loops on the same rows."""
    rnn_case = RNNCase(packing="unsorted", num_layers=2, bidirectional=True, with_hx=True, seq_len=8, batch=5,
                       input_size=4, hidden_size=6)
    input, hx = rnn_case.inputs(generator)
    ours = RNN.from_torch(rnn_case.torch_module().double())
    ours.packed_layout = False
    padded_output, padded_h_n = ours(input, hx)
    ours.packed_layout = True
    with torch.no_grad():
        packed_output, packed_h_n = ours(input, hx)
    for name in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        assert torch.equal(getattr(packed_output, name), getattr(padded_output, name))
    bound = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps
    assert (packed_output.data - padded_output.data).abs().max().item() <= bound
    assert (packed_h_n - padded_h_n).abs().max().item() <= bound


@pytest.mark.parametrize("truncation", [None, rnn_fused.RandomTruncation(0.5)], ids=["full", "random"])
def test_packed_inference_draws_the_padded_routes_dropout_and_seed(truncation):
    """In training with dropout, the masks between layers are the padded route's (nn.RNN's draws
    over the packed data), and torch's generator ends the call in the same state (a
    RandomTruncation without seed draws its seed either way)."""
    ours = RNN(4, 6, 3, dropout=0.5).double()
    packed = pack_padded_sequence(torch.randn(7, 4, 4, dtype=torch.float64), torch.tensor([7, 5, 5, 2]))
    torch.manual_seed(7)
    ours.packed_layout = False
    padded_output, _ = ours(packed, truncation=truncation)
    ours.packed_layout = True
    padded_state = torch.get_rng_state()
    torch.manual_seed(7)
    with torch.no_grad():
        assert _packed_inference_calls(ours, packed, truncation=truncation) == 1
    torch.manual_seed(7)
    with torch.no_grad():
        packed_output, _ = ours(packed, truncation=truncation)
    assert torch.equal(torch.get_rng_state(), padded_state)
    # A dropped input to the last layer shows in its output only through the values; the masks
    # are compared by the values, which agree under the float64 parity bound only with the same masks.
    bound = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps
    assert (packed_output.data - padded_output.data).abs().max().item() <= bound
    torch.manual_seed(8)
    with torch.no_grad():
        other_masks, _ = ours(packed, truncation=truncation)
    assert (other_masks.data - padded_output.data).abs().max().item() > 1e-3


def _op_args(**overrides):
    weights = [torch.randn(6, 4), torch.randn(6, 6), torch.randn(6), torch.randn(6)]
    args = dict(data=torch.randn(6, 4), batch_sizes=torch.tensor([3, 2, 1]), hx=None, weights=weights,
                has_biases=True, num_layers=1, bidirectional=False)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,message", [
    (dict(batch_sizes=torch.tensor([2, 3, 1])), ValueError, r"batch_sizes must be non-increasing and >= 0, got "
                                                             r"batch_sizes\[1\] = 3 after 2"),
    (dict(batch_sizes=torch.tensor([3, 2])), ValueError, "data has 6 rows, batch_sizes sum to 5"),
    (dict(batch_sizes=torch.tensor([3.0, 2.0, 1.0])), ValueError, "batch_sizes must be a non-empty 1-D int64 CPU"),
    (dict(num_layers=2), ValueError, r"expected 8 weights \(num_layers=2, bidirectional=False, has_biases=True\), "
                                     "got 4"),
    (dict(weights=[torch.randn(6, 5), torch.randn(6, 6), torch.randn(6), torch.randn(6)]), RuntimeError,
     r"weight_ih_l0 must be a Float tensor of shape \[6, 4\] on cpu, got Float \[6, 5\] on cpu"),
    (dict(hx=torch.randn(1, 2, 6)), RuntimeError, r"hx must be a Float tensor of shape \[1, 3, 6\]"),
    (dict(dropout=1.5), ValueError, r"dropout must be in \[0, 1\], got 1.5"),
    (dict(backend="emulated"), ValueError, "backend 'emulated' runs padded batches only; the packed layout runs on "
                                           "the CPU backend"),
    (dict(nonlinearity="gelu"), ValueError, "nonlinearity must be 'tanh' or 'relu', got 'gelu'"),
])
def test_packed_inference_op_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        OPS.rnn_packed_inference(**_op_args(**overrides))


def test_packed_inference_op_refuses_to_run_where_gradients_are_wanted():
    args = _op_args(data=torch.randn(6, 4, requires_grad=True))
    with pytest.raises(RuntimeError, match="rnn_packed_inference makes no gradients: call it under torch.no_grad"):
        OPS.rnn_packed_inference(**args)
    with torch.no_grad():
        output, h_n = OPS.rnn_packed_inference(**args)
    assert output.shape == (6, 6) and h_n.shape == (1, 3, 6)


def test_packed_inference_op_with_steps_of_no_rows_and_an_empty_batch():
    """Trailing steps of no rows (batch_sizes may end in zeros) and a batch of none."""
    weights = [torch.randn(5, 3), torch.randn(5, 5) / 3]
    data = torch.randn(4, 3)
    output, h_n = OPS.rnn_packed_inference(data, torch.tensor([2, 2, 0]), None, weights, False, 1, False)
    expected, expected_h_n = OPS.rnn_packed_inference(data, torch.tensor([2, 2]), None, weights, False, 1, False)
    assert torch.equal(output, expected) and torch.equal(h_n, expected_h_n)
    hx = torch.randn(2, 0, 5)
    output, h_n = OPS.rnn_packed_inference(torch.randn(0, 3), torch.tensor([0]), hx, weights * 2, False, 1, True)
    assert output.shape == (0, 10) and torch.equal(h_n, hx)


def test_functional_packed_inference_matches_the_module(generator):
    rnn_case = RNNCase(packing="sorted", num_layers=2, bidirectional=True, seq_len=5, batch=3, input_size=2,
                       hidden_size=4)
    input, _ = rnn_case.inputs(generator)
    ours = RNN.from_torch(rnn_case.torch_module().double())
    with torch.no_grad():
        module_output, module_h_n = ours(input)
        output, h_n = functional.packed_inference(input.data, input.batch_sizes, None, ours.all_weights, 2, True,
                                                  side_by_side=True)
    assert torch.equal(output, module_output.data) and torch.equal(h_n, module_h_n)
