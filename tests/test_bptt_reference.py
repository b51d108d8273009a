"""Self-checks of tests/bptt_reference.py: the references of the truncation and gradient-norm
tests are checked here against torch.nn.RNN, literal per-sample detach loops, the backward
recurrence of DESIGN.md written out, and the published Philox known-answer vectors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from bptt_reference import (
    BPTTReferenceRNN,
    cotangents,
    edge_steps,
    exploding_weights,
    mean_within_confidence,
    philox4x32_10,
    philox_edge_scales,
    philox_uniforms,
    reference_direction,
    truncation_scales,
    vanishing_weights,
)
from rnn_cases import RNNCase
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, measure, run_rnn


def _assert_float64_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Two float64 evaluations of the same quantity in different orders: equal up to the
    float64 parity bound of the suite (FLOAT64_PARITY_ULPS ulps of max|expected|)."""
    assert actual.dtype == expected.dtype == torch.float64
    bound = FLOAT64_PARITY_ULPS * torch.finfo(torch.float64).eps * max(1.0, expected.abs().max().item())
    error = (actual - expected).abs().max().item()
    assert error <= bound, f"float64 mismatch {error:.3e} > {bound:.3e}"


# Random123's kat_vectors for philox4x32 with 10 rounds: counter (4 words), key (2 words),
# expected output (4 words).
PHILOX_KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_philox_uniforms_follow_the_documented_counter_and_key():
    seed = (0x12345678 << 32) | 0x9ABCDEF0
    u = philox_uniforms(5, 3, seed, layer=2, reverse=True)
    for s in range(5):
        for b in range(3):
            r0 = int(philox4x32_10((s, b, 2 * 2 + 1, 0), (0x9ABCDEF0, 0x12345678))[0])
            assert u[s, b] == (r0 >> 8) * 2.0 ** -24
    # The high 32 bits of the seed, the layer and the direction each select other draws.
    assert not (philox_uniforms(5, 3, 0) == philox_uniforms(5, 3, 1 << 32)).all()
    assert not (philox_uniforms(5, 3, 7, layer=1) == philox_uniforms(5, 3, 7)).all()
    assert not (philox_uniforms(5, 3, 7, reverse=True) == philox_uniforms(5, 3, 7)).all()


def test_philox_edge_scales_keep_with_probability_p():
    p = 0.3
    scales = philox_edge_scales(400, 50, p, seed=11, lengths=torch.full((50,), 400))
    kept = scales[1:] != 0
    assert set(scales[1:].unique().tolist()) == {0.0, 1 / p}
    assert (scales[0] == 1).all()
    fraction = kept.double().mean().item()
    # 19,950 Bernoulli(0.3) draws: standard error 0.0032
    assert abs(fraction - p) < 5 * (p * (1 - p) / kept.numel()) ** 0.5
    lengths = torch.tensor([3, 1, 0])
    short = philox_edge_scales(4, 3, p, seed=11, lengths=lengths)
    assert (short[~edge_steps(4, 3, lengths)] == 1).all()


def test_truncation_scales():
    assert truncation_scales(7, 1, 3).squeeze(1).tolist() == [1, 1, 1, 0, 1, 1, 0]
    assert truncation_scales(3, 2, 1).tolist() == [[1, 1], [0, 0], [0, 0]]
    assert (truncation_scales(5, 2, 5) == 1).all()


# --- the step loop against nn.RNN ------------------------------------------------------------

CASES = [
    RNNCase(num_layers=1, seq_len=5, batch=3, hidden_size=4, with_hx=True),
    RNNCase(num_layers=2, bidirectional=True, seq_len=6, batch=3, hidden_size=4, nonlinearity="relu"),
    RNNCase(num_layers=3, bidirectional=True, packing="unsorted", seq_len=7, batch=4, hidden_size=3,
            with_hx=True),
    RNNCase(num_layers=2, bidirectional=False, packing="sorted", seq_len=5, batch=3, hidden_size=5,
            bias=False, batch_first=True),
    RNNCase(num_layers=1, bidirectional=True, packing="unsorted", seq_len=6, batch=5, hidden_size=2,
            batch_first=True, nonlinearity="relu"),
]


def _assert_close_f64(reference, ours):
    for key in reference:
        if key in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            assert torch.equal(reference[key], ours[key]) if reference[key] is not None else ours[key] is None
            continue
        result = measure(reference[key], reference[key], ours[key], name=key, ulps=FLOAT64_PARITY_ULPS)
        assert result.passed, str(result)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_full_bptt_reference_matches_nn_rnn(case, generator):
    torch_module = case.torch_module().double()
    input, hx = case.inputs(generator)
    reference = BPTTReferenceRNN.from_module(torch_module)
    expected = run_rnn(torch_module, *_leaves(input, hx), cotangents(3))
    got = run_rnn(reference, *_leaves(input, hx), cotangents(3))
    assert set(expected) == set(got)
    _assert_close_f64(expected, got)


