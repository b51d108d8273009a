"""A bidirectional layer with its two directions at once in one op pair (rnn_fused::rnn_directions_forward
/ _backward, functional._LayerDirections): on the CPU kernels each time loop on a thread of torch's
OpenMP team, the same values as the directions one after the other, bit for bit; on the GPU kernels
(here emulated) each direction planned for half the SMs, the reverse one's launches on a side stream
on CUDA, the same values as the two layer ops planned so, bit for bit."""

from __future__ import annotations

import os

import pytest
import torch

import rnn_fused
from rnn_cases import module_outputs_and_gradients
from rnn_fused import functional, simt
from rnn_fused.launch_plan import cpu_loop_team, forced_cpu_loop_team
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance

OPS = torch.ops.rnn_fused


def _run(module: rnn_fused.RNN, x: torch.Tensor, hx, lengths, side_by_side: bool):
    """Outputs and every gradient (input, hx, parameters) of one forward and backward. Each time loop
    on one thread: the directions in turn would otherwise run theirs on torch's team, whose
    slices of a step BLAS may round differently (tests/test_cpu_team.py)."""
    module.side_by_side = side_by_side
    with forced_cpu_loop_team(1):
        return module_outputs_and_gradients(module, x, hx, lengths)


def _as_module(stock: torch.nn.RNN, dtype: torch.dtype) -> torch.nn.RNN:
    """A copy of stock nn.RNN in dtype that _run can drive (it sets side_by_side on it)."""
    import copy
    module = copy.deepcopy(stock).to(dtype)
    module.side_by_side = None
    return module


def _names(with_hx: bool, module: torch.nn.Module) -> list[str]:
    return ["output", "h_n", "grad input"] + (["grad hx"] if with_hx else []) + \
        [f"grad {n}" for n, _ in module.named_parameters()]


CASES = [
    # steps, batch, input, hidden, layers, bias, hx, lengths, nonlinearity, truncation, dtype
    (40, 3, 5, 16, 1, True, False, None, "tanh", None, torch.float32),
    (40, 3, 5, 16, 2, False, True, [40, 7, 1], "relu", 3, torch.float32),
    (33, 4, 6, 9, 1, True, True, [5, 33, 12, 1], "tanh", rnn_fused.RandomTruncation(0.7, seed=11), torch.float64),
    (25, 1, 2, 24, 1, True, False, None, "tanh", None, torch.float32),  # one row per step: vector_matrix
    (6, 2, 3, 1024, 1, True, True, None, "tanh", None, torch.float32),  # a step of 2^21 multiply-adds
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c[:9]))
def test_directions_on_two_threads_agree_bitwise_with_the_directions_in_turn(case):
    steps, batch, input_size, hidden, layers, bias, with_hx, lengths, nonlinearity, truncation, dtype = case
    torch.manual_seed(0)
    module = rnn_fused.RNN(input_size, hidden, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                           bidirectional=True, truncation=truncation).to(dtype)
    module.packed_layout = False  # a packed batch through the padded one, whose layers the op pair runs
    x = torch.randn(steps, batch, input_size, dtype=dtype)
    hx = torch.randn(2 * layers, batch, hidden, dtype=dtype) if with_hx else None
    lengths = None if lengths is None else torch.tensor(lengths)
    in_turn = _run(module, x, hx, lengths, side_by_side=False)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        at_once = _run(module, x, hx, lengths, side_by_side=True)
    names = [e.name for e in profile.events()]
    assert names.count("rnn_fused::rnn_directions_forward") == layers
    assert names.count("rnn_fused::rnn_directions_backward") == layers
    for a, b in zip(in_turn, at_once):
        assert torch.equal(a, b)
    # And against torch.nn.RNN under the tolerance rule (its float64 run the reference) where the
    # gradients are full BPTT's.
    if truncation is None:
        stock = torch.nn.RNN(input_size, hidden, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                             bidirectional=True).to(dtype)
        stock.load_state_dict(module.state_dict())
        reference = _run(_as_module(stock, torch.float64), x.double(), None if hx is None else hx.double(), lengths,
                         side_by_side=False)
        stock_values = _run(_as_module(stock, dtype), x, hx, lengths, side_by_side=False)
        for name, r, s, o in zip(_names(with_hx, module), reference, stock_values, at_once):
            assert_within_tolerance(r, s, o, name=name)


