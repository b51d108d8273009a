"""A unidirectional stack's forward and backward each in one launch (forward_stack_kernel,
backward_stack_kernel), through the emulator.

rnn_fused.functional.rnn runs the layers of a float32 unidirectional stack in one launch of
the GPU kernels where the cost model predicts it faster (stack=None), or where asked
(stack=True): each CTA holds its layer's W_hh and the next layer's W_ih, so layer l + 1's input
projection comes out of layer l's step, and layer l + 1 runs a few steps behind it; the
backward mirrors it. Checked here on the emulated device: values and gradients against the
float64 step loop under the tolerance rule, bitwise agreement under every emulator schedule,
layer 0 bitwise equal to the block path's, truncation, dropout between layers (nn.RNN's
masks), double backward, the planner's choice, and the errors.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn_fused
from rnn_fused import functional, launch_plan, simt
from rnn_fused.modules import RNN
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import assert_within_tolerance, compare_with_torch
from rnn_fused.truncation import RandomTruncation, TruncationArgs

from rnn_cases import RNNCase

OPS = torch.ops.rnn_fused
# Enough SMs for every CTA of the stacks below to be co-resident (the block path's stack: a
# cooperative launch), and for the cluster path's stacks, whose CTAs take an SM each (their
# registers), to run every sample group's cluster of up to 16 CTAs at once (in one GPC of all
# 64 SMs: no GPC boundary).
STACK_GPU = dict(sm_count=64, sms_per_gpc=0)


def stack_inputs(steps, batch, input_size, hidden, layers, *, bias=True, hx=True, seed=0):
    """(x [T,B,I], hx [L,B,H] or None, per-layer weight groups) in float64, nn.RNN's init."""
    g = torch.Generator().manual_seed(seed)
    bound = hidden ** -0.5

    def uniform(*shape):
        return torch.empty(*shape, dtype=torch.float64).uniform_(-bound, bound, generator=g)

    groups = []
    for layer in range(layers):
        group = [uniform(hidden, input_size if layer == 0 else hidden), uniform(hidden, hidden)]
        if bias:
            group += [uniform(hidden), uniform(hidden)]
        groups.append(tuple(group))
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, generator=g)
    h0 = torch.randn(layers, batch, hidden, dtype=torch.float64, generator=g) if hx else None
    return x, h0, groups


def run_stack(x, hx, groups, lengths, nonlinearity, cotangents, dtype, device="cpu", **kwargs):
    """functional.rnn forward and backward in `dtype` on `device`: [output, h_n, grads of x, hx
    and every weight], on the CPU."""
    def leaf(t):
        return t.to(device=device, dtype=dtype, copy=True).requires_grad_()

    leaves_x = leaf(x)
    leaves_hx = None if hx is None else leaf(hx)
    leaves_w = [tuple(leaf(w) for w in group) for group in groups]
    out, h_n = functional.rnn(leaves_x, leaves_hx, leaves_w, len(groups), False, nonlinearity, lengths=lengths,
                              **kwargs)
    present = [leaves_x] + ([] if leaves_hx is None else [leaves_hx]) + [w for group in leaves_w for w in group]
    grads = torch.autograd.grad((out, h_n), present, [c.to(device=device, dtype=dtype) for c in cotangents])
    return [t.detach().cpu() for t in (out, h_n, *grads)]


def cotangents_for(steps, batch, hidden, layers, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
            torch.randn(layers, batch, hidden, dtype=torch.float64, generator=g)]


def names_for(count):
    return ["output", "h_n"] + [f"grad_{i}" for i in range(count - 2)]


# steps, batch, input, hidden, layers, nonlinearity, bias, hx, lengths
STACK_CASES = [
    (6, 3, 5, 7, 2, "tanh", True, True, [6, 2, 0]),     # odd H, an empty sample, unsorted
    (5, 2, 3, 16, 3, "relu", False, False, None),       # 32 rows: one pass
    (4, 4, 3, 33, 3, "tanh", True, False, [4, 3, 1, 4]),  # 66 rows: three passes
    (4, 2, 6, 64, 4, "tanh", True, True, None),         # 128 rows: four passes, weights in registers
    (4, 3, 5, 72, 3, "relu", True, False, [4, 2, 3]),   # 160 rows: five passes, all in registers
    (3, 2, 4, 128, 2, "tanh", True, True, [3, 0]),      # 256 rows: eight passes, all in registers
    (3, 9, 4, 100, 2, "tanh", True, True, [3, 1, 2, 3, 3, 0, 1, 2, 3]),  # 200 rows, 8 samples per group
    # H > 128: the cluster path's stack
    (4, 3, 5, 129, 2, "tanh", True, True, [4, 0, 2]),   # scalar slices (129 over whole vectors fails)
    (3, 2, 4, 150, 3, "relu", False, False, None),      # 3 layers in one cluster
]


def _case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


@pytest.mark.parametrize("case", STACK_CASES, ids=_case_id)
def test_stack_matches_the_float64_step_loop_under_every_schedule(case):
    """The stack's outputs, final states and every gradient against the float64 step loop
    (tolerance rule, stock: the same loop in float32), bitwise alike under every emulator
    schedule; zeros past each sample's length."""
    steps, batch, input_size, hidden, layers, nonlinearity, bias, hx, lengths = case
    lengths = None if lengths is None else torch.tensor(lengths)
    x, h0, groups = stack_inputs(steps, batch, input_size, hidden, layers, bias=bias, hx=hx)
    cotangents = cotangents_for(steps, batch, hidden, layers)
    runs = []
    with simt.emulated_device(**STACK_GPU):
        assert launch_plan.stack_plan(hidden, batch, steps, layers).feasible
        for mode, seed in simt.ALL_SCHEDULES:
            with simt.schedule(mode, seed):
                runs.append(run_stack(x, h0, groups, lengths, nonlinearity, cotangents, torch.float32,
                                      backend="emulated", stack=True))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b), "results differ between emulator schedules"
    ours = runs[0]
    reference = run_stack(x, h0, groups, lengths, nonlinearity, cotangents, torch.float64, layer_fn=reference_layer)
    stock = run_stack(x, h0, groups, lengths, nonlinearity, cotangents, torch.float32, layer_fn=reference_layer)
    for name, r, s, o in zip(names_for(len(ours)), reference, stock, ours):
        assert o.dtype == torch.float32
        assert_within_tolerance(r, s, o, name=name, ulps=8)
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(ours[0][n:, b] == 0)


@pytest.mark.parametrize("layers,units_per_pass,samples,units,compiled_passes", [
    (4, 16, 1, 52, 4), (4, 32, 1, 52, 2), (8, 16, 1, 100, 7), (8, 16, 8, 100, 0)])
def test_cluster_stack_with_its_passes_read_at_run_time_or_compiled(layers, units_per_pass, samples, units,
                                                                    compiled_passes):
    """Layers of 200 units in one cluster of 16 CTAs per sample group: 4 layers x 4 CTAs of 52
    units, 4 passes of 16 or 2 of 32, and 8 layers x 2 CTAs of 100 units, 7 passes of 16
    (kernels compiled for them), or the same at 8 samples per chunk (a kernel reading its
    passes at run time: compiled for at most 4 there); each against the float64 step loop
    under the tolerance rule."""
    steps, batch, hidden = 3, 2, 200
    lengths = torch.tensor([3, 2])
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=7)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=8)
    with simt.emulated_device(**STACK_GPU), launch_plan.forced_tiling(units_per_pass=units_per_pass,
                                                                     samples=samples):
        plan = launch_plan.stack_plan(hidden, batch, steps, layers)
        assert (plan.path, plan.cluster, plan.units_per_cta, plan.compiled_passes) == (
            "cluster", 16, units, compiled_passes), plan.reason
        ours = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated", stack=True)
    reference = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float64, layer_fn=reference_layer)
    stock = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, layer_fn=reference_layer)
    for name, r, s, o in zip(names_for(len(ours)), reference, stock, ours):
        assert_within_tolerance(r, s, o, name=name, ulps=8)


