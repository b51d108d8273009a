"""Training on a PackedSequence in the packed layout itself (functional.packed_training: per layer the
packed inference op forward and rnn_fused::rnn_packed_layer_backward, csrc/packed_training.cpp):
where rnn_fused.RNN takes it, that its outputs and gradients meet the tolerance rule against
torch.nn.RNN, that they are the padded route's (truncation, dropout, hx) within the float64 parity
bound, that gradcheck and gradgradcheck pass, and the backward op's errors."""

import contextlib

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnn_fused
from rnn_cases import (FORCED_LOOP_TEAM_IDS, FORCED_LOOP_TEAMS, PACKED_LAYOUT_CASES, RNNCase, case_id,
                       module_outputs_and_gradients)
from rnn_fused import RNN, functional, launch_plan
from rnn_fused.recording import fused_sq_norm
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance, compare_with_torch

OPS = torch.ops.rnn_fused
BOUND = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps

CASES = PACKED_LAYOUT_CASES + [
    # A bidirectional layer large enough for float32 products and its two loops at once.
    dict(packing="unsorted", bidirectional=True, with_hx=True, seq_len=30, batch=40, input_size=32, hidden_size=48),
]


def _op_calls(module, input, hx=None, **kwargs) -> dict:
    """Calls of the packed ops and of the padded route's layer ops in one forward and backward."""
    names = ("rnn_fused::rnn_packed_inference", "rnn_fused::rnn_packed_layer_backward",
             "rnn_fused::rnn_layer_forward", "rnn_fused::rnn_directions_forward", "rnn_fused::rnn_layers_forward")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        output, h_n = module(input, hx, **kwargs)
        (output.data.sum() + h_n.sum()).backward()
    return {name.split("::")[1]: sum(1 for e in profile.events() if e.name == name) for name in names}


