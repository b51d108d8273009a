"""The nn.RNN surface of rnn_fused.RNN: parameters, init, attributes, state_dict, conversion,
dropout, batch size 0, low precision, factory kwargs."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnn_fused
from rnn_fused.tools.testing import assert_within_tolerance, compare_with_torch

CONFIGS = [
    dict(input_size=4, hidden_size=3),
    dict(input_size=4, hidden_size=3, num_layers=2, bidirectional=True),
    dict(input_size=2, hidden_size=5, num_layers=3, nonlinearity="relu", bias=False,
         batch_first=True, dropout=0.25),
]


def _pair(config, seed=0):
    torch.manual_seed(seed)
    theirs = nn.RNN(**config)
    torch.manual_seed(seed)
    ours = rnn_fused.RNN(**config)
    return theirs, ours


@pytest.mark.parametrize("config", CONFIGS)
def test_parameters_init_and_attributes_match(config):
    theirs, ours = _pair(config)
    # Same names, shapes and registration order, and the same init draws from the same RNG.
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in theirs.named_parameters()]
    for (name, p_ours), p_theirs in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(p_ours, p_theirs), name
    bound = 1 / config["hidden_size"] ** 0.5
    assert all(p.abs().max() <= bound for p in ours.parameters())
    for attribute in ("mode", "nonlinearity", "input_size", "hidden_size", "num_layers", "bias",
                      "batch_first", "dropout", "bidirectional", "proj_size",
                      "_flat_weights_names", "_all_weights"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert [[w.shape for w in group] for group in ours.all_weights] == [
        [w.shape for w in group] for group in theirs.all_weights]
    assert all(a is b for a, b in zip(ours._flat_weights, ours.parameters()))
    assert repr(ours) == repr(theirs)
    assert ours.extra_repr() == theirs.extra_repr()


def test_positional_nonlinearity_and_options_like_nn_rnn():
    args = (4, 3, 2, "relu", False, True, 0.5, True)
    theirs, ours = nn.RNN(*args), rnn_fused.RNN(*args)
    assert repr(ours) == repr(theirs)
    assert ours.mode == "RNN_RELU"


def test_not_a_subclass_of_torch_rnn():
    assert not isinstance(rnn_fused.RNN(2, 2), nn.RNNBase)


@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_interchangeable_both_ways(config):
    theirs, _ = _pair(config, seed=1)
    _, ours = _pair(config, seed=2)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value)
    _, ours = _pair(config, seed=3)
    fresh_theirs = nn.RNN(**config)
    fresh_theirs.load_state_dict(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(fresh_theirs.state_dict()[key], value)


@pytest.mark.parametrize("config", CONFIGS)
def test_from_torch_and_to_torch_copy_config_weights_and_mode(config):
    theirs = nn.RNN(**config, dtype=torch.float64).eval()
    ours = rnn_fused.RNN.from_torch(theirs)
    assert repr(ours) == repr(theirs) and not ours.training
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ours.parameters(), theirs.parameters()))
    back = ours.train().to_torch()
    assert isinstance(back, nn.RNN) and back.training and repr(back) == repr(theirs)
    for (name, a), b in zip(back.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b) and a.dtype == b.dtype, name
    x = torch.randn(5, 2, config["input_size"], dtype=torch.float64)
    compare_with_torch(theirs, x, dtype=torch.float64)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        rnn_fused.RNN.from_torch(nn.GRU(2, 3))


def test_from_torch_does_not_repeat_the_dropout_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = nn.RNN(2, 3, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnn_fused.RNN.from_torch(theirs).to_torch()


def test_pickle_round_trip():
    ours = rnn_fused.RNN(3, 4, 2, bidirectional=True)
    copy = pickle.loads(pickle.dumps(ours))
    x = torch.randn(5, 2, 3)
    assert torch.equal(copy(x)[0], ours(x)[0])


def test_assigning_a_parameter_is_used_by_forward():
    ours = rnn_fused.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    before = ours(x)[0]
    ours.weight_hh_l0 = nn.Parameter(torch.zeros(4, 4))
    after = ours(x)[0]
    assert not torch.equal(before, after)
    assert ours._flat_weights[1] is ours.weight_hh_l0


def test_functional_call_uses_the_given_weights():
    theirs, ours = _pair(dict(input_size=3, hidden_size=4))
    replaced = {name: torch.randn_like(p) for name, p in ours.named_parameters()}
    x = torch.randn(5, 2, 3)
    reference = torch.func.functional_call(
        theirs.double(), {k: v.double() for k, v in replaced.items()}, (x.double(),))
    stock = torch.func.functional_call(theirs.float(), replaced, (x,))
    got = torch.func.functional_call(ours, replaced, (x,))
    for name, r, s, g in zip(("output", "h_n"), reference, stock, got):
        assert_within_tolerance(r, s, g, name=name)


def test_parametrized_weight_is_used_by_forward_and_trained_through():
    """A parametrization takes the weight's name over (a property computing it from the
    original): forward must use the computed weight, and gradients reach the original."""
    class Symmetric(nn.Module):
        def forward(self, w):
            return (w + w.t()) / 2

    ours = rnn_fused.RNN(3, 4)
    x = torch.randn(5, 2, 3)
    torch.nn.utils.parametrize.register_parametrization(ours, "weight_hh_l0", Symmetric())
    plain = rnn_fused.RNN(3, 4)
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(getattr(ours, name))
    assert torch.equal(ours(x)[0], plain(x)[0])
    ours(x)[0].sum().backward()
    original = ours.parametrizations.weight_hh_l0.original
    assert original.grad is not None and original.grad.abs().sum() > 0


# --- dropout -----------------------------------------------------------------------------


def test_eval_mode_is_deterministic_and_matches_torch_with_dropout():
    theirs = nn.RNN(3, 4, 3, dropout=0.5, bidirectional=True).eval()
    ours = rnn_fused.RNN.from_torch(theirs)
    x = torch.randn(6, 2, 3)
    assert torch.equal(ours(x)[0], ours(x)[0])
    compare_with_torch(theirs, x)


def test_training_dropout_is_random_between_layers_and_spares_the_last_output():
    ours = rnn_fused.RNN(3, 16, 2, dropout=0.5)
    x = torch.randn(12, 4, 3)
    first_output, first_h = ours(x)
    second_output, second_h = ours(x)
    eval_output, eval_h = ours.eval()(x)
    assert not torch.equal(first_output, second_output)
    assert not torch.equal(first_output, eval_output)
    # Dropout acts on layer 0's output only, after its state is computed.
    assert torch.equal(first_h[0], eval_h[0]) and torch.equal(second_h[0], eval_h[0])
    # Dropout on the last layer would zero about half of the output and double the rest,
    # beyond tanh's range: neither happens.
    assert (first_output != 0).all() and (first_output.abs() < 1).all()


def test_training_without_dropout_equals_eval():
    ours = rnn_fused.RNN(3, 4, 2)
    x = torch.randn(5, 2, 3)
    assert torch.equal(ours(x)[0], ours.eval()(x)[0])


def test_one_layer_dropout_changes_nothing_in_training():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = rnn_fused.RNN(3, 4, dropout=0.9)
    x = torch.randn(5, 2, 3)
    assert torch.equal(ours(x)[0], ours.eval()(x)[0])


# --- sizes and dtypes ----------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_batch_size_zero(bidirectional, with_hx):
    theirs = nn.RNN(3, 4, 2, bidirectional=bidirectional)
    hx = torch.randn(2 * (2 if bidirectional else 1), 0, 4) if with_hx else None
    results = compare_with_torch(theirs, torch.randn(5, 0, 3), hx)
    shapes = {r.name for r in results}
    assert {"output", "h_n", "grad_weight_ih_l0"} <= shapes


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True])
def test_low_precision_forward_close_to_reference(dtype, packed):
    theirs = nn.RNN(5, 8, 2, bidirectional=True)
    x = torch.randn(7, 3, 5)
    input = pack_padded_sequence(x, torch.tensor([7, 3, 5]), enforce_sorted=False) if packed else x
    compare_with_torch(theirs, input, torch.randn(4, 3, 8), dtype=dtype, backward=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_dtype_factory_kwarg(dtype):
    ours = rnn_fused.RNN(3, 4, 2, dtype=dtype)
    assert all(p.dtype == dtype for p in ours.parameters())
    output, h_n = ours(torch.randn(5, 2, 3, dtype=dtype))
    assert output.dtype == dtype and h_n.dtype == dtype


def test_device_factory_kwarg_meta():
    ours = rnn_fused.RNN(3, 4, 2, bidirectional=True, device="meta")
    assert all(p.device.type == "meta" for p in ours.parameters())
    output, h_n = ours(torch.randn(5, 2, 3, device="meta"))
    assert output.shape == (5, 2, 8) and h_n.shape == (4, 2, 4)
    assert output.device.type == "meta"


def test_to_moves_and_casts_parameters():
    ours = rnn_fused.RNN(3, 4).to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert ours._flat_weights[0].dtype == torch.float64


@pytest.mark.parametrize("input_dtype,hx_dtype", [(torch.float32, None), (torch.float16, torch.float32),
                                                  (torch.float32, torch.float16)])
def test_autocast_runs_in_the_autocast_dtype_like_torch(input_dtype, hx_dtype):
    theirs = nn.RNN(3, 6, 2, bidirectional=True)
    ours = rnn_fused.RNN.from_torch(theirs)
    x = torch.randn(5, 2, 3)
    hx = None if hx_dtype is None else torch.randn(4, 2, 6)
    reference = theirs.double()(x.double(), None if hx is None else hx.double())
    theirs.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        args = (x.to(input_dtype), None if hx is None else hx.to(hx_dtype))
        stock, got = theirs(*args), ours(*args)
    for name, r, s, g in zip(("output", "h_n"), reference, stock, got):
        assert g.dtype == s.dtype == torch.bfloat16
        assert_within_tolerance(r, s, g, name=name)


def test_bitwise_deterministic_run_to_run():
    ours = rnn_fused.RNN(5, 16, 2, bidirectional=True).eval()
    x = pack_padded_sequence(torch.randn(9, 6, 5), torch.tensor([9, 2, 5, 9, 1, 4]),
                             enforce_sorted=False)

    def run():
        ours.zero_grad(set_to_none=True)
        data = x.data.detach().clone().requires_grad_()
        output, h_n = ours(type(x)(data, x.batch_sizes, x.sorted_indices, x.unsorted_indices))
        (output.data.sum() + h_n.square().sum()).backward()
        return [output.data, h_n, data.grad, *(p.grad for p in ours.parameters())]

    for first, second in zip(run(), run()):
        assert torch.equal(first, second)


def test_public_check_methods_behave_like_torch():
    theirs, ours = _pair(dict(input_size=4, hidden_size=3, num_layers=2, bidirectional=True))
    x = torch.randn(5, 2, 4)
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([2, 5, 3]), enforce_sorted=False)
    for input, batch_sizes in ((x, None), (packed.data, packed.batch_sizes)):
        assert ours.get_expected_hidden_size(input, batch_sizes) == \
            theirs.get_expected_hidden_size(input, batch_sizes)
    hx = torch.randn(4, 3, 3)
    assert torch.equal(ours.permute_hidden(hx, packed.sorted_indices),
                       theirs.permute_hidden(hx, packed.sorted_indices))
    assert ours.permute_hidden(hx, None) is hx
    bad_hx = torch.randn(4, 5, 3)
    with pytest.raises(RuntimeError) as expected:
        theirs.check_forward_args(x, bad_hx, None)
    with pytest.raises(RuntimeError) as got:
        ours.check_forward_args(x, bad_hx, None)
    assert str(got.value) == str(expected.value)


def test_packed_input_lengths_stay_on_the_cpu():
    """A PackedSequence's lengths come from its CPU batch_sizes and stay there: the layers
    check CPU lengths on the host and copy them to the device without waiting for it, where
    lengths on the GPU would cost a host synchronisation per layer (a reduction read back).
    The data (here on the meta device, standing in for a GPU: it holds no values, so any
    operation that reads one back fails there) goes to the padded batch and back, and through
    the dropout between layers, by positions found on the host: no mask is counted on the
    device (a boolean index would read its count back, a synchronisation per call)."""
    from rnn_fused.functional import dropout_between_layers, packed_to_padded, padded_to_packed_data

    batch_sizes = torch.tensor([3, 2, 2, 1])
    data = torch.randn(8, 4)
    padded, lengths, positions = packed_to_padded(data.to("meta"), batch_sizes)
    assert lengths.device.type == "cpu" and lengths.tolist() == [4, 3, 1]
    assert padded.device.type == "meta" and padded.shape == (4, 3, 4) and positions.device.type == "meta"
    assert padded_to_packed_data(padded, positions).shape == (8, 4)
    assert dropout_between_layers(padded, 0.5, lengths).shape == (4, 3, 4)
    # The same on the CPU, with values: the padded batch is nn.utils.rnn's, and back.
    padded, _, positions = packed_to_padded(data, batch_sizes)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(torch.nn.utils.rnn.PackedSequence(data, batch_sizes))
    assert torch.equal(padded, expected)
    assert torch.equal(padded_to_packed_data(padded, positions), data)