@pytest.mark.parametrize("hidden,layers,units_per_pass,samples,passes", [
    (64, 3, 32, 1, 4), (72, 3, 32, 1, 5), (128, 2, 32, 1, 8), (100, 2, 32, 2, 7), (64, 2, 16, 1, 8),
    (200, 4, 16, 1, 4)],
    ids=["block", "block-5-passes", "block-8-passes", "block-7-passes-2-samples", "block-8-passes-of-16",
         "cluster"])
def test_stack_kernels_compiled_for_their_passes_round_like_those_reading_them_at_run_time(hidden, layers,
                                                                                          units_per_pass, samples,
                                                                                          passes):
    """The stack's launch shape on the kernels compiled for its passes (the block path's stack
    at H = 64: 4 passes; at H = 72, 128 and 100, 5, 8 and 7 passes of 3-4 chunk iterations, the
    last at 2 samples per chunk, and at H = 64 8 passes of 16 units: all with every weight row
    in registers; the cluster path's at 200: 4 passes of 16 units) and on those reading them at
    run time (forced_tiling's run_time_passes, which the plan reports as compiled_passes 0,
    their rows read from shared memory every step): outputs, final states and every gradient
    bitwise alike."""
    steps, batch = 4, 3
    lengths = torch.tensor([4, 1, 3])
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=5)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=6)
    runs, plans = [], []
    for run_time in (False, True):
        with simt.emulated_device(**STACK_GPU), launch_plan.forced_tiling(samples=samples,
                                                                         units_per_pass=units_per_pass,
                                                                         run_time_passes=run_time):
            plans.append(launch_plan.stack_plan(hidden, batch, steps, layers))
            runs.append(run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated",
                                  stack=True))
    compiled, run_time = plans
    assert compiled.compiled_passes == passes and run_time.compiled_passes == 0, (compiled.reason, run_time.reason)
    assert (compiled.path, compiled.cluster, compiled.units_per_cta) == (run_time.path, run_time.cluster,
                                                                         run_time.units_per_cta)
    for name, a, b in zip(names_for(len(runs[0])), *runs, strict=True):
        assert torch.equal(a, b), name


@settings(max_examples=30, deadline=None, derandomize=True)
@given(hidden=st.integers(65, 128), layers=st.integers(2, 3), samples=st.sampled_from([1, 2]),
       steps=st.integers(1, 4), batch=st.integers(1, 4), random_truncation=st.booleans(), data=st.data())
def test_stack_rows_in_registers_at_any_hidden_size_from_65_to_128(hidden, layers, samples, steps, batch,
                                                                   random_truncation, data):
    """Drawn shapes of the block path's stack whose 2H rows take 5-8 passes (stack_compiled_passes,
    every row in registers at 1 or 2 samples per chunk), with drawn lengths (empty samples
    among them) and randomized truncation or none: bitwise the kernels reading their rows from
    shared memory at run time, and within the tolerance rule of the float64 step loop."""
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch)))
    truncation = RandomTruncation(0.6, seed=3) if random_truncation else None
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=hidden)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=hidden + 1)
    runs = []
    for run_time in (False, True):
        with simt.emulated_device(**STACK_GPU), launch_plan.forced_tiling(samples=samples, units_per_pass=32,
                                                                         run_time_passes=run_time):
            plan = launch_plan.stack_plan(hidden, batch, steps, layers)
            assert plan.path == "block" and plan.compiled_passes == (0 if run_time else -(-hidden // 16)), plan.reason
            runs.append(run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated",
                                  stack=True, truncation=truncation))
    for name, a, b in zip(names_for(len(runs[0])), *runs, strict=True):
        assert torch.equal(a, b), name
    if truncation is None:
        reference = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float64, layer_fn=reference_layer)
        stock = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, layer_fn=reference_layer)
        for name, r, f32, o in zip(names_for(len(runs[0])), reference, stock, runs[0]):
            assert_within_tolerance(r, f32, o, name=name, ulps=8)


@pytest.mark.parametrize("hidden,layers,units_per_pass,kernel,passes", [
    (64, 3, 32, "backward_stack_kernel", 4), (100, 2, 32, "backward_stack_kernel", 7),
    (200, 4, 16, "backward_cluster_stack_kernel", 4)], ids=["block", "block-7-passes", "cluster"])
def test_plain_stack_backward_runs_its_own_kernel_with_the_general_kernels_results(hidden, layers, units_per_pass,
                                                                                 kernel, passes):
    """A stack's backward without recorded norms on kernels compiled for their passes runs the
    copy compiled without the norm sums (kPlain), full BPTT, truncated every K steps
    (PeriodicCut) or randomized (each layer's scales drawn before the launch, one launch of
    edge_scale_table_kernel for the stack), and gives bitwise the results of the general kernels
    that read their passes at run time (no plain copy). Truncation every 2 of 4 steps and the
    randomized one cut edges: their gradients differ from full BPTT's."""
    steps, batch = 4, 3
    lengths = torch.tensor([4, 1, 3])
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=5)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=6)
    randomized = RandomTruncation(0.6, seed=11)
    results = {}
    for truncation, run_time in itertools.product((None, 2, randomized), (False, True)):
        with simt.emulated_device(**STACK_GPU), launch_plan.forced_tiling(units_per_pass=units_per_pass,
                                                                         run_time_passes=run_time):
            plan = launch_plan.stack_plan(hidden, batch, steps, layers)
            with simt.recording_launches() as launches:
                results[truncation, run_time] = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32,
                                                          backend="emulated", stack=True, truncation=truncation)
        assert plan.compiled_passes == (0 if run_time else passes), plan.reason
        expected = f"{kernel}<{plan.samples}, 0>" if run_time else f"{kernel}<{plan.samples}, {passes}, true>"
        draws = ["edge_scale_table_kernel<float>"] if truncation is randomized else []
        assert [name for name in launches if name.startswith((kernel, "edge_scale_table_kernel"))] == \
            draws + [expected], (truncation, run_time)
    for truncation in (None, 2, randomized):
        for name, a, b in zip(names_for(len(results[None, False])), results[truncation, False],
                              results[truncation, True], strict=True):
            assert torch.equal(a, b), (name, truncation)
    for truncation in (2, randomized):
        assert not torch.equal(results[None, False][2], results[truncation, False][2]), truncation


