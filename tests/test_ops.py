"""The single-layer ops: gradients against the step-loop oracle, opcheck, validation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import rnn_fused
from rnn_cases import layer_args
from rnn_fused import _ops, launch_plan, simt
from rnn_fused.reference import reference_layer
from rnn_fused.truncation import edge_scales
from rnn_fused.tools.testing import DEFAULT_ULPS, FLOAT64_PARITY_ULPS, assert_within_tolerance

OPS = torch.ops.rnn_fused


LAYER_CASES = [
    # steps, batch, input, hidden, nonlinearity, reverse, bias, hx, lengths
    (1, 1, 1, 1, "tanh", False, True, True, None),
    (5, 3, 2, 4, "tanh", False, True, True, [5, 3, 1]),
    (5, 3, 2, 4, "tanh", True, True, True, [5, 3, 1]),
    (6, 4, 3, 5, "relu", False, False, False, None),
    (6, 4, 3, 5, "relu", True, True, False, [2, 6, 0, 4]),   # unsorted, with an empty sample
    (7, 2, 3, 3, "tanh", True, False, True, None),
]


def _ids(case):
    return "-".join(str(v) for v in case).replace(" ", "")


@pytest.mark.parametrize("case", LAYER_CASES, ids=_ids)
def test_gradcheck_and_gradgradcheck(case):
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    args = layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx, requires_grad=True)
    lengths = None if lengths is None else torch.tensor(lengths)
    present = [a for a in args if a is not None]

    def layer(*tensors):
        it = iter(tensors)
        full = [next(it) if a is not None else None for a in args]
        return rnn_fused.rnn_layer(*full, lengths, nonlinearity, reverse)

    assert torch.autograd.gradcheck(layer, present)
    assert torch.autograd.gradgradcheck(layer, present)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("nonlinearity,reverse,varlen",
                         list(itertools.product(["tanh", "relu"], [False, True], [False, True])))
def test_layer_matches_step_loop(dtype, nonlinearity, reverse, varlen, generator):
    """Fused op vs reference.py's step loop; float32 under the tolerance rule against float64."""
    steps, batch, input_size, hidden = 17, 5, 6, 9
    args64 = layer_args(steps, batch, input_size, hidden, generator=generator, requires_grad=True)
    lengths = torch.tensor([17, 1, 9, 17, 4]) if varlen else None
    cot = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=generator),
           torch.randn(batch, hidden, dtype=torch.float64, generator=generator)]

    def run(fn, cast):
        leaves = [a.detach().to(cast).requires_grad_() for a in args64]
        out, h_n = fn(*leaves, lengths, nonlinearity, reverse)
        grads = torch.autograd.grad((out, h_n), leaves, [c.to(cast) for c in cot])
        return [out, h_n, *grads]

    reference = run(reference_layer, torch.float64)
    stock = run(reference_layer, dtype)
    ours = run(rnn_fused.rnn_layer, dtype)
    names = ["output", "h_n", "grad_input", "grad_hx", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for name, r, s, o in zip(names, reference, stock, ours):
        assert o.dtype == dtype
        assert_within_tolerance(r, s, o, name=name, ulps=64 if dtype == torch.float64 else 8)
    if varlen:
        # Steps past a sample's length produce zero output, exactly.
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(ours[0][n:, b] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_accumulates_in_float32(dtype, generator):
    """float16/bfloat16 run in float32 internally and round once: closer to the float64
    reference than stock ops evaluated in the reduced dtype step by step."""
    args64 = layer_args(40, 4, 8, 16, generator=generator)
    reference, _ = reference_layer(*args64)
    stock, _ = reference_layer(*[a.to(dtype) for a in args64])
    ours, _ = rnn_fused.rnn_layer(*[a.to(dtype) for a in args64])
    assert ours.dtype == dtype
    assert_within_tolerance(reference, stock, ours, name="output")


def test_backward_output_mask_skips_gradients():
    args = layer_args(4, 2, 3, 5)
    x, hx, w_ih, w_hh, b_ih, b_hh = args
    inputs = _ops.LayerInputs(x, hx, w_ih, w_hh, b_ih, b_hh, None)
    options = _ops.LayerOptions.make("tanh", False)
    out, h_n = _ops.layer_forward(inputs, options)
    full = _ops.layer_backward(torch.ones_like(out), torch.ones_like(h_n), out, [True] * 5, False, inputs, options)
    part = _ops.layer_backward(torch.ones_like(out), torch.ones_like(h_n), out, [False, False, True, True, True],
                               False, inputs, options)
    assert part[0].numel() == 0 and part[1].numel() == 0
    for a, b in zip(full[2:], part[2:]):
        assert torch.equal(a, b)


def test_deterministic_bitwise():
    args = layer_args(30, 6, 7, 33, dtype=torch.float32, requires_grad=True)
    lengths = torch.tensor([30, 29, 12, 12, 5, 1])

    def once():
        leaves = [a.detach().clone().requires_grad_() for a in args]
        out, h_n = rnn_fused.rnn_layer(*leaves, lengths, "tanh", True)
        grads = torch.autograd.grad((out.sum() + h_n.square().sum()), leaves)
        return [out, h_n, *grads]

    first, second = once(), once()
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "emulated"])
def test_cpp_autograd_and_recording_function_agree_bitwise(backend):
    """The op's autograd is C++ (csrc/layer_autograd.cpp); recording gradient norms goes
    through a Python autograd.Function instead. Both must give the same output, h_n and
    gradients, bit for bit, with truncation and lengths; the recording route hands its sink
    the norms of the gradients it returns."""
    args = layer_args(9, 4, 3, 10, dtype=torch.float32, requires_grad=True)
    lengths = torch.tensor([9, 3, 0, 7])
    truncation = rnn_fused.RandomTruncation(0.7, seed=4)
    received = []

    def run(sink):
        leaves = [a.detach().clone().requires_grad_() for a in args]
        out, h_n = rnn_fused.rnn_layer(*leaves, lengths, "tanh", False, backend=backend, truncation=truncation,
                                       sink=sink)
        node = out.grad_fn.name()
        return node, [out, h_n, *torch.autograd.grad(out.sum() + h_n.square().sum(), leaves)]

    def sink(step_norms, grad_sq_norms, nonfinite, grads):
        received.append((grad_sq_norms, grads))

    with simt.emulated_device(sm_count=2):
        cpp_node, cpp = run(None)
        recording_node, recording = run(sink)
    assert cpp_node == "torch::autograd::CppNode<rnn_fused::FusedRnnLayer>"
    assert recording_node == "_RecordingLayerBackward"
    for a, b in zip(cpp, recording, strict=True):
        assert torch.equal(a, b)
    (grad_sq_norms, grads), = received
    for index, grad in enumerate(grads[:5]):
        torch.testing.assert_close(grad_sq_norms[index], grad.double().square().sum())