@pytest.mark.parametrize("lengths", [None, [30, 4, 17]])
def test_recorded_norms_of_the_directions_on_two_threads_are_those_in_turn(lengths):
    """record_gradients on a bidirectional CPU layer with its loops at once: the step norms, the
    parameters' squared norms and the nonfinite flag equal the directions' in turn bitwise, and
    clip_grad_norm_ reads the recorded norms (its result equals torch's)."""
    torch.manual_seed(2)
    module = rnn_fused.RNN(5, 16, num_layers=2, bidirectional=True, truncation=rnn_fused.RandomTruncation(0.8, seed=3))
    x = torch.randn(30, 3, 5)
    seen = []
    for side_by_side in (False, True):
        module.side_by_side = side_by_side
        module.zero_grad(set_to_none=True)
        with rnn_fused.record_gradients(module) as recorder:
            if lengths is None:
                out, h_n = module(x)
            else:
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
                out, h_n = module(packed)
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
            ((out * out).sum() + h_n.sum()).backward()
        grads = [p.grad.clone() for p in module.parameters()]
        # The total norm under the tolerance rule: exact (float64) reference, torch's own
        # clip_grad_norm_ on copies of the gradients as the stock value.
        exact = torch.linalg.vector_norm(torch.cat([g.double().flatten() for g in grads]))
        copies = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for copy, g in zip(copies, grads):
            copy.grad = g.clone()
        stock = torch.nn.utils.clip_grad_norm_(copies, 1e9)
        assert_within_tolerance(exact, stock, rnn_fused.clip_grad_norm_(module.parameters(), 1e9), name="total norm")
        seen.append((recorder.step_norms, recorder.parameter_sq_norms, recorder.nonfinite, grads))
    (norms_a, sq_a, flag_a, grads_a), (norms_b, sq_b, flag_b, grads_b) = seen
    assert torch.equal(norms_a, norms_b) and flag_a == flag_b is False
    assert sq_a.keys() == sq_b.keys() and all(torch.equal(sq_a[k], sq_b[k]) for k in sq_a)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_double_backward_through_the_directions_on_two_threads():
    """gradcheck and gradgradcheck (full BPTT: a truncated gradient is not the Jacobian's); with
    randomized truncation the gradients with a graph equal the directions' in turn bitwise, and a
    second-order gradient within float64 rounding."""
    torch.manual_seed(1)
    module = rnn_fused.RNN(3, 4, bidirectional=True).double()
    module.side_by_side = True
    names = [n for n, _ in module.named_parameters()]
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)

    def f(x, hx, *weights):
        return torch.func.functional_call(module, dict(zip(names, weights)), (x, hx))

    params = [p.detach().requires_grad_() for p in module.parameters()]
    assert torch.autograd.gradcheck(f, (x, hx, *params))
    assert torch.autograd.gradgradcheck(f, (x, hx, *params))

    module.truncation = rnn_fused.RandomTruncation(0.6, seed=5)
    results = []
    for side_by_side in (False, True):
        module.side_by_side = side_by_side
        out, h_n = f(x, hx, *params)
        grads = torch.autograd.grad((out * out).sum() + h_n.sum(), [x, hx, *params], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in grads), [x, *params])
        results.append(list(grads) + list(second))
    first_order = 2 + len(params)
    for a, b in zip(results[0][:first_order], results[1][:first_order]):
        assert torch.equal(a, b)
    # The second-order graph adds the directions' terms in another order: the project's float64
    # rule against the directions in turn as reference (tools/testing.py FLOAT64_PARITY_ULPS).
    for a, b in zip(results[0][first_order:], results[1][first_order:]):
        assert_within_tolerance(a, a, b, name="second-order gradient", ulps=FLOAT64_PARITY_ULPS)