def _leaves(input, hx):
    from rnn_fused.tools.testing import cast_input
    x = cast_input(input, torch.float64, True)
    return x, None if hx is None else hx.detach().clone().requires_grad_()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_truncation_beyond_length_and_unit_scales_are_full_bptt(case, generator):
    torch_module = case.torch_module().double()
    input, hx = case.inputs(generator)
    full = run_rnn(BPTTReferenceRNN.from_module(torch_module), *_leaves(input, hx), cotangents(3))
    for truncation in (case.seq_len, case.seq_len + 3):
        reference = BPTTReferenceRNN.from_module(torch_module)
        reference.truncation = truncation
        got = run_rnn(reference, *_leaves(input, hx), cotangents(3))
        for key in full:
            assert _equal(full[key], got[key]), key
    reference = BPTTReferenceRNN.from_module(torch_module)
    directions = 2 if case.bidirectional else 1
    reference.edge_scales = torch.ones(case.num_layers, directions, case.seq_len, case.batch,
                                       dtype=torch.float64)
    got = run_rnn(reference, *_leaves(input, hx), cotangents(3))
    for key in full:
        assert _equal(full[key], got[key]), key


def _equal(a, b):
    return (a is None and b is None) or torch.equal(a, b)


# --- truncation against literal per-sample detach loops -------------------------------------


def _literal_detach_loop(x, h0, weights, num_layers, directions, nonlinearity, truncation):
    """One sample, no padding: every layer and direction a plain Python loop that runs the
    sample's steps in its processing order and sets h = h.detach() before step s whenever
    s % truncation == 0 and s > 0. x [n, I], h0 [L*D, H]. Returns output [n, D*H], h_n."""
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    layer_input, finals = x, []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            w_ih, w_hh, *b = weights[layer * directions + direction]
            b_ih, b_hh = b if b else (0, 0)
            h = h0[layer * directions + direction]
            order = range(x.shape[0] - 1, -1, -1) if direction == 1 else range(x.shape[0])
            states = {}
            for s, t in enumerate(order):
                if truncation is not None and s > 0 and s % truncation == 0:
                    h = h.detach()
                h = act(w_ih @ layer_input[t] + b_ih + w_hh @ h + b_hh)
                states[t] = h
            outputs.append(torch.stack([states[t] for t in range(x.shape[0])]))
            finals.append(h)
        layer_input = torch.cat(outputs, dim=1)
    return layer_input, torch.stack(finals)