@pytest.mark.parametrize("hidden,layers,lengths", [(7, 2, [5, 0, 3]), (64, 3, None), (100, 2, [5, 5, 1])])
def test_every_layer_of_the_stack_agrees_with_the_block_path(hidden, layers, lengths):
    """Layer 0 of the stack bitwise equals the block path's layer (the same input projection
    GEMM, which forced_tiling's input_projection_on_host keeps on the host where the block kernel
    would make so short a projection itself; the same dot-product tree); each layer above equals the block path's layer run on the
    stack's own layer below within the tolerance rule (its input projection is the kernel's dot
    product instead of a GEMM), and so does h_n."""
    steps, batch = 5, 3
    lengths = None if lengths is None else torch.tensor(lengths)
    x, h0, groups = stack_inputs(steps, batch, 4, hidden, layers)
    x32, h32 = x.float(), h0.float()
    groups32 = [tuple(w.float() for w in group) for group in groups]
    with simt.emulated_device(**STACK_GPU), launch_plan.forced_tiling(input_projection_on_host=True):
        outputs, h_n = OPS.rnn_stack_forward(x32, h32, [w for group in groups32 for w in group], True, lengths, "tanh",
                                             "emulated")
        layer_input = x32
        for layer in range(layers):
            out, last = rnn_fused.rnn_layer(layer_input, h32[layer], *groups32[layer], lengths, backend="emulated",
                                            path="block")
            if layer == 0:
                assert torch.equal(outputs[0], out) and torch.equal(h_n[0], last)
            else:
                below = outputs[layer - 1].double()
                reference = reference_layer(below, h0[layer], *groups[layer], lengths, "tanh", False)
                stock = reference_layer(outputs[layer - 1], h32[layer], *groups32[layer], lengths, "tanh", False)
                for name, r, s, o in zip(("output", "h_n"), reference, stock, (outputs[layer], h_n[layer])):
                    assert_within_tolerance(r, s, o, name=f"layer {layer} {name}", ulps=8)
            layer_input = outputs[layer]


@pytest.mark.parametrize("truncation", [TruncationArgs(), TruncationArgs(3, 1.0, 0), TruncationArgs(0, 0.7, 5)],
                         ids=["full", "every-3", "random"])
def test_top_layer_backward_bitwise_like_the_block_path(truncation):
    """The stack's backward of its top layer reads what the top layer's own backward reads (the
    top layer's output gradient, its saved output, its input: the layer below's output): its
    gradients bitwise equal the block path's layer backward there, truncation included (layer
    L - 1's draws), with that layer's gradients made by the host's GEMMs as the stack's are
    (forced_tiling(gradients_on_host=True): so short a layer would make them in the gradients
    kernel, another summation order)."""
    steps, batch, hidden, layers = 6, 3, 20, 3
    lengths = torch.tensor([6, 2, 5])
    x, h0, groups = stack_inputs(steps, batch, 4, hidden, layers, seed=8)
    x32, h32 = x.float(), h0.float()
    flat = [w.float() for group in groups for w in group]
    grad_output, grad_h_n = (c.float() for c in cotangents_for(steps, batch, hidden, layers, seed=9))
    seed = truncation.seed_tensor()
    with simt.emulated_device(**STACK_GPU):
        outputs, _ = OPS.rnn_stack_forward(x32, h32, flat, True, lengths, "tanh", "emulated")
        grads = OPS.rnn_stack_backward(grad_output, grad_h_n, outputs, [True] * (5 * layers), x32, h32, flat, True,
                                       lengths, "tanh", truncation.every, truncation.keep_prob, seed, "emulated")
        top = layers - 1
        with launch_plan.forced_tiling(gradients_on_host=True):
            own = OPS.rnn_layer_backward(grad_output, grad_h_n[top], outputs[top], [False, True, True, True, True], False,
                                         outputs[top - 1], h32[top], *flat[4 * top:4 * top + 4], lengths, "tanh",
                                         False, truncation.every, truncation.keep_prob, seed, top, "emulated", "block")
    for name, ours, theirs in zip(("grad_hx", "grad_weight_ih", "grad_weight_hh", "grad_bias"),
                                  grads[5 * top + 1:5 * top + 5], own[1:5]):
        assert torch.equal(ours, theirs), name


@pytest.mark.parametrize("hidden", [24, 136], ids=["block", "cluster"])
@pytest.mark.parametrize("truncation", [2, RandomTruncation(0.6, seed=11)], ids=["every-2", "random"])
def test_truncated_backward_matches_the_layers_one_by_one(truncation, hidden):
    """With truncation the stack's backward is each layer's own, with the same draws (the
    block path's stack kernel, or the cluster path's stack running its layers' backward one by
    one): against the CPU backend's layers in float64 (tolerance rule, stock: the CPU layers in
    float32)."""
    steps, batch, layers = 7, 3, 3
    lengths = torch.tensor([7, 4, 6])
    x, h0, groups = stack_inputs(steps, batch, 5, hidden, layers, seed=3)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=4)
    with simt.emulated_device(**STACK_GPU):
        ours = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated",
                         truncation=truncation, stack=True)
    reference = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float64, backend="cpu",
                          truncation=truncation)
    stock = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="cpu", truncation=truncation)
    for name, r, s, o in zip(names_for(len(ours)), reference, stock, ours):
        assert_within_tolerance(r, s, o, name=name, ulps=8)


@pytest.mark.parametrize("hidden", [9, 129], ids=["block", "cluster"])
def test_double_backward_through_the_stack(hidden):
    """create_graph=True: the stack's backward builds a graph (the layers' differentiable
    backward), so a gradient of the gradients matches the float64 step loop's."""
    steps, batch, layers = 4, 2, 2
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=5)

    def second_order(dtype, **kwargs):
        leaves = [w.to(dtype).requires_grad_() for group in groups for w in group]
        xs = x.to(dtype).requires_grad_()
        weights = [tuple(leaves[4 * i:4 * i + 4]) for i in range(layers)]
        out, h_n = functional.rnn(xs, h0.to(dtype), weights, layers, False, **kwargs)
        (grad_x,) = torch.autograd.grad(out.sum() + h_n.square().sum(), xs, create_graph=True)
        return list(torch.autograd.grad(grad_x.square().sum(), leaves))

    with simt.emulated_device(**STACK_GPU):
        ours = second_order(torch.float32, backend="emulated", stack=True)
    reference = second_order(torch.float64, layer_fn=reference_layer)
    stock = second_order(torch.float32, layer_fn=reference_layer)
    for i, (r, s, o) in enumerate(zip(reference, stock, ours)):
        assert_within_tolerance(r, s, o, name=f"second-order grad {i}", ulps=8)


@pytest.mark.parametrize("hidden", [12, 140], ids=["block", "cluster"])
def test_module_runs_a_stack_in_one_launch_and_matches_nn_rnn(monkeypatch, generator, stack_launches, hidden):
    """rnn_fused.RNN on the emulated kernels runs its stack in one launch (the block path's with
    4 layers at H = 12, where the model predicts it faster: with 3 it predicts the layers one by
    one faster, as 2 layers measured on the H200 on 2026-12-04 and 4 did not; the cluster path's
    with 3 layers at 140, forced with RNN.stack = True: measured slower than its layers one by one
    there, 0.47-0.53x at 300, 7, 50, 129, and so priced since), and matches torch.nn.RNN
    (tolerance rule), packed input included."""
    monkeypatch.setattr(RNN, "backend", "emulated")
    if hidden > 128:
        monkeypatch.setattr(RNN, "stack", True)
    layers = 4 if hidden <= 128 else 3
    for packing in ("none", "unsorted"):
        case = RNNCase(num_layers=layers, bidirectional=False, packing=packing, with_hx=True, seq_len=5, batch=3,
                       hidden_size=hidden)
        input, hx = case.inputs(generator)
        with simt.emulated_device(**STACK_GPU):
            assert not launch_plan.stack_plan(hidden, 3, 5, 3).faster
            plan = launch_plan.stack_plan(hidden, 3, 5, layers)
            assert plan.feasible and plan.faster == (hidden <= 128), plan
            assert plan.path == ("block" if hidden <= 128 else "cluster"), plan.reason
            before = len(stack_launches)
            compare_with_torch(case.torch_module(), input, hx, ulps=8)
            assert len(stack_launches) > before, "the module did not run its stack in one launch"
    monkeypatch.setattr(RNN, "stack", False)  # the layers one by one
    before = len(stack_launches)
    with simt.emulated_device(**STACK_GPU):
        compare_with_torch(case.torch_module(), input, hx, ulps=8)
    assert len(stack_launches) == before


