"""Truncation and gradient norms at the level of the single-layer ops, on every backend.

The emulated CUDA kernels run on every recurrence path (block; cluster and grid with several
CTAs per sample group adding their partial norms; stepwise), under every emulator schedule;
the CPU loops run the same cases. References: autograd through reference.py's step loop with
the same edge scales (float64), and hooks on its states.
Module-level semantics (detach loops, packed input, statistics) are in
test_truncation.py and test_gradient_norms.py.
"""

from __future__ import annotations

import pytest
import torch

import rnn_fused
from rnn_fused import _ops, launch_plan, simt
from rnn_fused.recording import fused_sq_norm
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance
from rnn_fused.truncation import RandomTruncation, TruncationArgs, resolve_truncation

from rnn_cases import (EMULATED_PATHS, assert_close64, assert_norm_partials_match, layer_args, norm_partials_case,
                        run_layer_op)

OPS = torch.ops.rnn_fused
TRUNCATIONS = {"full": None, "K1": 1, "K2": 2, "K4": 4, "random": RandomTruncation(0.6, seed=11)}
# steps, batch, input, hidden, nonlinearity, reverse, lengths
CASES = [
    (6, 3, 4, 9, "tanh", False, [6, 2, 4]),
    (6, 3, 4, 9, "relu", True, [5, 6, 0]),
    (5, 2, 3, 33, "tanh", True, None),
]


def _reference(args, lengths, nonlinearity, reverse, scales, cotangents, monkeypatch):
    """Float64 autograd through the step loop with edge scales, plus the norm of the
    gradient arriving at every state (a hook on each h_t), by time step."""
    leaves = [None if a is None else a.detach().double().requires_grad_() for a in args]
    steps, batch = args[0].shape[:2]
    norms = torch.zeros(steps, batch, dtype=torch.float64)
    states = []
    original = torch.tanh if nonlinearity == "tanh" else torch.relu

    calls = []

    def act(z):  # the activation's outputs are the states h_s, in processing order
        h = original(z)
        h.register_hook(lambda g, s=len(calls): states.append((s, g.norm(dim=1))))
        calls.append(None)
        return h

    import rnn_fused.reference as reference
    with monkeypatch.context() as patch:
        patch.setattr(reference, "activation_fn", lambda name: act)
        out, h_n = reference_layer(*leaves, lengths, nonlinearity, reverse, scales)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, cotangents)
    lengths_list = [steps] * batch if lengths is None else lengths.tolist()
    for s, norm in states:
        for b in range(batch):
            if s < lengths_list[b]:
                t = lengths_list[b] - 1 - s if reverse else s
                norms[t, b] = norm[b]
    return grads, norms


def _run_op(args, lengths, nonlinearity, reverse, truncation_args, backend, cotangents, layer=0, path=None):
    return run_layer_op(args, lengths, nonlinearity, reverse, truncation_args, cotangents, layer, path, backend)


