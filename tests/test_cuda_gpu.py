"""The CUDA backend on a real GPU: every recurrence path forced (block, cluster, grid,
stepwise) and the planner's own choice, forward and backward, mirroring the emulated tests
(test_cuda_kernels_emulated.py, test_bptt_kernels.py) on CUDA tensors: the float64 step loop
and the CPU op under the tolerance rule, cuDNN for the module, truncation (K and randomized)
with recorded norms, bitwise determinism run to run, odd H and B, zero lengths, reverse,
bidirectional; and a device that still works after a refused call. A path the GPU cannot
take for a shape (the cluster path below compute capability 9.0, the block path beyond 256
units) must be refused with ValueError before anything runs, never skipped.
Skipped, with the reason stated, where no CUDA device is present (`make gpu-check` runs them
on a GPU machine)."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import rnn_fused
from rnn_fused import _ops
from rnn_fused.modules import RNN
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import (FLOAT64_PARITY_ULPS, assert_within_tolerance, compare_with_torch,
                                     true_float32_on_cuda)
from rnn_fused.truncation import RandomTruncation, resolve_truncation

from rnn_cases import (EMULATED_PATHS, RNNCase, assert_close64, assert_norm_partials_match, norm_partials_case,
                        run_layer_op)
from test_autocast import _stock_layer
from test_cuda_kernels_emulated import (GRADIENT_KERNEL_CASES, KERNEL_PROJECTION_CASES, LAYER_CASES, MODULE_CASES,
                                       _case_id, layer_args)
from test_layer_stack import STACK_CASES, cotangents_for, run_stack, stack_inputs
from test_layer_stack import _case_id as _stack_case_id
from test_layer_stack import names_for as stack_names

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# Where the kernels under test run: CUDA tensors, the op's backend chosen by their device, the
# real GPU's plan. (Pointing these at "cpu", "emulated", "emulated" rehearses the file on the
# SIMT emulator, which is how it was checked without a GPU.)
DEVICE = "cuda"
BACKEND = None
PLAN_DEVICE = "cuda"
# Forced paths and the planner's own choice (None).
PATH_CHOICES = [*EMULATED_PATHS, None]
PATH_IDS = [str(p) for p in PATH_CHOICES]


@pytest.fixture(autouse=True)
def no_tf32():
    """cuDNN and cuBLAS in true float32, so stock is an honest float32 baseline."""
    with true_float32_on_cuda():
        yield


def _cuda(x):
    return None if x is None else x.to(DEVICE)


def gpu_layer(*args, **kwargs):
    """rnn_fused.rnn_layer on the kernels under test."""
    return rnn_fused.rnn_layer(*args, backend=BACKEND, **kwargs)


def clusters_supported() -> bool:
    return torch.cuda.get_device_capability() >= (9, 0)


def path_refusal(path: str | None, hidden: int, batch: int, dtype: torch.dtype) -> str | None:
    """None when `path` runs forward and backward at this shape on this GPU, else the limit
    the planner names (the forced call must then raise ValueError)."""
    if path is None:
        return None
    for backward in (False, True):
        candidate = rnn_fused.plan(hidden, batch, dtype, PLAN_DEVICE, backward=backward).candidate(path)
        if not candidate.feasible:
            return candidate.reason
    return None


def expect_refusal(path: str, hidden: int, reason: str):
    """The ValueError a forced path that cannot run must raise; below compute capability 9.0
    the cluster path's reason is the missing clusters."""
    if path == "cluster" and not clusters_supported():
        assert "compute capability 9.0" in reason, reason
    return pytest.raises(ValueError, match=f"path '{path}' cannot run hidden_size={hidden}")


def run_layer(args, lengths, nonlinearity, reverse, cotangents, path=None, backend=BACKEND):
    """Forward and backward of one layer; returns [output, h_n, *grads of present args]."""
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    out, h_n = rnn_fused.rnn_layer(*leaves, lengths, nonlinearity, reverse, backend=backend, path=path)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, [c.to(out.device, out.dtype) for c in cotangents])
    return [out.detach(), h_n.detach(), *grads]