def draw_masks(steps, batch, hidden, layers, p, lengths):
    """The masks the layers one by one would draw: dropout_between_layers on each layer's
    [T,B,H] float32 output, in layer order, from the default generator."""
    ones = torch.ones(steps, batch, hidden)
    return [functional.dropout_between_layers(ones, p, lengths) for _ in range(layers - 1)]


def run_masked_layers(x, hx, groups, lengths, masks, cotangents, dtype):
    """The step loop (reference.py) layer by layer in `dtype`, layer l's output times masks[l]
    where layer l + 1 reads it: [output, h_n, grads of x, hx and every weight]."""
    leaves_x = x.to(dtype).requires_grad_()
    leaves_hx = hx.to(dtype).requires_grad_()
    leaves_w = [tuple(w.to(dtype).requires_grad_() for w in group) for group in groups]
    layer_input, states = leaves_x, []
    for layer, group in enumerate(leaves_w):
        out, state = reference_layer(layer_input, leaves_hx[layer], *group, lengths, "tanh", False)
        states.append(state)
        layer_input = out * masks[layer].to(dtype) if layer < len(groups) - 1 else out
    present = [leaves_x, leaves_hx] + [w for group in leaves_w for w in group]
    h_n = torch.stack(states)
    grads = torch.autograd.grad((layer_input, h_n), present, [c.to(dtype) for c in cotangents])
    return [t.detach() for t in (layer_input, h_n, *grads)]


@pytest.mark.parametrize("hidden", [20, 132], ids=["block", "cluster"])
@pytest.mark.parametrize("p", [0.4, 1.0])
@pytest.mark.parametrize("lengths", [None, [6, 2, 0, 5]], ids=["all-steps", "lengths"])
def test_stack_with_dropout_draws_the_masks_of_the_layers_one_by_one(lengths, p, hidden):
    """Dropout between layers in a stack: the masks are drawn before the launch with the calls
    the layers one by one make (the generator ends in the same state), each layer's output is
    scaled by its mask where the next layer reads it and the gradient handed down by the same
    mask. Outputs, final states and every gradient against the float64 step loop with those
    masks (tolerance rule), bitwise alike under every schedule; p = 1 drops every element. The
    cluster path's stack (H = 132) sends the next layer its state times the mask, and its
    backward runs the layers one by one on the masked outputs."""
    steps, batch, layers = 6, 4, 3
    lengths = None if lengths is None else torch.tensor(lengths)
    x, h0, groups = stack_inputs(steps, batch, 5, hidden, layers, seed=12)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=13)
    torch.manual_seed(7)
    masks = draw_masks(steps, batch, hidden, layers, p, lengths)
    drawn = torch.get_rng_state()
    runs = []
    with simt.emulated_device(**STACK_GPU):
        for mode, seed in simt.ALL_SCHEDULES:
            torch.manual_seed(7)
            with simt.schedule(mode, seed):
                runs.append(run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated",
                                      stack=True, dropout=p, training=True))
            assert torch.equal(torch.get_rng_state(), drawn)
        torch.manual_seed(7)
        one_by_one = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated",
                               stack=False, dropout=p, training=True)
    assert torch.equal(torch.get_rng_state(), drawn)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b), "results differ between emulator schedules"
    reference = run_masked_layers(x, h0, groups, lengths, masks, cotangents, torch.float64)
    stock = run_masked_layers(x, h0, groups, lengths, masks, cotangents, torch.float32)
    for name, r, s, o, b in zip(names_for(len(runs[0])), reference, stock, runs[0], one_by_one):
        assert_within_tolerance(r, s, o, name=name, ulps=8)
        assert_within_tolerance(r, s, b, name=f"{name} (one by one)", ulps=8)
    if p == 1.0:  # every element dropped: layer 0's weights get gradient only through h_n[0]
        assert all(torch.count_nonzero(m) == 0 for m in masks)


def test_double_backward_through_a_stack_with_dropout():
    """create_graph=True recomputes the layers one by one with the stack's own masks."""
    steps, batch, hidden, layers = 4, 2, 9, 3
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=15)
    torch.manual_seed(3)
    masks = draw_masks(steps, batch, hidden, layers, 0.3, None)

    def second_order(dtype, stacked):
        leaves = [w.to(dtype).requires_grad_() for group in groups for w in group]
        xs = x.to(dtype).requires_grad_()
        weights = [tuple(leaves[4 * i:4 * i + 4]) for i in range(layers)]
        if stacked:
            torch.manual_seed(3)
            out, h_n = functional.rnn(xs, h0.to(dtype), weights, layers, False, dropout=0.3, training=True,
                                      backend="emulated", stack=True)
        else:
            layer_input, states = xs, []
            for layer in range(layers):
                out, state = reference_layer(layer_input, h0[layer].to(dtype), *weights[layer], None, "tanh", False)
                states.append(state)
                layer_input = out * masks[layer].to(dtype) if layer < layers - 1 else out
            out, h_n = layer_input, torch.stack(states)
        (grad_x,) = torch.autograd.grad(out.sum() + h_n.square().sum(), xs, create_graph=True)
        return list(torch.autograd.grad(grad_x.square().sum(), leaves))

    with simt.emulated_device(**STACK_GPU):
        ours = second_order(torch.float32, True)
    reference = second_order(torch.float64, False)
    stock = second_order(torch.float32, False)
    for i, (r, s, o) in enumerate(zip(reference, stock, ours)):
        assert_within_tolerance(r, s, o, name=f"second-order grad {i}", ulps=8)