@pytest.mark.parametrize("capability", [(9, 0), (8, 0)], ids=["sm90", "sm80"])
@pytest.mark.parametrize("truncation", list(TRUNCATIONS), ids=list(TRUNCATIONS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_truncated_gradients_and_norms_match_step_loop(case, truncation, capability, monkeypatch):
    """CPU op and emulated kernels on every path (2-SM device, H100/H200-like and A100-like)
    vs float64 autograd with the same edge scales; the emulated kernels are bitwise equal
    under forward, reverse and shuffled schedules. Without clusters (8.0) the cluster path is
    refused with the reason."""
    steps, batch, input_size, hidden, nonlinearity, reverse, lengths = case
    lengths = None if lengths is None else torch.tensor(lengths)
    layer = 1
    args = [a.double() if a is not None else None
            for a in layer_args(steps, batch, input_size, hidden, bias=True, hx=True)]
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    targs = resolve_truncation(TRUNCATIONS[truncation])
    scales = rnn_fused.edge_scales(steps, batch, TRUNCATIONS[truncation], layer=layer, reverse=reverse)
    ref_grads, ref_norms = _reference(args, lengths, nonlinearity, reverse, scales, cotangents, monkeypatch)
    # (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias [2,H]: b_ih's and b_hh's) vs the leaves'
    # order (input, hx, w_ih, w_hh, b_ih, b_hh).
    results = {"cpu": _run_op(args, lengths, nonlinearity, reverse, targs, "cpu", cotangents, layer)}
    paths = [p for p in EMULATED_PATHS if capability >= (9, 0) or p != "cluster"]
    with simt.emulated_device(sm_count=2, compute_capability=capability):
        if capability < (9, 0):
            with pytest.raises(ValueError, match="path 'cluster' cannot run .*compute capability 9.0"):
                _run_op(args, lengths, nonlinearity, reverse, targs, "emulated", cotangents, layer, "cluster")
        for path in paths:
            for mode in ("forward", "reverse", "shuffle"):
                with simt.schedule(mode, seed=5):
                    results[path, mode] = _run_op(args, lengths, nonlinearity, reverse, targs, "emulated",
                                                  cotangents, layer, path)
    for name, result in results.items():
        grads, step_norms, sq_norms, nonfinite = result[:5], result[5], result[6], result[7]
        for got, want in zip(grads, [*ref_grads[:4], torch.stack(ref_grads[4:6])], strict=True):
            assert_close64(got, want)
        assert_close64(step_norms, ref_norms)
        # (the bias's squared norm: one parameter's, one row)
        expected_sq = torch.stack([gr.pow(2).sum() for gr in (*grads[:4], grads[4][0])])
        assert_close64(sq_norms, expected_sq)
        assert not nonfinite.item(), name
    for path in paths:
        for mode in ("reverse", "shuffle"):
            assert all(torch.equal(a, b) for a, b in zip(results[path, "forward"], results[path, mode])), (path, mode)


@pytest.mark.parametrize("path", EMULATED_PATHS)
def test_norm_partials_of_every_path_agree_with_cpu(path):
    """Every path reduces the same norms (float32, H = 40; on the grid path spread over two
    CTAs per sample group) as the CPU loop, to float32 rounding."""
    args, lengths, cot, targs = norm_partials_case()
    cpu = _run_op(args, lengths, "tanh", False, targs, "cpu", cot)
    # On the grid path, too little shared memory for the 40 rows in one CTA: two per group.
    device = dict(sm_count=2, shared_mem_per_block=6000, shared_mem_per_block_optin=6000) if path == "grid" else \
        dict(sm_count=2)
    with simt.emulated_device(**device):
        emulated = _run_op(args, lengths, "tanh", False, targs, "emulated", cot, path=path)
        plan = rnn_fused.plan(40, 3, backward=True, path=path)
    assert plan.path == path and (path != "grid" or plan.ctas_per_group > 1)
    assert_norm_partials_match(emulated[5], cpu[5])


@pytest.mark.parametrize("truncation", ["full", "K2", "random"])
@pytest.mark.parametrize("path", ["block", "cluster"])
def test_norms_are_summed_after_the_plain_backward(path, truncation):
    """On a kernel compiled for its passes, a backward that records norms runs the kernel's plain
    copy, which stores each g_t, then one launch of step_norms_kernel sums them (deferred
    norms); with its passes read at run time (no plain copy) the general kernel sums them in its
    steps. Both agree with the CPU loop to float32 rounding, zero past each sample's length; the
    deferred run's gradients are bitwise those of the same backward recording nothing, and every
    result is bitwise the same under a shuffled schedule."""
    args, lengths, cot, _ = norm_partials_case()
    targs = resolve_truncation(TRUNCATIONS[truncation])
    cpu = _run_op(args, lengths, "tanh", False, targs, "cpu", cot)
    for run_time in (False, True):
        runs = {}
        with simt.emulated_device(sm_count=2), launch_plan.forced_tiling(run_time_passes=run_time):
            plan = rnn_fused.plan(40, 3, backward=True, path=path)
            assert plan.path == path and (plan.compiled_passes == 0) == run_time, plan.reason
            for mode in ("forward", "shuffle"):
                with simt.schedule(mode, seed=3), simt.recording_launches() as launches:
                    runs[mode] = _run_op(args, lengths, "tanh", False, targs, "emulated", cot, path=path)
                recurrence = [name for name in launches if name.startswith("backward_recurrence_kernel<")]
                assert len(recurrence) == 1, launches
                if run_time:  # the general kernel, no launch after it
                    assert recurrence[0].endswith(", 0>") and "step_norms_kernel" not in launches, launches
                else:
                    after = launches[launches.index(recurrence[0]) + 1]
                    assert recurrence[0].endswith(", true>") and after == "step_norms_kernel", launches
            inputs = _ops.LayerInputs(*args, lengths)
            options = _ops.LayerOptions.make("tanh", False, targs, 0, "emulated", path)
            out, _ = _ops.layer_forward(inputs, options)
            unrecorded = _ops.layer_backward(cot[0], cot[1], out, [True] * 5, False, inputs, options)
        assert all(torch.equal(a, b) for a, b in zip(runs["forward"], runs["shuffle"], strict=True))
        assert_norm_partials_match(runs["forward"][5], cpu[5])
        if not run_time:
            assert all(torch.equal(a, b) for a, b in zip(runs["forward"][:5], unrecorded[:5], strict=True))


@pytest.mark.parametrize("backend", ["cpu", "emulated"])
def test_cut_edge_stops_nan_like_detach(backend):
    """A NaN gradient arriving after a cut edge stays there (a detached state passes
    nothing back, not 0 * NaN); the flag reports it."""
    steps, batch, hidden = 6, 2, 5
    args = layer_args(steps, batch, 3, hidden, bias=False, hx=True, dtype=torch.float32)
    dy = torch.zeros(steps, batch, hidden)
    dy[5, 0, 1] = float("nan")
    dy[1] = 1.0
    cot = [dy, torch.zeros(batch, hidden)]
    with simt.emulated_device(sm_count=2):
        result = _run_op(args, None, "tanh", False, TruncationArgs(every=3), backend, cot)
    step_norms = result[5]
    assert torch.isnan(step_norms[3:, 0]).all() and torch.isfinite(step_norms[:3]).all()
    assert torch.isfinite(step_norms[:, 1]).all()
    assert torch.isfinite(result[1]).all()  # grad_hx: only steps 0..2 reach h_0
    assert result[7].item()


@pytest.mark.parametrize("backend", ["cpu", "emulated"])
def test_no_norms_unless_asked(backend):
    args = layer_args(4, 2, 3, 5, bias=True, hx=False, dtype=torch.float32)
    inputs = _ops.LayerInputs(*args, None)
    out, h_n = _ops.layer_forward(inputs, _ops.LayerOptions.make("tanh", False, backend=backend))
    options = _ops.LayerOptions.make("tanh", False, TruncationArgs(every=2), 0, backend)
    result = _ops.layer_backward(torch.ones_like(out), torch.ones_like(h_n), out, [True] * 5, False, inputs, options)
    assert [r.numel() for r in result[5:]] == [0, 0, 0]


@pytest.mark.parametrize("backend", ["cpu", "emulated"])
@pytest.mark.parametrize("bad, message", [
    (dict(truncate_every=-1), "truncate_every must be >= 0"),
    (dict(keep_prob=0.0), r"keep_prob must be in \(0, 1\]"),
    (dict(keep_prob=1.5), r"keep_prob must be in \(0, 1\]"),
    (dict(seed=torch.tensor(-3)), "seed must be >= 0"),
    (dict(seed=torch.tensor(3, dtype=torch.int32)), "seed must be None or a one-element int64 CPU tensor, got a Int"),
    (dict(seed=torch.tensor([3, 4])), r"seed must be None or a one-element int64 CPU tensor, got a Long tensor of "
                                      r"shape \[2\]"),
    (dict(layer=-1), "layer must be in"),
])
def test_op_rejects_bad_truncation_arguments(backend, bad, message):
    args = layer_args(3, 2, 3, 4, bias=False, hx=False, dtype=torch.float32)
    out = torch.zeros(3, 2, 4)
    kwargs = dict(truncate_every=0, keep_prob=1.0, seed=None, layer=0, backend=backend)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=message):
        OPS.rnn_layer_backward(out, torch.zeros(2, 4), out, [True] * 5, False, *args, None, "tanh", False, **kwargs)
    with pytest.raises(ValueError, match=message):
        OPS.rnn_layer_forward(*args, None, "tanh", False, **kwargs)


def test_edge_scales_op_follows_its_definition():
    """K cuts exactly the multiples of K; step 0 is never cut; randomized scales are 0 or
    1/p; streams of layers and directions differ; seeds are honoured."""
    scales = rnn_fused.edge_scales(10, 3, 4)
    assert scales[:, 0].tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 0, 1]
    random = RandomTruncation(0.25, seed=123)
    a = rnn_fused.edge_scales(200, 8, random)
    assert set(a[1:].unique().tolist()) == {0.0, 4.0} and (a[0] == 1).all()
    assert not torch.equal(a, rnn_fused.edge_scales(200, 8, random, layer=1))
    assert not torch.equal(a, rnn_fused.edge_scales(200, 8, random, reverse=True))
    assert not torch.equal(a, rnn_fused.edge_scales(200, 8, RandomTruncation(0.25, seed=124)))
    kept = (a[1:] > 0).double().mean().item()
    assert abs(kept - 0.25) < 5 * (0.25 * 0.75 / a[1:].numel()) ** 0.5
    with pytest.raises(ValueError, match="explicit seed"):
        rnn_fused.edge_scales(4, 2, RandomTruncation(0.5))