def reference_results(args, lengths, nonlinearity, reverse, cotangents, dtype):
    leaves = [None if a is None else a.detach().to(dtype).requires_grad_() for a in args]
    out, h_n = reference_layer(*leaves, lengths, nonlinearity, reverse)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, [c.to(out.device, dtype) for c in cotangents])
    return [out.detach(), h_n.detach(), *grads]


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_matches_reference_on_every_path(case, dtype, path):
    """Each path vs the float64 step loop (tolerance rule, stock = step loop in dtype) and the
    CPU op; lengths given as a CUDA tensor (checked on the device by one reduction); two runs
    bitwise equal."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    cpu_lengths = None if lengths is None else torch.tensor(lengths)
    cuda_lengths = _cuda(cpu_lengths)
    args = [None if a is None else a.to(dtype) for a in layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx)]
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    cuda_args = [_cuda(a) for a in args]
    refusal = path_refusal(path, hidden, batch, dtype)
    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            run_layer(cuda_args, cuda_lengths, nonlinearity, reverse, cotangents, path)
        return
    ours = run_layer(cuda_args, cuda_lengths, nonlinearity, reverse, cotangents, path)
    again = run_layer(cuda_args, cuda_lengths, nonlinearity, reverse, cotangents, path)
    for a, b in zip(ours, again):
        assert torch.equal(a, b), "two runs differ"
    reference = reference_results([_cuda(a.double()) if a is not None else None for a in args], cuda_lengths,
                                  nonlinearity, reverse, cotangents, torch.float64)
    stock = reference_results(cuda_args, cuda_lengths, nonlinearity, reverse, cotangents, dtype)
    cpu = run_layer(args, cpu_lengths, nonlinearity, reverse, cotangents, backend="cpu")
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(ours) - 2)]
    for name, r, s, o, c in zip(names, reference, stock, ours, cpu):
        assert o.device.type == torch.device(DEVICE).type and o.dtype == dtype
        assert_within_tolerance(r, s, o, name=f"{name} ({path})", ulps=ulps)
        assert_within_tolerance(r.cpu(), s.cpu(), c, name=f"{name} (cpu op)", ulps=ulps)
    if lengths is not None:
        for b, n in enumerate(lengths):
            assert torch.all(ours[0][n:, b] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", KERNEL_PROJECTION_CASES, ids=_case_id)
def test_block_kernel_projects_a_short_input_on_the_gpu(case, dtype):
    """The block kernel's own projection of a short input (launch_plan.kernel_projects_input on
    this GPU) and the host's GEMM (forced_tiling(input_projection_on_host=True)): each within the
    tolerance rule of the float64 step loop, each bitwise alike run to run."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths, samples = case
    lengths = None if lengths is None else _cuda(torch.tensor(lengths))
    args = [None if a is None else _cuda(a.to(dtype))
            for a in layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx)]
    g = torch.Generator().manual_seed(5)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    reference = reference_results([None if a is None else a.double() for a in args], lengths, nonlinearity, reverse,
                                  cotangents, torch.float64)
    stock = reference_results(args, lengths, nonlinearity, reverse, cotangents, dtype)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(reference) - 2)]
    for on_host in (False, True):
        with rnn_fused.launch_plan.forced_tiling(samples=samples, input_projection_on_host=on_host):
            assert rnn_fused.launch_plan.kernel_projects_input(steps, batch, input_size, hidden, dtype,
                                                               PLAN_DEVICE) != on_host
            ours = run_layer(args, lengths, nonlinearity, reverse, cotangents, "block")
            again = run_layer(args, lengths, nonlinearity, reverse, cotangents, "block")
        for name, r, s_, o, a in zip(names, reference, stock, ours, again, strict=True):
            assert torch.equal(o, a), name
            assert_within_tolerance(r, s_, o, name=f"{name} (input projected on the host: {on_host})", ulps=ulps)


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("case", GRADIENT_KERNEL_CASES, ids=_case_id)
def test_the_gradients_kernel_on_the_gpu(case, path):
    """A short float32 layer's whole-sequence gradients made by the gradients kernel
    (launch_plan.kernel_makes_gradients on this GPU) and by the host's GEMMs
    (forced_tiling(gradients_on_host=True)), after each path's recurrence: each within the
    tolerance rule of the float64 step loop, each bitwise alike run to run; the forward results
    of the two runs bitwise equal (the kernel changes nothing but the gradients)."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    refusal = path_refusal(path, hidden, batch, torch.float32)
    lengths = None if lengths is None else _cuda(torch.tensor(lengths))
    args = [None if a is None else _cuda(a.float())
            for a in layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx)]
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            run_layer(args, lengths, nonlinearity, reverse, cotangents, path)
        return
    reference = reference_results([None if a is None else a.double() for a in args], lengths, nonlinearity, reverse,
                                  cotangents, torch.float64)
    stock = reference_results(args, lengths, nonlinearity, reverse, cotangents, torch.float32)
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(reference) - 2)]
    runs = {}
    for on_host in (False, True):
        with rnn_fused.launch_plan.forced_tiling(gradients_on_host=on_host):
            assert rnn_fused.launch_plan.kernel_makes_gradients(steps, batch, input_size, hidden, torch.float32,
                                                                PLAN_DEVICE, hx_grad=hx) != on_host
            ours = run_layer(args, lengths, nonlinearity, reverse, cotangents, path)
            again = run_layer(args, lengths, nonlinearity, reverse, cotangents, path)
        for name, r, s_, o, a in zip(names, reference, stock, ours, again, strict=True):
            assert torch.equal(o, a), name
            assert_within_tolerance(r, s_, o, name=f"{name} (gradients on the host: {on_host})", ulps=8)
        runs[on_host] = ours
    assert torch.equal(runs[False][0], runs[True][0]) and torch.equal(runs[False][1], runs[True][1])


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(MODULE_CASES)))
def test_module_matches_cudnn_on_every_path(case, dtype, path, monkeypatch, generator):
    """rnn_fused.RNN with each path vs torch.nn.RNN on cuDNN (tolerance rule): layers,
    bidirectional, packed, batch_first, unbatched, hx, relu, no bias."""
    rnn_case: RNNCase = MODULE_CASES[case]
    input, hx = rnn_case.inputs(generator)
    monkeypatch.setattr(RNN, "backend", BACKEND)
    monkeypatch.setattr(RNN, "path", path)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    run = lambda: compare_with_torch(rnn_case.torch_module().to(DEVICE), input.to(DEVICE), _cuda(hx),  # noqa: E731
                                     dtype=dtype, ulps=ulps)
    refusal = path_refusal(path, rnn_case.hidden_size, rnn_case.batch if not rnn_case.unbatched else 1, dtype)
    if refusal is not None:
        with expect_refusal(path, rnn_case.hidden_size, refusal):
            run()
        return
    run()


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("hidden", [7, 33, 100, 300, 1024])
def test_odd_and_large_hidden_sizes_on_every_path(hidden, path):
    """Odd and large H, odd B with an empty sample, forward and backward vs the step loop."""
    steps, batch = 6, 5
    args = [_cuda(a) for a in layer_args(steps, batch, 8, hidden, dtype=torch.float32)]
    lengths = torch.tensor([6, 6, 3, 2, 0], device=DEVICE)
    g = torch.Generator().manual_seed(2)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    refusal = path_refusal(path, hidden, batch, torch.float32)
    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            run_layer(args, lengths, "tanh", False, cotangents, path)
        return
    reference = reference_results([a.double() for a in args], lengths, "tanh", False, cotangents, torch.float64)
    stock = reference_results(args, lengths, "tanh", False, cotangents, torch.float32)
    ours = run_layer(args, lengths, "tanh", False, cotangents, path)
    for i, (r, s, o) in enumerate(zip(reference, stock, ours)):
        assert_within_tolerance(r, s, o, name=f"result {i} H={hidden} ({path})")


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
def test_layer_replays_from_a_cuda_graph(path):
    """A layer's forward and backward captured in a CUDA graph (torch.cuda.graph: the plan and
    the persistent kernels' cooperative and cluster launches recorded as graph nodes) and
    replayed on new values of its input, state and weights give bitwise what eager calls give
    on those values."""
    steps, batch, hidden = 7, 5, 33
    refusal = path_refusal(path, hidden, batch, torch.float32)
    leaves = [_cuda(a).requires_grad_() for a in layer_args(steps, batch, 4, hidden, dtype=torch.float32)]

    def run(args):
        out, h_n = gpu_layer(*args, None, "tanh", False, path=path)
        return [out, h_n, *torch.autograd.grad(out.sum() + h_n.square().sum(), args)]

    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            run(leaves)
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (plans, cuBLAS handles), as torch advises
        run(leaves)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run(leaves)
    fresh = [_cuda(a) for a in layer_args(steps, batch, 4, hidden, dtype=torch.float32,
                                          generator=torch.Generator().manual_seed(5))]
    with torch.no_grad():
        for leaf, value in zip(leaves, fresh, strict=True):
            leaf.copy_(value)
    graph.replay()
    eager = run([value.clone().requires_grad_() for value in fresh])
    for name, got, expected in zip(["output", "h_n", "grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh",
                                    "grad_bias_ih", "grad_bias_hh"], captured, eager, strict=True):
        assert torch.equal(got, expected), name


def test_every_path_runs_somewhere_on_this_gpu():
    """So that the forced-path tests above exercise every kernel: at H = 33, B = 5 the block,
    grid and stepwise paths run, and the cluster path runs exactly where the GPU has clusters."""
    for backward in (False, True):
        plan = rnn_fused.plan(33, 5, torch.float32, PLAN_DEVICE, backward=backward)
        assert [c.path for c in plan.candidates] == ["block", "cluster", "grid", "stepwise"]
        for path in ("block", "grid", "stepwise"):
            assert plan.candidate(path).feasible, plan.candidate(path).reason
        cluster = plan.candidate("cluster")
        assert cluster.feasible == clusters_supported(), cluster.reason
        if not clusters_supported():
            assert "compute capability 9.0" in cluster.reason
        feasible = [c for c in plan.candidates if c.feasible]
        assert plan.path in rnn_fused.launch_plan.PATHS and plan.reason
        assert plan.predicted_us_per_step == min(c.predicted_us_per_step for c in feasible)


def test_autotune_times_every_path_on_this_gpu_and_the_layer_runs_its_pick():
    """Under launch_plan.autotune the planner times every feasible path on the GPU and takes
    the fastest it measured; the layer then runs that path (bitwise the results of forcing it).
    While the current stream captures a CUDA graph nothing is timed: the model chooses."""
    hidden, batch = 65, 3  # a shape no other test tunes
    args = [_cuda(a).requires_grad_() for a in layer_args(20, batch, 7, hidden, dtype=torch.float32)]

    def once(path=None):
        out, h_n = gpu_layer(*args, None, "tanh", False, path=path)
        return [out, h_n, *torch.autograd.grad(out.sum() + h_n.square().sum(), args)]

    with rnn_fused.launch_plan.autotune(steps=16):
        plans = [rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=b) for b in (False, True)]
        tuned = once()
        capture = torch.cuda.CUDAGraph()
        with torch.cuda.graph(capture):
            untimed = rnn_fused.plan(hidden + 2, batch, torch.float32, PLAN_DEVICE)
    for plan in plans:
        feasible = [c for c in plan.candidates if c.feasible]
        assert all(c.measured_us_per_step > 0 for c in feasible), plan.candidates
        assert plan.measured_us_per_step == min(c.measured_us_per_step for c in feasible)
        assert plan.measured_us_per_step == min(t.measured_us_per_step for t in plan.timed)
        assert plan.reason.startswith(f"{plan.path} (measured ")
        # The block path fits H = 65 at 1, 2 and 4 samples per chunk (8 would be more than twice
        # the batch), each with 32 and with 16 units per pass, with the operand ring and without:
        # all twelve were timed.
        assert sorted((t.samples, t.units_per_pass, t.operand_ring) for t in plan.timed if t.path == "block") == [
            (s, u, o) for s in (1, 2, 4) for u in (16, 32) for o in (False, True)]
        # The grid and cluster paths' shapes were timed with each of their step synchronisations.
        assert {t.step_sync for t in plan.timed if t.path == "grid"} == {0, 1, 2}
        assert {t.step_sync for t in plan.timed if t.path == "cluster"} in ({0, 3}, set())  # (set(): no clusters)
    assert untimed.measured_us_per_step is None and "measured" not in untimed.reason
    # path= forces both directions: the forward's results always compare, the gradients where
    # the backward took the same path as the forward. (The operand ring gives bitwise the
    # results without it; the tiled dot products round otherwise, so they are forced with it.)
    with rnn_fused.launch_plan.forced_tiling(tiled_dots=plans[0].tiled_dots):
        forced = once(plans[0].path)
    compared = len(tuned) if (plans[0].path, plans[0].tiled_dots) == (plans[1].path, plans[1].tiled_dots) else 2
    for a, b in zip(tuned[:compared], forced[:compared], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
def test_deterministic_bitwise_on_every_path(path):
    args = [_cuda(a).requires_grad_() for a in layer_args(30, 6, 7, 33, dtype=torch.float32)]
    lengths = torch.tensor([30, 29, 12, 12, 5, 1], device=DEVICE)
    def once():
        out, h_n = gpu_layer(*args, lengths, "tanh", True, path=path)
        return [out, h_n, *torch.autograd.grad(out.sum() + h_n.square().sum(), args)]

    refusal = path_refusal(path, 33, 6, torch.float32)
    if refusal is not None:
        with expect_refusal(path, 33, refusal):
            once()
        return
    for a, b in zip(once(), once()):
        assert torch.equal(a, b)


def _truncated_run_with_norms(path, hidden, batch, dtype=torch.float32, bidirectional=False, device=DEVICE,
                              backend=BACKEND):
    """Output, h_n, every gradient and the recorded step norms of a module (in dtype;
    bidirectional: a reversed direction too) with randomized truncation on `path`, forward and
    backward over 12 steps with lengths 8-12 (on `device` with `backend`: the GPU's by default)."""
    lengths = torch.tensor([12 - (b % 5) for b in range(batch)])
    torch.manual_seed(0)
    module = RNN(5, hidden, bidirectional=bidirectional, truncation=RandomTruncation(0.7, seed=3)).to(device, dtype)
    module.backend, module.path = backend, path
    x = (torch.randn(12, batch, 5, generator=torch.Generator().manual_seed(11)) * 0.5).to(device, dtype)
    x.requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with rnn_fused.record_gradients(module) as recording:
        out, h_n = module(packed)
    (out.data.sin().sum() + h_n.cos().sum()).backward()
    return [out.data.detach(), h_n.detach(), x.grad, *[p.grad for p in module.parameters()], recording.step_norms]


@pytest.mark.parametrize("path,hidden,batch,units_per_pass", [("block", 64, 8, 32), ("block", 100, 9, 32),
                                                              ("cluster", 256, 8, 32), ("cluster", 200, 9, 32),
                                                              ("cluster", 256, 32, 16)])
def test_kernels_compiled_for_their_passes_round_like_the_general_ones(path, hidden, batch, units_per_pass):
    """The block path at H <= 128 and the cluster path at 1-8 passes per CTA run kernels
    compiled for their pass count (plan.compiled_passes; H = 256, B = 32 at 16 units per pass
    and 1 sample per chunk: 4 CTAs of 64 units, 4 passes, on an H100/H200); the grid path's
    kernels read it at run time. With the same samples per chunk and units per pass, forward
    and backward with lengths, randomized truncation and recorded norms are bitwise alike on
    this GPU (the norms once rounded to float32), at 1 and 8 samples per chunk; every input
    projected by the host's GEMM (the block kernel would project so short an input itself)."""
    if path == "cluster" and not clusters_supported():
        pytest.skip("thread-block clusters need compute capability 9.0 (the refusal is tested elsewhere)")
    for samples in (1, 8):
        runs, plans = [], []
        for p in (path, "grid"):
            with rnn_fused.launch_plan.forced_tiling(samples=samples, units_per_pass=units_per_pass,
                                                     input_projection_on_host=True):
                plans.append(rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE).candidate(p))
                assert path_refusal(p, hidden, batch, torch.float32) is None, plans[-1].reason
                runs.append(_truncated_run_with_norms(p, hidden, batch))
        assert plans[0].compiled_passes > 0 and plans[1].compiled_passes == 0, [p.reason for p in plans]
        for a, b in zip(*runs, strict=True):
            assert torch.equal(a, b), (samples, plans[0].reason)