def test_the_planner_of_the_cpu_directions():
    """None runs the time loops on two threads from 2^18 multiply-adds of a direction's loop on and
    where torch has 2 threads or more, recorded norms included; False never."""
    x_long, x_short = torch.randn(100, 8, 4), torch.randn(3, 1, 4)
    module = rnn_fused.RNN(4, 64, bidirectional=True)

    def ops_run(x, **context):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            module(x)
        # (the ops, not the host layer's profiler scopes, such as rnn_fused::input_projection, nor
        # rnn_layers_forward, which calls the layer's ops)
        return {e.name for e in profile.events()
                if e.name.startswith("rnn_fused::") and hasattr(torch.ops.rnn_fused, e.name.split("::", 1)[1])
                and e.name != "rnn_fused::rnn_layers_forward"}

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert "rnn_fused::rnn_directions_forward" in ops_run(x_long)  # 100 x 8 x 64^2 multiply-adds
        assert ops_run(x_short) == {"rnn_fused::rnn_layer_forward"}
        module.side_by_side = False
        assert ops_run(x_long) == {"rnn_fused::rnn_layer_forward"}
        module.side_by_side = None
        with rnn_fused.record_gradients(module):
            assert "rnn_fused::rnn_directions_forward" in ops_run(x_long)
        torch.set_num_threads(1)
        assert ops_run(x_long) == {"rnn_fused::rnn_layer_forward"}
    finally:
        torch.set_num_threads(threads)
    assert functional._cpu_directions_on_two_threads(x_long, module.weight_hh_l0) == (threads >= 2)
    # With more threads than two, a loop that has a team of its own larger than two runs in turn.
    try:
        torch.set_num_threads(8)
        wide, w_wide = torch.randn(100, 64, 3), torch.randn(256, 256)
        assert cpu_loop_team(100, 64, 256) == (8, "rows")
        assert not functional._cpu_directions_on_two_threads(wide, w_wide)
        assert functional._cpu_directions_on_two_threads(x_long, module.weight_hh_l0)  # a team of 1
        with forced_cpu_loop_team(2):
            assert functional._cpu_directions_on_two_threads(wide, w_wide)
    finally:
        torch.set_num_threads(threads)


def test_directions_ops_refuse_what_they_cannot_run_before_anything_runs():
    x, w_ih, w_hh = torch.randn(4, 2, 3), torch.randn(5, 3), torch.randn(5, 5)
    weights = [w_ih, w_hh, w_ih, w_hh]
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9 is outside \[0, 4\]"):
        OPS.rnn_directions_forward(x, None, weights, False, torch.tensor([4, 9]))
    with pytest.raises(ValueError, match=r"expected 4 weights \(per direction weight_ih, weight_hh\), got 3"):
        OPS.rnn_directions_forward(x, None, weights[:3], False, None)
    with pytest.raises(ValueError, match=r"hx must be None or \[2, B, H\]"):
        OPS.rnn_directions_forward(x, torch.zeros(2, 5), weights, False, None)
    with pytest.raises(ValueError, match="path='block' chooses among the GPU kernels' paths"):
        OPS.rnn_directions_forward(x, None, weights, False, None, path="block")
    with pytest.raises(ValueError, match="side_by_side must be >= 1"):
        OPS.rnn_directions_forward(x, None, weights, False, None, backend="emulated", side_by_side=0)
    with pytest.raises(ValueError, match="path must be 'block', 'cluster', 'grid', 'stepwise' or None, got 'warp'"):
        OPS.rnn_directions_backward(torch.zeros(4, 2, 10), None, torch.zeros(4, 2, 10), [True] * 9, x, None, weights,
                                    False, None, backend="emulated", path="warp")
    out, h_n = OPS.rnn_directions_forward(x, None, weights, False, None)
    with pytest.raises(RuntimeError, match=r"grad_output must be a Float tensor of shape \[4, 2, 10\]"):
        OPS.rnn_directions_backward(torch.zeros(4, 2, 5), torch.zeros_like(h_n), out, [True] * 9, x, None, weights,
                                    False, None)


