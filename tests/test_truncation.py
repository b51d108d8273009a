"""In-kernel truncated BPTT (docs/bptt.md, "Truncation") against autograd references.

truncation=K must give the gradients of a step loop that detaches the state entering
processing step s whenever s % K == 0 and s > 0 (per sample, per layer and direction, in
each direction's own processing order); RandomTruncation those of a step loop whose edges'
gradients are scaled by Philox4x32-10 draws, computed here independently in numpy. Forward
values never change. Every check runs on the CPU backend and on the CUDA kernels under the
SIMT emulator.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnn_fused
import rnn_fused.functional
from bptt_reference import (
    BPTTReferenceRNN,
    cotangents,
    edge_steps,
    mean_within_confidence,
    philox_edge_scales,
    reference_direction,
    reference_rnn,
    truncation_scales,
    valid_steps,
)
from bptt_runs import (
    BACKENDS,
    assert_results_match,
    gradient_keys,
    leaves,
    on_backend,
    ours_from,
    reference_runs,
    run_ours,
    ulps_for,
)
from rnn_cases import RNNCase
from rnn_fused.tools.testing import measure, run_rnn

DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

# Emulated kernels are slow: T <= 8, B <= 3, H <= 8 everywhere.
STEPS = 7
TRUNCATIONS = [1, 2, 5, STEPS - 1, STEPS, STEPS + 3]
CASES = {
    "2layer-bi-unsorted-tanh-hx": RNNCase(num_layers=2, bidirectional=True, packing="unsorted",
                                          with_hx=True, seq_len=STEPS, batch=3, input_size=3,
                                          hidden_size=5),
    "3layer-relu-sorted-batchfirst": RNNCase(num_layers=3, packing="sorted", batch_first=True,
                                             nonlinearity="relu", seq_len=STEPS, batch=3,
                                             input_size=2, hidden_size=4),
    "1layer-bi-padded-nobias": RNNCase(bidirectional=True, bias=False, with_hx=True,
                                       seq_len=STEPS, batch=2, input_size=2, hidden_size=6),
    "2layer-bi-unsorted-relu": RNNCase(num_layers=2, bidirectional=True, packing="unsorted",
                                       nonlinearity="relu", seq_len=STEPS, batch=3, input_size=2,
                                       hidden_size=3),
}


def _random_leaves(case: RNNCase, seed: int = 1234):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return case.torch_module().double(), *case.inputs(generator)


# --- truncation=K -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("truncation", TRUNCATIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_truncation_k_matches_detach_loop(case, truncation, dtype, backend):
    torch_module, input, hx = _random_leaves(CASES[case])
    expected, stocks = reference_runs(torch_module, input, hx, cotangents(5), dtype,
                                      truncation=truncation)
    ours, _ = run_ours(ours_from(torch_module, dtype, backend, truncation=truncation), input, hx,
                       cotangents(5), dtype)
    assert_results_match(expected, stocks, ours, dtype, what=f" (truncation={truncation})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_truncation_leaves_forward_values_unchanged(case, backend):
    torch_module, input, hx = _random_leaves(CASES[case])
    full, _ = run_ours(ours_from(torch_module, torch.float32, backend), input, hx, cotangents(5),
                       torch.float32)
    for truncation in (1, 3, rnn_fused.RandomTruncation(keep_prob=0.5, seed=3)):
        cut, _ = run_ours(ours_from(torch_module, torch.float32, backend, truncation=truncation),
                          input, hx, cotangents(5), torch.float32)
        assert torch.equal(full["output"], cut["output"]), truncation
        assert torch.equal(full["h_n"], cut["h_n"]), truncation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("truncation", [10**9, 2**31 + 2, 2**40])
def test_huge_truncation_is_full_bptt(truncation, backend):
    """K far beyond any sequence (beyond 32 bits too) cuts nothing."""
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-tanh-hx"])
    expected, stocks = reference_runs(torch_module, input, hx, cotangents(5), torch.float32)
    ours, _ = run_ours(ours_from(torch_module, torch.float32, backend, truncation=truncation),
                       input, hx, cotangents(5), torch.float32)
    assert_results_match(expected, stocks, ours, torch.float32, what=f" (truncation={truncation})")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_truncation_k_with_zero_length_and_unsorted_lengths_through_rnn_layer(dtype, backend):
    """rnn_fused.rnn_layer with lengths (one empty sample), reverse and forward."""
    generator = torch.Generator().manual_seed(3)
    steps, batch, input_size, hidden = 7, 3, 2, 5
    lengths = torch.tensor([5, 0, 7])
    for reverse in (False, True):
        args = _layer_args(steps, batch, input_size, hidden, generator)
        for truncation in (1, 2, 3, 6):
            cut = truncation_scales(steps, batch, truncation) == 0
            expected = _layer_run(reference_direction, args, torch.float64, lengths, reverse,
                                  cut=cut)
            stocks = _layer_stocks(args, dtype, lengths, reverse, cut=cut)
            with on_backend(backend):
                ours = _layer_run(_rnn_layer(backend, truncation=truncation, layer=0), args, dtype,
                                  lengths, reverse)
            for name, e, s, o in zip(_LAYER_NAMES, expected, zip(*stocks), ours):
                result = measure(e, s, o, name=f"{name} (K={truncation}, reverse={reverse})",
                                 ulps=ulps_for(dtype))
                assert result.passed, str(result)


_LAYER_NAMES = ["output", "h_n", "grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh",
                "grad_bias_ih", "grad_bias_hh"]


def _layer_args(steps, batch, input_size, hidden, generator):
    def draw(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
    return [draw(steps, batch, input_size), draw(batch, hidden), draw(hidden, input_size, scale=0.5),
            draw(hidden, hidden, scale=0.5 / hidden ** 0.5), draw(hidden), draw(hidden)]


def _rnn_layer(backend, **kwargs):
    def layer(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, reverse):
        return rnn_fused.rnn_layer(input, hx, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity,
                                   reverse, backend=backend, **kwargs)
    return layer


def _layer_stocks(args, dtype, lengths, reverse, **kwargs):
    """Stock runs of the reference loop in dtype: as is and, below float64, with every
    argument moved by one unit of roundoff (seeded), as the tolerance rule measures stock."""
    runs = [_layer_run(reference_direction, args, dtype, lengths, reverse, **kwargs)]
    if dtype != torch.float64:
        for seed in (1, 2):
            generator = torch.Generator().manual_seed(seed)
            moved = []
            for a in args:
                a = a.to(dtype)
                signs = torch.randint(0, 2, a.shape, generator=generator).to(dtype) * 2 - 1
                moved.append(a * (1 + signs * torch.finfo(dtype).eps / 2))
            runs.append(_layer_run(reference_direction, moved, dtype, lengths, reverse, **kwargs))
    return runs


def _layer_run(fn, args, dtype, lengths, reverse, nonlinearity="tanh", **kwargs):
    """[output, h_n, grads of all six arguments] of one layer; cotangents fixed by a seed."""
    leaves_ = [a.detach().to(dtype).requires_grad_() for a in args]
    out, h_n = fn(*leaves_, lengths, nonlinearity, reverse, **kwargs)
    generator = torch.Generator().manual_seed(17)
    d_out = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(dtype)
    d_h_n = torch.randn(h_n.shape, generator=generator, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad((out, h_n), leaves_, (d_out, d_h_n))
    return [out.detach(), h_n.detach(), *grads]


# --- randomized truncation ----------------------------------------------------------------------

SEED_WITH_HIGH_BITS = 0x0000_7A3B_1234_5678  # high 32 bits non-zero: both key words matter


def _philox_scales_for(case: RNNCase, keep_prob: float, seed: int, lengths=None):
    """[L, D, T, B] draws of numpy Philox, processing order, batch order of `lengths`."""
    directions = 2 if case.bidirectional else 1
    return torch.stack([
        torch.stack([philox_edge_scales(case.seq_len, case.batch, keep_prob, seed, layer,
                                        direction == 1, lengths)
                     for direction in range(directions)])
        for layer in range(case.num_layers)])


RANDOM_CASES = {
    "2layer-bi-padded-hx": RNNCase(num_layers=2, bidirectional=True, with_hx=True, seq_len=STEPS,
                                   batch=3, input_size=3, hidden_size=5),
    "3layer-relu-batchfirst": RNNCase(num_layers=3, batch_first=True, nonlinearity="relu",
                                      seq_len=6, batch=2, input_size=2, hidden_size=4),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("keep_prob", [0.3, 0.7, 1.0])
@pytest.mark.parametrize("case", list(RANDOM_CASES))
def test_random_truncation_matches_loop_with_numpy_philox_draws(case, keep_prob, dtype, backend):
    """Reference draws from the numpy Philox of bptt_reference.py, applied by gradient
    hooks; ours draws inside the kernels."""
    rnn_case = RANDOM_CASES[case]
    torch_module, input, hx = _random_leaves(rnn_case)
    scales = _philox_scales_for(rnn_case, keep_prob, SEED_WITH_HIGH_BITS)
    if keep_prob < 1:
        assert (scales == 0).any() and (scales > 1).any()
    expected, stocks = reference_runs(torch_module, input, hx, cotangents(6), dtype,
                                      edge_scales=scales)
    truncation = rnn_fused.RandomTruncation(keep_prob=keep_prob, seed=SEED_WITH_HIGH_BITS)
    ours, _ = run_ours(ours_from(torch_module, dtype, backend, truncation=truncation), input, hx,
                       cotangents(6), dtype)
    assert_results_match(expected, stocks, ours, dtype,
                         what=f" (RandomTruncation({keep_prob}, seed={SEED_WITH_HIGH_BITS:#x}))")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_random_truncation_packed_unsorted_matches_loop_with_recorded_draws(dtype, backend):
    """PackedSequence with enforce_sorted=False: the draws the recorder reports
    (rec.edge_scales, processing order, caller's batch order) applied by hooks give ours'
    gradients; they are 1/p or 0 on every edge, 1 on the edge from h_0, and differ between
    layers and directions."""
    rnn_case = CASES["2layer-bi-unsorted-tanh-hx"]
    torch_module, input, hx = _random_leaves(rnn_case)
    keep_prob = 0.5
    truncation = rnn_fused.RandomTruncation(keep_prob=keep_prob, seed=77)
    ours, recorder = run_ours(ours_from(torch_module, dtype, backend, truncation=truncation), input,
                              hx, cotangents(8), dtype, record=True)
    scales = recorder.edge_scales.double()
    lengths = _caller_lengths(input)
    assert scales.shape == (2, 2, STEPS, 3)
    edges = edge_steps(STEPS, 3, lengths).expand_as(scales)
    assert set(scales[edges].double().unique().tolist()) <= {0.0, 1 / keep_prob}
    assert (scales[edges] == 0).any() and (scales[edges] != 0).any()
    assert (scales[:, :, 0] == 1).all()
    assert not torch.equal(scales[0, 0][edges[0, 0]], scales[0, 1][edges[0, 1]])
    assert not torch.equal(scales[0, 0][edges[0, 0]], scales[1, 0][edges[1, 0]])
    expected, stocks = reference_runs(torch_module, input, hx, cotangents(8), dtype,
                                      edge_scales=torch.where(edges, scales.double(), 1.0))
    assert_results_match(expected, stocks, ours, dtype, what=" (recorded draws)")


def _caller_lengths(packed):
    from torch.nn.utils.rnn import pad_packed_sequence
    return pad_packed_sequence(packed)[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_truncation_reports_the_philox_draws(backend):
    """rec.edge_scales and rnn_fused.edge_scales equal the numpy Philox draws exactly."""
    rnn_case = RANDOM_CASES["2layer-bi-padded-hx"]
    torch_module, input, hx = _random_leaves(rnn_case)
    truncation = rnn_fused.RandomTruncation(keep_prob=0.4, seed=SEED_WITH_HIGH_BITS)
    _, recorder = run_ours(ours_from(torch_module, torch.float32, backend, truncation=truncation),
                           input, hx, cotangents(6), torch.float32, record=True)
    expected = _philox_scales_for(rnn_case, 0.4, SEED_WITH_HIGH_BITS)
    edges = edge_steps(rnn_case.seq_len, rnn_case.batch)
    for layer in range(rnn_case.num_layers):
        for direction in range(2):
            recorded = recorder.edge_scales[layer, direction].double()
            assert torch.equal(recorded[edges], expected[layer, direction][edges]), (layer, direction)
            assert (recorded[0] == 1).all()
    assert recorder.seed == SEED_WITH_HIGH_BITS


@pytest.mark.parametrize("layer,reverse", [(0, False), (0, True), (1, False), (3, True)])
@pytest.mark.parametrize("lengths", [None, [6, 1, 4, 0, 6]])
@pytest.mark.parametrize("seed", [0, 1, 12345, SEED_WITH_HIGH_BITS, 2**63 - 1])
def test_edge_scales_equal_numpy_philox(seed, lengths, layer, reverse):
    steps, batch, keep_prob = 6, 5, 0.35
    lengths = None if lengths is None else torch.tensor(lengths)
    truncation = rnn_fused.RandomTruncation(keep_prob=keep_prob, seed=seed)
    got = rnn_fused.edge_scales(steps, batch, truncation, layer=layer, reverse=reverse,
                                lengths=lengths)
    expected = philox_edge_scales(steps, batch, keep_prob, seed, layer, reverse, lengths)
    assert got.shape == (steps, batch) and got.dtype == torch.float64
    edges = edge_steps(steps, batch, lengths)
    assert torch.equal(got[edges], expected[edges])
    # the edge from h_0 into step 0 keeps scale 1 (a sample of length 0 has no step 0)
    assert (got[0][valid_steps(steps, batch, lengths)[0]] == 1).all()


@pytest.mark.parametrize("truncation", [None, 1, 2, 4, 6, 9])
def test_edge_scales_of_truncation_k(truncation):
    lengths = torch.tensor([6, 3, 1])
    got = rnn_fused.edge_scales(6, 3, truncation, layer=1, reverse=True, lengths=lengths)
    expected = (torch.ones(6, 3, dtype=torch.float64) if truncation is None
                else truncation_scales(6, 3, truncation))
    edges = edge_steps(6, 3, lengths)
    assert got.dtype == torch.float64 and got.shape == (6, 3)
    assert torch.equal(got[edges], expected[edges])
    assert (got[0] == 1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_gives_bitwise_equal_gradients_and_other_seeds_differ(backend):
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-tanh-hx"])

    def gradients(seed):
        truncation = rnn_fused.RandomTruncation(keep_prob=0.5, seed=seed)
        results, _ = run_ours(ours_from(torch_module, torch.float32, backend, truncation=truncation),
                              input, hx, cotangents(5), torch.float32)
        return [results[k] for k in gradient_keys(results)]

    first, again, other = gradients(21), gradients(21), gradients(22)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_same_seed_gives_the_same_draws_on_both_backends():
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-tanh-hx"])
    recorded = []
    for backend in BACKENDS:
        truncation = rnn_fused.RandomTruncation(keep_prob=0.5, seed=5)
        _, recorder = run_ours(ours_from(torch_module, torch.float64, backend, truncation=truncation),
                               input, hx, cotangents(5), torch.float64, record=True)
        recorded.append(recorder.edge_scales.double())
    lengths = _caller_lengths(input)
    edges = edge_steps(STEPS, 3, lengths).expand_as(recorded[0])
    assert torch.equal(recorded[0][edges], recorded[1][edges])


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_none_draws_from_torch_default_generator(backend):
    """seed=None: a fresh seed per forward from torch's default CPU generator; reported by
    the recorder; torch.manual_seed makes the run reproducible; the reported seed
    reproduces the run."""
    torch_module, input, hx = _random_leaves(CASES["2layer-bi-unsorted-tanh-hx"])
    model = ours_from(torch_module, torch.float32, backend,
                      truncation=rnn_fused.RandomTruncation(keep_prob=0.5))

    def run(**kwargs):
        results, recorder = run_ours(model, input, hx, cotangents(5), torch.float32, record=True,
                                     **kwargs)
        return [results[k] for k in gradient_keys(results)], recorder

    torch.manual_seed(123)
    first, first_recorder = run()
    torch.manual_seed(123)
    again, again_recorder = run()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    seed = first_recorder.seed
    assert isinstance(seed, int) and again_recorder.seed == seed
    replayed, _ = run(truncation=rnn_fused.RandomTruncation(keep_prob=0.5, seed=seed))
    assert all(torch.equal(a, b) for a, b in zip(first, replayed))
    # the next forward draws a fresh seed
    torch.manual_seed(123)
    seeds = []
    with on_backend(backend), rnn_fused.record_gradients(model) as recorder:
        for _ in range(2):
            x, h = leaves(input, hx, torch.float32)
            output, h_n = model(x, h)
            (output.data.sum() + h_n.sum()).backward()
            seeds.append(recorder.seed)
    assert seeds[0] == seed and seeds[1] != seed and len(recorder.records) == 2


def test_recorder_reports_no_seed_without_random_truncation():
    torch_module, input, hx = _random_leaves(CASES["1layer-bi-padded-nobias"])
    for truncation in (None, 3):
        _, recorder = run_ours(ours_from(torch_module, torch.float64, "cpu", truncation=truncation),
                               input, hx, cotangents(5), torch.float64, record=True)
        assert recorder.seed is None


# --- unbiasedness ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_truncation_is_unbiased(backend):
    """Mean over many seeds of ours' gradients vs full BPTT from autograd: within five
    standard errors (of the sample mean) per element, float64."""
    generator = torch.Generator().manual_seed(8)
    torch.manual_seed(8)
    torch_module = nn.RNN(2, 3, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 2, generator=generator, dtype=torch.float64)
    expected, _ = reference_runs(torch_module, x, None, cotangents(2), torch.float64)
    model = ours_from(torch_module, torch.float64, backend)
    samples = []
    with on_backend(backend):
        for seed in range(400):
            truncation = rnn_fused.RandomTruncation(keep_prob=0.5, seed=seed)
            results, _ = run_ours(model, x, None, cotangents(2), torch.float64, truncation=truncation)
            samples.append(torch.cat([results[k].flatten() for k in gradient_keys(results)]))
    full = torch.cat([expected[k].flatten() for k in gradient_keys(expected)])
    passed, report = mean_within_confidence(torch.stack(samples), full)
    assert passed, report


# --- where truncation is set -----------------------------------------------------------------


def test_module_constructor_and_attribute():
    model = rnn_fused.RNN(3, 4, 2, truncation=5)
    assert model.truncation == 5
    assert rnn_fused.RNN(3, 4).truncation is None
    random = rnn_fused.RandomTruncation(keep_prob=0.25, seed=3)
    assert rnn_fused.RNN(3, 4, truncation=random).truncation is random
    assert (random.keep_prob, random.seed) == (0.25, 3)
    assert rnn_fused.RandomTruncation(keep_prob=0.5).seed is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_call_truncation_overrides_the_module_setting(backend):
    rnn_case = CASES["2layer-bi-unsorted-tanh-hx"]
    torch_module, input, hx = _random_leaves(rnn_case)
    dtype = torch.float64
    model = ours_from(torch_module, dtype, backend, truncation=3)

    def reference(**kwargs):
        expected, stocks = reference_runs(torch_module, input, hx, cotangents(5), dtype, **kwargs)
        return expected, stocks

    ours, _ = run_ours(model, input, hx, cotangents(5), dtype, truncation=2)
    assert_results_match(*reference(truncation=2), ours, dtype, what=" (per call: 2)")
    random = rnn_fused.RandomTruncation(keep_prob=0.6, seed=4)
    ours, recorder = run_ours(model, input, hx, cotangents(5), dtype, truncation=random, record=True)
    edges = edge_steps(STEPS, 3, _caller_lengths(input)).expand_as(recorder.edge_scales)
    assert_results_match(*reference(edge_scales=torch.where(edges, recorder.edge_scales.double(), 1.0)),
                         ours, dtype, what=" (per call: random)")
    # the override does not stick
    assert model.truncation == 3
    ours, _ = run_ours(model, input, hx, cotangents(5), dtype)
    assert_results_match(*reference(truncation=3), ours, dtype, what=" (module setting)")


@pytest.mark.parametrize("truncation", [1, 3, "random"])
def test_functional_rnn_truncation(truncation):
    """rnn_fused.functional.rnn(..., truncation=...) on time-major padded input with lengths."""
    generator = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    steps, batch, num_layers = 6, 3, 2
    torch_module = nn.RNN(3, 4, num_layers, bidirectional=True).double()
    x = torch.randn(steps, batch, 3, generator=generator, dtype=torch.float64)
    hx = torch.randn(num_layers * 2, batch, 4, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([4, 6, 2])
    scales = None
    if truncation == "random":
        case = RNNCase(num_layers=num_layers, bidirectional=True, seq_len=steps, batch=batch)
        scales = _philox_scales_for(case, 0.5, 31, lengths)
        truncation = rnn_fused.RandomTruncation(keep_prob=0.5, seed=31)

    def run(fn, **kwargs):
        weights = [[w.detach().clone().requires_grad_() for w in group]
                   for group in torch_module.all_weights]
        x_leaf, h_leaf = x.clone().requires_grad_(), hx.clone().requires_grad_()
        out, h_n = fn(x_leaf, h_leaf, weights, num_layers, True, "tanh", lengths=lengths, **kwargs)
        g = torch.Generator().manual_seed(0)
        grads = torch.autograd.grad(
            (out, h_n), [x_leaf, h_leaf, *[w for group in weights for w in group]],
            (torch.randn(out.shape, generator=g, dtype=torch.float64),
             torch.randn(h_n.shape, generator=g, dtype=torch.float64)))
        return [out, h_n, *grads]

    ours = run(rnn_fused.functional.rnn, truncation=truncation)
    expected = run(reference_rnn, truncation=None if scales is not None else truncation,
                   edge_scales=scales)
    for index, (e, o) in enumerate(zip(expected, ours)):
        result = measure(e, e, o, name=f"result {index}", ulps=ulps_for(torch.float64))
        assert result.passed, str(result)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layer,reverse", [(0, False), (1, True), (2, False)])
def test_rnn_layer_random_truncation_keys_layer_and_direction(layer, reverse, dtype, backend):
    """rnn_fused.rnn_layer(..., truncation=RandomTruncation, layer=l) draws with the counter
    (s, b, 2 l + direction, 0)."""
    generator = torch.Generator().manual_seed(6)
    steps, batch, input_size, hidden = 7, 3, 2, 5
    lengths = torch.tensor([7, 3, 5])
    args = _layer_args(steps, batch, input_size, hidden, generator)
    scales = philox_edge_scales(steps, batch, 0.5, 99, layer, reverse, lengths)
    expected = _layer_run(reference_direction, args, torch.float64, lengths, reverse, scales=scales)
    stocks = _layer_stocks(args, dtype, lengths, reverse, scales=scales)
    truncation = rnn_fused.RandomTruncation(keep_prob=0.5, seed=99)
    with on_backend(backend):
        ours = _layer_run(_rnn_layer(backend, truncation=truncation, layer=layer), args, dtype,
                          lengths, reverse)
    for name, e, s, o in zip(_LAYER_NAMES, expected, zip(*stocks), ours):
        result = measure(e, s, o, name=name, ulps=ulps_for(dtype))
        assert result.passed, str(result)


# --- validation --------------------------------------------------------------------------------

BAD_VALUES = [(0, ValueError), (-1, ValueError), (-7, ValueError), (2.5, TypeError),
              ("5", TypeError), (True, TypeError), (False, TypeError), (3.0, TypeError)]


def _check_message(error: Exception, value) -> None:
    message = str(error)
    assert "truncation" in message, message
    if isinstance(error, ValueError):
        assert str(value) in message, message
        assert any(allowed in message for allowed in (">= 1", "positive", "at least 1", "None",
                                                        "RandomTruncation")), message


@pytest.mark.parametrize("value,error", BAD_VALUES, ids=[repr(v) for v, _ in BAD_VALUES])
def test_bad_truncation_raises_everywhere_it_is_set(value, error):
    with pytest.raises(error) as info:
        rnn_fused.RNN(3, 4, truncation=value)
    _check_message(info.value, value)

    model = rnn_fused.RNN(3, 4, 2)
    x = torch.randn(5, 2, 3)
    out, h_n = model(x)
    (out.sum() + h_n.sum()).backward()
    grads_before = {name: p.grad.clone() for name, p in model.named_parameters()}
    with pytest.raises(error) as info:
        model(x, truncation=value)
    _check_message(info.value, value)
    with pytest.raises(error) as info:
        model(x, None, truncation=value)
    _check_message(info.value, value)
    # an attribute set to a bad value is rejected when set or at the latest at the forward
    with pytest.raises(error) as info:
        model.truncation = value
        model(x)
    _check_message(info.value, value)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, grads_before[name]), name

    weights = [[w.detach() for w in group] for group in model.all_weights]
    with pytest.raises(error) as info:
        rnn_fused.functional.rnn(x, None, weights, 2, False, "tanh", truncation=value)
    _check_message(info.value, value)
    with pytest.raises(error) as info:
        rnn_fused.rnn_layer(x, None, *weights[0], truncation=value)
    _check_message(info.value, value)
    with pytest.raises(error) as info:
        rnn_fused.edge_scales(5, 2, value)
    _check_message(info.value, value)


@pytest.mark.parametrize("keep_prob", [0, 0.0, 1.5, -0.1, 1.0000001, math.nan, math.inf])
def test_keep_prob_outside_unit_interval_raises_value_error(keep_prob):
    with pytest.raises(ValueError) as info:
        rnn_fused.RandomTruncation(keep_prob=keep_prob, seed=0)
    assert "keep_prob" in str(info.value)
    assert str(keep_prob) in str(info.value)


@pytest.mark.parametrize("keep_prob", [1, 1.0, 0.5, 1e-6])
def test_keep_prob_in_unit_interval_is_accepted(keep_prob):
    assert rnn_fused.RandomTruncation(keep_prob=keep_prob, seed=0).keep_prob == keep_prob


@pytest.mark.parametrize("keep_prob", ["0.5", None])
def test_keep_prob_of_wrong_type_raises_type_error(keep_prob):
    with pytest.raises(TypeError, match="keep_prob"):
        rnn_fused.RandomTruncation(keep_prob=keep_prob, seed=0)


@pytest.mark.parametrize("seed", ["1", 1.5, 2.0, [1]])
def test_seed_of_wrong_type_raises_type_error(seed):
    with pytest.raises(TypeError, match="seed"):
        rnn_fused.RandomTruncation(keep_prob=0.5, seed=seed)


def test_failed_backward_setup_leaves_grads_untouched_for_packed_input():
    """A bad per-call truncation with a PackedSequence raises before anything runs."""
    model = rnn_fused.RNN(2, 3, bidirectional=True)
    x = torch.randn(4, 3, 2)
    packed = pack_padded_sequence(x, torch.tensor([2, 4, 3]), enforce_sorted=False)
    out, h_n = model(packed)
    (out.data.sum() + h_n.sum()).backward()
    before = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(ValueError):
        model(packed, truncation=0)
    with pytest.raises(TypeError):
        model(packed, truncation=1.5)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("truncation", [1, 3, "random"])
def test_unbatched_input(truncation, backend):
    """A 2-D input is one sample: the same gradients as the batched reference on it."""
    torch.manual_seed(0)
    torch_module = nn.RNN(2, 4, 2, bidirectional=True).double()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    case = RNNCase(num_layers=2, bidirectional=True, seq_len=6, batch=1)
    scales = None
    if truncation == "random":
        scales = _philox_scales_for(case, 0.5, 8)
        truncation = rnn_fused.RandomTruncation(keep_prob=0.5, seed=8)
    reference = BPTTReferenceRNN.from_module(torch_module)
    reference.truncation = None if scales is not None else truncation
    reference.edge_scales = scales
    expected = run_rnn(reference, x.unsqueeze(1).requires_grad_(), None, cotangents(2))
    model = ours_from(torch_module, torch.float64, backend, truncation=truncation)
    with on_backend(backend):
        x_leaf = x.clone().requires_grad_()
        output, h_n = model(x_leaf)
        drawn = cotangents(2)(output.unsqueeze(1), h_n.unsqueeze(1))
        torch.autograd.backward([output, h_n], [drawn[0].squeeze(1), drawn[1].squeeze(1)])
    ours = {"output": output.detach().unsqueeze(1), "h_n": h_n.detach().unsqueeze(1),
            "grad_input": x_leaf.grad.unsqueeze(1),
            **{f"grad_{name}": p.grad for name, p in model.named_parameters()}}
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        result = measure(value, value, ours[key], name=key, ulps=ulps_for(torch.float64))
        assert result.passed, str(result)