@pytest.mark.parametrize("hidden,batch", [(5, 7), (64, 8), (100, 9), (128, 130)])
def test_lane_rows_within_the_tolerance_rule_with_the_general_kernels_as_stock(hidden, batch):
    """The block path's lane-row step (forced_tiling's lane_rows_step; float32, H <= 128: a thread per hidden unit) at 1 and 2
    samples per CTA (2 at H <= 64) on this GPU: a module with randomized truncation, lengths and recorded norms,
    forward and backward, within the tolerance rule of the CPU module in float64, the general
    block kernels' float32 results as the stock side; bitwise alike run to run (B = 130: more
    CTAs than SMs at one sample per CTA)."""
    reference = _truncated_run_with_norms(None, hidden, batch, torch.float64, device="cpu", backend="cpu")
    stock = _truncated_run_with_norms("block", hidden, batch)
    names = ["output", "h_n", "grad_input", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "step_norms"]
    for samples in (1, 2) if hidden <= 64 else (1,):
        with rnn_fused.launch_plan.forced_tiling(samples=samples, lane_rows_step=True):
            for backward in (False, True):
                plan = rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=backward, path="block")
                assert plan.lane_rows and plan.samples == samples, plan.reason
            ours = _truncated_run_with_norms("block", hidden, batch)
            again = _truncated_run_with_norms("block", hidden, batch)
        for name, r, s_, o, a in zip(names, reference, stock, ours, again, strict=True):
            assert torch.equal(o, a), name
            assert_within_tolerance(r, s_.double().cpu(), o.double().cpu(), name=f"{name} at {samples} samples",
                                    ulps=8)


@pytest.mark.parametrize("hidden,batch", [(37, 9), (300, 9), (1024, 40)])
def test_grid_tiled_dots_within_the_tolerance_rule_with_the_grid_path_as_stock(hidden, batch):
    """The grid path's tiled dot products (forced_tiling's tiled_dots; float32 at 4 and 8 samples
    per chunk: a warp splits the columns of 32 / S units x S samples) on this GPU: a module with
    randomized truncation, lengths and recorded norms, forward and backward, within the tolerance
    rule of the CPU module in float64, the grid path's 8-lane float32 results as the stock side;
    bitwise alike run to run and at either sample count (each output's sum has one order)."""
    reference = _truncated_run_with_norms(None, hidden, batch, torch.float64, device="cpu", backend="cpu")
    stock = _truncated_run_with_norms("grid", hidden, batch)
    names = ["output", "h_n", "grad_input", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "step_norms"]
    runs = []
    for samples in (4, 8):
        with rnn_fused.launch_plan.forced_tiling(samples=samples, tiled_dots=True):
            for backward in (False, True):
                plan = rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=backward, path="grid")
                assert plan.tiled_dots and plan.samples == samples, plan.reason
            runs.append(_truncated_run_with_norms("grid", hidden, batch))
            again = _truncated_run_with_norms("grid", hidden, batch)
        for name, o, a in zip(names, runs[-1], again, strict=True):
            assert torch.equal(o, a), name
    for name, r, s_, o, other in zip(names, reference, stock, runs[0], runs[1], strict=True):
        assert torch.equal(o, other), name
        assert_within_tolerance(r, s_.double().cpu(), o.double().cpu(), name=name, ulps=8)


@pytest.mark.parametrize("hidden,batch", [(37, 9), (300, 9), (512, 40)])
def test_cluster_tiled_dots_round_as_the_grid_paths_on_this_gpu(hidden, batch):
    """The cluster path's tiled dot products (forced_tiling's tiled_dots; float32 at 4 samples
    per chunk, every weight row of a CTA in shared memory) on this GPU: bitwise the grid path's
    tiled results at 4 samples and bitwise alike run to run, with randomized truncation, lengths
    and recorded norms, forward and backward; within the tolerance rule of the CPU module in
    float64, the cluster path's 8-lane float32 results as the stock side."""
    if not clusters_supported():
        pytest.skip("thread-block clusters need compute capability 9.0")
    reference = _truncated_run_with_norms(None, hidden, batch, torch.float64, device="cpu", backend="cpu")
    stock = _truncated_run_with_norms("cluster", hidden, batch)
    names = ["output", "h_n", "grad_input", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "step_norms"]
    runs = {}
    with rnn_fused.launch_plan.forced_tiling(samples=4, tiled_dots=True):
        for path in ("grid", "cluster"):
            for backward in (False, True):
                plan = rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=backward, path=path)
                assert plan.tiled_dots and plan.samples == 4, plan.reason
            runs[path] = _truncated_run_with_norms(path, hidden, batch)
        again = _truncated_run_with_norms("cluster", hidden, batch)
    for name, r, s_, o, a, g in zip(names, reference, stock, runs["cluster"], again, runs["grid"], strict=True):
        assert torch.equal(o, a) and torch.equal(o, g), name
        assert_within_tolerance(r, s_.double().cpu(), o.double().cpu(), name=name, ulps=8)