@pytest.mark.parametrize("hidden", [20, 130], ids=["block", "cluster"])
@pytest.mark.parametrize("truncation", [None, RandomTruncation(0.6, seed=4)], ids=["full", "random"])
@pytest.mark.parametrize("lengths", [None, [6, 3, 1, 5]], ids=["all-steps", "lengths"])
def test_recorded_norms_of_a_stack_run_in_one_launch(lengths, truncation, stack_launches, hidden):
    """rnn_fused.record_gradients with a stack run in one launch: the backward kernel sums each
    layer's ||g_t||^2 as the block path does (step norms against the CPU layers in float64 under
    the tolerance rule, stock: the CPU layers in float32), the host reduces each parameter
    gradient's squared norm (equal to ||p.grad||^2 of the gradient the stack returned, within
    the rounding of a sum of squares, and clip_grad_norm_ takes them), recording changes no
    value or gradient, and a recorded backward with create_graph=True is refused. On the cluster
    path's stack (H = 130: 3 layers of 5 CTAs in one cluster) each layer's first CTA adds up its
    CTAs' sums, gathered by distributed shared memory."""
    steps, batch, layers = 6, 4, 3
    torch.manual_seed(21)
    base = RNN(5, hidden, num_layers=layers, truncation=truncation)
    x64 = torch.randn(steps, batch, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    lengths = None if lengths is None else torch.tensor(lengths)

    def run(dtype, backend, stack, record=True):
        module = copy.deepcopy(base).to(dtype)
        module.backend, module.stack = backend, stack
        x = x64.to(dtype).requires_grad_()
        input = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        recorder = rnn_fused.record_gradients(module) if record else contextlib.nullcontext()
        with recorder as rec:
            out, h_n = module(input)
        out = out if lengths is None else out.data
        (out.sin().sum() + h_n.cos().sum()).backward()
        return module, rec

    with simt.emulated_device(**STACK_GPU):
        plan = launch_plan.stack_plan(hidden, batch, steps, layers)
        assert plan.path == ("block" if hidden <= 128 else "cluster")
        assert hidden <= 128 or plan.cluster == 5 * layers, plan.reason  # (5 CTAs per layer gather their sums)
        module, rec = run(torch.float32, "emulated", True)
        assert len(stack_launches) == 1, "the module did not run its stack in one launch"
        unrecorded, _ = run(torch.float32, "emulated", True, record=False)
    reference_module, reference = run(torch.float64, "cpu", False)
    stock_module, stock = run(torch.float32, "cpu", False)
    assert_within_tolerance(reference.step_norms, stock.step_norms, rec.step_norms, name="step norms", ulps=8)
    assert not rec.nonfinite
    eps = torch.finfo(torch.float32).eps
    exact_total = 0.0
    for (name, param), (_, same), (_, r), (_, s) in zip(module.named_parameters(), unrecorded.named_parameters(),
                                                          reference_module.named_parameters(),
                                                          stock_module.named_parameters(), strict=True):
        assert torch.equal(param.grad, same.grad), name
        assert_within_tolerance(r.grad, s.grad, param.grad, name=name, ulps=8)
        value, exact = rec.parameter_sq_norms[name], param.grad.double().pow(2).sum()
        assert abs(value - exact) <= (param.numel() + 2) * eps * exact, (name, value, exact)
        exact_total += exact.item()
    total = rnn_fused.clip_grad_norm_(module.parameters(), 1e9)
    assert total.item() == pytest.approx(exact_total ** 0.5, rel=1e-6)
    with simt.emulated_device(**STACK_GPU):
        module = copy.deepcopy(base)
        module.backend, module.stack = "emulated", True
        x = x64.float().requires_grad_()
        with rnn_fused.record_gradients(module):
            out, h_n = module(x)
        with pytest.raises(RuntimeError, match="record without create_graph=True"):
            torch.autograd.grad(out.sum(), x, create_graph=True)


def test_planner_prices_the_stack_step_as_a_block_step_of_its_rows():
    """The model prices a stack's step as the block path's step of its CTA's rows (2H in whole
    passes, each warp one kind of epilogue) with the weight rows in registers where its kernels
    are compiled for its passes (block_stack: at H = 65-128 its 5-8 passes at one sample per
    chunk, where a layer's kernel of as many passes would split them), plus the hand-over between
    layers measured on the H200 (block_stack_wait_us), for (T + 1) steps, against the layers' T
    steps each on their own forward plans: 4 layers of 64 units faster in one launch, 2 not (as
    measured: 1.44-1.76x and 0.94x)."""
    wait = launch_plan.cost_constants()["block_stack_wait_us"]
    assert wait > 0
    for hidden, batch, layers in ((64, 8, 4), (64, 8, 2), (48, 3, 2), (100, 8, 3), (128, 32, 2)):
        plan = launch_plan.stack_plan(hidden, batch, 1000, layers)
        assert plan.feasible
        rows = 2 * -(-hidden // (plan.units_per_pass // 2)) * (plan.units_per_pass // 2)
        step = OPS.step_cost("block", hidden, batch, torch.float32, plan.samples, 1, 1, rows, 1, [], [], "total",
                             plan.units_per_pass, 0, block_stack=True)
        assert plan.predicted_stack_us == pytest.approx(1001 * (step + wait))
        if hidden > 64:  # (5-8 passes: priced as a layer's CTA, every row would be read from shared memory)
            assert plan.samples == 1 and plan.compiled_passes == rows // plan.units_per_pass, plan.reason
            as_layer = OPS.step_cost("block", hidden, batch, torch.float32, 1, 1, 1, rows, 1, [], [], "total",
                                     plan.units_per_pass, 0)
            assert step < as_layer
        one_layer = rnn_fused.plan(hidden, batch).predicted_us_per_step
        assert plan.predicted_layers_us == pytest.approx(1000 * layers * one_layer)
        assert plan.faster == (plan.predicted_stack_us < plan.predicted_layers_us)
    assert launch_plan.stack_plan(64, 8, 1000, 4).faster and not launch_plan.stack_plan(64, 8, 1000, 2).faster


def test_the_decision_asks_the_cost_model_before_reading_every_weight():
    """rnn() with stack=None asks the (cached) cost model first: where it keeps the layers one by
    one no weight is read; where it prices the stack faster, every structural check still runs."""
    def weights_of(layers, odd=None):
        groups = [tuple(w.float() for w in group) for group in stack_inputs(2, 8, 64, 64, layers)[2]]
        if odd is not None:
            groups[odd] = (groups[odd][0].double(),) + groups[odd][1:]
        return groups

    x = torch.zeros(1000, 8, 64)
    why = functional._why_no_stack
    assert why(x, None, weights_of(4), 4, False, None, "emulated", None, True) is None
    assert why(x, None, weights_of(4, odd=2), 4, False, None, "emulated", None, True) == \
        "it runs float32 tensors on one device"
    # Two layers: the model keeps them one by one, whatever the weights (the layer ops check them).
    cost = "the cost model predicts the layers one after another faster"
    assert why(x, None, weights_of(2), 2, False, None, "emulated", None, True) == cost
    assert why(x, None, weights_of(2, odd=1), 2, False, None, "emulated", None, True) == cost
    # Asked for (stack=True): the structural checks, then the kernel's limits, no cost.
    assert why(x, None, weights_of(2, odd=1), 2, False, None, "emulated", None, False) == \
        "it runs float32 tensors on one device"
    assert why(x, None, weights_of(2), 2, False, None, "emulated", None, False) is None


def test_planner_rules_the_stack_out_with_its_limits():
    with simt.emulated_device(sm_count=16):
        plan = launch_plan.stack_plan(64, 8, 100, 4)
        assert plan.feasible and plan.grid == 4 * 8 // plan.samples and plan.compiled_passes == 2 * 64 // plan.units_per_pass
        assert "128 weight rows" in plan.reason
        # Past H = 128 one CTA cannot hold a layer's W_hh and the next layer's W_ih (288 rows at
        # 129): the cluster path's stack, 8 CTAs of 17 units per layer in a cluster of 16.
        wide = launch_plan.stack_plan(129, 1, 100, 2)
        assert wide.feasible and (wide.path, wide.cluster, wide.units_per_cta, wide.lead_steps) == ("cluster", 16, 17, 1)
        assert "a cluster of 2 layers x 8 CTA(s) of 17 units" in wide.reason
        too_wide = launch_plan.stack_plan(512, 8, 100, 2)  # 64 rows of 1024 columns per CTA at most
        assert not too_wide.feasible and "more than shared_mem_per_block_optin" in too_wide.reason
        too_many = launch_plan.stack_plan(32, 64, 100, 4)  # 4 layers x 8 groups of 8 > 16 SMs
        assert not too_many.feasible and "cannot all be co-resident" in too_many.reason
        one_layer = launch_plan.stack_plan(32, 4, 100, 1)
        assert not one_layer.feasible and "2 to 16 layers, not 1" in one_layer.reason
    with simt.emulated_device(sm_count=16, cooperative_launch=False):
        assert "cooperative launches" in launch_plan.stack_plan(32, 4, 100, 2).reason
        assert launch_plan.stack_plan(129, 4, 100, 2).feasible  # (a cluster needs no cooperative launch)
    with simt.emulated_device(sm_count=16, compute_capability=(8, 0)):
        assert "needs thread-block clusters (compute capability 9.0)" in launch_plan.stack_plan(129, 4, 100, 2).reason


@pytest.mark.parametrize("samples", [1, 2], ids=["1-sample", "2-samples"])
def test_the_cluster_stack_backward_op_records_norms_and_changes_nothing_else(samples):
    """At H > 128 the stack runs on the cluster path (2 layers of 8 CTAs of 17 units): its
    backward op with record_norms returns each layer's five gradients bitwise as without it,
    then that layer's step norms (zero past each sample's length), squared gradient norms and
    non-finite flag, bitwise alike under every emulator schedule (each layer's CTAs' sums
    gathered in its first CTA; the values against the float64 layers in
    test_recorded_norms_of_a_stack_run_in_one_launch); and stack=True says why a call with
    another path forced cannot run."""
    steps, batch, hidden = 4, 3, 130
    x, h0, groups = stack_inputs(steps, batch, 4, hidden, 2)
    x32, h32 = x.float(), h0.float()
    flat = [w.float() for group in groups for w in group]
    weights = [tuple(w.float() for w in group) for group in groups]
    lengths = torch.tensor([4, 1, 3])
    with simt.emulated_device(**STACK_GPU), launch_plan.forced_tiling(samples=samples):
        plan = launch_plan.stack_plan(hidden, batch, steps, 2)
        assert (plan.path, plan.cluster, plan.units_per_cta, plan.samples) == ("cluster", 16, 17, samples)
        outputs, _ = OPS.rnn_stack_forward(x32, h32, flat, True, lengths, "tanh", "emulated")
        arguments = (torch.ones(steps, batch, hidden), torch.zeros(2, batch, hidden), outputs, [True] * 10, x32, h32,
                     flat, True, lengths, "tanh")
        grads = OPS.rnn_stack_backward(*arguments, backend="emulated")
        runs = []
        for mode, seed in simt.ALL_SCHEDULES:
            with simt.schedule(mode, seed):
                runs.append(OPS.rnn_stack_backward(*arguments, backend="emulated", record_norms=True))
        for other in runs[1:]:
            for a, b in zip(runs[0], other, strict=True):
                assert torch.equal(a, b), "results differ between emulator schedules"
        recorded = runs[0]
        assert len(grads) == 10 and grads[0].shape == x32.shape and len(recorded) == 16
        for layer in range(2):
            for a, b in zip(grads[5 * layer:5 * layer + 5], recorded[8 * layer:8 * layer + 5], strict=True):
                assert torch.equal(a, b)
            step_norms = recorded[8 * layer + 5]
            assert step_norms.shape == (steps, batch)
            for b, n in enumerate(lengths.tolist()):
                assert bool((step_norms[:n, b] > 0).all()) and bool((step_norms[n:, b] == 0).all()), step_norms
        with pytest.raises(ValueError, match="cannot run its layers in one launch: path='block' forces another kernel "
                                             "than the cluster path's"):
            functional.rnn(x32, h32, weights, 2, False, backend="emulated", stack=True, path="block")
        out, _ = functional.rnn(x32, h32, weights, 2, False, backend="emulated", stack=True, path="cluster")
        assert torch.equal(out, OPS.rnn_stack_forward(x32, h32, flat, True, None, "tanh", "emulated")[0][1])


@pytest.mark.parametrize("truncation", [TruncationArgs(), TruncationArgs(2, 1.0, 0), TruncationArgs(0, 0.6, 7)],
                         ids=["full", "every-2", "random"])
@pytest.mark.parametrize("hidden,kernel,passes", [(40, "backward_stack_kernel", 3),
                                                  (140, "backward_cluster_stack_kernel", 1)],
                         ids=["block", "cluster"])
def test_stack_norms_are_summed_after_the_plain_backward(hidden, kernel, passes, truncation):
    """A stack's backward that records norms on kernels compiled for their passes runs the plain
    copy, which stores each layer's g_t (on the cluster path after the step's barrier, as dz),
    then one launch of step_norms_kernel sums every layer's rows (deferred norms);
    forced_tiling(norms_in_steps=True) keeps the general kernel, which sums them in its steps.
    The gradients are bitwise those of the backward recording nothing either way, every result
    is bitwise the same under a shuffled schedule, and the two ways' step norms agree to the last
    float32 place (float64 sums of the same squares in another order, rounded once)."""
    steps, batch, layers = 5, 3, 2
    x, h0, groups = stack_inputs(steps, batch, 4, hidden, layers, seed=8)
    x32, h32 = x.float(), h0.float()
    flat = [w.float() for group in groups for w in group]
    lengths = torch.tensor([5, 0, 3])
    grad_output = torch.randn(steps, batch, hidden, generator=torch.Generator().manual_seed(9))
    seed = torch.tensor(truncation.seed)
    runs = {}
    with simt.emulated_device(**STACK_GPU):
        plan = launch_plan.stack_plan(hidden, batch, steps, layers)
        assert plan.path == ("block" if hidden <= 128 else "cluster") and plan.compiled_passes == passes, plan.reason
        outputs, _ = OPS.rnn_stack_forward(x32, h32, flat, True, lengths, "tanh", "emulated")
        arguments = (grad_output, torch.zeros(layers, batch, hidden), outputs, [True] * 5 * layers, x32, h32, flat,
                     True, lengths, "tanh", truncation.every, truncation.keep_prob, seed)
        unrecorded = OPS.rnn_stack_backward(*arguments, backend="emulated")
        for in_steps, mode in itertools.product((False, True), ("forward", "shuffle")):
            with launch_plan.forced_tiling(norms_in_steps=in_steps), simt.schedule(mode, seed=3), \
                    simt.recording_launches() as launches:
                runs[in_steps, mode] = OPS.rnn_stack_backward(*arguments, backend="emulated", record_norms=True)
            stack = [name for name in launches if name.startswith(kernel)]
            assert len(stack) == 1, launches
            if in_steps:
                assert stack == [f"{kernel}<{plan.samples}, {passes}>"] and "step_norms_kernel" not in launches
            else:
                assert stack == [f"{kernel}<{plan.samples}, {passes}, true>"], launches
                assert launches[launches.index(stack[0]) + 1:] == ["step_norms_kernel"], launches
    eps = torch.finfo(torch.float32).eps
    for key, run in runs.items():
        assert all(torch.equal(a, b) for a, b in zip(run, runs[key[0], "forward"], strict=True)), key
        for layer in range(layers):
            assert all(torch.equal(a, b) for a, b in zip(run[8 * layer:8 * layer + 5],
                                                         unrecorded[5 * layer:5 * layer + 5], strict=True)), key
            norms, summed_in_steps = run[8 * layer + 5], runs[True, "forward"][8 * layer + 5]
            assert bool((norms[:, 1] == 0).all()) and bool((norms[3:, 2] == 0).all()), norms
            assert bool(((norms - summed_in_steps).abs() <= eps * summed_in_steps).all()), (key, layer)
            assert bool((norms[:3, 2] > 0).all()) and bool((norms[:, 0] > 0).all()), norms


@settings(max_examples=20, deadline=None, derandomize=True)
@given(hidden=st.integers(1, 160), layers=st.integers(2, 3), steps=st.integers(1, 5), batch=st.integers(1, 4),
       truncation=st.sampled_from([TruncationArgs(), TruncationArgs(2, 1.0, 0), TruncationArgs(0, 0.6, 7)]),
       data=st.data())
def test_deferred_stack_norms_at_drawn_shapes(hidden, layers, steps, batch, truncation, data):
    """Drawn stacks (the block path's to H = 128, the cluster path's beyond), lengths (empty
    samples among them) and truncations: the norms deferred to step_norms_kernel agree with
    those summed in the steps to the last float32 place and are zero past each sample's length,
    and the gradients are bitwise the same either way."""
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, steps), min_size=batch, max_size=batch)))
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=hidden)
    x32, h32 = x.float(), h0.float()
    flat = [w.float() for group in groups for w in group]
    grad_output = torch.randn(steps, batch, hidden, generator=torch.Generator().manual_seed(steps))
    runs = []
    with simt.emulated_device(**STACK_GPU):
        assert launch_plan.stack_plan(hidden, batch, steps, layers).compiled_passes > 0
        outputs, _ = OPS.rnn_stack_forward(x32, h32, flat, True, lengths, "tanh", "emulated")
        arguments = (grad_output, torch.zeros(layers, batch, hidden), outputs, [True] * 5 * layers, x32, h32, flat,
                     True, lengths, "tanh", truncation.every, truncation.keep_prob, torch.tensor(truncation.seed))
        for in_steps in (False, True):
            with launch_plan.forced_tiling(norms_in_steps=in_steps), simt.recording_launches() as launches:
                runs.append(OPS.rnn_stack_backward(*arguments, backend="emulated", record_norms=True))
            assert ("step_norms_kernel" in launches) != in_steps, launches
    deferred, in_steps = runs
    eps = torch.finfo(torch.float32).eps
    for layer in range(layers):
        first = 8 * layer
        assert all(torch.equal(a, b) for a, b in zip(deferred[first:first + 5], in_steps[first:first + 5],
                                                     strict=True)), layer
        norms, summed_in_steps = deferred[first + 5], in_steps[first + 5]
        assert bool(((norms - summed_in_steps).abs() <= eps * summed_in_steps).all()), (layer, norms, summed_in_steps)
        for b, n in enumerate(lengths.tolist()):
            assert bool((norms[n:, b] == 0).all()), norms