@pytest.mark.parametrize("backend", ["cpu", "emulated"])
def test_opcheck_with_truncation_and_norms(backend):
    args = layer_args(4, 3, 2, 5, bias=True, hx=True, dtype=torch.float32)
    lengths = torch.tensor([4, 1, 3])
    seed = torch.tensor(99)  # an int64 0-d CPU tensor: a seed drawn in a compiled graph stays one
    forward_args = (*args, lengths, "relu", True, 2, 0.7, seed, 1, backend)  # K = 2, p = 0.7, seed 99, layer 1
    torch.library.opcheck(OPS.rnn_layer_forward.default, forward_args)
    out, h_n = OPS.rnn_layer_forward(*forward_args)
    backward_args = (torch.randn_like(out), torch.randn_like(h_n), out, [True, True, False, True, True], True,
                     *forward_args)
    torch.library.opcheck(OPS.rnn_layer_backward.default, backward_args)


def test_double_backward_with_truncation_follows_the_truncated_graph():
    """create_graph=True goes through the step loop with the same edge scales: its first
    derivatives equal the fused backward's, its second those of autograd on the loop."""
    args = [a.requires_grad_() for a in layer_args(5, 2, 3, 4, bias=True, hx=True)]
    truncation = RandomTruncation(0.5, seed=4)
    scales = rnn_fused.edge_scales(5, 2, truncation, layer=2)

    def first_and_second(layer):
        out, h_n = layer(*args)
        grads = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), args, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), args)
        return grads, second

    fused = first_and_second(lambda *t: rnn_fused.rnn_layer(*t, None, "tanh", False, truncation=truncation, layer=2))
    loop = first_and_second(lambda *t: reference_layer(*t, None, "tanh", False, scales))
    out, h_n = rnn_fused.rnn_layer(*args, None, "tanh", False, truncation=truncation, layer=2)
    fused_only = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), args)
    for a, b, c in zip(fused[0], loop[0], fused_only):
        assert_close64(a, b)
        assert_close64(c, b)
    for a, b in zip(fused[1], loop[1]):
        assert_close64(a, b)
    untruncated = torch.autograd.grad(sum(o.sum() for o in reference_layer(*args, None, "tanh", False)), args[3])
    truncated = torch.autograd.grad(sum(o.sum() for o in reference_layer(*args, None, "tanh", False, scales)), args[3])
    assert not torch.allclose(untruncated[0], truncated[0])  # the draws do cut edges here