def test_directions_on_two_threads_leave_no_thread_behind():
    """The second time loop runs on the second thread of the calling thread's OpenMP team, not on a
    thread of its own (one that keeps an OpenMP team makes libgomp throttle every team's
    spin-waits: nn.RNN's CPU forward measured 2x slower after it): the process has as many threads
    after as before, and torch's thread count is unchanged."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc/self/task on this host to count the process's threads")
    module = rnn_fused.RNN(4, 64, bidirectional=True)
    module.side_by_side = True
    x = torch.randn(50, 4, 4, requires_grad=True)
    torch.mm(torch.randn(256, 256), torch.randn(256, 256))  # the calling thread's team exists
    before = (len(os.listdir("/proc/self/task")), torch.get_num_threads())
    for _ in range(3):
        out, h_n = module(x)
        (out.sum() + h_n.sum()).backward()
    assert (len(os.listdir("/proc/self/task")), torch.get_num_threads()) == before


def test_no_graph_of_the_backward_while_recording_the_directions_on_two_threads():
    module = rnn_fused.RNN(3, 8, bidirectional=True)
    module.side_by_side = True
    x = torch.randn(5, 2, 3, requires_grad=True)
    with rnn_fused.record_gradients(module):
        out, _ = module(x)
    with pytest.raises(RuntimeError, match="record without create_graph=True"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("used", ["output", "h_n"])
def test_an_unused_output_of_the_directions_on_two_threads(used):
    """Only the output, or only h_n, reaches the loss: the Function leaves the other's gradient
    unmaterialised (an absent h_n gradient goes to the op as None, read as zero by the time loops;
    an absent output gradient becomes zeros), and the gradients are bitwise those of the
    directions in turn. At the op, grad_h_n None gives bitwise the results of grad_h_n = zeros
    (an empty sample, hx, norms recorded)."""
    torch.manual_seed(0)
    module = rnn_fused.RNN(5, 16, bidirectional=True)
    x, hx = torch.randn(12, 3, 5), torch.randn(2, 3, 16)
    cotangent = torch.randn(12, 3, 32) if used == "output" else torch.randn(2, 3, 16)
    runs = []
    for side_by_side in (False, True):
        module.side_by_side = side_by_side
        leaves = [x.clone().requires_grad_(), hx.clone().requires_grad_()]
        with forced_cpu_loop_team(1), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
            output, h_n = module(*leaves)
            loss = ((output if used == "output" else h_n) * cotangent).sum()
            runs.append(torch.autograd.grad(loss, leaves + list(module.parameters())))
        assert [e.name for e in p.events()].count("rnn_fused::rnn_directions_backward") == side_by_side
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    weights = [w.detach() for w in module.parameters()]
    lengths = torch.tensor([12, 0, 5])
    output, h_n = OPS.rnn_directions_forward(x, hx, weights, True, lengths)
    grad_output = torch.randn_like(output)
    absent, zeros = (OPS.rnn_directions_backward(grad_output, grad_h_n, output, [True] * 9, x, hx, weights, True,
                                                 lengths, record_norms=True)
                     for grad_h_n in (None, torch.zeros_like(h_n)))
    for a, b in zip(absent, zeros, strict=True):
        assert torch.equal(a, b)


# steps, batch, input, hidden, bias, hx, lengths, nonlinearity, truncation, path: the GPU kernels'
# directions at once, emulated (the planner's path, and a forced one).
EMULATED_CASES = [
    (6, 3, 4, 9, True, True, [6, 2, 0], "tanh", 2, None),
    (5, 2, 3, 33, False, False, None, "relu", rnn_fused.RandomTruncation(0.7, seed=3), "cluster"),
]


@pytest.mark.parametrize("case", EMULATED_CASES, ids=lambda c: "-".join(str(v) for v in c[:8]))
def test_directions_at_once_on_the_gpu_kernels_are_their_layer_ops_planned_for_half_the_sms(case):
    """side_by_side=True on the GPU kernels (emulated: no streams, the side stream's work runs
    second): one directions op pair for the layer, whose output, h_n and every gradient are
    bitwise those of the two layer ops planned for half the SMs each (rnn_layer's side_by_side=2)
    and joined as rnn() joins them."""
    steps, batch, input_size, hidden, bias, with_hx, lengths, nonlinearity, truncation, path = case
    torch.manual_seed(7)
    x = torch.randn(steps, batch, input_size, requires_grad=True)
    hx = torch.randn(2, batch, hidden, requires_grad=True) if with_hx else None
    shapes = [(hidden, input_size), (hidden, hidden)] + ([(hidden,), (hidden,)] if bias else [])
    weights = [tuple((torch.randn(*shape) * 0.3).requires_grad_() for shape in shapes) for _ in range(2)]
    lengths = None if lengths is None else torch.tensor(lengths)
    args = functional.resolve_truncation(truncation)
    leaves = [x, *([hx] if with_hx else []), *(w for group in weights for w in group)]
    cotangents = (torch.randn(steps, batch, 2 * hidden), torch.randn(2, batch, hidden))

    def gradients(out, h_n):
        return [out, h_n, *torch.autograd.grad((out, h_n), leaves, cotangents)]

    with simt.emulated_device():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            at_once = gradients(*functional.rnn(x, hx, weights, 1, True, nonlinearity, lengths=lengths,
                                                backend="emulated", path=path, truncation=truncation, side_by_side=True))
        names = [e.name for e in profile.events()]
        assert names.count("rnn_fused::rnn_directions_forward") == 1
        assert names.count("rnn_fused::rnn_directions_backward") == 1
        assert "rnn_fused::rnn_layer_forward" not in names
        results = [functional.rnn_layer(x, None if hx is None else hx[d], *weights[d], *(() if bias else (None, None)),
                                        lengths, nonlinearity, reverse=d == 1, backend="emulated", path=path,
                                        truncation=args, side_by_side=2) for d in range(2)]
        in_turn = gradients(torch.cat([out for out, _ in results], dim=2), torch.stack([h for _, h in results]))
    for index, (a, b) in enumerate(zip(at_once, in_turn, strict=True)):
        assert torch.equal(a, b), index