def test_op_without_grad_records_no_graph_node():
    """The autograd kernel adds a node only where grad mode is on and an input requires grad."""
    args = layer_args(3, 2, 2, 4, requires_grad=True)
    with torch.no_grad():
        out, h_n = rnn_fused.rnn_layer(*args)
    assert out.grad_fn is None and not out.requires_grad
    out, h_n = rnn_fused.rnn_layer(*(a.detach() for a in args))
    assert out.grad_fn is None and not h_n.requires_grad
    out, h_n = rnn_fused.rnn_layer(args[0].detach(), args[1].detach(), args[2], *(a.detach() for a in args[3:]))
    assert out.requires_grad and h_n.requires_grad
    grad_w_ih, = torch.autograd.grad(out.sum() + h_n.sum(), args[2])
    assert grad_w_ih.shape == args[2].shape


def test_empty_batch_and_single_step():
    args = layer_args(3, 0, 2, 4, requires_grad=True)
    out, h_n = rnn_fused.rnn_layer(*args)
    assert out.shape == (3, 0, 4) and h_n.shape == (0, 4)
    (out.sum() + h_n.sum()).backward()
    assert args[2].grad.abs().sum() == 0


def _cpu_tanh(values):
    """The CPU backend's tanh of each value: one step of a layer whose input weight is 1 and whose
    state enters through a zero W_hh (z = x exactly)."""
    x = values.reshape(1, -1, 1)
    ones, zeros = torch.ones(1, 1, dtype=values.dtype), torch.zeros(1, 1, dtype=values.dtype)
    out, _ = rnn_fused.rnn_layer(x, None, ones, zeros, None, None, backend="cpu")
    return out.flatten()