def test_truncation_compiles_fullgraph():
    model = rnn_fused.RNN(3, 6, num_layers=2, truncation=3)
    x = torch.randn(7, 2, 3)

    def loss_and_grads(m):
        out, h = m(x)
        loss = out.pow(2).sum() + h.sum()
        return torch.autograd.grad(loss, list(m.parameters()))

    eager = loss_and_grads(model)
    compiled = loss_and_grads(torch.compile(model, fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    full = rnn_fused.RNN(3, 6, num_layers=2)
    full.load_state_dict(model.state_dict())
    assert not torch.equal(eager[1], loss_and_grads(full)[1])  # truncation changed dW_hh


def test_recording_under_compile_is_refused():
    model = rnn_fused.RNN(3, 4)
    with rnn_fused.record_gradients(model):
        with pytest.raises(Exception, match="does not work under torch.compile"):
            torch.compile(model, fullgraph=True)(torch.randn(5, 2, 3))


def test_fused_norm_is_reused_only_while_the_gradient_is_unchanged():
    torch.manual_seed(0)
    model = rnn_fused.RNN(3, 5, bidirectional=True)
    x = torch.randn(6, 2, 3)
    with rnn_fused.record_gradients(model) as rec:
        out, _ = model(x)
    out.pow(2).sum().backward()
    for name, p in model.named_parameters():
        sq = fused_sq_norm(p)
        assert sq is not None, name
        torch.testing.assert_close(sq, p.grad.double().pow(2).sum(), rtol=1e-6, atol=0)
        torch.testing.assert_close(rec.parameter_sq_norms[name], sq, rtol=0, atol=0)
    model.weight_hh_l0.grad.mul_(2)  # changed in place
    assert fused_sq_norm(model.weight_hh_l0) is None
    # The biases' gradients are the two rows of one tensor, with one version counter: a change
    # to either forgets both norms (recomputed, never wrong); the other direction's stay.
    model.bias_ih_l0.grad.add_(1)
    assert fused_sq_norm(model.bias_ih_l0) is None and fused_sq_norm(model.bias_hh_l0) is None
    assert fused_sq_norm(model.bias_hh_l0_reverse) is not None
    with rnn_fused.record_gradients(model):
        out, _ = model(x)
    out.pow(2).sum().backward()  # accumulates into the existing grads
    assert all(fused_sq_norm(p) is None for p in model.parameters())
    model.zero_grad()
    with rnn_fused.record_gradients(model):
        first, _ = model(x)
        second, _ = model(x.flip(0))
    (first.sum() + second.pow(2).sum()).backward()  # two contributions in one graph
    assert all(fused_sq_norm(p) is None for p in model.parameters())


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1.0, 1e12, 1e30], ids=lambda s: f"{s:g}")
@pytest.mark.parametrize("backend", ["cpu", "emulated"])
def test_float32_step_norms_neither_underflow_nor_overflow(scale, backend):
    """float32 gradients whose squares leave float32's range (|g| < 1e-19 or > 1.8e19, as in
    vanishing and exploding regimes) still get their norm, to float32 rounding: the CPU
    loop redoes such rows in float64, the CUDA kernels accumulate in float64."""
    steps, batch, hidden = 4, 3, 37
    args = layer_args(steps, batch, 3, hidden, bias=True, hx=False, dtype=torch.float32)
    g = torch.Generator().manual_seed(2)
    dy64 = torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g) * scale
    cot = [dy64.float(), torch.zeros(batch, hidden)]
    with simt.emulated_device(sm_count=2):
        result = _run_op(args, None, "tanh", False, TruncationArgs(every=1), backend, cot)
    # Every edge cut (K = 1): g_t is dy_t itself, so its norm is known exactly.
    expected = dy64.float().double().norm(dim=2)
    torch.testing.assert_close(result[5].double(), expected, rtol=4 * torch.finfo(torch.float32).eps, atol=0)
    assert not result[7].item()