@pytest.mark.parametrize("team", FORCED_LOOP_TEAMS, ids=FORCED_LOOP_TEAM_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_packed_training_meets_the_tolerance_rule(case, dtype, team, generator):
    rnn_case = RNNCase(**case)
    input, hx = rnn_case.inputs(generator)
    ours = RNN.from_torch(rnn_case.torch_module().to(dtype))
    calls = _op_calls(ours, input.to(dtype), None if hx is None else hx.to(dtype).requires_grad_())
    # The route is the one compared below: a layer at a time, no padded layer op.
    assert calls == {"rnn_packed_inference": rnn_case.num_layers, "rnn_packed_layer_backward": rnn_case.num_layers,
                     "rnn_layer_forward": 0, "rnn_directions_forward": 0, "rnn_layers_forward": 0}
    with (launch_plan.forced_cpu_loop_team(team[1], team[0]) if team else contextlib.nullcontext()):
        compare_with_torch(rnn_case.torch_module(), input, hx, dtype=dtype,
                           **({"ulps": FLOAT64_PARITY_ULPS} if dtype == torch.float64 else {}))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_packed_training_in_low_precision_meets_the_tolerance_rule(dtype):
    theirs = torch.nn.RNN(5, 8, 2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(7, 3, 5), torch.tensor([7, 3, 5]), enforce_sorted=False)
    assert _op_calls(RNN.from_torch(theirs).to(dtype), packed.to(dtype))["rnn_packed_layer_backward"] == 2
    compare_with_torch(theirs, packed, torch.randn(4, 3, 8), dtype=dtype)


@contextlib.contextmanager
def _padded_route(module):
    """A module's PackedSequence through the padded batch (RNN.packed_layout False)."""
    module.packed_layout = False
    try:
        yield
    finally:
        module.packed_layout = True


def _outputs_and_gradients(module, packed, hx, cotangent, **kwargs):
    leaves = [packed.data, *([] if hx is None else [hx]), *module.parameters()]
    output, h_n = module(packed, hx, **kwargs)
    grads = torch.autograd.grad((output.data * cotangent).sum() + h_n.sum(), leaves)
    return [output.data, h_n, *grads]


@pytest.mark.parametrize("truncation", [None, 3, rnn_fused.RandomTruncation(0.5, seed=11),
                                        rnn_fused.RandomTruncation(0.7)], ids=["full", "every-3", "random-seeded",
                                                                               "random-drawn"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
def test_packed_training_is_the_padded_routes(truncation, bidirectional):
    """Outputs and every gradient (data, hx, each weight) against the padded route's under the float64
    parity bound: the same loops, truncation draws (keyed by layer, direction and sample), dropout
    masks between layers and RandomTruncation seed (torch's generator ends in the same state)."""
    ours = RNN(4, 6, 3, dropout=0.3, bidirectional=bidirectional).double()
    lengths = torch.tensor([9, 9, 7, 4, 4, 1])
    packed = pack_padded_sequence(torch.randn(9, 6, 4, dtype=torch.float64), lengths)
    packed = PackedSequence(packed.data.requires_grad_(), packed.batch_sizes)
    hx = torch.randn(3 * (2 if bidirectional else 1), 6, 6, dtype=torch.float64, requires_grad=True)
    cotangent = torch.randn(packed.data.shape[0], 6 * (2 if bidirectional else 1), dtype=torch.float64)
    torch.manual_seed(3)
    with _padded_route(ours):
        assert _op_calls(ours, packed, hx, truncation=truncation)["rnn_packed_layer_backward"] == 0
    torch.manual_seed(3)
    assert _op_calls(ours, packed, hx, truncation=truncation)["rnn_packed_layer_backward"] == 3
    torch.manual_seed(3)
    with _padded_route(ours):
        expected = _outputs_and_gradients(ours, packed, hx, cotangent, truncation=truncation)
    expected_state = torch.get_rng_state()
    torch.manual_seed(3)
    actual = _outputs_and_gradients(ours, packed, hx, cotangent, truncation=truncation)
    assert torch.equal(torch.get_rng_state(), expected_state)
    for a, e in zip(actual, expected):
        assert (a - e).abs().max().item() <= BOUND * max(1.0, e.abs().max().item())
    if truncation is not None:  # the truncation changed the gradients: they are not full BPTT's
        torch.manual_seed(3)
        full = _outputs_and_gradients(ours, packed, hx, cotangent)
        assert (full[5] - actual[5]).abs().max().item() > 1e-6  # weight_ih_l0's gradient


def test_packed_training_with_only_some_gradients_and_only_h_n_used():
    """Frozen weights, an input that needs no gradient, an hx that does, and a loss of h_n alone (the
    output's gradient None: zeros)."""
    ours = RNN(3, 5, 2, bidirectional=True).double()
    ours.weight_ih_l0.requires_grad_(False)
    ours.bias_hh_l1_reverse.requires_grad_(False)
    packed = pack_padded_sequence(torch.randn(6, 4, 3, dtype=torch.float64), torch.tensor([6, 5, 5, 2]))
    hx = torch.randn(4, 4, 5, dtype=torch.float64, requires_grad=True)
    _, h_n = ours(packed, hx)
    actual = torch.autograd.grad(h_n.square().sum(), [hx, ours.weight_hh_l1, ours.bias_ih_l1_reverse])
    with _padded_route(ours):
        _, h_n = ours(packed, hx)
        expected = torch.autograd.grad(h_n.square().sum(), [hx, ours.weight_hh_l1, ours.bias_ih_l1_reverse])
    for a, e in zip(actual, expected):
        assert (a - e).abs().max().item() <= BOUND * max(1.0, e.abs().max().item())


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
def test_packed_training_gradcheck_and_gradgradcheck(bidirectional):
    """First derivatives against finite differences, and second ones (create_graph: the layer ops'
    double backward on the padded batch) likewise, of the data, hx and the weights."""
    ours = RNN(2, 3, 2, bidirectional=bidirectional).double()
    lengths = torch.tensor([4, 3, 1])
    data = pack_padded_sequence(torch.randn(4, 3, 2, dtype=torch.float64), lengths).data.requires_grad_()
    batch_sizes = torch.tensor([3, 2, 2, 1])
    hx = torch.randn(2 * (2 if bidirectional else 1), 3, 3, dtype=torch.float64, requires_grad=True)
    weights = list(ours.parameters())

    def run(data, hx, *flat):
        per = 4
        groups = [flat[i:i + per] for i in range(0, len(flat), per)]
        output, h_n = functional.packed_training(data, batch_sizes, hx, groups, 2, bidirectional)
        return output, h_n

    assert torch.autograd.gradcheck(run, (data, hx, *weights))
    assert torch.autograd.gradgradcheck(run, (data, hx, *weights))


def test_packed_training_route_and_padded_route_where_the_call_asks():
    ours = RNN(4, 6, 2)
    packed = pack_padded_sequence(torch.randn(5, 3, 4), torch.tensor([5, 4, 2]))
    assert _op_calls(ours, packed)["rnn_packed_layer_backward"] == 2
    with _padded_route(ours):
        assert _op_calls(ours, packed)["rnn_packed_layer_backward"] == 0
    with rnn_fused.record_gradients(ours):  # recorded in the packed layout too
        assert _op_calls(ours, packed)["rnn_packed_layer_backward"] == 2
    ours.backend = "emulated"
    assert _op_calls(ours, packed)["rnn_packed_layer_backward"] == 0


def _backward_args(**overrides):
    weights = [torch.randn(6, 4), torch.randn(6, 6), torch.randn(6), torch.randn(6)]
    args = dict(grad_output=torch.randn(6, 6), grad_h_n=None, output=torch.randn(6, 6), needs=[True] * 6 + [False] * 4,
                data=torch.randn(6, 4), batch_sizes=torch.tensor([3, 2, 1]), hx=None, weights=weights,
                has_biases=True, bidirectional=False)
    args.update(overrides)
    return args


@pytest.mark.parametrize("overrides,error,message", [
    (dict(batch_sizes=torch.tensor([2, 3, 1])), ValueError, r"batch_sizes must be non-increasing and >= 0, got "
                                                             r"batch_sizes\[1\] = 3 after 2"),
    (dict(bidirectional=True), ValueError, r"expected 8 weights \(num_layers=1, bidirectional=True, "
                                           r"has_biases=True\), got 4"),
    (dict(grad_output=torch.randn(6, 5)), RuntimeError, r"grad_output must be a Float tensor of shape \[6, 6\] on "
                                                        r"cpu, got Float \[6, 5\] on cpu"),
    (dict(output=torch.randn(6, 6).double()), RuntimeError, r"output must be a Float tensor of shape \[6, 6\]"),
    (dict(grad_h_n=torch.randn(3, 6)), RuntimeError, r"grad_h_n must be a Float tensor of shape \[1, 3, 6\]"),
    (dict(truncate_every=-1), ValueError, r"truncate_every must be >= 0 \(0 = full BPTT\), got -1"),
    (dict(keep_prob=0.0), ValueError, r"keep_prob must be in \(0, 1\], got 0"),
    (dict(backend="emulated"), ValueError, "backend 'emulated' runs padded batches only; the packed layout runs on "
                                           "the CPU backend"),
])
def test_packed_layer_backward_op_errors(overrides, error, message):
    with pytest.raises(error, match=message):
        OPS.rnn_packed_layer_backward(**_backward_args(**overrides))


def test_packed_layer_backward_op_with_steps_of_no_rows_and_an_empty_batch():
    """Trailing steps of no rows (batch_sizes may end in zeros) change no gradient; a batch of none
    has zero gradients of the weights."""
    args = _backward_args()
    expected = OPS.rnn_packed_layer_backward(**args)
    actual = OPS.rnn_packed_layer_backward(**{**args, "batch_sizes": torch.tensor([3, 2, 1, 0, 0])})
    assert all(torch.equal(a, e) for a, e in zip(actual, expected))
    empty = OPS.rnn_packed_layer_backward(**_backward_args(grad_output=torch.randn(0, 6), output=torch.randn(0, 6),
                                                           data=torch.randn(0, 4), batch_sizes=torch.tensor([0])))
    assert empty[0].shape == (0, 4) and all(torch.equal(g, torch.zeros_like(g)) for g in empty[2:6])


@pytest.mark.parametrize("case", [
    # steps, batch, input, hidden, layers, hx, lengths, nonlinearity, truncation, dtype
    (40, 3, 5, 16, 2, True, [40, 7, 1], "relu", 3, torch.float32),
    (33, 4, 6, 9, 1, True, [5, 33, 12, 1], "tanh", rnn_fused.RandomTruncation(0.7, seed=11), torch.float64),
    (12, 5, 3, 40, 1, False, [12, 12, 9, 9, 2], "tanh", None, torch.float32),
], ids=lambda c: "-".join(str(v) for v in c[:9]))
def test_packed_training_directions_at_once_agree_bitwise_with_the_directions_in_turn(case):
    """A bidirectional layer's two backward loops at once (each on a thread of torch's team) against
    one after the other, each loop on one thread (a loop on torch's team may round its step's
    products otherwise: tests/test_cpu_team.py): every output and gradient bit for bit."""
    steps, batch, input_size, hidden, layers, with_hx, lengths, nonlinearity, truncation, dtype = case
    torch.manual_seed(0)
    module = RNN(input_size, hidden, num_layers=layers, nonlinearity=nonlinearity, bidirectional=True,
                 truncation=truncation).to(dtype)
    x = torch.randn(steps, batch, input_size, dtype=dtype)
    hx = torch.randn(2 * layers, batch, hidden, dtype=dtype) if with_hx else None
    results = []
    for side_by_side in (False, True):
        module.side_by_side = side_by_side
        with launch_plan.forced_cpu_loop_team(1):
            assert _op_calls(module, pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False),
                             hx)["rnn_packed_layer_backward"] == layers
            # (copies: the next backward accumulates into the parameters' .grad)
            results.append([t.clone() for t in module_outputs_and_gradients(module, x, hx, torch.tensor(lengths))])
    for in_turn, at_once in zip(*results, strict=True):
        assert torch.equal(in_turn, at_once)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
def test_packed_training_records_the_padded_routes_norms(bidirectional):
    """record_gradients in the packed layout: the step norms (caller's sample order, zero past each
    length), the parameters' squared norms and the nonfinite flag are the padded route's within the
    float64 parity bound, clip_grad_norm_ reads them, and recording changes no value or gradient."""
    torch.manual_seed(5)
    ours = RNN(3, 7, 2, bidirectional=bidirectional, truncation=rnn_fused.RandomTruncation(0.8, seed=2)).double()
    x = torch.randn(8, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 8, 5, 5])
    hx = torch.randn(2 * (2 if bidirectional else 1), 4, 7, dtype=torch.float64)
    seen = {}
    for route in ("packed", "padded"):
        ours.packed_layout = route == "packed"
        with rnn_fused.record_gradients(ours) as recorder:
            results = module_outputs_and_gradients(ours, x, hx, lengths)
        seen[route] = (results, recorder.step_norms, recorder.parameter_sq_norms, recorder.nonfinite)
    ours.packed_layout = True
    (packed, packed_steps, packed_sq, packed_nonfinite) = seen["packed"]
    (padded, padded_steps, padded_sq, padded_nonfinite) = seen["padded"]
    assert packed_steps.shape == padded_steps.shape == (2, 2 if bidirectional else 1, 8, 4)
    assert (packed_steps - padded_steps).abs().max().item() <= BOUND * padded_steps.abs().max().item()
    assert torch.equal(packed_steps[..., 0][:, :, 3:], torch.zeros_like(packed_steps[..., 0][:, :, 3:]))
    assert packed_sq.keys() == padded_sq.keys()
    for name in padded_sq:
        assert abs(packed_sq[name].item() - padded_sq[name].item()) <= BOUND * padded_sq[name].item(), name
    assert packed_nonfinite is False and padded_nonfinite is False
    # Recording changes nothing: the packed layout without a recorder gives the same bits.
    for recorded, plain in zip(packed, module_outputs_and_gradients(ours, x, hx, lengths), strict=True):
        assert torch.equal(recorded, plain)
    # clip_grad_norm_ reads the recorded norms (each gradient's is known); its total is torch's.
    with rnn_fused.record_gradients(ours):
        module_outputs_and_gradients(ours, x, hx, lengths)
    assert all(fused_sq_norm(p) is not None for p in ours.parameters())
    expected = torch.nn.utils.get_total_norm([p.grad for p in ours.parameters()])
    assert abs(rnn_fused.clip_grad_norm_(ours.parameters(), 1e9).item() - expected.item()) <= 1e-12 * expected.item()


def test_packed_training_refuses_a_graph_of_the_backward_while_recording():
    ours = RNN(3, 4).double()
    packed = pack_padded_sequence(torch.randn(5, 2, 3, dtype=torch.float64), torch.tensor([5, 3]))
    with rnn_fused.record_gradients(ours):
        output, _ = ours(packed)
        with pytest.raises(RuntimeError, match="rnn_fused.record_gradients: gradient norms are reduced by the fused "
                                               "backward, which has no graph of its own"):
            torch.autograd.grad(output.data.sum(), list(ours.parameters()), create_graph=True)


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_packed_layout_under_autocast_is_the_padded_routes(autocast_dtype):
    """Under autocast a PackedSequence runs in the packed layout too, its arguments cast as the
    layer op's autocast kernel casts them (functional._packed_autocast) and its ops below autocast.
    Both routes' forwards then compute in float32 from the same casts and round once to the
    autocast dtype: outputs and h_n agree within one unit in its last place. Their gradients round
    at other places (the padded route sums a layer input's gradient over the directions in float32,
    the packed op returns the sum in the autocast dtype): the rule against a float64 run of the same
    inputs, the padded route's errors the baseline."""
    torch.manual_seed(0)
    ours = RNN(16, 32, 2, bidirectional=True)
    lengths = torch.tensor([9, 8, 8, 6, 3, 1])
    padded = pack_padded_sequence(torch.randn(9, 6, 16), lengths)
    hx0 = torch.randn(4, 6, 32)

    def run(module, dtype, autocast):
        data = padded.data.to(dtype).requires_grad_()
        hx = hx0.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            output, h_n = module(PackedSequence(data, padded.batch_sizes), hx)
        leaves = [data, hx, *module.parameters()]
        grads = torch.autograd.grad(output.data.double().square().sum() + h_n.double().sum(), leaves)
        return [output.data, h_n, *grads]

    def layer_backwards():
        with torch.autocast("cpu", dtype=autocast_dtype):
            return _op_calls(ours, PackedSequence(padded.data, padded.batch_sizes), hx0)["rnn_packed_layer_backward"]

    reference = run(RNN.from_torch(ours.to_torch()).double(), torch.float64, autocast=False)
    with _padded_route(ours):
        assert layer_backwards() == 0
        expected = run(ours, torch.float32, autocast=True)
    assert layer_backwards() == 2
    actual = run(ours, torch.float32, autocast=True)
    eps = torch.finfo(autocast_dtype).eps
    for a, e in zip(actual[:2], expected[:2]):
        assert a.dtype == e.dtype == autocast_dtype
        a, e = a.double(), e.double()
        assert ((a - e).abs() <= eps * torch.maximum(a.abs(), e.abs())).all()
    names = ["output", "h_n", "grad_data", "grad_hx", *(f"grad_{n}" for n, _ in ours.named_parameters())]
    for name, r, a, e in zip(names, reference, actual, expected):
        assert a.dtype == e.dtype
        assert_within_tolerance(r, e.to(autocast_dtype), a.to(autocast_dtype), name=name)