def _ulps_from(exact, result):
    """|result - exact| in units of the last place of `result`'s dtype at |exact| (float64 exact)."""
    rounded = exact.to(result.dtype).abs()
    spacing = torch.nextafter(rounded, torch.tensor(math.inf, dtype=result.dtype)) - rounded
    return (result.double() - exact).abs() / spacing.double()


def test_cpu_tanh_rounds_as_well_as_torch_tanh():
    # Results summed from many cancelling terms (an input gradient of one feature, a hidden size
    # of 1) carry each step's tanh error far beyond its ulps, so the CPU backend's tanh must
    # round as torch.tanh does: correctly, but within 2^-35 of a tie (it is evaluated in double).
    # The float-evaluated polynomial it replaced was off by up to 2.2 ulps (0.38 on average).
    generator = torch.Generator().manual_seed(0)
    magnitudes = 10.0 ** (torch.rand(1 << 16, generator=generator, dtype=torch.float64) * 9 - 7)  # 1e-7 .. 100
    signs = torch.randint(0, 2, magnitudes.shape, generator=generator) * 2 - 1
    edges = torch.tensor([0.0, -0.0, 0.5493061443340548, 9.0, 10.0, 20.0, 1e-30, math.inf, -math.inf],
                         dtype=torch.float64)
    x = torch.cat([magnitudes * signs, edges]).float()
    ulps = _ulps_from(torch.tanh(x.double()), _cpu_tanh(x))
    assert ulps.max().item() <= 0.5 + 2.0**-8
    assert ulps.mean().item() <= _ulps_from(torch.tanh(x.double()), torch.tanh(x)).mean().item() + 0.01
    nan = _cpu_tanh(torch.tensor([math.nan]))
    assert nan.isnan().all()
    # float64: the same evaluation with more terms and a second formula past tanh = 1/2.
    x64 = magnitudes * signs
    assert _ulps_from(torch.tanh(x64), _cpu_tanh(x64)).max().item() <= 2.0


def _opcheck_samples():
    samples = []
    for reverse, lengths in [(False, None), (True, torch.tensor([4, 2, 3]))]:
        args = layer_args(4, 3, 2, 5, dtype=torch.float32, requires_grad=True)
        samples.append((*args, lengths, "tanh", reverse))
    args = layer_args(3, 2, 2, 3, dtype=torch.float32, bias=False, hx=False, requires_grad=True)
    samples.append((*args, None, "relu", False))
    return samples


@pytest.mark.parametrize("sample", range(3))
def test_opcheck_forward(sample):
    torch.library.opcheck(OPS.rnn_layer_forward.default, _opcheck_samples()[sample])


@pytest.mark.parametrize("sample", range(3))
def test_opcheck_backward(sample):
    x, hx, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, reverse = _opcheck_samples()[sample]
    with torch.no_grad():
        out, h_n = OPS.rnn_layer_forward(x, hx, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, reverse)
    forward_args = [None if a is None or not isinstance(a, torch.Tensor) else a.detach()
                    for a in (x, hx, w_ih, w_hh, b_ih, b_hh, lengths)]
    args = (torch.randn_like(out), torch.randn_like(h_n), out, [True, hx is not None, True, True, True], False,
            *forward_args, nonlinearity, reverse)
    torch.library.opcheck(OPS.rnn_layer_backward.default, args)


BAD_ARGUMENTS = [
    ("input 2-D", lambda a: a.update(input=a["input"][0]), RuntimeError, "input must be 3-D"),
    ("weight_hh shape", lambda a: a.update(weight_hh=a["weight_hh"][:, :2]), RuntimeError,
     r"weight_hh must have shape \[4, 4\]"),
    ("weight_ih shape", lambda a: a.update(weight_ih=a["weight_ih"][:, :1]), RuntimeError,
     r"weight_ih must have shape \[4, 3\]"),
    ("hx shape", lambda a: a.update(hx=a["hx"][:1]), RuntimeError, r"hx must have shape \[2, 4\]"),
    ("hx dtype", lambda a: a.update(hx=a["hx"].double()), RuntimeError, "hx has dtype Double"),
    ("one bias", lambda a: a.update(bias_hh=None), RuntimeError, "both be given or both be None"),
    ("lengths dtype", lambda a: a.update(lengths=torch.tensor([1.0, 2.0])), RuntimeError,
     "lengths must be int64"),
    ("lengths value", lambda a: a.update(lengths=torch.tensor([6, 1])), ValueError,
     r"lengths\[0\] = 6 is outside \[0, 5\]"),
    ("negative length", lambda a: a.update(lengths=torch.tensor([2, -1])), ValueError,
     r"lengths\[1\] = -1 is outside"),
    ("nonlinearity", lambda a: a.update(nonlinearity="sigmoid"), ValueError,
     "nonlinearity must be 'tanh' or 'relu', got 'sigmoid'"),
    ("integer input", lambda a: a.update(input=a["input"].long()), RuntimeError,
     "input must be a floating-point tensor"),
]