@pytest.mark.parametrize("hidden,batch", [(64, 8), (128, 32), (200, 9)])
def test_operand_ring_gives_the_results_of_the_loads_ahead_on_this_gpu(hidden, batch):
    """The block path's general kernels with their step operands through the ring in shared
    memory (forced_tiling's operand_ring: cp.async copies 4 steps ahead) on this GPU: bitwise
    the results of the operands loaded one step ahead, and run to run, with randomized
    truncation, lengths and recorded norms, forward and backward."""
    loads_ahead = _truncated_run_with_norms("block", hidden, batch)
    with rnn_fused.launch_plan.forced_tiling(operand_ring=True):
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=backward, path="block")
            assert "step operands 4 steps ahead in shared memory" in plan.reason, plan.reason
        ring = _truncated_run_with_norms("block", hidden, batch)
        again = _truncated_run_with_norms("block", hidden, batch)
    for a, r, g in zip(loads_ahead, ring, again, strict=True):
        assert torch.equal(a, r) and torch.equal(r, g)


@pytest.mark.parametrize("hidden,batch,samples", [(129, 5, 1), (170, 3, 1), (256, 8, 1), (129, 5, 2), (256, 8, 2)])
def test_split_weights_round_like_the_grid_path(hidden, batch, samples):
    """Past H = 128 the block path's kernels hold the weight rows of the passes that 128
    registers (96 at two samples per chunk) take in registers and only the others in shared
    memory (split weights, 1 or 2 samples per chunk: plan.compiled_passes 5 to 8; all 5 passes
    in registers at H = 129 and one sample). Forward and backward with lengths, randomized
    truncation and recorded norms are bitwise those of the grid path's kernels at the same
    samples per chunk on this GPU (the norms once rounded to float32; the input projected by the
    host's GEMM for both)."""
    runs, plans = [], []
    for p in ("block", "grid"):
        with rnn_fused.launch_plan.forced_tiling(samples=samples, units_per_pass=32, input_projection_on_host=True):
            plans.append(rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE).candidate(p))
            assert path_refusal(p, hidden, batch, torch.float32) is None, plans[-1].reason
            runs.append(_truncated_run_with_norms(p, hidden, batch))
    assert plans[0].compiled_passes == -(-hidden // 32), plans[0].reason
    assert ("the others in shared memory" in plans[0].reason) == (hidden > 160 or samples > 1), plans[0].reason
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b), plans[0].reason


@pytest.mark.parametrize("hidden,batch,samples", [(777, 3, 1), (800, 2, 1), (1024, 5, 1), (800, 3, 2), (1024, 5, 2),
                                                  (800, 5, 4), (1024, 7, 4)])
def test_cluster_split_weights_round_like_the_grid_path(hidden, batch, samples):
    """Past H = 768 the cluster path's kernels at one, two or four samples per chunk hold the
    first of a CTA's two passes of 32 units in registers and the second in shared memory
    (cluster_weights_split: H = 1024 fits a 16-CTA cluster only so; at two (four) samples the
    first pass's rows past column 768 (640) stay in shared memory too; H = 800: the last of 16 CTAs of 52
    units owns 20, no row of its second pass in shared memory). Forward and backward with
    lengths, randomized truncation and recorded norms are bitwise those of the grid path's
    kernels on this GPU."""
    if not clusters_supported():
        pytest.skip("thread-block clusters need compute capability 9.0 (the refusal is tested elsewhere)")
    runs, plans = [], []
    for p in ("cluster", "grid"):
        with rnn_fused.launch_plan.forced_tiling(samples=samples if p == "cluster" else 1, units_per_pass=32):
            plans.append(rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE).candidate(p))
            assert path_refusal(p, hidden, batch, torch.float32) is None, plans[-1].reason
            runs.append(_truncated_run_with_norms(p, hidden, batch))
    assert plans[0].compiled_passes == 2 and plans[0].samples == samples, plans[0].reason
    held = {1: ",", 2: " up to column 768", 4: " up to column 640"}[samples]
    assert "1 pass in registers" + held in plans[0].reason, plans[0].reason
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b), plans[0].reason


@pytest.mark.parametrize("path,hidden,batch", [("block", 64, 8), ("block", 100, 9), ("block", 256, 8),
                                               ("cluster", 256, 8), ("cluster", 200, 9), ("cluster", 1024, 2),
                                               ("cluster", 1024, 16), ("cluster", 1024, 32)])
def test_plain_backward_kernels_give_the_general_kernels_gradients(path, hidden, batch):
    """Full BPTT without recorded norms, on a plan whose kernels are compiled for their passes,
    runs the backward copy compiled without the truncation's edge scales and the norm sums
    (backward_recurrence_kernel's kPlain); its gradients are bitwise those of the same call with
    norms recorded, which runs the general kernel, on this GPU (lengths 8-12 of 12 steps). The
    cluster path at H = 1024 runs its split kernels, at B = 16 with two samples per cluster and
    at B = 32 with four, where the planner takes them (one wave of 8 clusters on an H200)."""
    if path == "cluster" and not clusters_supported():
        pytest.skip("thread-block clusters need compute capability 9.0 (the refusal is tested elsewhere)")
    plan = rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=True, path=path)
    assert plan.compiled_passes > 0, plan.reason
    lengths = torch.tensor([12 - (b % 5) for b in range(batch)])
    runs = []
    for record in (False, True):
        torch.manual_seed(0)
        module = RNN(5, hidden).to(DEVICE)
        module.backend, module.path = BACKEND, path
        x = (torch.randn(12, batch, 5, generator=torch.Generator().manual_seed(11)) * 0.5).to(DEVICE)
        x.requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        with contextlib.ExitStack() as stack:
            if record:
                stack.enter_context(rnn_fused.record_gradients(module))
            out, h_n = module(packed)
        (out.data.sin().sum() + h_n.cos().sum()).backward()
        runs.append([x.grad, *[p.grad for p in module.parameters()]])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b), plan.reason


@pytest.mark.parametrize("path,hidden,batch", [("block", 112, 9), ("cluster", 256, 8), ("grid", 300, 9),
                                               ("grid", 1024, 32)])
def test_every_tile_and_warp_count_rounds_alike(path, hidden, batch):
    """A module with randomized truncation and recorded norms, forward and backward, on each
    persistent path with the samples per chunk and the units per pass forced
    (launch_plan.forced_tiling): output, h_n and every gradient are bitwise those of the
    planner's own tile, whatever the tile or how many warps compute; the float64 norm sums
    agree once rounded to float32. H = 1024, B = 32 is where the planner computes on 4 warps.
    The grid path also ends its steps in the flag barrier over each sample group's CTAs, or
    exchanges its state in tagged words without a barrier (their release stores, acquire spins
    and relaxed 8-byte words run only here, on a GPU's memory model), bitwise alike."""
    def once():
        return _truncated_run_with_norms(path, hidden, batch)

    refusal = path_refusal(path, hidden, batch, torch.float32)
    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            once()
        return
    expected = once()
    tilings = [(1, 32, None), (8, 16, None), (8, 32, None), (2, 16, None)]
    if path == "grid":
        tilings += [(1, 32, "flag_barrier"), (8, 16, "flag_barrier"), (2, 16, "grid_barrier"),
                    (1, 32, "tagged_exchange"), (8, 16, "tagged_exchange"), (4, 32, "tagged_exchange")]
    for samples, units_per_pass, sync in tilings:
        with rnn_fused.launch_plan.forced_tiling(samples=samples, units_per_pass=units_per_pass, step_sync=sync):
            for backward in (False, True):
                forced = rnn_fused.plan(hidden, batch, torch.float32, PLAN_DEVICE, backward=backward).candidate(path)
                assert forced.feasible and (forced.samples, forced.units_per_pass) == (samples, units_per_pass), \
                    forced.reason
                if sync is not None:
                    assert forced.step_sync == rnn_fused.launch_plan.STEP_SYNCS.index(sync), forced.reason
            got = once()
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b), (samples, units_per_pass, sync)