@pytest.mark.parametrize("path", EMULATED_PATHS)
def test_more_samples_than_a_chunk(path):
    """H = 4, 11 samples on a device holding one CTA per SM: several sample groups in waves
    (block on 1 SM, cluster of 2 CTAs on 2 SMs), several chunks per CTA (grid on 1 SM), one
    epilogue CTA per sample (stepwise)."""
    steps, batch, hidden = 5, 11, 4
    args = layer_args(steps, batch, 3, hidden, bias=True, hx=True)
    lengths = torch.tensor([5, 1, 3, 5, 0, 2, 4, 5, 5, 1, 3])
    g = torch.Generator().manual_seed(4)
    cot = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
           torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    targs = resolve_truncation(RandomTruncation(0.5, seed=8))
    cpu = _run_op(args, lengths, "relu", True, targs, "cpu", cot)
    with simt.emulated_device(sm_count=2 if path == "cluster" else 1, max_blocks_per_sm=1):
        plan = rnn_fused.plan(hidden, batch, torch.float64, backward=True, path=path)
        if path == "grid":
            assert plan.groups == 1 and plan.samples_per_group >= batch  # one CTA, several chunks
        if path in ("block", "cluster"):
            assert plan.waves > 1
        emulated = _run_op(args, lengths, "relu", True, targs, "emulated", cot, path=path)
    for a, b in zip(emulated, cpu):
        if a.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            assert_close64(a, b)