@pytest.mark.parametrize("mutate,error,message", [b[1:] for b in BAD_ARGUMENTS],
                         ids=[b[0] for b in BAD_ARGUMENTS])
def test_forward_rejects_bad_arguments(mutate, error, message):
    args = dict(input=torch.randn(5, 2, 3), hx=torch.randn(2, 4), weight_ih=torch.randn(4, 3),
                weight_hh=torch.randn(4, 4), bias_ih=torch.randn(4), bias_hh=torch.randn(4),
                lengths=None, nonlinearity="tanh", reverse=False)
    mutate(args)
    with pytest.raises(error, match=message):
        OPS.rnn_layer_forward(**args)


def test_backward_rejects_mismatched_gradient():
    args = layer_args(4, 2, 3, 5, dtype=torch.float32)
    x, hx, w_ih, w_hh, *_ = args
    out = torch.zeros(4, 2, 5)
    with pytest.raises(RuntimeError, match=r"grad_output must have shape \[4, 2, 5\]"):
        OPS.rnn_layer_backward(torch.zeros(3, 2, 5), torch.zeros(2, 5), out, [True] * 5, False, x, hx, w_ih, w_hh,
                               None, None, None, "tanh", False)


def test_bidirectional_directions_side_by_side_where_the_planner_prices_it_faster(monkeypatch):
    """Whether a bidirectional layer's directions run at once on CUDA (each planned for half the
    SMs, the reverse one on a side stream) or one after the other (each on the whole device)
    is the planner's answer for the shape: at once where one half-device forward and backward
    step costs less than two whole-device ones, only on the block or cluster path, and only where
    the layer's steps save more GPU time than the side stream's fork and join cost the host (2
    launches at the model's launch_us). Asked once per shape and process rather than on every
    call (a plan query costs tens of microseconds of host time). Stubbed planner: (path, us per
    step) per hidden size and share."""
    from types import SimpleNamespace

    from rnn_fused import functional, launch_plan

    prices = {(64, 1): ("block", 1.0), (64, 2): ("block", 1.0),  # fits twice: the same plan
              (256, 1): ("cluster", 1.6), (256, 2): ("cluster", 1.9),
              (512, 1): ("cluster", 1.0), (512, 2): ("cluster", 2.5),  # more than twice as slow on half
              (1024, 1): ("grid", 4.9), (1024, 2): ("stepwise", 1.0)}  # no persistent path beside another
    asked = []

    def estimate(path, us):
        return SimpleNamespace(path=path, feasible=True, predicted_us_per_step=us, measured_us_per_step=None)

    def fake_plan(hidden, batch, dtype, device, backward=False, side_by_side=1):
        asked.append((hidden, batch, backward, side_by_side))
        chosen = estimate(*prices[hidden, side_by_side])
        chosen.candidate = lambda path: estimate(path, 2.0 if side_by_side == 1 else 3.0)
        return chosen

    monkeypatch.setattr(launch_plan, "plan", fake_plan)
    launch_plan.forget_cached_plans()
    weight = {h: torch.empty(h, h) for h in (64, 256, 512, 1024)}

    def layer_input(batch, cuda=True, steps=100):
        return SimpleNamespace(is_cuda=cuda, shape=(steps, batch, 3), device=torch.device("cuda", 0),
                               dtype=torch.float32)

    # H = 64 saves 2 x 2 - 2 = 2 us a step at once: worth the fork and join from 2 launches' time on.
    fork_join_steps = 2 * launch_plan.cost_constants()["launch_us"] / 2.0
    try:
        for _ in range(3):
            assert functional._directions_side_by_side(layer_input(8, steps=int(fork_join_steps) + 1),
                                                       weight[64], None) == 2
            assert functional._directions_side_by_side(layer_input(8, steps=int(fork_join_steps) - 1),
                                                       weight[64], None) == 1
            assert functional._directions_side_by_side(layer_input(8), weight[64], None) == 2
            assert functional._directions_side_by_side(layer_input(8), weight[256], None) == 2
            assert functional._directions_side_by_side(layer_input(8), weight[512], None) == 1
            assert functional._directions_side_by_side(layer_input(8), weight[1024], None) == 1
            assert functional._directions_side_by_side(layer_input(8), weight[512], "block") == 2  # 3 < 2 x 2
            assert functional._directions_side_by_side(layer_input(0), weight[64], None) == 1  # empty: no launch
            assert functional._directions_side_by_side(layer_input(8, cuda=False), weight[64], None) == 1
        shapes = [(hidden, 8, backward, share) for hidden in (64, 256, 512, 1024, 512)
                  for share in (1, 2) for backward in (False, True)]
        shapes.remove((1024, 8, True, 2))  # (its half-device forward has no persistent path: no need to ask)
        assert asked == shapes
    finally:
        launch_plan.forget_cached_plans()  # nothing stubbed stays cached


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("steps, batch, lengths, transposes", [
    (1, 1, None, False),     # one step: BLAS multiplies by W_hh as stored
    (7, 3, None, False),     # below the threshold of steps
    (8, 3, None, True),      # from it on, one transposed copy that every step's product reads
    (63, 1, None, False),    # one row a step: BLAS's one-row product on W_hh as stored below 64 steps
    (64, 1, None, True),     # from 64 on, vector_matrix on the copy
    (80, 3, [80, 10, 5], True),  # a packed batch whose last sample runs alone for 70 steps
    (7, 3, [7, 7, 0], False),    # the loop's steps are the longest sample's
])
def test_cpu_forward_transposes_w_hh_only_where_the_loop_pays_for_it(steps, batch, lengths, transposes, dtype):
    """The CPU forward multiplies by a transposed copy of W_hh, made once by the loop's thread
    (csrc/cpu/blas.h StepWeights), in a loop of 8 products of two rows or more (BLAS repacks a
    transposed operand at every call: 1.2-2.6x slower products at 4-64 rows) or of 64 of one row
    (vector_matrix reads the copy); any other loop multiplies by W_hh as stored. Either way the
    results meet the tolerance rule against the float64 step loop."""
    args = layer_args(steps, batch, 3, 24, dtype=dtype)
    lengths = None if lengths is None else torch.tensor(lengths)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        out, h_n = OPS.rnn_layer_forward(*args, lengths, "tanh", False)
    copies = [e for e in profile.events() if e.name == "rnn_fused::copy_step_weights"]
    assert len(copies) == (1 if transposes else 0)
    reference = reference_layer(*[a.double() for a in args], lengths)
    stock = reference_layer(*args, lengths)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else DEFAULT_ULPS
    for name, r, s, o in zip(("output", "h_n"), reference, stock, (out, h_n)):
        assert_within_tolerance(r, s, o, name=name, ulps=ulps)


