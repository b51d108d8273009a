"""A layer's batch split into launches where the cost model prices that faster
(launch_plan.batch_pieces, functional._split_layer): the planner's choice on the emulated H200,
whose clusters of 16 CTAs fit 7 at a time as on the GPU, and the split layer's results and
gradients against the float64 reference on the emulated kernels."""

from __future__ import annotations

import re

import pytest
import torch

import rnn_fused
from rnn_fused import _ops, functional, launch_plan, simt
from rnn_fused.launch_plan import batch_pieces, plan, split_layer_us
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import assert_within_tolerance, layer_args
from rnn_fused.truncation import TruncationArgs


def test_a_partly_empty_last_wave_gets_a_launch_of_its_own():
    """H = 1024, B = 32 on the emulated H200: 16 groups of 2 samples in 3 waves of 7 clusters
    (the last holds 2); 28 samples in 7 groups of 4 and the other 4 in 4 groups of 1 take one
    wave each, and the model prices the two layers, copies included, faster than the one."""
    simt.reset_device_properties()
    whole = plan(1024, 32)
    assert (whole.path, whole.samples, whole.groups, whole.waves) == ("cluster", 2, 16, 3)
    first, rest = plan(1024, 28), plan(1024, 4)
    assert (first.samples, first.groups, first.waves) == (4, 7, 1)
    assert (rest.samples, rest.groups, rest.waves) == (1, 4, 1)
    assert batch_pieces(1000, 32, 1024, 1024) == (28, 4)  # of 25-28 first, priced alike, the most
    assert split_layer_us(1000, (28, 4), 1024, 1024) < split_layer_us(1000, (32,), 1024, 1024)
    # With the backward: 25 + 7, each in one wave both ways (dW_hh's chunk launches differ by piece).
    pieces = batch_pieces(1000, 32, 1024, 1024, backward=True)
    assert pieces == (25, 7)
    assert all(plan(1024, b, backward=backward).waves == 1 for b in pieces for backward in (False, True))
    assert (sum(split_layer_us(1000, pieces, 1024, 1024, backward=backward) for backward in (False, True))
            < sum(split_layer_us(1000, (32,), 1024, 1024, backward=backward) for backward in (False, True)))


def test_no_split_where_the_groups_fit_or_a_split_gains_nothing():
    simt.reset_device_properties()
    assert not launch_plan.runs_in_waves(64, 8) and batch_pieces(1000, 8, 64, 64, backward=True) == (8,)
    assert launch_plan.runs_in_waves(1024, 32) and launch_plan.runs_in_waves(1024, 128)
    # 32 groups of 4 in 5 waves; any two pieces take as many waves of 4-sample groups.
    assert plan(1024, 128).waves == 5 and batch_pieces(1000, 128, 1024, 1024) == (128,)
    # Five steps do not repay a second layer op's fixed cost.
    assert batch_pieces(5, 32, 1024, 1024) == (32,)
    with simt.emulated_device(sms_per_gpc=0):  # no GPCs: 8 clusters of 16 fit, 4-sample groups in one wave
        assert plan(1024, 32).waves == 1 and batch_pieces(1000, 32, 1024, 1024) == (32,)
    assert batch_pieces(1000, 32, 1024, 1024) == (28, 4)  # the device's change dropped the cached answers


def test_split_copies_are_priced():
    whole = split_layer_us(100, (32,), 512, 1024)
    pieces = [launch_plan.predicted_layer_us("planned", 100, b, 512, 1024) for b in (20, 12)]
    copies = 2.0 * 100 * 32 * (512 + 1024) * 4 / launch_plan.cost_constants()["memory_bytes_per_us"]
    assert split_layer_us(100, (20, 12), 512, 1024) == pytest.approx(sum(pieces) + copies, rel=1e-12)
    assert whole == pytest.approx(launch_plan.predicted_layer_us("planned", 100, 32, 512, 1024), rel=1e-12)


def _forced_pieces(monkeypatch, pieces):
    """Every call that may split takes `pieces`; returns the list of the layer ops' batch sizes."""
    monkeypatch.setattr(launch_plan, "runs_in_waves", lambda *args, **kwargs: True)
    monkeypatch.setattr(launch_plan, "batch_pieces", lambda *args, **kwargs: pieces)
    batches = []
    real = _ops.layer_forward

    def counting(inputs, options):
        batches.append(inputs.input.shape[1])
        return real(inputs, options)

    monkeypatch.setattr(_ops, "layer_forward", counting)
    return batches