@pytest.mark.parametrize("truncation", [1, 2, 3, 5, None])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_truncated_reference_equals_literal_detach_loop_per_sample(truncation, bidirectional):
    """Variable lengths: each sample's steps are counted in its own processing order."""
    generator = torch.Generator().manual_seed(5)
    steps, batch, input_size, hidden, num_layers = 7, 4, 3, 4, 2
    directions = 2 if bidirectional else 1
    torch_module = nn.RNN(input_size, hidden, num_layers, bidirectional=bidirectional).double()
    reference = BPTTReferenceRNN.from_module(torch_module)
    reference.truncation = truncation
    lengths = torch.tensor([4, 7, 1, 6])
    x = torch.randn(steps, batch, input_size, generator=generator, dtype=torch.float64)
    h0 = torch.randn(num_layers * directions, batch, hidden, generator=generator, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    x_leaf = packed.data.detach().requires_grad_()
    packed = type(packed)(x_leaf, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    h_leaf = h0.clone().requires_grad_()
    out, h_n = reference(packed, h_leaf)
    from torch.nn.utils.rnn import pad_packed_sequence
    padded_out, _ = pad_packed_sequence(out)
    g = torch.Generator().manual_seed(9)
    d_out = torch.randn(padded_out.shape, generator=g, dtype=torch.float64)
    d_h_n = torch.randn(h_n.shape, generator=g, dtype=torch.float64)
    (padded_out * d_out).sum().add((h_n * d_h_n).sum()).backward()
    ours_weights = [p.grad for p in reference.parameters()]

    # the same loss, sample by sample with literal loops
    weights = [[p.detach().clone().requires_grad_() for p in group] for group in reference.all_weights]
    x_sample_leaf = x.clone().requires_grad_()
    h_sample_leaf = h0.clone().requires_grad_()
    loss = 0
    for b, n in enumerate(lengths.tolist()):
        out_b, h_n_b = _literal_detach_loop(x_sample_leaf[:n, b], h_sample_leaf[:, b], weights,
                                            num_layers, directions, "tanh", truncation)
        loss = loss + (out_b * d_out[:n, b]).sum() + (h_n_b * d_h_n[:, b]).sum()
    loss.backward()
    for ours, literal in zip(ours_weights, [p.grad for group in weights for p in group]):
        _assert_float64_equal(ours, literal)
    _assert_float64_equal(h_leaf.grad, h_sample_leaf.grad)
    padded_grad, _ = pad_packed_sequence(type(packed)(x_leaf.grad, packed.batch_sizes,
                                                      packed.sorted_indices, packed.unsorted_indices))
    _assert_float64_equal(padded_grad, x_sample_leaf.grad)


def test_truncation_changes_gradients_but_not_values(generator):
    case = CASES[1]
    torch_module = case.torch_module().double()
    input, hx = case.inputs(generator)
    full = run_rnn(BPTTReferenceRNN.from_module(torch_module), *_leaves(input, hx), cotangents(3))
    reference = BPTTReferenceRNN.from_module(torch_module)
    reference.truncation = 2
    cut = run_rnn(reference, *_leaves(input, hx), cotangents(3))
    assert torch.equal(full["output"], cut["output"]) and torch.equal(full["h_n"], cut["h_n"])
    assert not torch.allclose(full["grad_weight_hh_l0"], cut["grad_weight_hh_l0"])


# --- edge scales --------------------------------------------------------------------------------


def test_zero_one_scales_equal_the_detach_mask(generator):
    case = CASES[2]
    torch_module = case.torch_module().double()
    input, hx = case.inputs(generator)
    cut_reference = BPTTReferenceRNN.from_module(torch_module)
    cut_reference.truncation = 3
    scaled_reference = BPTTReferenceRNN.from_module(torch_module)
    scaled_reference.edge_scales = truncation_scales(case.seq_len, case.batch, 3).expand(
        case.num_layers, 2, -1, -1)
    cut = run_rnn(cut_reference, *_leaves(input, hx), cotangents(3))
    scaled = run_rnn(scaled_reference, *_leaves(input, hx), cotangents(3))
    for key in cut:
        assert _equal(cut[key], scaled[key]), key


def _identity_scaled_direction(x, h0, w_ih, w_hh, b_ih, b_hh, scales, nonlinearity):
    """A second way to scale an edge's gradient: h + (c - 1) * (h - h.detach()) has h's
    value and gradient factor c. Full lengths, forward direction."""
    act = torch.tanh if nonlinearity == "tanh" else torch.relu
    h, outs = h0, []
    for s in range(x.shape[0]):
        c = scales[s].unsqueeze(1)
        edge = h + (c - 1) * (h - h.detach())
        h = act(x[s] @ w_ih.t() + b_ih + edge @ w_hh.t() + b_hh)
        outs.append(h)
    return torch.stack(outs), h


def test_hook_scaled_edges_equal_the_identity_formula():
    generator = torch.Generator().manual_seed(2)
    steps, batch, input_size, hidden = 6, 3, 2, 4
    args = [torch.randn(steps, batch, input_size, generator=generator, dtype=torch.float64),
            torch.randn(batch, hidden, generator=generator, dtype=torch.float64),
            torch.randn(hidden, input_size, generator=generator, dtype=torch.float64) * 0.5,
            torch.randn(hidden, hidden, generator=generator, dtype=torch.float64) * 0.5,
            torch.randn(hidden, generator=generator, dtype=torch.float64),
            torch.randn(hidden, generator=generator, dtype=torch.float64)]
    scales = philox_edge_scales(steps, batch, 0.6, seed=3)
    assert (scales[1:] == 0).any() and (scales[1:] != 0).any()
    d_out = torch.randn(steps, batch, hidden, generator=generator, dtype=torch.float64)
    results = []
    for fn in ("hook", "identity"):
        leaves = [a.clone().requires_grad_() for a in args]
        if fn == "hook":
            out, h_n = reference_direction(leaves[0], *leaves[1:], torch.full((batch,), steps), "tanh",
                                           False, scales=scales)
        else:
            out, h_n = _identity_scaled_direction(*leaves, scales, "tanh")
        (out * d_out).sum().add(h_n.sum()).backward()
        results.append([leaf.grad for leaf in leaves])
    for hook_grad, identity_grad in zip(*results):
        _assert_float64_equal(hook_grad, identity_grad)


# --- hook norms against the backward recurrence ------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("truncation", [None, 2])
def test_hook_norms_equal_the_backward_recurrence(reverse, nonlinearity, truncation):
    """g_s = dY_s + c_{s+1} W_hh^T dz_{s+1} (+ dh_n at the last valid step), dz_s = g_s *
    act'(h_s), written out per sample in processing order (DESIGN.md)."""
    generator = torch.Generator().manual_seed(4)
    steps, batch, input_size, hidden = 6, 3, 2, 5
    lengths = torch.tensor([6, 2, 4])
    torch_module = nn.RNN(input_size, hidden, nonlinearity=nonlinearity,
                          bidirectional=reverse).double()
    reference = BPTTReferenceRNN.from_module(torch_module)
    reference.truncation = truncation
    x = torch.randn(steps, batch, input_size, generator=generator, dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = reference(packed)
    d_out = torch.randn(out.data.shape, generator=generator, dtype=torch.float64)
    d_h_n = torch.randn(h_n.shape, generator=generator, dtype=torch.float64)
    torch.autograd.backward([out.data, h_n], [d_out, d_h_n])
    from torch.nn.utils.rnn import pad_packed_sequence
    d_out_padded, _ = pad_packed_sequence(type(out)(d_out, out.batch_sizes, out.sorted_indices,
                                                    out.unsorted_indices))
    hidden_padded, _ = pad_packed_sequence(out)
    direction = 1 if reverse else 0
    columns = slice(direction * hidden, (direction + 1) * hidden)
    w_hh = torch_module.all_weights[direction][1].detach()
    for b, n in enumerate(lengths.tolist()):
        times = list(range(n - 1, -1, -1)) if reverse else list(range(n))  # by processing step
        g_next, expected = None, torch.zeros(steps, dtype=torch.float64)
        for s in range(n - 1, -1, -1):
            t = times[s]
            h = hidden_padded[t, b, columns]
            g = d_out_padded[t, b, columns].clone()
            if s == n - 1:
                g = g + d_h_n[direction, b]
            else:
                c = 0.0 if truncation is not None and (s + 1) % truncation == 0 else 1.0
                g = g + c * (w_hh.t() @ g_next)
            expected[t] = g.norm()
            derivative = (1 - h * h) if nonlinearity == "tanh" else (h > 0).double()
            g_next = g * derivative
        _assert_float64_equal(reference.step_norms[0, direction, :, b], expected)


def test_vanishing_and_exploding_setups_behave_as_claimed():
    steps = 8
    module = nn.RNN(3, 4, nonlinearity="tanh").double()
    vanishing_weights(module, sigma=0.3)
    assert torch.allclose(torch.linalg.svdvals(module.weight_hh_l0.detach()),
                          torch.full((4,), 0.3, dtype=torch.float64))
    reference = BPTTReferenceRNN.from_module(module)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps, 2, 3, generator=generator, dtype=torch.float64)
    run_rnn(reference, x.requires_grad_(), None, cotangents(1, output_scale=0))
    norms = reference.step_norms[0, 0]
    assert (norms[:-1] < 0.3 * norms[1:] * (1 + 1e-12)).all()
    assert (norms[0] < 1e-3 * norms[-1]).all()

    module = nn.RNN(3, 4, nonlinearity="relu").double()
    exploding_weights(module)
    reference = BPTTReferenceRNN.from_module(module)
    x = torch.rand(steps, 2, 3, generator=generator, dtype=torch.float64) + 0.1
    run_rnn(reference, x.requires_grad_(), None, cotangents(1, output_scale=0))
    norms = reference.step_norms[0, 0]
    assert torch.equal(norms[:-1], 2 * norms[1:])


# --- the unbiasedness check has the power it claims ---------------------------------------------


def test_random_truncation_reference_is_unbiased_and_the_check_detects_bias():
    """Mean over 400 seeds of the hook-scaled reference vs full BPTT: within 5 standard
    errors with the 1/p scale, far outside without it (the check has power)."""
    generator = torch.Generator().manual_seed(8)
    steps, batch, p, seeds = 6, 2, 0.5, 400
    module = nn.RNN(2, 3).double()
    x = torch.randn(steps, batch, 2, generator=generator, dtype=torch.float64)

    def gradient(scales):
        reference = BPTTReferenceRNN.from_module(module)
        reference.edge_scales = scales
        run = run_rnn(reference, x.clone().requires_grad_(), None, cotangents(2))
        return torch.cat([run[k].flatten() for k in sorted(run) if k.startswith("grad_")])

    full = gradient(None)
    unbiased, biased = [], []
    for seed in range(seeds):
        scales = philox_edge_scales(steps, batch, p, seed).expand(1, 1, -1, -1)
        unbiased.append(gradient(scales))
        biased.append(gradient(scales * p))  # kept edges at scale 1: a biased estimator
    passed, report = mean_within_confidence(torch.stack(unbiased), full)
    assert passed, report
    passed, report = mean_within_confidence(torch.stack(biased), full)
    assert not passed, report