# Lengths of T = 10 steps and B = 6 samples: a PackedSequence's order, and unsorted with an empty
# sample; 23 and 22 of the 60 rows valid.
VALID_ROW_LENGTHS = [[10, 6, 3, 2, 1, 1], [1, 0, 10, 3, 6, 2]]


def _gathers(fn) -> tuple[list[torch.Tensor], int]:
    """fn()'s results and the row gathers (rnn_fused::gather_rows, csrc/valid_rows.h) it ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        results = fn()
    return results, sum(1 for e in profile.events() if e.name == "rnn_fused::gather_rows")


@pytest.mark.parametrize("hidden, valid_only", [(64, True), (8, False)])
@pytest.mark.parametrize("lengths", VALID_ROW_LENGTHS, ids=["packed_order", "unsorted"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("truncation", [None, 3, rnn_fused.RandomTruncation(0.6, seed=5)], ids=["full", "K3", "random"])
def test_cpu_gemms_multiply_only_the_valid_rows_where_that_saves_time(hidden, valid_only, lengths, reverse,
                                                                      truncation):
    """The CPU backend's whole-sequence GEMMs (the input projection forward; dX, dW_ih, dW_hh and
    the biases' gradients backward) multiply only the rows of valid steps where the
    multiply-adds saved outweigh the rows' copies (csrc/valid_rows.h: at I = H = 64 here, not at
    H = 8), as torch.nn.RNN's do a PackedSequence's N rows: the operands' valid rows gathered,
    and the input past the lengths never read (NaN there moves no bit of any result). Either way,
    and with every row forced (forced_tiling(every_row=True)), every result meets the tolerance
    rule against the float64 step loop, truncation included."""
    # Forward the input's rows; backward dz's, the input's, and dW_hh's pairs (dz's and the states').
    _check_valid_rows(10, 6, 64, hidden, lengths, reverse, truncation, gathers=5 if valid_only else 0)


@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_valid_rows_in_pieces(reverse):
    """Over kValidRowsPieceRows (1024) valid rows the products run piece by piece (1,318 rows and
    1,278 pairs of steps here: two pieces each, every gather twice), with the same guarantees."""
    lengths = [64 - (b * 63) // 39 for b in range(40)]  # 64 down to 1: 1,318 of 2,560 rows valid
    _check_valid_rows(64, 40, 96, 96, lengths, reverse, None, gathers=10)


def _check_valid_rows(steps, batch, input_size, hidden, lengths, reverse, truncation, gathers):
    args64 = layer_args(steps, batch, input_size, hidden, generator=torch.Generator().manual_seed(11))
    lengths = torch.tensor(lengths)
    valid = (torch.arange(steps).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1)  # [T,B,1]
    generator = torch.Generator().manual_seed(12)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=generator),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=generator)]
    scales = None if truncation is None else edge_scales(steps, batch, truncation, reverse=reverse, lengths=lengths)

    def run(dtype, ours=True, padding=0.0):
        leaves = [a.detach().to(dtype).requires_grad_() for a in args64]
        x = leaves[0].masked_fill(~valid, padding)  # the input past the lengths: `padding`
        if ours:
            out, h_n = rnn_fused.rnn_layer(x, *leaves[1:], lengths, "tanh", reverse, truncation=truncation)
        else:
            out, h_n = reference_layer(x, *leaves[1:], lengths, "tanh", reverse, edge_scales=scales)
        return [out, h_n, *torch.autograd.grad((out, h_n), leaves, [c.to(dtype) for c in cotangents])]

    reference, stock = run(torch.float64, ours=False), run(torch.float32, ours=False)
    ours, ours_gathers = _gathers(lambda: run(torch.float32))
    with launch_plan.forced_tiling(every_row=True):
        every_row, every_row_gathers = _gathers(lambda: run(torch.float32))
    assert (ours_gathers, every_row_gathers) == (gathers, 0)
    names = ["output", "h_n", "grad_input", "grad_hx", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for name, r, s, o, e in zip(names, reference, stock, ours, every_row):
        assert_within_tolerance(r, s, o, name=name)
        assert_within_tolerance(r, s, e, name=f"{name} (every row)")
    if gathers:
        with_nan_padding = run(torch.float32, padding=math.nan)
        for name, o, n in zip(names, ours, with_nan_padding):
            assert torch.equal(o, n), name


_THREAD_COUNT_SCRIPT = r"""
import threading, torch, rnn_fused

