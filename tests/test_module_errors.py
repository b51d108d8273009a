"""rnn_fused.RNN raises what torch.nn.RNN raises (type and message), found by running both."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnn_fused


def _raised(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


def assert_same_error(fn_torch, fn_ours):
    expected = _raised(fn_torch)
    assert _raised(fn_ours) == expected


CONSTRUCTOR_CASES = {
    "proj_size": ((4, 3), {"proj_size": 2}),
    "proj_size_zero": ((4, 3), {"proj_size": 0}),
    "nonlinearity": ((4, 3), {"nonlinearity": "sigmoid"}),
    "nonlinearity_positional": ((4, 3, 1, "gelu"), {}),
    "dropout_above_one": ((4, 3), {"dropout": 1.5}),
    "dropout_negative": ((4, 3), {"dropout": -0.1}),
    "dropout_bool": ((4, 3), {"dropout": True}),
    "dropout_string": ((4, 3), {"dropout": "a"}),
    "bias_int": ((4, 3), {"bias": 1}),
    "batch_first_none": ((4, 3), {"batch_first": None}),
    "input_size_float": ((4.0, 3), {}),
    "input_size_zero": ((0, 3), {}),
    "hidden_size_float": ((4, 3.0), {}),
    "hidden_size_negative": ((4, -2), {}),
    "hidden_size_bool": ((4, True), {}),
    "num_layers_zero": ((4, 3, 0), {}),
    "num_layers_float": ((4, 3, 1.5), {}),
}


@pytest.mark.parametrize("args,kwargs", CONSTRUCTOR_CASES.values(), ids=CONSTRUCTOR_CASES.keys())
def test_constructor_errors(args, kwargs):
    assert_same_error(lambda: nn.RNN(*args, **kwargs), lambda: rnn_fused.RNN(*args, **kwargs))


def test_dropout_warning_for_one_layer_matches_and_points_at_caller():
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        nn.RNN(4, 3, dropout=0.3)
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        rnn_fused.RNN(4, 3, dropout=0.3)
    assert [(w.category, str(w.message)) for w in ours] == [
        (w.category, str(w.message)) for w in theirs]
    assert ours[0].filename == __file__


def _packed(batch_first=False, enforce_sorted=False, dtype=torch.float32, input_size=4):
    lengths = torch.tensor([5, 3, 4]) if not enforce_sorted else torch.tensor([5, 4, 3])
    x = torch.randn(5, 3, input_size, dtype=dtype)
    return pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)


# name -> (module kwargs, function of nothing returning (input, hx))
FORWARD_CASES = {
    "input_1d": ({}, lambda: (torch.randn(4), None)),
    "input_4d": ({}, lambda: (torch.randn(1, 5, 2, 4), None)),
    "input_size": ({}, lambda: (torch.randn(5, 2, 3), None)),
    "input_size_unbatched": ({}, lambda: (torch.randn(5, 3), None)),
    "hx_rank_batched": ({}, lambda: (torch.randn(5, 2, 4), torch.randn(2, 3))),
    "hx_rank_unbatched": ({}, lambda: (torch.randn(5, 4), torch.randn(2, 1, 3))),
    "hx_shape": ({}, lambda: (torch.randn(5, 2, 4), torch.randn(2, 3, 3))),
    "hx_shape_layers": ({}, lambda: (torch.randn(5, 2, 4), torch.randn(1, 2, 3))),
    "hx_shape_unbatched": ({}, lambda: (torch.randn(5, 4), torch.randn(2, 4))),
    "hx_shape_bidirectional": ({"bidirectional": True},
                               lambda: (torch.randn(5, 2, 4), torch.randn(2, 2, 3))),
    "input_dtype": ({}, lambda: (torch.randn(5, 2, 4, dtype=torch.float64), None)),
    "input_dtype_int": ({}, lambda: (torch.ones(5, 2, 4, dtype=torch.long), None)),
    "input_dtype_before_hx_shape": ({}, lambda: (torch.randn(5, 2, 4, dtype=torch.float64),
                                                 torch.randn(2, 3, 3))),
    "hx_dtype_double": ({}, lambda: (torch.randn(5, 2, 4), torch.zeros(2, 2, 3, dtype=torch.float64))),
    "hx_dtype_half": ({}, lambda: (torch.randn(5, 2, 4), torch.zeros(2, 2, 3, dtype=torch.half))),
    "hx_dtype_bfloat16": ({}, lambda: (torch.randn(5, 2, 4), torch.zeros(2, 2, 3, dtype=torch.bfloat16))),
    "hx_dtype_batch0": ({}, lambda: (torch.randn(5, 0, 4), torch.zeros(2, 0, 3, dtype=torch.float64))),
    "hx_dtype_float_model_double": ({"dtype": torch.float64},
                                    lambda: (torch.randn(5, 2, 4, dtype=torch.float64), torch.zeros(2, 2, 3))),
    "zero_length": ({}, lambda: (torch.randn(0, 2, 4), None)),
    "zero_length_unbatched": ({}, lambda: (torch.randn(0, 4), None)),
    "zero_length_batch_first": ({"batch_first": True}, lambda: (torch.randn(2, 0, 4), None)),
    "zero_length_batch0": ({}, lambda: (torch.randn(0, 0, 4), None)),
    "zero_length_before_hx_dtype": ({}, lambda: (torch.randn(0, 2, 4),
                                                 torch.zeros(2, 2, 3, dtype=torch.float64))),
    "device": ({}, lambda: (torch.randn(5, 2, 4), torch.zeros(2, 2, 3, device="meta"))),
    "device_unbatched": ({}, lambda: (torch.randn(5, 4), torch.zeros(2, 3, device="meta"))),
    "device_before_zero_length": ({}, lambda: (torch.randn(0, 2, 4), torch.zeros(2, 2, 3, device="meta"))),
    "device_before_hx_dtype": ({}, lambda: (torch.randn(5, 2, 4),
                                            torch.zeros(2, 2, 3, device="meta", dtype=torch.float64))),
    "packed_hx_shape": ({}, lambda: (_packed(enforce_sorted=True), torch.zeros(2, 2, 3))),
    "packed_unsorted_hx_shape": ({}, lambda: (_packed(), torch.zeros(3, 3, 3))),
    "packed_hx_rank": ({}, lambda: (_packed(), torch.zeros(2, 3))),
    "packed_input_dtype": ({}, lambda: (_packed(dtype=torch.float64), None)),
    "packed_input_size": ({}, lambda: (_packed(input_size=2), None)),
    "packed_hx_dtype": ({}, lambda: (_packed(), torch.zeros(2, 3, 3, dtype=torch.float64))),
    "packed_sorted_hx_dtype": ({}, lambda: (_packed(enforce_sorted=True),
                                            torch.zeros(2, 3, 3, dtype=torch.float64))),
    "packed_unsorted_device": ({}, lambda: (_packed(), torch.zeros(2, 3, 3, device="meta"))),
    "packed_sorted_device": ({}, lambda: (_packed(enforce_sorted=True),
                                          torch.zeros(2, 3, 3, device="meta"))),
}


@pytest.mark.parametrize("module_kwargs,make_args", FORWARD_CASES.values(), ids=FORWARD_CASES.keys())
def test_forward_errors(module_kwargs, make_args):
    theirs = nn.RNN(4, 3, 2, **module_kwargs)
    ours = rnn_fused.RNN.from_torch(theirs)
    input, hx = make_args()
    assert_same_error(lambda: theirs(input, hx), lambda: ours(input, hx))


# Under autocast nn.RNN skips its input dtype check and casts float32/16 tensors (never
# float64) to the autocast dtype, so mismatches surface later, as matrix-product errors.
AUTOCAST_CASES = {
    "double_input": ({}, lambda: (torch.randn(5, 2, 4, dtype=torch.float64), None)),
    "double_hx": ({}, lambda: (torch.randn(5, 2, 4), torch.zeros(2, 2, 3, dtype=torch.float64))),
    "double_model_float_input": ({"dtype": torch.float64}, lambda: (torch.randn(5, 2, 4), None)),
}


@pytest.mark.parametrize("module_kwargs,make_args", AUTOCAST_CASES.values(), ids=AUTOCAST_CASES.keys())
def test_forward_errors_under_autocast(module_kwargs, make_args):
    theirs = nn.RNN(4, 3, 2, **module_kwargs)
    ours = rnn_fused.RNN.from_torch(theirs)
    input, hx = make_args()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert_same_error(lambda: theirs(input, hx), lambda: ours(input, hx))


@pytest.mark.parametrize("side_by_side", [False, True])
@pytest.mark.parametrize("hx_shape", [(2, 8, 63), (3, 8, 64), (8, 64), (2, 7, 64)])
def test_functional_rnn_checks_hx_as_nn_rnn_does(hx_shape, side_by_side):
    """rnn_fused.functional.rnn, called directly (no module to check hx first), refuses a
    malformed hx with nn.RNN's error on every path, before any path takes a slice of it (an extra
    layer's state was once taken silently, and a short one failed in whichever op read it)."""
    torch.manual_seed(0)
    stock = nn.RNN(5, 64, bidirectional=True)
    x, hx = torch.randn(300, 8, 5), torch.randn(hx_shape)
    weights = [list(stock.parameters())[0:4], list(stock.parameters())[4:8]]
    assert_same_error(lambda: stock(x, hx),
                      lambda: rnn_fused.functional.rnn(x, hx, weights, num_layers=1, bidirectional=True,
                                                       side_by_side=side_by_side))