def _lane_rows_run(args, lengths, nonlinearity, reverse, targs, cotangents, samples, general, record_norms=True):
    """Forward and backward of the op pair on the emulated block path with `samples` per CTA, on the
    lane-row kernels or (general) the general ones: [output, h_n, the backward's eight results]."""
    inputs = _ops.LayerInputs(*args, lengths)
    options = _ops.LayerOptions.make(nonlinearity, reverse, targs, 1, "emulated", "block")
    with rnn_fused.launch_plan.forced_tiling(samples=samples, lane_rows_step=not general):
        out, h_n = _ops.layer_forward(inputs, options)
        back = _ops.layer_backward(cotangents[0], cotangents[1], out, [True] * 5, record_norms, inputs, options)
    return [out, h_n, *back]


@pytest.mark.parametrize("truncation", ["full", "K2", "random"])
@pytest.mark.parametrize("hidden,samples", [(5, 1), (5, 2), (33, 1), (33, 2), (64, 1), (64, 2), (100, 1), (128, 1)])
def test_lane_rows_match_float64_with_the_general_kernels_as_stock(hidden, samples, truncation, monkeypatch):
    """The block path's lane-row step (forced_tiling's lane_rows_step: a thread per hidden unit, its
    weight row in registers; float32, H <= 128) at 1 and 2 samples per CTA (2 at H <= 64), with
    uneven lengths (an empty sample and a
    short last group), reverse at odd H, relu at H = 33, truncation and recorded norms: every
    result within the tolerance rule of float64 autograd through the step loop, the general block
    kernels' float32 results as the stock side; bitwise equal under every emulator schedule; its
    backward without norms (its own kernel) gives the same gradients bitwise."""
    steps, batch = 6, 5
    reverse, nonlinearity = hidden % 2 == 1, "relu" if hidden == 33 else "tanh"
    lengths = torch.tensor([6, 0, 3, 6, 1])
    args = layer_args(steps, batch, 4, hidden, bias=True, hx=True, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    cotangents = [torch.randn(steps, batch, hidden, generator=g), torch.randn(batch, hidden, generator=g)]
    targs = resolve_truncation(TRUNCATIONS[truncation])
    scales = rnn_fused.edge_scales(steps, batch, TRUNCATIONS[truncation], layer=1, reverse=reverse)
    args64 = [None if a is None else a.double() for a in args]
    cot64 = [c.double() for c in cotangents]
    leaves = [None if a is None else a.detach().requires_grad_() for a in args64]
    ref_out, ref_h_n = reference_layer(*leaves, lengths, nonlinearity, reverse, scales)
    ref_grads, ref_norms = _reference(args64, lengths, nonlinearity, reverse, scales, cot64, monkeypatch)
    with simt.emulated_device(sm_count=2):
        for backward in (False, True):
            with rnn_fused.launch_plan.forced_tiling(samples=samples, lane_rows_step=True):
                plan = rnn_fused.plan(hidden, batch, backward=backward, path="block")
            assert plan.lane_rows and plan.samples == samples, plan.reason
            assert plan.block_threads == -(-hidden // 32) * 32 and plan.grid == -(-batch // samples), plan.reason
        runs = []
        for mode in ("forward", "reverse", "shuffle"):
            with simt.schedule(mode, seed=3):
                runs.append(_lane_rows_run(args, lengths, nonlinearity, reverse, targs, cotangents, samples, False))
        plain = _lane_rows_run(args, lengths, nonlinearity, reverse, targs, cotangents, samples, False, False)
        general = _lane_rows_run(args, lengths, nonlinearity, reverse, targs, cotangents, samples, True)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other)), "results differ between emulator schedules"
    lane = runs[0]
    assert all(torch.equal(a, b) for a, b in zip(lane[2:7], plain[2:7])), "the backward without norms differs"
    assert plain[7].numel() == 0
    # (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias [2,H]) vs the leaves' order (input, hx, w_ih, w_hh, b_ih,
    # b_hh)
    references = [ref_out.detach(), ref_h_n.detach(), *ref_grads[:4], torch.stack(ref_grads[4:6]), ref_norms]
    names = ["output", "h_n", "grad_input", "grad_hx", "grad_w_ih", "grad_w_hh", "grad_bias", "step_norms"]
    for name, reference, stock, ours in zip(names, references, general[:8], lane[:8]):
        assert_within_tolerance(reference, stock, ours, name=name, ulps=8)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(lane[0][n:, b] == 0)
