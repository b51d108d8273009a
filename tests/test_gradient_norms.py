"""Gradient norms fused into the backward (docs/bptt.md, "Gradient norms and the non-finite
flag"): per-step norms against hooks on every h_t of an autograd step loop, squared
parameter-gradient norms, clip_grad_norm_ against torch.nn.utils.clip_grad_norm_, and the
non-finite flag. Every check runs on the CPU backend and on the CUDA kernels under the
SIMT emulator.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

import rnn_fused
from bptt_reference import cotangents, edge_steps, exploding_weights, valid_steps, vanishing_weights
from bptt_runs import BACKENDS, leaves, on_backend, ours_from, reference_runs, run_ours, ulps_for
from rnn_cases import RNNCase
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, measure

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

# Emulated kernels are slow: T <= 8, B <= 3, H <= 8 everywhere.
CASES = {
    "2layer-bi-unsorted-hx": RNNCase(num_layers=2, bidirectional=True, packing="unsorted",
                                     with_hx=True, seq_len=7, batch=3, input_size=3, hidden_size=5),
    "1layer-padded-batchfirst": RNNCase(batch_first=True, seq_len=6, batch=2, input_size=2,
                                        hidden_size=4),
    "3layer-relu-sorted-batchfirst": RNNCase(num_layers=3, packing="sorted", batch_first=True,
                                             nonlinearity="relu", seq_len=6, batch=3, input_size=2,
                                             hidden_size=3),
    "1layer-bi-unsorted-relu-nobias": RNNCase(bidirectional=True, packing="unsorted", bias=False,
                                              nonlinearity="relu", seq_len=8, batch=3, input_size=2,
                                              hidden_size=8),
}
TRUNCATIONS = {"full": None, "K2": 2, "K3": 3, "random": "random"}


def _random_leaves(case: RNNCase, seed: int = 4321):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return case.torch_module().double(), *case.inputs(generator)


def _lengths(input, case: RNNCase):
    if isinstance(input, PackedSequence):
        return pad_packed_sequence(input)[1]
    return torch.full((case.batch,), case.seq_len)


def _truncation(name):
    value = TRUNCATIONS[name]
    return rnn_fused.RandomTruncation(keep_prob=0.5, seed=2024) if value == "random" else value


# --- per-step norms -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("truncation", list(TRUNCATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_step_norms_equal_hook_norms(case, truncation, dtype, backend):
    """rec.step_norms [L, D, T, B] (caller's batch order, time order) vs ||grad|| reported by
    register_hook on every h_t of the reference loop; zero past each sample's length."""
    rnn_case = CASES[case]
    torch_module, input, hx = _random_leaves(rnn_case)
    directions = 2 if rnn_case.bidirectional else 1
    ours, recorder = run_ours(ours_from(torch_module, dtype, backend,
                                        truncation=_truncation(truncation)),
                              input, hx, cotangents(11), dtype, record=True)
    lengths = _lengths(input, rnn_case)
    reference_kwargs = {}
    if truncation == "random":
        edges = edge_steps(rnn_case.seq_len, rnn_case.batch, lengths)
        reference_kwargs["edge_scales"] = torch.where(edges, recorder.edge_scales.double(), 1.0)
    else:
        reference_kwargs["truncation"] = TRUNCATIONS[truncation]
    expected, stocks = reference_runs(torch_module, input, hx, cotangents(11), dtype,
                                      **reference_kwargs)
    norms = recorder.step_norms
    assert norms.shape == (rnn_case.num_layers, directions, rnn_case.seq_len, rnn_case.batch)
    assert norms.dtype == dtype
    result = measure(expected["step_norms"], [s["step_norms"] for s in stocks], norms,
                     name="step_norms", ulps=ulps_for(dtype))
    assert result.passed, str(result)
    padding = ~valid_steps(rnn_case.seq_len, rnn_case.batch, lengths)
    assert (norms[:, :, padding] == 0).all()
    assert (norms[-1][:, ~padding] > 0).all()  # the last layer's h_t all receive an output gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_norms_with_backward_after_the_block(backend):
    """What matters is the forward: a backward after the block records the same norms."""
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-hx"])
    model = ours_from(torch_module, torch.float32, backend, truncation=2)
    inside, recorder_inside = run_ours(model, input, hx, cotangents(3), torch.float32, record=True)
    with on_backend(backend):
        with rnn_fused.record_gradients(model) as recorder_after:
            x, h = leaves(input, hx, torch.float32)
            output, h_n = model(x, h)
        output = output.data if isinstance(output, PackedSequence) else output
        torch.autograd.backward([output, h_n], cotangents(3)(output, h_n))
    assert torch.equal(recorder_inside.step_norms, recorder_after.step_norms)
    for name, value in recorder_inside.parameter_sq_norms.items():
        assert torch.equal(value, recorder_after.parameter_sq_norms[name]), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_is_recorded_outside_a_recorder(backend):
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-hx"])
    model = ours_from(torch_module, torch.float64, backend)
    _, recorder = run_ours(model, input, hx, cotangents(3), torch.float64, record=True)
    snapshot = (recorder.step_norms.clone(), recorder.edge_scales.clone(),
                {k: v.clone() for k, v in recorder.parameter_sq_norms.items()}, recorder.nonfinite,
                recorder.seed)
    # a second forward and backward, other cotangents and other input, outside the block
    other_input = copy.deepcopy(input)
    with torch.no_grad():
        (other_input.data if isinstance(other_input, PackedSequence) else other_input).mul_(-2)
    results, _ = run_ours(model, other_input, hx, cotangents(4), torch.float64)
    assert torch.equal(recorder.step_norms, snapshot[0])
    assert torch.equal(recorder.edge_scales, snapshot[1])
    assert recorder.parameter_sq_norms.keys() == snapshot[2].keys()
    for name, value in recorder.parameter_sq_norms.items():
        assert torch.equal(value, snapshot[2][name]), name
    assert recorder.nonfinite == snapshot[3] and recorder.seed == snapshot[4]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_recording_does_not_change_values_or_gradients(dtype, backend):
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-hx"])
    model = ours_from(torch_module, dtype, backend, truncation=3)
    plain, _ = run_ours(model, input, hx, cotangents(3), dtype)
    recorded, _ = run_ours(model, input, hx, cotangents(3), dtype, record=True)
    assert plain.keys() == recorded.keys()
    for key, value in plain.items():
        assert torch.equal(value, recorded[key]), key


def _h_n_loss_run(module, backend, dtype, x):
    """Forward on x with a loss on h_n only (zero output cotangent); returns the recorder
    and the reference runs."""
    model = ours_from(module, dtype, backend)
    _, recorder = run_ours(model, x, None, cotangents(1, output_scale=0), dtype, record=True)
    expected, stocks = reference_runs(module, x, None, cotangents(1, output_scale=0), dtype)
    return recorder, expected, stocks


def _assert_per_time_tolerance(expected, stocks, ours, dtype):
    """The tolerance rule for each time step on its own, so the floor of a small norm is set
    by its own scale, not by the largest norm."""
    for t in range(ours.shape[2]):
        result = measure(expected[:, :, t], [s[:, :, t] for s in stocks], ours[:, :, t],
                         name=f"step_norms[:, :, {t}]", ulps=ulps_for(dtype))
        assert result.passed, str(result)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_vanishing_gradient_norms(dtype, backend):
    """sigma_max(W_hh) = 0.3 with tanh and a loss on h_n only: the norm shrinks at least
    0.3x per step away from the last processing step (t = T-1 forward, t = 0 reverse), by
    more than three orders of magnitude over 8 steps; each step's norm matches the hooks
    at its own scale."""
    steps = 8
    torch.manual_seed(1)
    module = nn.RNN(3, 4, nonlinearity="tanh", bidirectional=True).double()
    vanishing_weights(module, sigma=0.3)
    x = torch.randn(steps, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    recorder, expected, stocks = _h_n_loss_run(module, backend, dtype, x)
    norms = recorder.step_norms.double()
    _assert_per_time_tolerance(expected["step_norms"], [s["step_norms"] for s in stocks],
                               recorder.step_norms, dtype)
    forward, reverse = norms[0, 0], norms[0, 1].flip(0)  # both by processing step now
    for by_step in (forward, reverse):
        assert (by_step[:-1] < 0.3 * by_step[1:] * (1 + 1e-4)).all()
        assert (by_step[0] < 1e-3 * by_step[-1]).all()
    if dtype == torch.float64:
        # Per step at its own scale (they span many orders of magnitude): the float64 parity
        # bound of the suite, relative to each norm.
        relative = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps
        torch.testing.assert_close(norms, expected["step_norms"], rtol=relative, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_exploding_gradient_norms(dtype, backend):
    """W_hh = 2 I, relu, positive inputs, loss on h_n only: dL/dh = 2^k dL/dh_n k steps
    before the last, so the norm doubles per step toward t = 0 (forward direction) and toward
    t = T-1 (reverse direction)."""
    steps = 8
    torch.manual_seed(1)
    module = nn.RNN(3, 4, nonlinearity="relu", bidirectional=True).double()
    exploding_weights(module)
    x = torch.rand(steps, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    recorder, expected, stocks = _h_n_loss_run(module, backend, dtype, x)
    norms = recorder.step_norms
    _assert_per_time_tolerance(expected["step_norms"], [s["step_norms"] for s in stocks], norms,
                               dtype)
    eps = torch.finfo(dtype).eps
    forward, reverse = norms[0, 0], norms[0, 1].flip(0)
    for by_step in (forward, reverse):
        torch.testing.assert_close(by_step[:-1], 2 * by_step[1:], rtol=4 * eps, atol=0)
    assert torch.allclose(forward[0] / forward[-1], torch.tensor(2.0 ** (steps - 1), dtype=dtype))


# --- squared parameter-gradient norms -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("truncation", ["full", "K2", "random"])
@pytest.mark.parametrize("case", ["2layer-bi-unsorted-hx", "3layer-relu-sorted-batchfirst",
                                  "1layer-bi-unsorted-relu-nobias"])
def test_parameter_sq_norms_equal_the_gradients_norms(case, truncation, dtype, backend):
    """rec.parameter_sq_norms[name] = ||p.grad||^2 of the gradient the backward produced,
    float64 0-d, within the rounding of a sum of n squares in the gradient's dtype."""
    rnn_case = CASES[case]
    torch_module, input, hx = _random_leaves(rnn_case)
    model = ours_from(torch_module, dtype, backend, truncation=_truncation(truncation))
    _, recorder = run_ours(model, input, hx, cotangents(7), dtype, record=True)
    names = [name for name, _ in model.named_parameters()]
    assert sorted(recorder.parameter_sq_norms) == sorted(names)
    eps = torch.finfo(dtype).eps
    for name, param in model.named_parameters():
        value = recorder.parameter_sq_norms[name]
        assert value.dtype == torch.float64 and value.dim() == 0, name
        exact = param.grad.double().pow(2).sum()
        bound = (param.numel() + 2) * eps * exact
        assert abs(value - exact) <= bound, (
            f"{name}: recorded {value.item():.17e}, ||grad||^2 {exact.item():.17e}, "
            f"bound {bound.item():.3e}")


# --- clip_grad_norm_ ------------------------------------------------------------------------


class RNNHead(nn.Module):
    """rnn_fused.RNN followed by nn.Linear layers, one of them unused (its grad stays None)."""

    def __init__(self, dtype, backend, truncation=None):
        super().__init__()
        self.rnn = rnn_fused.RNN(3, 5, num_layers=2, bidirectional=True, dtype=dtype,
                                 truncation=truncation)
        self.rnn.backend = backend
        self.head = nn.Linear(10, 2, dtype=dtype)
        self.unused = nn.Linear(2, 2, dtype=dtype)

    def forward(self, x):
        output, h_n = self.rnn(x)
        return self.head(output).pow(2).sum() + h_n.sum()


def _model_and_copy(dtype, backend, x, *, record=True):
    """A model after a recorded backward, and a copy holding bitwise the same gradients."""
    torch.manual_seed(3)
    ours = RNNHead(dtype, backend, truncation=2)
    with on_backend(backend):
        if record:
            with rnn_fused.record_gradients(ours.rnn):
                loss = ours(x.to(dtype))
        else:
            loss = ours(x.to(dtype))
        loss.backward()
    stock = copy.deepcopy(ours)
    for p_stock, p_ours in zip(stock.parameters(), ours.parameters()):
        p_stock.grad = None if p_ours.grad is None else p_ours.grad.clone()
    return ours, stock


def _exact_total_norm(params, norm_type):
    grads = [p.grad.double() for p in params if p.grad is not None]
    if norm_type == math.inf:
        return torch.stack([g.abs().max() for g in grads]).max()
    return torch.stack([g.abs().pow(norm_type).sum() for g in grads]).sum().pow(1 / norm_type)


def _assert_clip_matches_torch(ours, stock, max_norm, norm_type, dtype, backend):
    exact = _exact_total_norm(list(stock.parameters()), norm_type)
    unclipped = [None if p.grad is None else p.grad.clone() for p in stock.parameters()]
    torch_total = torch.nn.utils.clip_grad_norm_(stock.parameters(), max_norm, norm_type=norm_type)
    with on_backend(backend):
        ours_total = rnn_fused.clip_grad_norm_((p for p in ours.parameters()), max_norm,
                                               norm_type=norm_type)
    assert isinstance(ours_total, torch.Tensor) and ours_total.dim() == 0
    assert ours_total.dtype == torch_total.dtype and ours_total.device == torch_total.device
    result = measure(exact, torch_total, ours_total, name=f"total {norm_type}-norm",
                     ulps=ulps_for(dtype))
    assert result.passed, str(result)
    coefficient = min(1.0, max_norm / (exact.item() + 1e-6))
    for (name, p_ours), p_stock, g in zip(ours.named_parameters(), stock.parameters(), unclipped):
        if g is None:
            assert p_ours.grad is None and p_stock.grad is None, name
            continue
        result = measure(g.double() * coefficient, p_stock.grad, p_ours.grad, name=f"clipped {name}",
                         ulps=ulps_for(dtype))
        assert result.passed, str(result)
    return exact


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0, 3.0])
def test_clip_grad_norm_equals_torch(norm_type, dtype, backend):
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours, stock = _model_and_copy(dtype, backend, x)
    exact = _exact_total_norm(list(stock.parameters()), norm_type)
    _assert_clip_matches_torch(ours, stock, 0.1 * exact.item(), norm_type, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_below_max_norm_leaves_gradients_bitwise_alone(norm_type, backend):
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours, stock = _model_and_copy(torch.float32, backend, x)
    before = [None if p.grad is None else p.grad.clone() for p in ours.parameters()]
    exact = _assert_clip_matches_torch(ours, stock, 1e6, norm_type, torch.float32, backend)
    assert exact < 1e5
    for p, b in zip(ours.parameters(), before):
        assert (p.grad is None and b is None) or torch.equal(p.grad, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["scaled_in_place", "replaced", "accumulated", "not_recorded",
                                    "used_twice_in_one_graph", "backward_into_zeroed_grads"])
def test_clip_grad_norm_sees_gradients_changed_after_the_recorded_backward(change, backend):
    """The fused squared norms may be reused only for the gradient the recorded backward
    produced; after the gradient changed the result must still be torch's."""
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours, _ = _model_and_copy(torch.float32, backend, x, record=change != "not_recorded")
    if change == "scaled_in_place":
        ours.rnn.weight_hh_l0.grad.mul_(3)
    elif change == "replaced":
        ours.rnn.weight_ih_l1_reverse.grad = torch.full_like(ours.rnn.weight_ih_l1_reverse, 5.0)
    elif change == "accumulated":
        with on_backend(backend):
            with rnn_fused.record_gradients(ours.rnn):
                loss = ours(x.float() * 0.5)
            loss.backward()
    elif change == "used_twice_in_one_graph":
        ours.zero_grad(set_to_none=True)
        with on_backend(backend):
            with rnn_fused.record_gradients(ours.rnn):
                loss = ours(x.float()) + ours(x.float() * 0.5)
            loss.backward()
    elif change == "backward_into_zeroed_grads":
        ours.zero_grad(set_to_none=False)  # autograd then adds into the existing tensors
        with on_backend(backend):
            with rnn_fused.record_gradients(ours.rnn):
                loss = ours(x.float() * 0.5)
            loss.backward()
    stock = copy.deepcopy(ours)
    for p_stock, p_ours in zip(stock.parameters(), ours.parameters()):
        p_stock.grad = None if p_ours.grad is None else p_ours.grad.clone()
    exact = _exact_total_norm(list(stock.parameters()), 2.0)
    _assert_clip_matches_torch(ours, stock, 0.1 * exact.item(), 2.0, torch.float32, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clip_grad_norm_of_a_single_tensor_and_of_no_gradients(backend):
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours, stock = _model_and_copy(torch.float32, backend, x)
    expected = torch.nn.utils.clip_grad_norm_(stock.rnn.weight_hh_l0, 0.01)
    got = rnn_fused.clip_grad_norm_(ours.rnn.weight_hh_l0, 0.01)
    torch.testing.assert_close(got, expected, rtol=8 * torch.finfo(torch.float32).eps, atol=0)
    torch.testing.assert_close(ours.rnn.weight_hh_l0.grad, stock.rnn.weight_hh_l0.grad,
                               rtol=8 * torch.finfo(torch.float32).eps, atol=0)
    empty_torch = torch.nn.utils.clip_grad_norm_([stock.unused.weight], 1.0)
    empty_ours = rnn_fused.clip_grad_norm_([ours.unused.weight], 1.0)
    assert torch.equal(empty_ours, empty_torch)


def _identical(a, b):
    """Equal values, NaN where the other is NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


# --- the non-finite flag ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("poison", ["none", "nan_input", "inf_input", "nan_cotangent"])
def test_nonfinite_flag(poison, dtype, backend):
    rnn_case = CASES["2layer-bi-unsorted-hx"]
    torch_module, input, hx = _random_leaves(rnn_case)
    if poison in ("nan_input", "inf_input"):
        input = copy.deepcopy(input)
        with torch.no_grad():
            input.data[4, 1] = math.nan if poison == "nan_input" else math.inf
    draw = cotangents(2)

    def poisoned(output, h_n):
        grads = draw(output, h_n)
        if poison == "nan_cotangent":
            grads[0][3, 0] = math.nan
        return grads

    model = ours_from(torch_module, dtype, backend)
    results, recorder = run_ours(model, input, hx, poisoned, dtype, record=True)
    gradients_finite = all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert gradients_finite == (poison == "none")
    assert bool(recorder.nonfinite) == (poison != "none")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_clip_grad_norm_of_nonfinite_gradients(poison, backend):
    """error_if_nonfinite=True: RuntimeError with torch's message, gradients left alone;
    False: torch's non-finite total and clipped gradients."""
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[2, 1, 0] = poison
    ours, stock = _model_and_copy(torch.float32, backend, x)
    before = [None if p.grad is None else p.grad.clone() for p in ours.parameters()]
    with pytest.raises(RuntimeError) as expected:
        torch.nn.utils.clip_grad_norm_(stock.parameters(), 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError) as got:
        with on_backend(backend):
            rnn_fused.clip_grad_norm_(ours.parameters(), 1.0, error_if_nonfinite=True)
    assert str(got.value) == str(expected.value)
    for p, b in zip(ours.parameters(), before):
        assert (p.grad is None and b is None) or _identical(p.grad, b)

    torch_total = torch.nn.utils.clip_grad_norm_(stock.parameters(), 1.0)
    with on_backend(backend):
        ours_total = rnn_fused.clip_grad_norm_(ours.parameters(), 1.0)
    assert not torch.isfinite(torch_total)
    assert torch.equal(ours_total.isnan(), torch_total.isnan())
    assert ours_total.isnan() or ours_total == torch_total
    for p_ours, p_stock in zip(ours.parameters(), stock.parameters()):
        if p_stock.grad is None:
            assert p_ours.grad is None
            continue
        torch.testing.assert_close(p_ours.grad, p_stock.grad, equal_nan=True)