@pytest.mark.parametrize("hidden,batch,dtype,bidirectional", [
    (256, 1, torch.float32, False), (256, 8, torch.float32, True), (129, 3, torch.float32, False),
    (512, 32, torch.float32, False), (768, 16, torch.float32, False), (200, 5, torch.float64, False)])
def test_cluster_async_exchange_rounds_as_the_cluster_barrier_on_the_gpu(hidden, batch, dtype, bidirectional):
    """The cluster path's steps ended by the asynchronous exchange (each CTA's slice stored into
    the others by st.async, counted by an mbarrier per state buffer, no cluster barrier; on the
    GPU's memory model only here; the norm sums reach rank 0 the same way): forward and backward
    with randomized truncation, recorded norms, uneven lengths and a reversed direction, bitwise
    the cluster barrier's results, run three times (a read before the data landed, or an early
    phase, would show as a difference). The recorded norms are float64 sums of H non-negative
    terms in an order that depends on the launch shape, and the planner may tile the two step
    synchronisations differently (H = 200 in float64: 16 CTAs of 13 units with the barrier, 13 of
    16, whole 16-byte slices, with the exchange): against the barrier's, within that sum's
    reordering bound and one rounding to the module's dtype; run to run, bitwise."""
    refusal = path_refusal("cluster", hidden, batch, dtype)
    if refusal is not None:
        with expect_refusal("cluster", hidden, refusal):
            _truncated_run_with_norms("cluster", hidden, batch, dtype, bidirectional)
        return
    with rnn_fused.launch_plan.forced_tiling(step_sync="grid_barrier"):
        *expected, expected_norms = _truncated_run_with_norms("cluster", hidden, batch, dtype, bidirectional)
    with rnn_fused.launch_plan.forced_tiling(step_sync="async_exchange"):
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, dtype, PLAN_DEVICE, backward=backward).candidate("cluster")
            assert plan.step_sync == rnn_fused.launch_plan.STEP_SYNCS.index("async_exchange"), plan.reason
        runs = [_truncated_run_with_norms("cluster", hidden, batch, dtype, bidirectional) for _ in range(3)]
    for got in runs[1:]:
        for a, b in zip(runs[0], got, strict=True):
            assert torch.equal(a, b)
    *got, norms = runs[0]
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(norms, expected_norms, rtol=hidden * 2.0**-52 + torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_runs_in_float32_on_every_path(dtype, path):
    args = [_cuda(a) for a in layer_args(6, 2, 3, 9)]
    reference, _ = reference_layer(*args)
    stock, _ = reference_layer(*[a.to(dtype) for a in args])
    refusal = path_refusal(path, 9, 2, dtype)
    if refusal is not None:
        with expect_refusal(path, 9, refusal):
            gpu_layer(*[a.to(dtype) for a in args], path=path)
        return
    ours, h_n = gpu_layer(*[a.to(dtype) for a in args], path=path)
    assert ours.dtype == dtype and h_n.dtype == dtype
    assert_within_tolerance(reference, stock, ours, name=f"output ({path})")


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
def test_zero_lengths_empty_batch_and_zero_steps(path):
    """All samples empty: zero output, h_n = hx, zero weight gradients; B = 0 and T = 0."""
    args = [_cuda(a) for a in layer_args(4, 3, 2, 5, dtype=torch.float32)]
    lengths = torch.zeros(3, dtype=torch.long, device=DEVICE)
    cotangents = [torch.ones(4, 3, 5, dtype=torch.float64), torch.ones(3, 5, dtype=torch.float64)]
    refusal = path_refusal(path, 5, 3, torch.float32)
    if refusal is not None:
        with expect_refusal(path, 5, refusal):
            run_layer(args, lengths, "tanh", False, cotangents, path)
        return
    out, h_n, grad_x, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = run_layer(
        args, lengths, "tanh", False, cotangents, path)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(h_n, args[1])
    assert torch.equal(grad_hx, torch.ones_like(grad_hx))  # dh_n passes straight to hx
    for grad in (grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh):
        assert torch.equal(grad, torch.zeros_like(grad))
    out, h_n = gpu_layer(*[_cuda(a) for a in layer_args(3, 0, 2, 4)], path=path)
    assert out.shape == (3, 0, 4) and h_n.shape == (0, 4)
    empty = [_cuda(a) for a in layer_args(0, 2, 2, 4)]
    out, h_n = gpu_layer(*empty, path=path)
    assert out.shape == (0, 2, 4) and torch.equal(h_n, empty[1])


# ---- truncation and recorded norms (test_bptt_kernels.py on CUDA tensors) ----

TRUNCATIONS = {"full": None, "K1": 1, "K3": 3, "random": RandomTruncation(0.7, seed=5)}


def _run_op(args, lengths, nonlinearity, reverse, truncation_args, cotangents, layer=0, path=None, backend=BACKEND):
    return run_layer_op(args, lengths, nonlinearity, reverse, truncation_args, cotangents, layer, path, backend)


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("truncation", list(TRUNCATIONS), ids=list(TRUNCATIONS))
@pytest.mark.parametrize("hidden", [33, 300])
def test_truncation_and_norms_equal_the_cpu_op_on_every_path(hidden, truncation, path):
    """float64: the CUDA backward with truncation and norms recorded gives the CPU op's
    gradients, step norms, squared norms and non-finite flag to float64 rounding; twice in
    a row bitwise equal."""
    steps, batch = 12, 5
    args = layer_args(steps, batch, 8, hidden)
    lengths = torch.tensor([12, 12, 7, 3, 0])
    targs = resolve_truncation(TRUNCATIONS[truncation])
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
           torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    cuda_args = [_cuda(a) for a in args]
    cuda_cot = [_cuda(c) for c in cot]
    refusal = path_refusal(path, hidden, batch, torch.float64)
    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            _run_op(cuda_args, _cuda(lengths), "tanh", True, targs, cuda_cot, 1, path)
        return
    cpu = _run_op(args, lengths, "tanh", True, targs, cot, 1, backend="cpu")
    gpu = _run_op(cuda_args, _cuda(lengths), "tanh", True, targs, cuda_cot, 1, path)
    again = _run_op(cuda_args, _cuda(lengths), "tanh", True, targs, cuda_cot, 1, path)
    for c, d, e in zip(cpu, gpu, again):
        assert torch.equal(d, e)
        if c.dtype == torch.bool:
            assert torch.equal(c, d.cpu())
        else:
            assert_close64(d.cpu(), c)


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
def test_an_absent_h_n_gradient_reads_as_zeros_on_the_gpu(path):
    """float32, as on the emulator: grad_h_n None (an unused h_n) gives bitwise the results of
    grad_h_n = zeros, with hx, lengths with an empty sample, reverse and truncation every 3
    steps; the two rows of grad_bias (one reduction over dz expanded to two rows) are bitwise
    equal; and through the module each bias gets its own row, equal to the other's."""
    steps, batch, hidden = 12, 5, 33
    args = [_cuda(a) for a in layer_args(steps, batch, 8, hidden, dtype=torch.float32)]
    lengths = _cuda(torch.tensor([12, 0, 7, 3, 12]))
    grad_output = _cuda(torch.randn(steps, batch, hidden, generator=torch.Generator().manual_seed(2)))
    targs = resolve_truncation(3)
    runs = [_run_op(args, lengths, "tanh", True, targs, (grad_output, grad_h_n), path=path)
            for grad_h_n in (None, torch.zeros_like(args[1]))]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(runs[0][4][0], runs[0][4][1])
    leaves = [a.detach().clone().requires_grad_() for a in args]
    out, _ = gpu_layer(*leaves, lengths, "tanh", True, path=path, truncation=3)
    torch.autograd.backward(out, grad_output)
    assert torch.equal(leaves[4].grad, leaves[5].grad) and leaves[4].grad.data_ptr() != leaves[5].grad.data_ptr()
    assert torch.equal(leaves[4].grad, runs[0][4][0])


@pytest.mark.parametrize("path", EMULATED_PATHS)
def test_norm_partials_of_every_path_agree_with_cpu(path):
    """float32, H = 40: every path reduces the same step norms as the CPU loop, to float32
    rounding (the bound of a length-H float32 sum, twice)."""
    args, lengths, cot, targs = norm_partials_case()
    refusal = path_refusal(path, 40, 3, torch.float32)
    if refusal is not None:
        with expect_refusal(path, 40, refusal):
            _run_op([_cuda(a) for a in args], lengths, "tanh", False, targs, [_cuda(c) for c in cot], path=path)
        return
    cpu = _run_op(args, lengths, "tanh", False, targs, cot, backend="cpu")
    gpu = _run_op([_cuda(a) for a in args], lengths, "tanh", False, targs, [_cuda(c) for c in cot], path=path)
    assert_norm_partials_match(gpu[5], cpu[5])


@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
@pytest.mark.parametrize("batch", [11, 130])
def test_more_samples_than_a_chunk(batch, path):
    """Many samples (several sample groups, chunks or waves), randomized truncation, relu,
    reverse, float64, against the CPU op."""
    steps, hidden = 5, 4
    args = layer_args(steps, batch, 3, hidden, bias=True, hx=True)
    lengths = torch.randint(0, steps + 1, (batch,), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    cot = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
           torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    targs = resolve_truncation(RandomTruncation(0.5, seed=8))
    refusal = path_refusal(path, hidden, batch, torch.float64)
    cuda_args, cuda_cot = [_cuda(a) for a in args], [_cuda(c) for c in cot]
    if refusal is not None:
        with expect_refusal(path, hidden, refusal):
            _run_op(cuda_args, lengths, "relu", True, targs, cuda_cot, path=path)
        return
    cpu = _run_op(args, lengths, "relu", True, targs, cot, backend="cpu")
    gpu = _run_op(cuda_args, lengths, "relu", True, targs, cuda_cot, path=path)
    for a, b in zip(gpu, cpu):
        if a.dtype == torch.bool:
            assert torch.equal(a.cpu(), b)
        else:
            assert_close64(a.cpu(), b)


def test_bidirectional_module_with_truncation_and_norms_matches_the_cpu_module():
    """2-layer bidirectional, packed, randomized truncation, recorded norms: CUDA (planned
    paths) vs the CPU module, float64."""
    torch.manual_seed(0)
    cpu_model = rnn_fused.RNN(5, 37, num_layers=2, bidirectional=True, truncation=RandomTruncation(0.8, seed=2),
                              dtype=torch.float64)
    gpu_model = rnn_fused.RNN(5, 37, num_layers=2, bidirectional=True, truncation=RandomTruncation(0.8, seed=2),
                              dtype=torch.float64, device=DEVICE)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.backend = BACKEND
    x = torch.randn(9, 4, 5, dtype=torch.float64)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([9, 7, 7, 2]))

    def run(model, device):
        with rnn_fused.record_gradients(model) as record:
            out, h_n = model(packed.to(device))
        (out.data.square().sum() + h_n.sum()).backward()
        return record, [p.grad for p in model.parameters()]

    cpu_record, cpu_grads = run(cpu_model, "cpu")
    gpu_record, gpu_grads = run(gpu_model, DEVICE)
    for c, d in zip(cpu_grads, gpu_grads):
        assert_close64(d.cpu(), c)
    for name, value in cpu_record.parameter_sq_norms.items():
        assert_close64(gpu_record.parameter_sq_norms[name].cpu(), value)


@pytest.mark.parametrize("hidden,batch", [(256, 32), (200, 33), (256, 8)])
def test_bidirectional_directions_side_by_side_match_cudnn(hidden, batch):
    """Shapes whose two directions the planner runs at once, each planned for half the SMs
    (functional.directions_side_by_side: on an H100/H200 the cluster path's half-device step is
    priced below twice its whole-device one), the reverse direction on a side stream: a
    2-layer bidirectional module, forward and backward, vs nn.RNN on cuDNN (tolerance rule)."""
    from rnn_fused import functional

    steps = 64  # (long enough that the steps save more than the side stream's fork and join cost)
    side_by_side = functional.directions_side_by_side(PLAN_DEVICE, torch.float32, hidden, batch, None, steps)
    if clusters_supported():
        assert side_by_side == 2
    torch.manual_seed(1)
    stock = torch.nn.RNN(16, hidden, num_layers=2, bidirectional=True).to(DEVICE)
    compare_with_torch(stock, torch.randn(steps, batch, 16, device=DEVICE), dtype=torch.float32)


def test_the_directions_op_pair_copies_cpu_lengths_to_the_gpu_once_a_call():
    """Lengths on the CPU are checked on the host and copied to the device once per call of the
    directions' ops, for both directions (one aten::_to_copy forward, one backward), not once per
    direction and check."""
    torch.manual_seed(2)
    x = torch.randn(6, 3, 4, device=DEVICE)
    weights = [torch.randn(shape, device=DEVICE) * 0.3 for shape in ((5, 4), (5, 5), (5,), (5,))] * 2
    lengths = torch.tensor([6, 2, 0])

    def copies(call):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            result = call()
        return result, [e.name for e in profile.events()].count("aten::_to_copy")

    ops = torch.ops.rnn_fused
    (output, h_n), forward = copies(lambda: ops.rnn_directions_forward(x, None, weights, True, lengths,
                                                                       backend=BACKEND))
    _, backward = copies(lambda: ops.rnn_directions_backward(torch.randn_like(output), None, output, [True] * 9, x,
                                                             None, weights, True, lengths, backend=BACKEND))
    assert (forward, backward) == ((1, 1) if x.is_cuda else (0, 0))  # (CPU tensors: the rehearsal's, no copy)


def test_bidirectional_directions_at_once_run_their_recurrences_on_two_streams():
    """side_by_side=True: the reverse direction's recurrence kernel runs on another stream than
    the forward one's, forward and backward (the op pair's side stream); False: every recurrence
    kernel on the caller's stream. The values are bitwise the same: at H = 40, B = 3 the block
    path's plan (3 one-sample CTAs) is the same on half the SMs as on all of them."""
    torch.manual_seed(3)
    module = RNN(6, 40, bidirectional=True).to(DEVICE)
    module.backend = BACKEND
    x = torch.randn(20, 3, 6, device=DEVICE, requires_grad=True)
    streams, values = {}, {}
    for at_once in (True, False):
        module.side_by_side = at_once
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            out, h_n = module(x)
            grad_x, = torch.autograd.grad(out.square().sum() + h_n.sum(), x)
            torch.cuda.synchronize()
        kernels = [e for e in profile.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA and "_recurrence_kernel" in e.name]
        assert len(kernels) == 4, [e.name for e in kernels]  # each direction's forward and backward
        streams[at_once] = {e.device_resource_id for e in kernels}
        values[at_once] = (out, h_n, grad_x)
    assert len(streams[True]) == 2 and len(streams[False]) == 1
    for backward in (False, True):
        whole, half = (rnn_fused.plan(40, 3, torch.float32, PLAN_DEVICE, backward=backward, side_by_side=share)
                       for share in (1, 2))
        shape = ("path", "samples", "units_per_cta", "units_per_pass", "grid", "block_threads", "compiled_passes")
        assert [getattr(whole, f) for f in shape] == [getattr(half, f) for f in shape]
    for a, b in zip(values[True], values[False], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["unidirectional", "bidirectional"])
def test_a_models_layers_in_one_op_call_give_the_python_loops_values(bidirectional, monkeypatch):
    """On the GPU a model's forward runs its layers in one call of rnn_layers_forward (the directions
    at once where planned: the side stream inside each directions' op), with dropout and a packed
    batch; values, every gradient and the CUDA generator's state afterwards are bitwise the loop's
    in Python (functional._layers_route forced to None)."""
    from rnn_fused import functional

    torch.manual_seed(6)
    module = RNN(6, 40, num_layers=3, dropout=0.3, bidirectional=bidirectional).to(DEVICE)
    module.backend, module.stack = BACKEND, False
    x = torch.randn(12, 3, 6, device=DEVICE)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, [12, 5, 9], enforce_sorted=False)

    def run():
        torch.manual_seed(8)
        out, h_n = module(packed)
        data = out.data
        grads = torch.autograd.grad(data.square().sum() + h_n.sum(), list(module.parameters()))
        return [data, h_n, *grads, torch.rand(4, device=DEVICE)]

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        in_one_op = run()
    assert "rnn_fused::rnn_layers_forward" in {e.name for e in profile.events()}
    monkeypatch.setattr(functional, "_layers_route", lambda *args, **kwargs: None)
    for a, b in zip(in_one_op, run(), strict=True):
        assert torch.equal(a, b)