def test_stack_true_says_why_a_call_cannot():
    x, h0, groups = stack_inputs(4, 2, 3, 8, 2)
    x32 = x.float()
    weights = [tuple(w.float() for w in group) for group in groups]
    bidirectional = weights + [tuple(w.float() for w in group) for group in stack_inputs(4, 2, 8, 8, 2)[2]]
    bidirectional[1] = tuple(w.float() for w in stack_inputs(4, 2, 3, 8, 1)[2][0])  # l0_reverse takes the input
    cases = [
        (dict(weights=bidirectional, bidirectional=True, backend="emulated"), "2 or more layers in one direction"),
        (dict(backend="emulated", path="grid"), "path='grid' forces another kernel"),
        (dict(backend="cpu"), "runs on the GPU kernels"),
        (dict(backend="emulated", x=x), "float32 tensors on one device"),
    ]
    with simt.emulated_device(**STACK_GPU):
        for kwargs, message in cases:
            call = dict(x=x32, weights=weights, bidirectional=False, dropout=0.0, training=False)
            call.update(kwargs)
            x_in, w_in = call.pop("x"), call.pop("weights")
            bidir = call.pop("bidirectional")
            with pytest.raises(ValueError, match=f"stack=True, but this call cannot run its layers in one launch: "
                                                 f".*{message}"):
                functional.rnn(x_in, None, w_in, 2, bidir, stack=True, **call)
        with pytest.raises(ValueError, match="stack must be None, True or False, got 'yes'"):
            functional.rnn(x32, None, weights, 2, False, backend="emulated", stack="yes")
        # Dropout in eval mode is no dropout: the stack runs.
        out, _ = functional.rnn(x32, None, weights, 2, False, dropout=0.5, training=False, backend="emulated",
                                stack=True)
        assert out.shape == (4, 2, 8)