def layer(batch, hidden):
    weights = [torch.randn(hidden, 8, requires_grad=True), torch.randn(hidden, hidden, requires_grad=True)]
    out, h_n = rnn_fused.rnn_layer(torch.randn(20, batch, 8), None, *weights, None, None)
    (out.sum() + h_n.sum()).backward()

before = torch.get_num_threads()
for batch, hidden in ((1, 16), (4, 64)):  # one-row steps (vector_matrix), and BLAS steps
    layer(batch, hidden)
main_thread = torch.get_num_threads()
seen = []
thread = threading.Thread(target=lambda: (layer(4, 64), seen.append(torch.get_num_threads())))
thread.start(); thread.join()
print(before, main_thread, seen[0])
"""


def test_cpu_layer_leaves_torch_thread_count_alone():
    """The CPU time loops run their small per-step products single-threaded (SingleThreadedBlas,
    MKL's thread-local count). ATen initialises each thread's OpenMP team size lazily at that
    thread's first parallel region, from MKL's thread count when the process never called
    torch.set_num_threads: done first inside that scope, it set the thread's team to one, and
    every later torch op of the thread ran on one core (matrix products and convolutions 2x
    slower on the 2-core CI machine, after one small rnn_fused call). A fresh interpreter (the
    suite's own calls have long since initialised its threads), forward and backward, in the
    main thread and in a new one."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, "-c", _THREAD_COUNT_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    before, main_thread, new_thread = map(int, result.stdout.split())
    if before == 1:
        pytest.skip("torch runs one thread on this host: a drop to one thread cannot show")
    assert (main_thread, new_thread) == (before, before)


@pytest.mark.parametrize("launch_bound", [False, True])
@pytest.mark.parametrize("steps, batch, input_size, hidden", [(1, 2, 3, 4), (11, 3, 5, 4), (40, 8, 6, 16)])
def test_whole_sequence_gemm_ops_against_float64(steps, batch, input_size, hidden, launch_bound, generator):
    # The ops gpu-check times beside a layer run the host layer's GEMMs (elman_gemms.h):
    # checked against the same sums in float64 and in stock float32 ops.
    def draw(*shape):
        return torch.randn(*shape, generator=generator)

    x, w_ih, w_hh = draw(steps, batch, input_size), draw(hidden, input_size), draw(hidden, hidden)
    b_ih, b_hh, out, dz = draw(hidden), draw(hidden), draw(steps, batch, hidden), draw(steps, batch, hidden)

    def projection(t):
        return t(x) @ t(w_ih).T + t(b_ih) + t(b_hh)

    assert_within_tolerance(projection(torch.Tensor.double), projection(lambda t: t),
                            OPS.layer_input_projection(x, w_ih, b_ih, b_hh), name="projection")
    torch.testing.assert_close(OPS.layer_input_projection(x, w_ih, None, None), x @ w_ih.T, rtol=0, atol=1e-5)

    def gradients(t):
        dz2d = t(dz).reshape(-1, hidden)
        dw_hh = sum((t(dz)[s].T @ t(out)[s - 1] for s in range(1, steps)), torch.zeros_like(t(w_hh)))
        return [dz2d.T @ t(x).reshape(-1, input_size), dw_hh, dz2d.sum(0).expand(2, hidden)]  # (a row per bias)

    got = OPS.layer_gradients_from_dz(x, w_ih, w_hh, out, dz, [True, True, True, True], launch_bound)
    torch.testing.assert_close(got[0], (dz.reshape(-1, hidden) @ w_ih).view(steps, batch, input_size),
                               rtol=1e-5, atol=1e-5)
    for name, want, stock, ours in zip(["dW_ih", "dW_hh", "db"], gradients(torch.Tensor.double),
                                       gradients(lambda t: t), got[1:], strict=True):
        assert_within_tolerance(want, stock, ours, name=name)
    skipped = OPS.layer_gradients_from_dz(x, w_ih, w_hh, out, dz, [False, True, False, True], launch_bound)
    assert skipped[0].numel() == 0 and skipped[2].numel() == 0
    assert torch.equal(skipped[1], got[1]) and torch.equal(skipped[3], got[3])


@pytest.mark.parametrize("call, message", [
    (lambda x, w, h, o: OPS.layer_input_projection(x[0], w, None, None), r"input must be \[T, B, input_size\]"),
    (lambda x, w, h, o: OPS.layer_input_projection(x, w.T, None, None), r"weight_ih must be \[hidden_size, 3\]"),
    (lambda x, w, h, o: OPS.layer_input_projection(x, w, torch.zeros(4), None), "both be tensors or both None"),
    (lambda x, w, h, o: OPS.layer_input_projection(x, w, torch.zeros(5), torch.zeros(4)),
     r"bias_ih must be \[4\], got shape \[5\]"),
    (lambda x, w, h, o: OPS.layer_input_projection(x, w.double(), None, None), "weight_ih must be a Float tensor"),
    (lambda x, w, h, o: OPS.layer_gradients_from_dz(x, w, h[:, :3], o, o, [True] * 4, True),
     r"weight_hh must be \[4, 4\]"),
    (lambda x, w, h, o: OPS.layer_gradients_from_dz(x, w, h, o, o[1:], [True] * 4, True), r"dz must be \[2, 2, 4\]"),
    (lambda x, w, h, o: OPS.layer_gradients_from_dz(x[:0], w, h, o[:0], o[:0], [True] * 4, True), "needs T > 0"),
])
def test_whole_sequence_gemm_ops_reject_bad_arguments(call, message):
    x, w_ih, w_hh, out = torch.zeros(2, 2, 3), torch.zeros(4, 3), torch.zeros(4, 4), torch.zeros(2, 2, 4)
    with pytest.raises(ValueError, match=message):
        call(x, w_ih, w_hh, out)


@pytest.mark.parametrize("steps, batch, hidden, rows, products", [
    (1000, 1, 64, 32, 3),       # sqrt(T) steps of one row: 31 chunks of 32 rows, 15 per product (their
                                # partials within the memory of dz)
    (1000, 32, 128, 192, 1),    # balanced: 166 chunks of 6 steps, 192 rows (not 32 steps: 1024 rows)
    (1000, 32, 256, 256, 1),    # 8 steps: 6 would need 2 products where 32 steps need 1
    (1000, 128, 256, 384, 1),   # 333 chunks of 3 steps
    (100, 32, 1024, 320, 3),    # sqrt(T) steps: shorter chunks would need more products
])
def test_dw_hh_chunks_balance_their_rows_against_their_count(steps, batch, hidden, rows, products):
    # dW_hh's two-level sum on the GPU kernels' backends: each chunk product sums its rows in one
    # chain and the chunks' partials are summed in another; the longer chain sets the rounding
    # error. The chunks are the shortest from sqrt(T / B) steps up that make no more launches
    # than chunks of sqrt(T) steps (csrc/outer_product_chunks.h).
    pairs = steps - 1
    dz, out = torch.zeros(steps, batch, hidden), torch.zeros(steps, batch, hidden)
    x, w_ih, w_hh = torch.zeros(steps, batch, 1), torch.zeros(hidden, 1), torch.zeros(hidden, hidden)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        OPS.layer_gradients_from_dz(x, w_ih, w_hh, out, dz, [False, False, True, False], True)
    batched = [e for e in profile.events() if e.name == "aten::bmm"]
    assert len(batched) == products
    assert {e.input_shapes[0][2] for e in batched} == {rows}  # [n, H, rows] x [n, rows, H]
    chunks = sum(e.input_shapes[0][0] for e in batched)
    assert chunks * rows <= pairs * batch < (chunks + 1) * rows  # every full chunk; the rest, one mm more


@pytest.mark.parametrize("launch_bound", [False, True])
@pytest.mark.parametrize("steps, batch, hidden, products", [
    (11, 3, 48, 1),    # 30 rows: one product (three chunks and two adds before)
    (65, 1, 128, 1),   # 64 rows, the most that are one product
    (33, 2, 64, 1),    # 64 rows again, two to a step
    (66, 1, 128, 15),  # 65 rows: 7 chunks of 9 steps and one of 2, a product each and an add for each
                       # after the first (not batched: their partials would not fit in dz's memory)
])
def test_dw_hh_sum_of_few_rows_is_one_product(steps, batch, hidden, products, launch_bound):
    # Chunks would cost a launch (GPU) or a BLAS call (CPU) each, where a short sum rounds little
    # (csrc/outer_product_chunks.h kOneProductRows); longer sums keep their chunks.
    dz, out = torch.randn(steps, batch, hidden, dtype=torch.float64), torch.randn(steps, batch, hidden,
                                                                               dtype=torch.float64)
    x, w_ih, w_hh = torch.zeros(steps, batch, 1, dtype=torch.float64), torch.zeros(hidden, 1, dtype=torch.float64), \
        torch.zeros(hidden, hidden, dtype=torch.float64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        grads = OPS.layer_gradients_from_dz(x, w_ih, w_hh, out, dz, [False, False, True, False], launch_bound)
    calls = [e.name for e in profile.events() if e.name in ("aten::mm", "aten::bmm", "aten::add_", "aten::sum")]
    assert len(calls) == products, calls
    expected = torch.einsum("tbi,tbj->ij", dz[1:], out[:-1])  # sum_t dz_t^T h_{t-1}, no h_0 term
    torch.testing.assert_close(grads[2], expected)
