"""A model's layers in one op call (rnn_fused::rnn_layers_forward, csrc/model_forward.cpp):
functional.rnn hands it its loop over layers and directions where every layer takes the same
route (functional._layers_route). The op calls the same layer ops in the same order, so every
value and gradient is bitwise the loop's in Python; these tests hold it to that on the CPU
kernels and on the emulated GPU kernels, check which calls take it, and its own errors."""

from __future__ import annotations

import pytest
import torch

import rnn_fused
from rnn_cases import module_outputs_and_gradients
from rnn_fused import functional
from rnn_fused.launch_plan import forced_cpu_loop_team

OPS = torch.ops.rnn_fused
OP_NAME = "rnn_fused::rnn_layers_forward"


def _ops_called(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return {event.name for event in profile.events()}


def _in_python(monkeypatch):
    """functional.rnn with its loop in Python for every call (the route before the op existed)."""
    monkeypatch.setattr(functional, "_layers_route", lambda *args, **kwargs: None)


CASES = [
    # steps, batch, input, hidden, layers, bidirectional, bias, hx, lengths, nonlinearity, truncation, side_by_side
    (7, 3, 4, 6, 1, False, True, False, None, "tanh", None, None),
    (7, 3, 4, 6, 3, False, True, True, [7, 1, 3], "tanh", 2, None),
    (6, 2, 3, 5, 2, False, False, True, None, "relu", rnn_fused.RandomTruncation(0.6, seed=4), None),
    (6, 3, 4, 5, 2, True, True, True, [6, 2, 1], "tanh", None, None),
    (5, 2, 3, 4, 2, True, False, False, None, "relu", 3, True),   # the directions' op pair, at once
    (5, 2, 3, 4, 1, True, True, True, [5, 1], "tanh", rnn_fused.RandomTruncation(0.7, seed=2), False),
]


@pytest.mark.parametrize("backend", [None, "emulated"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c[:10]))
def test_the_op_gives_the_python_loops_values_and_gradients_bitwise(case, backend, monkeypatch):
    steps, batch, input_size, hidden, layers, bidirectional, bias, with_hx, lengths, nonlinearity, truncation, \
        side_by_side = case
    torch.manual_seed(0)
    module = rnn_fused.RNN(input_size, hidden, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                           bidirectional=bidirectional, truncation=truncation).double()
    module.backend, module.side_by_side = backend, side_by_side
    module.packed_layout = False  # a packed batch through the padded one, whose layers the op runs
    directions = 2 if bidirectional else 1
    x = torch.randn(steps, batch, input_size, dtype=torch.float64)
    hx = torch.randn(layers * directions, batch, hidden, dtype=torch.float64) if with_hx else None

    def run():
        with forced_cpu_loop_team(1):
            return module_outputs_and_gradients(module, x, hx, lengths)

    assert OP_NAME in _ops_called(run)
    in_one_op = run()
    with monkeypatch.context() as patch:
        _in_python(patch)
        assert OP_NAME not in _ops_called(run)
        in_python = run()
    assert len(in_one_op) == len(in_python)
    for ours, loop in zip(in_one_op, in_python):
        assert torch.equal(ours, loop)


@pytest.mark.parametrize("backend", [None, "emulated"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 4]], ids=["padded", "packed"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
def test_dropout_between_layers_draws_as_the_python_loop(bidirectional, lengths, backend, monkeypatch):
    """In training with dropout the op draws each layer's mask as the loop does (at::dropout of the
    whole output, or of a packed batch's valid positions, in layer order, from the default
    generator): the same values, gradients and generator state afterwards."""
    torch.manual_seed(0)
    module = rnn_fused.RNN(4, 5, num_layers=3, dropout=0.4, bidirectional=bidirectional).double().train()
    module.backend = backend
    module.packed_layout = False  # a packed batch through the padded one, whose layers the op runs
    x = torch.randn(6, 3, 4, dtype=torch.float64)

    def run():
        torch.manual_seed(7)
        results = module_outputs_and_gradients(module, x, None, lengths)
        return results + [torch.rand(3, dtype=torch.float64)]  # (the generator's state after the call)

    assert OP_NAME in _ops_called(run)
    in_one_op = run()
    with monkeypatch.context() as patch:
        _in_python(patch)
        in_python = run()
    for ours, loop in zip(in_one_op, in_python, strict=True):
        assert torch.equal(ours, loop)
    assert not torch.equal(in_one_op[0], module.eval()(x)[0])  # (dropout did drop)


def test_a_model_without_grad_and_its_final_states_one_op_each():
    """Under no_grad the op's results are plain tensors; one layer's h_n is its op's (a view, no copy)."""
    torch.manual_seed(0)
    model = rnn_fused.RNN(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        out, h_n = model(x)
    assert out.grad_fn is None and h_n.shape == (2, 2, 4)
    stock = model.to_torch()
    with torch.no_grad():
        expected, expected_h_n = stock(x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(h_n, expected_h_n)


def test_which_calls_take_the_op():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3)
    model = rnn_fused.RNN(3, 4, num_layers=2, dropout=0.5)
    model.eval()
    assert OP_NAME in _ops_called(lambda: model(x))  # no dropout in eval
    model.train()
    assert OP_NAME in _ops_called(lambda: model(x))  # dropout drawn by the op
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 2])
    assert OP_NAME not in _ops_called(lambda: model(packed))  # the packed layout's own ops
    model.packed_layout = False
    assert OP_NAME in _ops_called(lambda: model(packed))  # through the padded batch
    model.packed_layout = True
    with rnn_fused.record_gradients(model):
        assert OP_NAME not in _ops_called(lambda: model(x))  # the recorder's sinks are Python's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert OP_NAME not in _ops_called(lambda: model(x))
    weights = model.all_weights
    assert OP_NAME not in _ops_called(lambda: functional.rnn(x, None, weights, 2, False,
                                                             layer_fn=functional.reference_layer))


def test_routes_the_op_takes_for_bidirectional_layers():
    x = torch.randn(4, 2, 3)
    weights = rnn_fused.RNN(3, 4, bidirectional=True).all_weights

    def route(backend, side_by_side, path=None):
        return functional._layers_route(x, None, weights, 1, True, 0.0, False, None, None, backend, path,
                                        functional.resolve_truncation(None), None, side_by_side)

    assert route(None, True) == 1     # the CPU loops' op pair (each loop on a thread)
    assert route(None, False) == 0    # two layer ops
    assert route("emulated", True) == 2 and route("emulated", False) == 1  # the GPU kernels' op pair
    assert route(None, None, path="block") == 0  # a path on the CPU kernels: the layer ops say no


def test_a_batch_in_pieces_stays_in_python(monkeypatch):
    """Where a layer's batch may run as two layer ops (a plan in waves), the loop stays in Python
    (functional._split_layer)."""
    monkeypatch.setattr(rnn_fused.launch_plan, "runs_in_waves", lambda *args, **kwargs: True)
    x = torch.randn(3, 4, 2)
    weights = rnn_fused.RNN(2, 3, num_layers=2).all_weights
    args = functional.resolve_truncation(None)
    assert functional._layers_route(x, None, weights, 2, False, 0.0, False, None, None, "emulated", None, args,
                                    None, None) is None
    assert functional._layers_route(x, None, weights, 2, False, 0.0, False, None, None, None, None, args,
                                    None, None) == 0  # (the CPU kernels never split)


def test_the_ops_own_errors():
    x = torch.randn(3, 2, 2)
    weights = [w for group in rnn_fused.RNN(2, 3, num_layers=2).all_weights for w in group]
    with pytest.raises(ValueError, match=r"expected 8 weights \(num_layers=2, bidirectional=False, has_biases=True\), "
                                         r"got 7"):
        OPS.rnn_layers_forward(x, None, weights[:7], True, 2, False, None)
    with pytest.raises(ValueError, match="num_layers must be >= 1, got 0"):
        OPS.rnn_layers_forward(x, None, [], True, 0, False, None)
    with pytest.raises(ValueError, match="directions_op must be 0, 1 or 2, got 3"):
        OPS.rnn_layers_forward(x, None, weights, True, 2, False, None, directions_op=3)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got 1.5"):
        OPS.rnn_layers_forward(x, None, weights, True, 2, False, None, dropout=1.5)
    # A layer's own mistakes are its op's, with its messages, before anything runs.
    with pytest.raises(RuntimeError, match=r"weight_ih must have shape \[3, 5\], got \[3, 2\]"):
        OPS.rnn_layers_forward(torch.randn(3, 2, 5), None, weights, True, 2, False, None)


@pytest.mark.parametrize("batch_sizes", [[3, 2, 2, 1], [1], [4, 4, 4], [5, 3, 3, 0, 0]])
def test_a_packed_batch_goes_to_the_padded_batch_by_rows_found_on_the_host(batch_sizes):
    """rnn_fused::packed_to_padded: the padded batch nn.utils.rnn pads (zeros past each length), the
    lengths it counts (on the CPU), and positions equal to functional.valid_positions of them; the
    padded batch differentiable in the data (the gradient of each packed row is its padded row's)."""
    sizes = torch.tensor(batch_sizes)
    data = torch.randn(int(sizes.sum()), 3, dtype=torch.float64, requires_grad=True)
    padded, lengths, positions = OPS.packed_to_padded(data, sizes)
    if sizes[-1] > 0:  # (pad_packed_sequence refuses trailing empty steps)
        expected, expected_lengths = torch.nn.utils.rnn.pad_packed_sequence(
            torch.nn.utils.rnn.PackedSequence(data.detach(), sizes))
        assert torch.equal(padded.detach(), expected) and torch.equal(lengths, expected_lengths)
    assert lengths.device.type == "cpu" and lengths.tolist() == [int((sizes > b).sum()) for b in range(batch_sizes[0])]
    assert torch.equal(positions, functional.valid_positions(lengths, len(batch_sizes), "cpu"))
    cotangent = torch.randn_like(padded)
    grad, = torch.autograd.grad(padded, data, cotangent)
    assert torch.equal(grad, cotangent.reshape(-1, 3).index_select(0, positions))


def test_packed_to_padded_refuses_what_no_packed_sequence_holds():
    data = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"batch_sizes must be non-increasing and >= 0, got batch_sizes\[2\] = 3 "
                                         r"after 1"):
        OPS.packed_to_padded(data, torch.tensor([1, 1, 3]))
    with pytest.raises(ValueError, match="batch_sizes must be a non-empty 1-D int64 CPU tensor"):
        OPS.packed_to_padded(data, torch.tensor([3.0, 2.0]))
    with pytest.raises(ValueError, match="data has 5 rows, batch_sizes sum to 4"):
        OPS.packed_to_padded(data, torch.tensor([2, 2]))
    with pytest.raises(ValueError, match="data must be 2-D"):
        OPS.packed_to_padded(torch.randn(4), torch.tensor([2, 2]))