def test_stack_op_rejects_bad_arguments_before_anything_runs():
    x, h0, groups = stack_inputs(4, 2, 3, 8, 3)
    flat = [w.float() for group in groups for w in group]
    x32, h32 = x.float(), h0.float()
    with simt.emulated_device(**STACK_GPU):
        with pytest.raises(ValueError, match="weights must hold 4 tensors per layer, got 11"):
            OPS.rnn_stack_forward(x32, h32, flat[:-1], True, None, "tanh", "emulated")
        with pytest.raises(RuntimeError, match=r"hx must have shape \[3, B, H\] \(one state per layer\), got \[2, 2, 8\]"):
            OPS.rnn_stack_forward(x32, h32[:2], flat, True, None, "tanh", "emulated")
        with pytest.raises(ValueError, match="runs no layer stack in one launch"):
            OPS.rnn_stack_forward(x32, h32, flat, True, None, "tanh", "cpu")
        with pytest.raises(ValueError, match="runs float32, got input of dtype Double"):
            OPS.rnn_stack_forward(x, h0, [w for group in groups for w in group], True, None, "tanh", "emulated")
        narrow = list(flat)
        narrow[5] = narrow[5][:4, :4].contiguous()  # layer 1's W_hh 4 x 4
        with pytest.raises(RuntimeError, match=r"weight_hh must have shape|weight_ih must have shape"):
            OPS.rnn_stack_forward(x32, h32, narrow, True, None, "tanh", "emulated")
        with pytest.raises(ValueError, match=r"lengths\[1\] = 9 is outside \[0, 4\]"):
            OPS.rnn_stack_forward(x32, h32, flat, True, torch.tensor([4, 9]), "tanh", "emulated")
        with pytest.raises(ValueError, match="a stack needs at least 2 layers, got 1"):
            OPS.rnn_stack_forward(x32, h32[:1], flat[:4], True, None, "tanh", "emulated")
        for masks in (torch.ones(3, 4, 2, 8), torch.ones(2, 4, 2, 8, dtype=torch.float64)):
            with pytest.raises(ValueError, match=r"dropout_masks must be a float32 tensor of shape \[2, 4, 2, 8\] "
                                                 r"\(one mask per layer but the last\) on cpu, got"):
                OPS.rnn_stack_forward(x32, h32, flat, True, None, "tanh", "emulated", masks)


def test_stack_backward_rejects_bad_arguments_before_anything_runs():
    x, h0, groups = stack_inputs(4, 2, 3, 8, 2)
    flat = [w.float() for group in groups for w in group]
    x32, h32 = x.float(), h0.float()
    grad_output, grad_h_n = torch.zeros(4, 2, 8), torch.zeros(2, 2, 8)
    with simt.emulated_device(**STACK_GPU):
        outputs, _ = OPS.rnn_stack_forward(x32, h32, flat, True, None, "tanh", "emulated")
        with pytest.raises(ValueError, match=r"output_mask must hold 5 entries per layer \(10\), got 9"):
            OPS.rnn_stack_backward(grad_output, grad_h_n, outputs, [True] * 9, x32, h32, flat, True, None)
        with pytest.raises(RuntimeError, match=r"grad_h_n must be a float32 tensor of shape \[2, 2, 8\]"):
            OPS.rnn_stack_backward(grad_output, grad_h_n[:1], outputs, [True] * 10, x32, h32, flat, True, None,
                                   backend="emulated")
        with pytest.raises(RuntimeError, match=r"outputs must be a float32 tensor of shape \[2, 4, 2, 8\]"):
            OPS.rnn_stack_backward(grad_output, grad_h_n, outputs[:, :3], [True] * 10, x32, h32, flat, True, None,
                                   backend="emulated")
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\], got 0"):
            OPS.rnn_stack_backward(grad_output, grad_h_n, outputs, [True] * 10, x32, h32, flat, True, None,
                                   keep_prob=0.0, backend="emulated")
        with pytest.raises(ValueError, match=r"rnn_stack_backward: dropout_masks must be a float32 tensor of shape "
                                             r"\[1, 4, 2, 8\]"):
            OPS.rnn_stack_backward(grad_output, grad_h_n, outputs, [True] * 10, x32, h32, flat, True, None,
                                   backend="emulated", dropout_masks=torch.ones(1, 4, 2, 7))