def test_bidirectional_directions_on_two_streams_replay_from_a_cuda_graph():
    """The directions at once (side_by_side=True: one op pair per layer, the reverse direction's
    launches on a side stream forked from and joined to the current one by events) captured in a
    CUDA graph and replayed on new inputs give bitwise what eager calls give; eager, every layer
    ran the directions' op pair, forward and backward."""
    torch.manual_seed(4)
    module = RNN(6, 40, num_layers=2, bidirectional=True).to(DEVICE)
    module.backend = BACKEND
    module.side_by_side = True
    x = torch.randn(9, 3, 6, device=DEVICE, requires_grad=True)

    def run(values):
        out, h_n = module(values)
        return [out, h_n, *torch.autograd.grad(out.square().sum() + h_n.sum(), [values, *module.parameters()])]

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run(x)
    names = [e.name for e in profile.events()]
    assert names.count("rnn_fused::rnn_directions_forward") == 2
    assert names.count("rnn_fused::rnn_directions_backward") == 2
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch advises
        run(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run(x)
    fresh = torch.randn(9, 3, 6, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(5))
    with torch.no_grad():
        x.copy_(fresh)
    graph.replay()
    eager = run(fresh.clone().requires_grad_())
    for index, (got, expected) in enumerate(zip(captured, eager, strict=True)):
        assert torch.equal(got, expected), index


# ---- double backward: the op's C++ autograd calls the composite backward ----


def test_double_backward_on_cuda_matches_the_step_loop():
    """create_graph=True through the op's C++ autograd node: its backward calls
    rnn_layer_backward_with_graph (a Python composite op) on CUDA tensors, from the autograd
    engine's device thread. The second-order gradient (of the squared first-order gradient
    norm) matches autograd through the float64 step loop, under the tolerance rule."""
    lengths = torch.tensor([7, 3, 5], device=DEVICE)

    def second_order(layer, dtype):
        leaves = [_cuda(a.to(dtype)).requires_grad_() if a is not None else None
                  for a in layer_args(7, 3, 2, 5, dtype=torch.float64)]
        present = [a for a in leaves if a is not None]
        out, h_n = layer(*leaves, lengths)
        grads = torch.autograd.grad(out.square().sum() + h_n.sum(), present, create_graph=True)
        penalty = sum(g.square().sum() for g in grads)
        return torch.autograd.grad(penalty, present)

    reference = second_order(reference_layer, torch.float64)
    stock = second_order(reference_layer, torch.float32)
    ours = second_order(lambda *a: gpu_layer(*a, "tanh", False, truncation=None), torch.float32)
    for name, r, s, o in zip(("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), reference, stock, ours):
        assert_within_tolerance(r.cpu(), s.cpu(), o.cpu(), name=f"second-order grad of {name}")


# ---- a refused call leaves the device usable (issue 12) ----


@pytest.mark.parametrize("case", STACK_CASES + [(50, 32, 16, 128, 2, "tanh", True, True, None)], ids=_stack_case_id)
def test_layer_stack_in_one_launch_on_the_gpu(case):
    """A unidirectional stack's forward in one launch (stack=True): outputs, final states and
    every gradient against the float64 step loop (tolerance rule, stock: the loop in float32),
    bitwise alike run to run; on the block path's stack (H <= 128) layer 0 bitwise equal to the
    block path's layer with its input projected by the host's GEMM, as the stack's is (the
    cluster path's stack dots whole [W_ih | W_hh] rows: another sum)."""
    steps, batch, input_size, hidden, layers, nonlinearity, bias, hx, lengths = case
    lengths = None if lengths is None else torch.tensor(lengths)
    x, h0, groups = stack_inputs(steps, batch, input_size, hidden, layers, bias=bias, hx=hx)
    cotangents = cotangents_for(steps, batch, hidden, layers)
    plan = rnn_fused.launch_plan.stack_plan(hidden, batch, steps, layers, PLAN_DEVICE)
    assert plan.feasible, plan.reason
    runs = [run_stack(x, h0, groups, lengths, nonlinearity, cotangents, torch.float32, DEVICE, backend=BACKEND,
                      stack=True) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b), "the stack's results differ from run to run"
    reference = run_stack(x, h0, groups, lengths, nonlinearity, cotangents, torch.float64, layer_fn=reference_layer)
    stock = run_stack(x, h0, groups, lengths, nonlinearity, cotangents, torch.float32, layer_fn=reference_layer)
    for name, r, s, o in zip(stack_names(len(runs[0])), reference, stock, runs[0]):
        assert_within_tolerance(r, s, o, name=name, ulps=8)
    if plan.path != "block":
        return
    flat = [_cuda(w.float()) for group in groups for w in group]
    outputs, _ = torch.ops.rnn_fused.rnn_stack_forward(_cuda(x.float()), None if h0 is None else _cuda(h0.float()),
                                                       flat, bias, lengths, nonlinearity, BACKEND)
    with rnn_fused.launch_plan.forced_tiling(input_projection_on_host=True):
        first, _ = gpu_layer(_cuda(x.float()), None if h0 is None else _cuda(h0[0].float()), *flat[:4 if bias else 2],
                             *([] if bias else [None, None]), lengths, nonlinearity, path="block")
    assert torch.equal(outputs[0], first)


@pytest.mark.parametrize("hidden,samples,passes", [(72, 1, 5), (128, 1, 8), (128, 2, 8)])
def test_stack_with_every_weight_row_in_registers_on_the_gpu(hidden, samples, passes):
    """The block path's stack at H = 65-128, 1 or 2 samples per group: its kernels compiled for
    5-8 passes hold every weight row in registers (stack_compiled_passes). Outputs, final states
    and every gradient bitwise those of the kernels reading their rows from shared memory at
    run time, with lengths (an empty sample among them)."""
    steps, batch, layers = 30, 4, 3
    lengths = torch.tensor([30, 7, 0, 29])
    x, h0, groups = stack_inputs(steps, batch, 5, hidden, layers, seed=3)
    cotangents = cotangents_for(steps, batch, hidden, layers, seed=4)
    runs = []
    for run_time in (False, True):
        with rnn_fused.launch_plan.forced_tiling(samples=samples, run_time_passes=run_time):
            plan = rnn_fused.launch_plan.stack_plan(hidden, batch, steps, layers, PLAN_DEVICE)
            assert plan.feasible and plan.path == "block", plan.reason
            assert plan.compiled_passes == (0 if run_time else passes), plan.reason
            runs.append(run_stack(x, h0, groups, lengths, "tanh", cotangents, torch.float32, DEVICE, backend=BACKEND,
                                  stack=True))
    for name, a, b in zip(stack_names(len(runs[0])), *runs, strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("hidden", [20, 150], ids=["block-stack", "cluster-stack"])
def test_an_absent_h_n_gradient_of_a_stack_reads_as_zeros_on_the_gpu(hidden):
    """As on the emulator: the stack's backward with grad_h_n None gives bitwise the results of
    grad_h_n = zeros (hx, lengths with an empty sample, truncation every 2 steps, norms)."""
    if hidden > 128 and not clusters_supported():
        pytest.skip("the cluster path's stack needs compute capability 9.0; its refusal there is checked by "
                    "test_recorded_norms_of_a_stack_in_one_launch_on_the_gpu")
    x, h0, groups = stack_inputs(5, 3, 2, hidden, 2, hx=True, seed=8)
    flat = [w.float().to(DEVICE) for group in groups for w in group]
    x, h0 = x.float().to(DEVICE), h0.float().to(DEVICE)
    lengths = _cuda(torch.tensor([5, 0, 3]))
    grad_output = _cuda(torch.randn(5, 3, hidden, generator=torch.Generator().manual_seed(2)))
    outputs, h_n = torch.ops.rnn_fused.rnn_stack_forward(x, h0, flat, True, lengths, "tanh", BACKEND)
    absent, zeros = (torch.ops.rnn_fused.rnn_stack_backward(grad_output, g, outputs, [True] * 10, x, h0, flat, True,
                                                            lengths, truncate_every=2, backend=BACKEND,
                                                            record_norms=True)
                     for g in (None, torch.zeros_like(h_n)))
    for a, b in zip(absent, zeros, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("hidden", [20, 150], ids=["block-stack", "cluster-stack"])
def test_recorded_norms_of_a_stack_in_one_launch_on_the_gpu(hidden):
    """record_gradients on a 3-layer stack run in one launch each way (the block path's stack;
    past H = 128 the cluster path's, whose layers' first CTAs gather the norm sums by
    distributed shared memory), packed, randomized truncation: step norms against the CPU
    layers in float64 under the tolerance rule, and the gradients bitwise those of the same
    stack unrecorded."""
    steps, batch, layers = 40, 5, 3
    plan = rnn_fused.launch_plan.stack_plan(hidden, batch, steps, layers, PLAN_DEVICE)
    if hidden > 128 and not clusters_supported():
        assert not plan.feasible and "compute capability 9.0" in plan.reason, plan.reason
        return
    assert plan.feasible and plan.path == ("block" if hidden <= 128 else "cluster"), plan.reason
    torch.manual_seed(21)
    base = RNN(7, hidden, num_layers=layers, truncation=RandomTruncation(0.7, seed=4))
    x64 = torch.randn(steps, batch, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    lengths = torch.tensor([40, 13, 1, 39, 22])

    def run(dtype, device, backend, stack, record):
        module = copy.deepcopy(base).to(device=device, dtype=dtype)
        module.backend, module.stack = backend, stack
        packed = torch.nn.utils.rnn.pack_padded_sequence(x64.to(device=device, dtype=dtype), lengths,
                                                         enforce_sorted=False)
        with rnn_fused.record_gradients(module) if record else contextlib.nullcontext() as recording:
            out, h_n = module(packed)
        (out.data.sin().sum() + h_n.cos().sum()).backward()
        return [p.grad.cpu() for p in module.parameters()], recording

    grads, recording = run(torch.float32, DEVICE, BACKEND, True, True)
    unrecorded, _ = run(torch.float32, DEVICE, BACKEND, True, False)
    for a, b in zip(grads, unrecorded, strict=True):
        assert torch.equal(a, b), "recording changed a gradient"
    _, reference = run(torch.float64, "cpu", None, False, True)
    _, stock = run(torch.float32, "cpu", None, False, True)
    assert_within_tolerance(reference.step_norms, stock.step_norms, recording.step_norms.cpu(), name="step norms",
                            ulps=8)


def _good_call_still_runs():
    args = [_cuda(a) for a in layer_args(10, 2, 3, 4, dtype=torch.float32)]
    ours, _ = gpu_layer(*args, torch.tensor([10, 4], device=DEVICE))
    torch.cuda.synchronize()
    reference, _ = reference_layer(*[a.double() for a in args], torch.tensor([10, 4], device=DEVICE))
    stock, _ = reference_layer(*args, torch.tensor([10, 4], device=DEVICE))
    assert_within_tolerance(reference, stock, ours, name="output after a refused call")


@pytest.mark.parametrize("bad_lengths, message", [
    ([15, 3], r"lengths\[0\] = 15 is outside \[0, 10\]"),
    ([10, -1], r"lengths\[1\] = -1 is outside \[0, 10\]"),
])
@pytest.mark.parametrize("path", PATH_CHOICES, ids=PATH_IDS)
def test_bad_cuda_lengths_are_refused_on_the_host_and_the_device_still_runs(bad_lengths, message, path):
    """An entry of a CUDA lengths tensor outside [0, T] is a ValueError before any kernel
    runs; it used to trip a device-side check ('unspecified launch failure') and leave every
    later CUDA call failing."""
    args = [_cuda(a) for a in layer_args(10, 2, 3, 4, dtype=torch.float32)]
    if path_refusal(path, 4, 2, torch.float32) is None:
        with pytest.raises(ValueError, match=message):
            gpu_layer(*args, torch.tensor(bad_lengths, device=DEVICE), path=path)
        torch.cuda.synchronize()
    _good_call_still_runs()


def test_a_forced_path_that_cannot_run_is_refused_and_the_device_still_runs():
    args = [_cuda(a) for a in layer_args(3, 2, 2, 300, dtype=torch.float32)]
    with pytest.raises(ValueError, match=r"path 'block' cannot run hidden_size=300, batch_size=2 in float32 "
                                         r"\(forward\) on this device: one CTA owns at most 256 hidden units"):
        gpu_layer(*args, path="block")
    torch.cuda.synchronize()
    _good_call_still_runs()
    if not clusters_supported():
        with pytest.raises(ValueError, match="path 'cluster' cannot run .* compute capability 9.0"):
            gpu_layer(*[_cuda(a) for a in layer_args(3, 2, 2, 8, dtype=torch.float32)], path="cluster")
        _good_call_still_runs()
    with pytest.raises(ValueError, match="path must be 'block', 'cluster', 'grid', 'stepwise' or None, got 'warp'"):
        gpu_layer(*args, path="warp")
    _good_call_still_runs()


@pytest.mark.parametrize("path", ["block", "cluster", "grid"])
def test_step_phase_timing_on_every_persistent_path(path):
    """The phase clock on the GPU: per CTA, cycles in compute and barrier (staging only on the
    grid path), and the timed kernels' results are the ordinary op's, bitwise (as in
    test_cuda_kernels_emulated.py)."""
    if path == "cluster" and not clusters_supported():
        with pytest.raises(ValueError, match="compute capability 9.0"):
            rnn_fused.launch_plan.step_phases(33, 3, 5, device=PLAN_DEVICE, path=path)
        return
    g = torch.Generator().manual_seed(2)
    xw = _cuda(torch.randn(5, 3, 33, generator=g) * 0.5)
    w_hh = _cuda(torch.randn(33, 33, generator=g) * 0.1)
    forward_cycles, h = torch.ops.rnn_fused.recurrence_step_phases(xw, w_hh, False, path=path, backend=BACKEND)
    backward_cycles, dz = torch.ops.rnn_fused.recurrence_step_phases(xw, w_hh, True, path=path, backend=BACKEND)
    layer = (xw, None, torch.eye(33, device=DEVICE), w_hh, None, None, None, "tanh", False)
    out, h_n = torch.ops.rnn_fused.rnn_layer_forward(*layer, backend=BACKEND, path=path)
    mask = [True, False, False, False, False]
    grad_input = torch.ops.rnn_fused.rnn_layer_backward(xw, torch.zeros_like(h_n), out, mask, False, *layer,
                                                        backend=BACKEND, path=path)[0]
    assert torch.equal(h, out) and torch.equal(dz, grad_input)
    ctas = rnn_fused.plan(33, 3, torch.float32, PLAN_DEVICE, path=path).grid
    for cycles in (forward_cycles, backward_cycles):
        assert cycles.shape == (ctas, 3) and cycles.dtype == torch.int64
        stage, compute, barrier = cycles.cpu().unbind(1)
        assert (compute > 0).all() and (barrier > 0).all()
        assert ((stage > 0) if path == "grid" else (stage == 0)).all()


@pytest.mark.parametrize("cudnn", [True, False], ids=["cudnn", "no-cudnn"])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_rnn_layer_under_cuda_autocast_matches_torch_rnn_op(autocast_dtype, cudnn):
    """CUDA autocast reaches the op's AutocastCUDA kernel: the result dtype is torch.rnn_tanh's
    and the values meet the tolerance rule against a float64 run. Where torch runs cuDNN that
    dtype is float16 whatever autocast was given (ATen's autocast kernel of the cuDNN RNN casts
    to float16: seen on the H200 on 2026-12-04, where bfloat16 autocast gave float16); without
    cuDNN, the autocast dtype. The cast happens before the path is chosen, so the planned path
    stands for all of them."""
    args = layer_args(9, 3, 5, 24, dtype=torch.float64)
    reference = _stock_layer(*args)
    float32_args = [_cuda(a.float()) for a in args]
    with torch.backends.cudnn.flags(enabled=cudnn), torch.autocast("cuda", dtype=autocast_dtype):
        stock = _stock_layer(*float32_args)
        ours = gpu_layer(*float32_args, None, "tanh")
    expected = torch.float16 if cudnn and torch.backends.cudnn.is_available() else autocast_dtype
    for name, r, s, o in zip(("output", "h_n"), reference, stock, ours):
        assert s.dtype == expected and o.dtype == s.dtype, (name, s.dtype, o.dtype)
        assert_within_tolerance(r, s.cpu(), o.cpu(), name=name)