@pytest.mark.parametrize("truncation", [None, 2], ids=["full", "every-2"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 0, 3, 4]], ids=["full-length", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_a_split_layer_matches_the_float64_reference(monkeypatch, truncation, lengths, reverse):
    """Pieces of 3 and 2 samples, each its own layer op on the emulated kernels: output, h_n and
    every gradient within the tolerance rule of the float64 step loop (the same truncation)."""
    batches = _forced_pieces(monkeypatch, (3, 2))
    steps, batch, inputs, hidden = 4, 5, 3, 7
    lengths = None if lengths is None else torch.tensor(lengths)
    reference_args = layer_args(steps, batch, inputs, hidden, requires_grad=True)
    stock_args = [a.detach().float().requires_grad_() for a in reference_args]
    ours_args = [a.detach().float().requires_grad_() for a in reference_args]
    g = torch.Generator().manual_seed(3)
    cotangents = (torch.randn(steps, batch, hidden, generator=g, dtype=torch.float64),
                  torch.randn(batch, hidden, generator=g, dtype=torch.float64))
    scales = None
    if truncation is not None:
        scales = torch.ops.rnn_fused.edge_scales(steps, batch, truncation, 1.0, 0, 0, reverse)

    def reference(args):
        cast = None if scales is None else scales.to(args[0].dtype)
        out = reference_layer(*args, lengths, "tanh", reverse, cast)
        return list(out) + list(torch.autograd.grad(out, args, [c.to(args[0].dtype) for c in cotangents]))

    out = rnn_fused.rnn_layer(*ours_args, lengths, "tanh", reverse, backend="emulated", truncation=truncation)
    ours = list(out) + list(torch.autograd.grad(out, ours_args, [c.float() for c in cotangents]))
    assert batches == [3, 2]
    names = ("output", "h_n", "grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih",
             "grad_bias_hh")
    for name, r, s, o in zip(names, reference(reference_args), reference(stock_args), ours, strict=True):
        assert_within_tolerance(r, s, o, name=name)


def test_what_is_never_split(monkeypatch):
    """A forced path, half the SMs, randomized truncation (its draws follow the sample's index) and
    recorded norms (one sink per layer) run the whole batch in one op; so do the CPU loops."""
    _forced_pieces(monkeypatch, (3, 2))
    x, hx, *weights = layer_args(4, 5, 3, 7, dtype=torch.float32)
    full = TruncationArgs()

    def pieces(x=x, backend="emulated", path=None, truncation=full, sink=None, side_by_side=1, lengths=None):
        return functional._batch_pieces(x, hx, weights, lengths, backend, path, truncation, sink, side_by_side)

    assert pieces() == (3, 2)
    assert pieces(truncation=TruncationArgs(every=2)) == (3, 2)
    assert pieces(path="block") == (5,)
    assert pieces(side_by_side=2) == (5,)
    assert pieces(truncation=TruncationArgs(0, 0.5, 7)) == (5,)
    assert pieces(sink=object()) == (5,)
    assert pieces(backend=None) == (5,)  # a CPU input on the CPU loops
    assert pieces(x=x[:, :1]) == (1,)
    # Arguments the op rejects are left whole, for its own message.
    assert pieces(lengths=torch.tensor([1, 2])) == (5,)
    with pytest.raises(RuntimeError) as whole:
        functional._one_layer(x, hx[:2], *weights, None, "tanh", False, "emulated", None, full, 0, None, 1)
    with pytest.raises(RuntimeError, match=f"^{re.escape(str(whole.value))}$"):
        rnn_fused.rnn_layer(x, hx[:2], *weights, backend="emulated")


def test_a_split_is_logged_once_per_shape(caplog):
    key = ("cuda:0", torch.float32, 1000, 32, 1024, 1024, True)
    with caplog.at_level("INFO", logger="rnn_fused"):
        assert launch_plan.log_split_once((25, 7), key)
        assert not launch_plan.log_split_once((25, 7), key)
    assert [r.getMessage() for r in caplog.records] == [
        f"rnn_fused: {key}: the layer's batch runs as 2 layer ops of 25 + 7 samples, one after the other: the cost "
        "model prices that faster than one launch whose last wave holds few sample groups"]