def test_empty_batch_and_zero_steps_give_zeros_and_the_initial_states():
    x, h0, groups = stack_inputs(4, 2, 3, 8, 2)
    flat = [w.float() for group in groups for w in group]
    with simt.emulated_device(**STACK_GPU):
        outputs, h_n = OPS.rnn_stack_forward(x[:0].float(), h0.float(), flat, True, None, "tanh", "emulated")
        assert outputs.shape == (2, 0, 2, 8) and torch.equal(h_n, h0.float())
        outputs, h_n = OPS.rnn_stack_forward(x[:, :0].float(), None, flat, True, None, "tanh", "emulated")
        assert outputs.shape == (2, 4, 0, 8) and h_n.shape == (2, 0, 8)


def test_without_a_graph_the_output_keeps_no_other_layer_alive():
    """Under no_grad the stack's output is the top layer's alone (the [L,T,B,H] outputs are
    freed); with a graph it is a view of them, which the backward reads."""
    x, h0, groups = stack_inputs(5, 2, 3, 8, 3)
    weights = [tuple(w.float() for w in group) for group in groups]
    with simt.emulated_device(**STACK_GPU):
        with torch.no_grad():
            out, _ = functional.rnn(x.float(), None, weights, 3, False, backend="emulated", stack=True)
        assert out.untyped_storage().nbytes() == out.numel() * out.element_size()
        leaf = x.float().requires_grad_()
        out, _ = functional.rnn(leaf, None, weights, 3, False, backend="emulated", stack=True)
        assert out.untyped_storage().nbytes() == 3 * out.numel() * out.element_size()


@pytest.mark.parametrize("hidden", [9, 129], ids=["block", "cluster"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 0]], ids=["all-steps", "lengths"])
@pytest.mark.parametrize("hx", [False, True], ids=["no-hx", "hx"])
def test_stack_buffers_left_uncleared_are_written_everywhere(lengths, hx, hidden):
    """The stack's outputs, its dz and its step norms are not cleared before the kernels write
    them, lengths or not (zero past each sample's length): with every new buffer full of NaN
    the forward and the backward (norms recorded) give bitwise the results of an ordinary run,
    on the block path's stack and the cluster path's (H = 129)."""
    from test_cuda_kernels_emulated import uninitialized_memory_is_nan

    x, h0, groups = stack_inputs(4, 3, 2, hidden, 3, hx=hx, seed=6)
    flat = [w.float() for group in groups for w in group]
    h32 = None if h0 is None else h0.float()
    length_tensor = None if lengths is None else torch.tensor(lengths)
    grad_output, grad_h_n = (c.float() for c in cotangents_for(4, 3, hidden, 3, seed=7))

    def run():
        outputs, h_n = OPS.rnn_stack_forward(x.float(), h32, flat, True, length_tensor, "tanh", "emulated")
        grads = OPS.rnn_stack_backward(grad_output, grad_h_n, outputs, [True] * 15, x.float(), h32, flat, True,
                                       length_tensor, backend="emulated", record_norms=True)
        return [outputs, h_n, *[g for g in grads if g.numel()]]

    with simt.emulated_device(**STACK_GPU):
        expected = run()
        with uninitialized_memory_is_nan():
            filled = run()
    assert all(t.isfinite().all() for t in expected)
    for i, (a, b) in enumerate(zip(expected, filled)):
        assert torch.equal(a, b), i


def test_stack_host_work_is_one_copy_of_the_weights_and_the_layer_gemms(monkeypatch):
    """Each ATen call is a launch on a GPU (the emulated backend runs the CUDA host code). A
    3-layer stack with biases, no hx, no lengths: forward, one copy of the weights, the next
    layers' biases (two copies and a sum), layer 0's input projection (bias sum and GEMM) and
    the tagged words' clearing; backward, one copy of the transposed weights, the words'
    clearing and each layer's gradient GEMMs (layer 0's dX, dW_ih, dW_hh (8 rows: one
    product), the bias sum; the layers above without dX)."""
    import test_cuda_kernels_emulated as layer_tests

    monkeypatch.setattr(layer_tests, "_WORK_OPS", layer_tests._WORK_OPS | {"aten::cat", "aten::stack", "aten::clone"})
    x, _, groups = stack_inputs(5, 2, 3, 8, 3)
    x32 = x.float()
    flat = [w.float() for group in groups for w in group]
    grad_output, grad_h_n = torch.ones(5, 2, 8), torch.ones(3, 2, 8)
    mask = [True, False, True, True, True] + [False, False, True, True, True] * 2
    with simt.emulated_device(**STACK_GPU):
        outputs, _ = OPS.rnn_stack_forward(x32, None, flat, True, None, "tanh", "emulated")
        forward = layer_tests._device_work(
            lambda: OPS.rnn_stack_forward(x32, None, flat, True, None, "tanh", "emulated"))
        backward, backward_without_h_n = (layer_tests._device_work(
            lambda: OPS.rnn_stack_backward(grad_output, g, outputs, mask, x32, None, flat, True, None,
                                           backend="emulated")) for g in (grad_h_n, None))
    assert forward == {"aten::cat": 3, "aten::add_": 1, "aten::add": 1, "aten::addmm": 1, "aten::zero_": 1}
    assert backward == {"aten::cat": 1, "aten::zero_": 1, "aten::mm": 3 + 2 + 2, "aten::sum": 3}
    # Without h_n's gradient the op fills zeros for its kernels, which read dh_n unconditionally.
    assert backward_without_h_n == backward + collections.Counter({"aten::zero_": 1})


@pytest.mark.parametrize("hidden", [20, 150], ids=["block-stack", "cluster-stack"])
def test_an_absent_h_n_gradient_of_a_stack_reads_as_zeros(hidden):
    """grad_h_n None (no final state used: the stack's Function leaves that gradient
    unmaterialised; the op fills zeros for its kernels) gives bitwise the results of grad_h_n =
    zeros in both stack kernels: with hx, lengths with an empty sample, truncation every 2 steps
    and norms recorded."""
    x, h0, groups = stack_inputs(5, 3, 2, hidden, 2, hx=True, seed=8)
    flat = [w.float() for group in groups for w in group]
    lengths = torch.tensor([5, 0, 3])
    grad_output = torch.randn(5, 3, hidden, generator=torch.Generator().manual_seed(2))
    with simt.emulated_device(**STACK_GPU):
        outputs, h_n = OPS.rnn_stack_forward(x.float(), h0.float(), flat, True, lengths, "tanh", "emulated")
        absent, zeros = (OPS.rnn_stack_backward(grad_output, g, outputs, [True] * 10, x.float(), h0.float(), flat,
                                                True, lengths, truncate_every=2, backend="emulated",
                                                record_norms=True)
                         for g in (None, torch.zeros_like(h_n)))
    assert len(absent) == 16
    for a, b in zip(absent, zeros, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_a_long_stack_matches_the_cpu_layers():
    """3000 steps of a 3-layer stack (the tagged words and each lane's output offsets over a
    long run): every result against the CPU backend's layers in float64 (tolerance rule, stock:
    the CPU layers in float32)."""
    steps, batch, hidden, layers = 3000, 2, 8, 3
    lengths = torch.tensor([3000, 1777])
    x, h0, groups = stack_inputs(steps, batch, 3, hidden, layers, seed=12)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=13)
    with simt.emulated_device(**STACK_GPU):
        ours = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="emulated", stack=True)
    reference = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float64, backend="cpu")
    stock = run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, backend="cpu")
    for name, r, s, o in zip(names_for(len(ours)), reference, stock, ours):
        assert_within_tolerance(r, s, o, name=name, ulps=8)
