"""The CUDA backend's kernels and path planner, executed on the CPU by the SIMT emulator.

Backend "emulated" of the op pair runs the exact sources of csrc/cuda/ (kernels and host
launch code) on CPU tensors. Every recurrence path (block, cluster, grid, stepwise) is
forced in turn on a small emulated device (2 SMs, so grids and clusters span several CTAs),
besides the planner's own choice; hidden sizes are not multiples of the kernels' tiles.
Sizes stay small: every emulated CUDA thread is a fiber.
"""

from __future__ import annotations

import collections
import contextlib
import itertools

import pytest
import torch

import rnn_fused
from rnn_fused import launch_plan, simt
from rnn_fused.launch_plan import step_cost_us
from rnn_fused.modules import RNN
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance, compare_with_torch
from rnn_fused.truncation import TruncationArgs

from rnn_cases import EMULATED_PATHS, RNNCase, layer_args, run_layer_op

OPS = torch.ops.rnn_fused

SMALL_GPU = dict(sm_count=2)
# Cooperative launch unavailable: no grid path.
NO_COOPERATIVE = dict(sm_count=2, cooperative_launch=False)
# Shared memory too small for any W_hh slice of the sizes below: only the stepwise path runs.
TINY_SHARED = dict(sm_count=4, shared_mem_per_block=64, shared_mem_per_block_optin=64, shared_mem_per_sm=4096)
# Forced paths and the planner's own choice (None).
PATH_CHOICES = [*EMULATED_PATHS, None]


def run_layer(args, lengths, nonlinearity, reverse, backend, cotangents, path=None):
    """Forward and backward of one layer; returns [output, h_n, *grads of present args]."""
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    out, h_n = rnn_fused.rnn_layer(*leaves, lengths, nonlinearity, reverse, backend=backend, path=path)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, [c.to(out.dtype) for c in cotangents])
    return [out.detach(), h_n.detach(), *grads]


def reference_results(args, lengths, nonlinearity, reverse, cotangents, dtype):
    leaves = [None if a is None else a.detach().to(dtype).requires_grad_() for a in args]
    out, h_n = reference_layer(*leaves, lengths, nonlinearity, reverse)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, [c.to(dtype) for c in cotangents])
    return [out.detach(), h_n.detach(), *grads]


def case_inputs(steps, batch, input_size, hidden, bias, hx, lengths, dtype, seed):
    """(lengths tensor or None, the layer's float64 arguments, float64 cotangents of output and
    h_n drawn from `seed`, the arguments in dtype) of a layer case."""
    lengths = None if lengths is None else torch.tensor(lengths)
    args = layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx)
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    return lengths, args, cotangents, [None if a is None else a.to(dtype) for a in args]


# steps, batch, input, hidden, nonlinearity, reverse, bias, hx, lengths
LAYER_CASES = [
    (5, 3, 4, 7, "tanh", False, True, True, [5, 2, 4]),
    (5, 3, 4, 7, "tanh", True, True, True, [5, 2, 4]),
    (6, 4, 3, 33, "relu", False, False, False, [2, 6, 0, 4]),   # unsorted, an empty sample
    (6, 4, 3, 33, "tanh", True, True, False, [6, 5, 3, 1]),     # packed (sorted) order
    (4, 2, 5, 100, "tanh", False, True, True, None),
    (3, 1, 2, 1, "relu", True, True, True, None),
    (4, 3, 2, 150, "tanh", True, True, True, [4, 0, 3]),  # block: split weights in float32
]


def _case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


@pytest.mark.parametrize("path", PATH_CHOICES, ids=[str(p) for p in PATH_CHOICES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_matches_reference_under_every_schedule(case, dtype, path):
    """Emulated CUDA kernels on each path vs the float64 step loop (tolerance rule, stock =
    step loop in dtype) and vs the CPU backend; bitwise-equal results under every emulator
    schedule and from run to run."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    lengths, args, cotangents, cast = case_inputs(steps, batch, input_size, hidden, bias, hx, lengths, dtype, seed=7)
    with simt.emulated_device(**SMALL_GPU):
        if path is not None and not rnn_fused.plan(hidden, batch, dtype, path=None).candidate(path).feasible:
            # e.g. a cluster needs two CTAs, so at least two hidden units: refused, not skipped.
            with pytest.raises(ValueError, match=f"path '{path}' cannot run hidden_size={hidden}"):
                run_layer(cast, lengths, nonlinearity, reverse, "emulated", cotangents, path)
            return
        runs = []
        for mode, seed in (*simt.ALL_SCHEDULES, ("forward", 0)):
            with simt.schedule(mode, seed):
                runs.append(run_layer(cast, lengths, nonlinearity, reverse, "emulated", cotangents, path))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b), "results differ between emulator schedules"
    ours = runs[0]
    reference = reference_results(args, lengths, nonlinearity, reverse, cotangents, torch.float64)
    stock = reference_results(cast, lengths, nonlinearity, reverse, cotangents, dtype)
    cpu = run_layer(cast, lengths, nonlinearity, reverse, "cpu", cotangents)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(ours) - 2)]
    for name, r, s, o, c in zip(names, reference, stock, ours, cpu):
        assert o.dtype == dtype
        assert_within_tolerance(r, s, o, name=name, ulps=ulps)
        assert_within_tolerance(r, s, c, name=name, ulps=ulps)
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(ours[0][n:, b] == 0)


@pytest.mark.parametrize("hidden", [7, 33, 100])
def test_block_and_grid_paths_agree_bitwise(hidden):
    """The persistent paths share the dot products and their fixed reduction tree, whatever
    the samples per chunk, the CTAs per group or the chunks per CTA: they round identically
    (from the same input projection: the host's, as forced_tiling's input_projection_on_host
    keeps it; the block kernel would project so short an input itself)."""
    args = layer_args(5, 3, 4, hidden, dtype=torch.float32)
    lengths = torch.tensor([5, 1, 3])
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(5, 3, hidden, generator=g), torch.randn(3, hidden, generator=g)]
    results = []
    for device, path in [(SMALL_GPU, "block"), (SMALL_GPU, "grid"), (dict(sm_count=1, max_blocks_per_sm=1), "grid"),
                         (dict(sm_count=1, max_blocks_per_sm=1), "block")]:
        with simt.emulated_device(**device), launch_plan.forced_tiling(input_projection_on_host=True):
            results.append(run_layer(args, lengths, "tanh", True, "emulated", cotangents, path))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("hidden", [32, 100])
def test_grid_chunks_prefetched_asynchronously_agree_with_the_block_path(hidden):
    """A CTA that computes several chunks per step copies the next chunk's state rows into a
    second buffer (asynchronous copies) while it computes the current one. The emulator
    performs a thread's copies only when it waits for them, so a missing wait or barrier reads
    the previous chunk's rows: under every schedule the results must equal the block path's,
    bitwise, forward and backward (13 samples on one CTA: the last chunk has rows past the
    batch, stored as zeros; the input projected on the host for both)."""
    batch = 13
    args = layer_args(4, batch, 3, hidden, dtype=torch.float32)
    g = torch.Generator().manual_seed(6)
    cotangents = [torch.randn(4, batch, hidden, generator=g), torch.randn(batch, hidden, generator=g)]
    one_cta = dict(sm_count=1, max_blocks_per_sm=1)
    with simt.emulated_device(**one_cta), launch_plan.forced_tiling(input_projection_on_host=True):
        expected = run_layer(args, None, "tanh", False, "emulated", cotangents, "block")
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, backward=backward, path="grid")
            assert plan.grid == 1 and "chunks of" in plan.reason, plan.reason
        for mode, seed in simt.ALL_SCHEDULES:
            with simt.schedule(mode, seed):
                got = run_layer(args, None, "tanh", False, "emulated", cotangents, "grid")
            for a, b in zip(expected, got):
                assert torch.equal(a, b), (mode, seed)


@pytest.mark.parametrize("hidden", [64, 160, 300])
def test_grid_rows_staged_in_pieces_agree_with_the_block_path(hidden):
    """With one chunk per step the grid path's state rows arrive in 4 pieces along H, and the
    first batch of dot products computes on each piece once it has landed (a wait and a
    barrier per piece). A missing wait reads rows of the previous step. Under every schedule
    the results equal the block (or cluster) path's bitwise: H = 64 splits its 16 chunks as
    0, 8, 0, 8 (empty pieces), H = 160 splits its 40 chunks as 8, 8, 8, 16, H = 300 takes two
    batches of passes per CTA (only the first waits)."""
    batch = 3
    args = layer_args(4, batch, 3, hidden, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(4, batch, hidden, generator=g), torch.randn(batch, hidden, generator=g)]
    # (The pieces are the barriers' way with one chunk of samples per step; the tagged exchange
    # stages each chunk whole.)
    one_chunk_with_a_barrier = rnn_fused.launch_plan.forced_tiling(samples=4, step_sync="grid_barrier",
                                                                   input_projection_on_host=True)
    with simt.emulated_device(**SMALL_GPU), one_chunk_with_a_barrier:
        reference_path = "block" if hidden <= 256 else "cluster"
        expected = run_layer(args, None, "tanh", False, "emulated", cotangents, reference_path)
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, backward=backward, path="grid")
            assert "chunks of" not in plan.reason, plan.reason
        for mode, seed in simt.ALL_SCHEDULES:
            with simt.schedule(mode, seed):
                got = run_layer(args, None, "tanh", False, "emulated", cotangents, "grid")
            for a, b in zip(expected, got):
                assert torch.equal(a, b), (mode, seed)


@pytest.mark.parametrize("steps,batch,hidden", [(30, 1, 12), (30, 2, 5), (30, 1, 40)],
                         ids=["groups-of-2-chunks", "one-group", "one-chunk-per-product"])
def test_weight_gradient_chunk_products_under_the_tolerance_rule(steps, batch, hidden):
    """dW_hh on the GPU backends is a two-level sum over chunks of about sqrt(T) steps, the
    chunks' products batched in groups whose partials fit in the memory of dz (elman_gemms.h):
    30 steps make 5 chunks of 6; H = 12, B = 1 takes groups of 2, 2 and 1 chunks; H = 5,
    B = 2 one group; H = 40 a product per chunk. Every gradient within the tolerance rule."""
    args = layer_args(steps, batch, 3, hidden)
    g = torch.Generator().manual_seed(5)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    cast = [None if a is None else a.to(torch.float32) for a in args]
    with simt.emulated_device(**SMALL_GPU):
        ours = run_layer(cast, None, "tanh", False, "emulated", cotangents)
    reference = reference_results(args, None, "tanh", False, cotangents, torch.float64)
    stock = reference_results(cast, None, "tanh", False, cotangents, torch.float32)
    for i, (r, s_, o) in enumerate(zip(reference, stock, ours, strict=True)):
        assert_within_tolerance(r, s_, o, name=f"result {i}", ulps=8)


def _block_run_with_norms(sm_count, hidden, batch, lengths, dtype=torch.float32, backend="emulated", path="block",
                          **tiling):
    """Output, h_n, every gradient and the recorded step norms of a 1-layer module in dtype
    with randomized truncation, on `path` of an emulated device of sm_count SMs with the
    launch shape's `tiling` forced (launch_plan.forced_tiling; the input projected on the host
    unless `tiling` says otherwise), or on the CPU backend; and the
    forward and backward plans' (samples per group, units per pass)."""
    torch.manual_seed(0)
    module = RNN(5, hidden, truncation=rnn_fused.RandomTruncation(0.7, seed=3)).to(dtype)
    module.backend = backend
    module.path = path if backend == "emulated" else None
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, batch, 5, generator=g, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    emulated = backend == "emulated"
    with contextlib.ExitStack() as stack:
        if emulated:
            # (the launch shapes asked for are a device's of sm_count SMs without GPC boundaries)
            stack.enter_context(simt.emulated_device(sm_count=sm_count, sms_per_gpc=0))
            # (every path's XW_t from the host's GEMM: a short input would be projected in the
            # block kernel, in its own summation order)
            stack.enter_context(launch_plan.forced_tiling(**{"input_projection_on_host": True, **tiling}))
        plans = [rnn_fused.plan(hidden, batch, dtype, path=path, backward=bwd) for bwd in (False, True)
                 if emulated]
        with rnn_fused.record_gradients(module) as rec:
            out, h_n = module(packed)
        (out.data.sin().sum() + h_n.cos().sum()).backward()
    grads = [x.grad] + [p.grad for p in module.parameters()]
    return [out.data.detach(), h_n.detach(), *grads, rec.step_norms], {(p.samples, p.units_per_pass) for p in plans}


def _assert_tiles_round_alike(hidden, batch, lengths, runs):
    """runs: results of _block_run_with_norms. The forward and the truncated backward are
    bitwise equal whatever the tile; the norms are summed in float64 in an order that depends
    on the tile and agree once rounded to the module's float32. All within the tolerance rule
    of the float64 run (stock: the CPU backend in float32)."""
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    reference, _ = _block_run_with_norms(0, hidden, batch, lengths, torch.float64, backend="cpu")
    stock, _ = _block_run_with_norms(0, hidden, batch, lengths, backend="cpu")
    names = ["output", "h_n", "grad_input", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "step_norms"]
    for name, r, s, o in zip(names, reference, stock, runs[0], strict=True):
        assert_within_tolerance(r, s, o, name=name)


def test_register_tiles_of_every_sample_count_round_alike():
    """A CTA computes its passes pass_batch(S) at a time (a tile of units x S samples per
    lane; kernel_common.cuh). H = 200 gives 7 passes of 32 units: full and partial batches for
    every S in 1, 2, 4, 8 (each forced in turn). Each accumulator keeps its chunk order and
    every total the same reduction tree, so the results are those of any other tile."""
    hidden, batch = 200, 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    runs = []
    for samples in (1, 2, 4, 8):
        results, tiles = _block_run_with_norms(2, hidden, batch, lengths, samples=samples)
        assert tiles == {(samples, 32)}
        runs.append(results)
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("path,hidden,sm_count", [("block", 112, 2), ("cluster", 100, 4), ("grid", 100, 2),
                                                  ("grid", 300, 6)])
def test_dot_products_on_half_the_warps_round_alike(path, hidden, sm_count):
    """With 16 units per pass only warps 0-3 compute (each lane twice the passes of a tile),
    warps 4-7 stage rows and join the barriers. The sums keep their order, so the results are
    bitwise those of all 8 warps computing, at 1 and 8 samples per chunk: block H = 112 (7
    passes of 16, 4 of 32), cluster and grid H = 100 (one or two passes per CTA), grid H = 300
    (rows staged in pieces, two batches of passes). The float64 norms agree once rounded."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    runs = []
    for samples, units_per_pass in itertools.product((1, 8), (32, 16)):
        results, tiles = _block_run_with_norms(sm_count, hidden, batch, lengths, path=path, samples=samples,
                                               units_per_pass=units_per_pass)
        assert tiles == {(samples, units_per_pass)}
        runs.append(results)
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("path,other,hidden,units_per_pass", [
    ("block", "grid", 7, 32), ("block", "grid", 40, 32), ("block", "grid", 80, 32), ("block", "grid", 128, 32),
    ("block", "grid", 20, 16), ("block", "grid", 50, 16), ("cluster", "grid", 64, 32), ("cluster", "grid", 100, 32),
    ("cluster", "grid", 60, 16), ("cluster", "grid", 33, 16), ("cluster", "grid", 90, 16),
    ("cluster", "grid", 100, 16), ("cluster", "grid", 150, 16), ("cluster", "grid", 200, 16),
    ("cluster", "grid", 256, 16)])
def test_steps_compiled_for_their_passes_round_like_the_others(path, other, hidden, units_per_pass):
    """In float32 the block path where it holds its weight rows in registers (H <= 128) and the
    cluster path at 1 to 8 passes per CTA (1 to 4 at 8 samples per chunk) run kernels compiled
    for their passes
    (recurrence_paths.cuh compiled_passes): a tile of no more passes than there are (1 to 16
    values, whose reduce-scatter leaves copies of a total on several lanes, one of which runs
    the epilogue and adds to the norms), the lane's output offsets moved a step at a time, no
    phase clock when untimed. Forward and backward with lengths, randomized truncation and
    recorded norms give bitwise the results of `other`, whose kernels read their pass count at
    run time (the same tile shape), and of the same path's launch shape run on those kernels
    (forced_tiling's run_time_passes), at every samples per chunk: block 1 to 4 passes of 32
    units and of 16 (warps 0-3 computing: fewer chunk iterations than passes), cluster slices
    of one to four passes (H = 33 on 2 CTAs: the last CTA owns 16 units, a pass fewer than the
    kernel's 2 of 16; H = 90 on 2 CTAs: 3 passes of 16; H = 100: 4, the last CTA's 48 units 3;
    H = 150, 200, 256 on 2 CTAs: 5, 7, 8, read at run time at 8 samples)."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    runs = []
    for samples in (1, 2, 4, 8):
        for p in (path, other):
            results, tiles = _block_run_with_norms(4, hidden, batch, lengths, path=p, samples=samples,
                                                   units_per_pass=units_per_pass)
            assert tiles == {(samples, units_per_pass)}
            runs.append(results)
        results, _ = _block_run_with_norms(4, hidden, batch, lengths, path=path, samples=samples,
                                           units_per_pass=units_per_pass, run_time_passes=True)
        runs.append(results)
        with simt.emulated_device(sm_count=4), launch_plan.forced_tiling(samples=samples, units_per_pass=units_per_pass):
            compiled, general = (rnn_fused.plan(hidden, batch, path=p) for p in (path, other))
            with launch_plan.forced_tiling(samples=samples, units_per_pass=units_per_pass, run_time_passes=True):
                run_time = rnn_fused.plan(hidden, batch, path=path)
        passes = -(-compiled.units_per_cta // units_per_pass)
        if path == "cluster" and passes > (4 if samples == 8 else 8):
            passes = 0  # (read at run time: the 8-sample tile unrolled over more passes would spill)
        assert compiled.compiled_passes == passes and general.compiled_passes == 0
        assert passes == 0 or f"the step compiled for its {passes} pass(es)" in compiled.reason, compiled.reason
        assert "compiled for" not in general.reason, general.reason
        assert run_time.compiled_passes == 0 and "compiled for" not in run_time.reason, run_time.reason
        assert (run_time.units_per_cta, run_time.ctas_per_group) == (compiled.units_per_cta, compiled.ctas_per_group)
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("hidden,samples", [(129, 1), (170, 1), (256, 1), (129, 2), (256, 2)])
def test_split_weights_round_like_the_other_paths(hidden, samples):
    """Past H = 128 the block path's kernels compiled for their passes (5 to 8 of 32 units, 1 or
    2 samples per chunk) hold the weight rows of as many passes as 128 registers take in
    registers at one sample, 96 at two (read from global memory once per launch: all 5 at
    H = 129, 5 of 6 at H = 170, 4 of 8 at H = 256; at two samples 4 of 5 and 3 of 8), and only
    the others' in shared memory (split weights: kernel_common.cuh weights_split). Forward and
    backward with lengths, randomized truncation and recorded norms give bitwise the results of
    the grid and cluster paths' kernels and, where every row fits in shared memory (H < 256
    here), of the block path's kernel reading its passes at run time; at H = 256 the block path
    runs only with split weights (256 KB of W_hh). H = 129: a last pass of one row, its other
    lanes' registers zero."""
    batch = 5
    lengths = torch.tensor([6, 2, 5, 6, 1])
    split, tiles = _block_run_with_norms(2, hidden, batch, lengths, samples=samples, units_per_pass=32)
    assert tiles == {(samples, 32)}
    runs = [split]
    for path in ("grid", "cluster"):
        results, _ = _block_run_with_norms(4, hidden, batch, lengths, path=path, samples=samples)
        runs.append(results)
    passes = -(-hidden // 32)
    chunks = 32 if samples == 1 else 24  # (16-byte chunks a lane holds: 128 or 96 registers)
    held = min(passes, chunks // passes)  # (chunk iterations = passes at 32 units per pass)
    shared_rows = max(0, hidden - 32 * held)
    row = 32 * passes  # (rows padded with zeros over the kernel's chunk iterations: 32 columns a pass)
    with simt.emulated_device(sm_count=2), launch_plan.forced_tiling(samples=samples, units_per_pass=32):
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, backward=backward, path="block")
            assert (plan.compiled_passes, plan.units_per_cta) == (passes, hidden), plan.reason
            held_text = (f"the weight rows of {held} passes in registers, the others in shared memory" if shared_rows
                         else "weight rows in registers")
            assert held_text in plan.reason, plan.reason
            # Shared memory holds the rows past the held passes, the state rows and the norm sums.
            assert shared_rows * row * 4 <= plan.shared_mem_bytes < (shared_rows + 2 * samples + 1) * row * 4 + 1024, \
                plan
        with launch_plan.forced_tiling(samples=samples, units_per_pass=32, run_time_passes=True):
            run_time = rnn_fused.plan(hidden, batch).candidate("block")
    if hidden < 256:
        assert run_time.feasible and run_time.compiled_passes == 0, run_time.reason
        results, _ = _block_run_with_norms(2, hidden, batch, lengths, samples=samples, units_per_pass=32,
                                           run_time_passes=True)
        runs.append(results)
    else:
        assert not run_time.feasible and "bytes of shared memory (256 rows of W_hh" in run_time.reason, run_time.reason
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("hidden,samples,step_sync", [(777, 1, "grid_barrier"), (800, 1, "grid_barrier"),
                                                      (1000, 1, "async_exchange"), (1024, 1, "grid_barrier"),
                                                      (777, 2, "grid_barrier"), (800, 2, "grid_barrier"),
                                                      (1000, 2, "async_exchange"), (1024, 2, "grid_barrier"),
                                                      (800, 4, "grid_barrier"), (1000, 4, "async_exchange"),
                                                      (1024, 4, "grid_barrier")])
def test_cluster_split_weights_round_like_the_grid_path(hidden, samples, step_sync):
    """Past H = 768 a CTA of a 16-CTA cluster owns up to 64 units of up to 1024 columns (256 KB
    of W_hh at H = 1024, more than a CTA's shared memory). At one sample per chunk and two
    passes of 32 units the cluster path's kernels hold the first pass's rows in registers (32
    chunks a lane, read from global memory once per launch) and only the second's in shared
    memory (kernel_common.cuh cluster_weights_split); at two samples a lane holds 24 chunks, so
    the first pass's rows past column 768 (their tails) are in shared memory too, and batch 3
    leaves the second cluster one sample and a padding row; at four samples 20 chunks, the tails
    past column 640, and one cluster of 3 samples and a padding row. The rows are padded with zeros over
    the kernels' 32 chunk iterations (H = 777: the tails hold 9 columns, 3 chunks, one each to 3
    of the 8 lanes in iteration 24, whose other lanes multiply zeros; iterations 25-31 are
    skipped by the whole warp). Forward and backward with lengths,
    randomized truncation and recorded norms, with the cluster barrier and with the
    asynchronous exchange, give bitwise the results of the grid path's kernels; H = 777: 25
    chunk iterations of the 32 compiled, the last CTA's second pass 17 units; H = 800: 16 CTAs
    of 52 units, the last one 20, with no row in shared memory (its second pass computes on a
    stand-in row and drops the results; make sanitize catches a read outside its shared
    memory; at two samples its held rows' tails are 20); H = 1000: a row of 250 chunks, not a
    multiple of 8 lanes. The kernels that read their passes at run time cannot hold H = 1024 (the
    plan says why)."""
    batch = 3
    lengths = torch.tensor([5, 6, 2])
    split, tiles = _block_run_with_norms(16, hidden, batch, lengths, path="cluster", samples=samples,
                                         units_per_pass=32, step_sync=step_sync)
    assert tiles == {(samples, 32)}
    # (the grid path's rows fit its CTAs' shared memory on 32 SMs)
    grid, _ = _block_run_with_norms(32, hidden, batch, lengths, path="grid", samples=1, units_per_pass=32)
    units = -(-hidden // 16)
    if -(-hidden // (-(-units // 4) * 4)) == 16:
        units = -(-units // 4) * 4  # (whole 16-byte vectors where the cluster stays 16 CTAs: 64 at H = 1000)
    row = 1024  # (the split kernels' rows padded with zeros over their 32 chunk iterations of 8 lanes)
    held_columns = {1: row, 2: 768, 4: 640}[samples]  # (24 or 20 chunk iterations of 8 lanes at 2 or 4 samples)
    tail = row - held_columns  # (the held rows' columns past the registers')
    with simt.emulated_device(sm_count=16), launch_plan.forced_tiling(samples=samples, units_per_pass=32,
                                                                      step_sync=step_sync):
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, backward=backward, path="cluster")
            assert (plan.compiled_passes, plan.cluster, plan.units_per_cta) == (2, 16, units), plan.reason
            held_text = f" up to column {held_columns}" if samples > 1 else ""
            assert f"the weight rows of 1 pass in registers{held_text}, the others in shared memory" in plan.reason, \
                plan.reason
            # Shared memory: the second pass's rows, the first's tails, the state rows and the norm sums.
            weights = (units - 32) * row + 32 * tail
            assert weights * 4 <= plan.shared_mem_bytes < (weights + (2 * samples + 1) * row) * 4 + 1024, plan
        with launch_plan.forced_tiling(samples=samples, units_per_pass=32, run_time_passes=True):
            run_time = rnn_fused.plan(hidden, batch).candidate("cluster")
    if hidden == 1024:
        assert not run_time.feasible and "bytes of shared memory (64 rows of W_hh" in run_time.reason, run_time.reason
    _assert_tiles_round_alike(hidden, batch, lengths, [split, grid])


@pytest.mark.parametrize("hidden,sm_count,units_per_pass,step_sync,passes", [
    (256, 48, 16, "grid_barrier", 1), (200, 48, 32, "grid_barrier", 1), (129, 48, 16, "grid_barrier", 1),
    (129, 3, 32, "async_exchange", 2), (200, 48, 16, "async_exchange", 2), (129, 16, 16, "grid_barrier", 2)])
def test_cluster_rows_in_registers_round_like_the_run_time_kernels(hidden, sm_count, units_per_pass, step_sync,
                                                                    passes):
    """At H = 129-256 and one sample per chunk the cluster path's kernels for 1 or 2 passes hold
    every weight row of their CTA in registers (8 chunk iterations a lane, rows padded with
    zeros to 256 columns; kernel_common.cuh cluster_rows_in_registers) and none in shared
    memory. Forward and backward with lengths, randomized truncation and recorded norms (summed
    in the general kernel's steps, and by the plain copy's g_t and step_norms_kernel), with
    the cluster barrier and with the asynchronous exchange, give bitwise the results of the
    cluster kernels that read their passes (and every row from shared memory) at run time and
    of the grid path's kernels. H = 256: 16 CTAs of 16 units, a pass on 4 warps; H = 200 on 16
    CTAs of 13 units (slices of single scalars) and on 7 of 32, the last one 8; H = 129: rows
    of 5 chunk iterations, the last with one column, on 15 CTAs of 9 units, 3 of 44 and 5 of 28
    (the last one 17)."""
    batch = 3
    lengths = torch.tensor([5, 6, 2])
    tiling = dict(samples=1, units_per_pass=units_per_pass, step_sync=step_sync)
    kernel = f"recurrence_kernel<float, 1, RecurrencePath::Cluster, {passes}"
    held = {}
    for in_steps, copy in ((True, "false"), (False, "true")):
        with simt.recording_launches() as launches:
            held[in_steps], tiles = _block_run_with_norms(sm_count, hidden, batch, lengths, path="cluster",
                                                          norms_in_steps=in_steps, **tiling)
        assert tiles == {(1, units_per_pass)}
        # (norms summed in the steps: the general backward; else the plain copy, then their sum)
        assert [name for name in launches if "recurrence_kernel" in name or name.startswith("step_norms")] == [
            f"forward_{kernel}, kClusterRowIterations>", f"backward_{kernel}, {copy}, kClusterRowIterations>",
            *([] if in_steps else ["step_norms_kernel"])], launches
    run_time, _ = _block_run_with_norms(sm_count, hidden, batch, lengths, path="cluster", run_time_passes=True,
                                        **tiling)
    grid, _ = _block_run_with_norms(4, hidden, batch, lengths, path="grid", samples=1, units_per_pass=32)
    with simt.emulated_device(sm_count=sm_count, sms_per_gpc=0):
        for backward in (False, True):
            with launch_plan.forced_tiling(**tiling):
                plan = rnn_fused.plan(hidden, batch, backward=backward, path="cluster")
            assert plan.compiled_passes == passes, plan.reason
            assert -(-plan.units_per_cta // units_per_pass) == passes, plan.reason
            assert "weight rows in registers" in plan.reason, plan.reason
            # Shared memory: the state rows (two buffers of 256 columns) and the norm sums, no weight row.
            assert 2 * 256 * 4 <= plan.shared_mem_bytes < 2 * 256 * 4 + 1024, plan
            with launch_plan.forced_tiling(run_time_passes=True, **tiling):
                general = rnn_fused.plan(hidden, batch, backward=backward, path="cluster")
            assert general.compiled_passes == 0 and "in registers" not in general.reason, general.reason
            assert (general.units_per_cta, general.cluster) == (plan.units_per_cta, plan.cluster)
            assert general.shared_mem_bytes > plan.units_per_cta * hidden * 4, general  # (its rows)
    _assert_tiles_round_alike(hidden, batch, lengths, [held[True], held[False], run_time, grid])


@pytest.mark.parametrize("truncation,samples", [(2, 1), (rnn_fused.RandomTruncation(0.6, seed=11), 2), (3, 4)],
                         ids=["K2-1-sample", "random-2-samples", "K3-4-samples"])
def test_cluster_split_weights_in_a_bidirectional_relu_layer_with_an_empty_sample(truncation, samples):
    """The cluster path's split kernels (H = 800: 25 chunk iterations, one or two samples per
    cluster, 13 CTAs of 64 units, the last one 32, with no row of its second pass; the steps
    ended by the asynchronous exchange, the planner's since the refit of 2026-12-04; at two samples the held rows' tails past column 768 in shared memory, two clusters
    per direction taking turns; at four, past column 640, one cluster) in a bidirectional relu layer, its directions side by side on
    32 SMs (each on its own 13-CTA cluster), lengths with an empty sample, truncation every 2
    steps or randomized: bitwise alike under the forward, reverse and shuffled schedules and
    like the grid path's kernels, and within the tolerance rule of the float64 loop."""
    steps, batch, input_size, hidden = 5, 3, 4, 800
    lengths = torch.tensor([5, 0, 3])
    g = torch.Generator().manual_seed(0)
    bound = hidden ** -0.5
    weights = [torch.empty(*shape, dtype=torch.float64).uniform_(-bound, bound, generator=g)
               for _ in range(2) for shape in ((hidden, input_size), (hidden, hidden), (hidden,), (hidden,))]
    x = torch.randn(steps, batch, input_size, dtype=torch.float64, generator=g)
    h0 = torch.randn(2, batch, hidden, dtype=torch.float64, generator=g) * 0.5
    cotangents = [torch.randn(steps, batch, 2 * hidden, dtype=torch.float64, generator=g),
                  torch.randn(2, batch, hidden, dtype=torch.float64, generator=g)]

    def run(dtype, **kwargs):
        leaves = [t.to(dtype).requires_grad_() for t in (x, h0, *weights)]
        groups = [tuple(leaves[2:6]), tuple(leaves[6:10])]
        out, h_n = rnn_fused.functional.rnn(leaves[0], leaves[1], groups, 1, True, "relu", lengths=lengths,
                                            truncation=truncation, **kwargs)
        grads = torch.autograd.grad((out, h_n), leaves, [c.to(dtype) for c in cotangents])
        return [out.detach(), h_n.detach(), *grads]

    runs = []
    with simt.emulated_device(sm_count=32), launch_plan.forced_tiling(samples=samples, units_per_pass=32):
        for backward in (False, True):
            plan = rnn_fused.plan(hidden, batch, backward=backward, path="cluster", side_by_side=2)
            assert (plan.compiled_passes, plan.cluster, plan.samples) == (2, 13, samples), plan
            assert launch_plan.STEP_SYNCS[plan.step_sync] == "async_exchange", plan
            held = {1: ",", 2: " up to column 768", 4: " up to column 640"}[samples]
            assert "1 pass in registers" + held in plan.reason, plan
            assert hidden - 12 * plan.units_per_cta == 32, plan
        for mode in ("forward", "reverse", "shuffle"):
            with simt.schedule(mode, seed=5):
                runs.append(run(torch.float32, backend="emulated", path="cluster"))
        runs.append(run(torch.float32, backend="emulated", path="grid"))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)
    reference, stock = run(torch.float64), run(torch.float32)
    names = ["output", "h_n", "grad_input", "grad_hx"] + [f"grad_weight_{i}" for i in range(8)]
    for name, r, st, o in zip(names, reference, stock, runs[0], strict=True):
        assert_within_tolerance(r, st, o, name=name)


def test_split_weights_on_an_a100_like_device():
    """Compute capability 8.0 with an A100's 163 KB of shared memory per block (no clusters):
    the block path with split weights fits H = 256 at one sample per chunk (128 KB of rows in
    shared memory) and the planner takes it; the results are bitwise those of the
    H100/H200-like device. At two samples per chunk (160 KB of rows) it does not fit there, so
    B = 200 takes two waves of one sample per CTA, where the H100/H200-like device takes one
    of two."""
    batch = 3
    lengths = torch.tensor([5, 6, 2])
    a100_like = dict(compute_capability=(8, 0), shared_mem_per_block_optin=163 * 1024)
    simt.reset_device_properties()
    with simt.emulated_device():
        wide = rnn_fused.plan(256, 200)
        assert (wide.path, wide.samples, wide.compiled_passes) == ("block", 2, 8), wide.reason
    with simt.emulated_device(**a100_like):
        for backward in (False, True):
            plan = rnn_fused.plan(256, batch, backward=backward)
            assert plan.path == "block" and plan.compiled_passes == 8, plan.reason
            assert plan.shared_mem_bytes <= 163 * 1024, plan
            wide = rnn_fused.plan(256, 200, backward=backward)
            assert (wide.path, wide.samples) == ("block", 1) and "in 2 waves" in wide.reason, wide.reason
        a100, _ = _block_run_with_norms(2, 256, batch, lengths, samples=1)
    h100, _ = _block_run_with_norms(2, 256, batch, lengths, samples=1)
    for a, b in zip(a100, h100, strict=True):
        assert torch.equal(a, b)


def _plain_backward_run(hidden, batch, lengths, *, record, truncation, sm_count=4, **tiling):
    """The backward's launches and every gradient of a 1-layer float32 module on the emulated
    path the tiling names (sm_count SMs), with norms recorded or not and `truncation`."""
    torch.manual_seed(0)
    module = RNN(5, hidden, truncation=truncation)
    module.backend = "emulated"
    module.path = tiling.pop("path")
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, batch, 5, generator=g, dtype=torch.float64) * 0.5).float().requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with simt.emulated_device(sm_count=sm_count), launch_plan.forced_tiling(**tiling):
        with contextlib.ExitStack() as stack:
            if record:
                stack.enter_context(rnn_fused.record_gradients(module))
            out, h_n = module(packed)
        with simt.recording_launches() as launches:
            (out.data.sin().sum() + h_n.cos().sum()).backward()
    kept = ("backward_recurrence_kernel", "edge_scale_table_kernel", "step_norms_kernel")
    return [name for name in launches if name.startswith(kept)], [x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("path,hidden,samples,units_per_pass,passes", [
    ("block", 40, 1, 32, 2), ("block", 128, 8, 32, 4), ("block", 50, 4, 16, 4), ("block", 150, 1, 32, 5),
    ("cluster", 33, 2, 16, 2), ("cluster", 100, 8, 16, 4), ("cluster", 256, 1, 16, 8), ("cluster", 129, 1, 32, 2),
    ("cluster", 800, 2, 32, 2), ("cluster", 1024, 4, 32, 2)])
@pytest.mark.parametrize("truncation", [None, 2, rnn_fused.RandomTruncation(0.6, seed=11)], ids=["full", "K2", "random"])
def test_plain_backward_runs_its_own_kernel_with_the_general_kernels_results(path, hidden, samples, units_per_pass,
                                                                              passes, truncation):
    """A backward without recorded norms on a kernel compiled for its passes runs the copy
    compiled without the norm sums (backward_recurrence_kernel's kPlain; it finds the cuts every
    K steps by PeriodicCut, and reads randomized truncation's scales, drawn before the launch by
    edge_scale_table_kernel, as the general kernels do), and gives bitwise the gradients of the
    general kernels: the same launch shape's with norms summed in its steps (forced_tiling's
    norms_in_steps), and read at run time (no plain copy, where the rows fit shared memory: not
    the cluster path's split kernels past H = 768). With norms recorded and not forced into the
    steps it runs the plain copy too, then step_norms_kernel (deferred norms).
    Only randomized truncation launches the draws. Truncation every 2 of 6 steps and the
    randomized one cut edges: their gradients differ from full BPTT's."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    tiling = dict(path=path, samples=samples, units_per_pass=units_per_pass)
    passes_name = "kClusterSplitPasses" if hidden > 768 else passes  # (as the kernels' registration names them)
    kernel = f"backward_recurrence_kernel<float, {samples}, RecurrencePath::{path.capitalize()}, {passes_name}"
    # (H = 129 on the cluster path, 16 SMs: 3 CTAs of 44 units, every row in registers; H = 800
    # and 1024: 16 CTAs with split weights; the kernels' chunk iterations named last)
    held = "" if path != "cluster" or passes > 2 else \
        ", kClusterRowIterations" if 128 < hidden <= 256 else ", kClusterSplitIterations" if hidden > 768 else ""
    if held:
        tiling.update(sm_count=16)
    general_compiled = kernel + (", false" + held if held else "") + ">"
    plain_launches, plain = _plain_backward_run(hidden, batch, lengths, record=False, truncation=truncation, **tiling)
    draws = ["edge_scale_table_kernel<float>"] if isinstance(truncation, rnn_fused.RandomTruncation) else []
    assert plain_launches == draws + [kernel + ", true" + held + ">"]
    deferred_launches, deferred = _plain_backward_run(hidden, batch, lengths, record=True, truncation=truncation,
                                                      **tiling)
    assert deferred_launches == draws + [kernel + ", true" + held + ">", "step_norms_kernel"]
    assert all(torch.equal(a, b) for a, b in zip(plain, deferred, strict=True))
    for record, run_time_passes in ((True, False), (False, True))[:1 if hidden > 768 else 2]:
        launches, general = _plain_backward_run(hidden, batch, lengths, record=record, truncation=truncation,
                                                run_time_passes=run_time_passes, norms_in_steps=record, **tiling)
        general_kernel = kernel.rsplit(",", 1)[0] + ", 0>" if run_time_passes else general_compiled
        assert launches == draws + [general_kernel], (record, run_time_passes)
        for a, b in zip(plain, general, strict=True):
            assert torch.equal(a, b), (record, run_time_passes)
    if truncation is not None:
        _, full = _plain_backward_run(hidden, batch, lengths, record=False, truncation=None, **tiling)
        assert not torch.equal(plain[0], full[0])


def test_recording_launches_names_each_launch_in_order():
    """simt.recording_launches lists the kernels an emulated call launched, in order, and
    nothing once the block has ended."""
    x, w_ih, w_hh = torch.randn(4, 2, 3), torch.randn(8, 3), 0.3 * torch.randn(8, 8)
    with simt.recording_launches() as launches:
        rnn_fused.rnn_layer(x, None, w_ih, w_hh, None, None, backend="emulated", path="stepwise")
    assert launches == ["forward_step_epilogue_kernel<float>"] * 4
    rnn_fused.rnn_layer(x, None, w_ih, w_hh, None, None, backend="emulated", path="stepwise")
    assert len(launches) == 4


@pytest.mark.parametrize("hidden,sm_count,samples,dtype,slices,vectors", [
    (128, 2, 8, torch.float32, (64, 2), True), (70, 3, 2, torch.float32, (24, 3), True),
    (300, 2, 8, torch.float32, (152, 2), True), (96, 3, 1, torch.float64, (32, 3), True),
    (129, 132, 2, torch.float64, (9, 15), False)])
def test_cluster_slices_shared_as_vectors_or_scalars_round_like_the_grid_path(hidden, sm_count, samples, dtype,
                                                                              slices, vectors):
    """A cluster CTA's epilogues write its slice of the new state into its own buffer; then its
    threads copy the slice into the group's other CTAs (RecurrenceCta::share_slice): 16-byte
    vectors where every slice starts on a whole vector (H = 128 on 2 CTAs; 96 on 3 in float64;
    70 on 3, whose last slice runs on into the row's zero padding; 300 on 2 at 8 samples: 304
    pieces per rank, more than a CTA's threads, so each thread copies several), scalars where
    the planner cannot round the slices to whole vectors without changing the cluster's size
    (H = 129 on 15 CTAs of 9 units in float64). Steps ended by the barrier (forced: since the
    refit of 2026-12-04 the planner's forward takes the asynchronous exchange, and with it
    slices of whole vectors at these shapes). Forward and backward with lengths, randomized
    truncation and recorded norms give bitwise the grid path's results (its state through
    global memory)."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    with simt.emulated_device(sm_count=sm_count), launch_plan.forced_tiling(samples=samples, step_sync="grid_barrier"):
        plan = rnn_fused.plan(hidden, batch, dtype, path="cluster")
    assert (plan.units_per_cta, plan.ctas_per_group) == slices
    vec = 16 // torch.empty(0, dtype=dtype).element_size()
    assert (plan.units_per_cta % vec == 0) == vectors  # (the last slice ends at the padded row)
    runs = []
    for path in ("cluster", "grid"):
        results, tiles = _block_run_with_norms(sm_count, hidden, batch, lengths, dtype, path=path, samples=samples,
                                               step_sync="grid_barrier")
        assert {t[0] for t in tiles} == {samples}
        runs.append(results)
    for a, b in zip(runs[0][:-1], runs[1][:-1], strict=True):
        assert torch.equal(a, b)
    # The step norms: the same squares of g summed in float64 in each path's order (its tiles and
    # CTAs), within one rounding per term; bitwise once rounded to a float32 module's dtype.
    cluster_norms, grid_norms = runs[0][-1], runs[1][-1]
    torch.testing.assert_close(cluster_norms, grid_norms, rtol=hidden * torch.finfo(torch.float64).eps, atol=0)
    if dtype == torch.float32:
        assert torch.equal(cluster_norms, grid_norms)


@pytest.mark.parametrize("hidden,sm_count,samples", [(100, 2, 1), (300, 6, 2), (100, 4, 8), (300, 2, 4)])
def test_grid_step_syncs_round_alike(hidden, sm_count, samples):
    """On the grid path a step may end in a flag barrier over the CTAs of its sample group
    instead of the grid barrier (simt::flag_barrier), or in none, the state travelling in tagged
    words that each reader waits for (the tagged exchange); the group's rows and norm partials
    come from its own CTAs only. Forward and backward with lengths, randomized truncation and
    recorded norms (with the tagged exchange the backward's steps then end in the flag barrier)
    give bitwise the grid barrier's results: several sample groups (H = 100 at 1 and 8 samples
    per chunk), rows staged in pieces (H = 300), several chunks per CTA (H = 300 on 2 SMs)."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    runs = []
    for sync in launch_plan.GRID_STEP_SYNCS:
        with simt.emulated_device(sm_count=sm_count), launch_plan.forced_tiling(samples=samples, step_sync=sync):
            plans = [rnn_fused.plan(hidden, batch, path="grid", backward=b) for b in (False, True)]
        assert {p.step_sync for p in plans} == {launch_plan.STEP_SYNCS.index(sync)}
        assert all(("flag barrier" in p.reason) == (sync == "flag_barrier") for p in plans)
        assert all(("tagged words" in p.reason) == (sync == "tagged_exchange") for p in plans)
        if samples < 8:
            assert all(p.groups > 1 or p.chunks > 1 for p in plans), [p.reason for p in plans]
        results, tiles = _block_run_with_norms(sm_count, hidden, batch, lengths, path="grid", samples=samples,
                                               step_sync=sync)
        assert {t[0] for t in tiles} == {samples}
        runs.append(results)
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("sync", ["flag_barrier", "tagged_exchange"])
def test_step_syncs_round_alike_under_every_schedule(sync):
    """A CTA that ran ahead of its group's flags, or staged a word before its producer stored
    it, would read state of the previous step: under every schedule the flag barrier's and the
    tagged exchange's forward and backward equal the grid barrier's bitwise (several groups of
    3 CTAs; and several chunks per CTA, whose rows are staged one after another)."""
    batch, hidden = 3, 300
    args = layer_args(4, batch, 3, hidden, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(4, batch, hidden, generator=g), torch.randn(batch, hidden, generator=g)]
    for sm_count, several_chunks in ((9, False), (3, True)):
        with simt.emulated_device(sm_count=sm_count):
            with launch_plan.forced_tiling(samples=1, step_sync="grid_barrier"):
                expected = run_layer(args, None, "tanh", False, "emulated", cotangents, "grid")
            with launch_plan.forced_tiling(samples=1, step_sync=sync):
                plan = rnn_fused.plan(hidden, batch, path="grid")
                assert plan.step_sync == launch_plan.STEP_SYNCS.index(sync) and plan.ctas_per_group > 1, plan.reason
                assert (plan.chunks > 1) == several_chunks and (plan.groups > 1) != several_chunks, plan.reason
                for mode, seed in simt.ALL_SCHEDULES:
                    with simt.schedule(mode, seed):
                        got = run_layer(args, None, "tanh", False, "emulated", cotangents, "grid")
                    for a, b in zip(expected, got):
                        assert torch.equal(a, b), (sm_count, mode, seed)


@pytest.mark.parametrize("hidden", [37, 300])
def test_grid_tiled_dots_round_alike_whatever_the_launch_shape(hidden):
    """The grid path's tiled dot products (forced_tiling(tiled_dots=True): a warp splits the
    columns of 32 / S units x S samples, lane l taking the chunks l, l + 32, ...; a 32-lane
    reduce-scatter) sum each output in one order whatever the launch shape: at 4 and 8 samples
    per chunk, under each step synchronisation, on 2 and 6 SMs (H = 300: rows staged in pieces,
    several groups, several chunks per CTA; H = 37: CTAs whose units are not whole tiles), the
    forward and the backward with lengths, randomized truncation and recorded norms give bitwise
    the same results, within the tolerance rule of the float64 run. (Not bitwise the 8-lane
    mapping's: 32 partial sums per output instead of 8.)"""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    runs, shapes = [], set()
    for samples, sync, sm_count in itertools.product((4, 8), launch_plan.GRID_STEP_SYNCS, (2, 6)):
        with simt.emulated_device(sm_count=sm_count, sms_per_gpc=0), \
                launch_plan.forced_tiling(samples=samples, step_sync=sync, tiled_dots=True):
            plans = [rnn_fused.plan(hidden, batch, path="grid", backward=b) for b in (False, True)]
        assert all(f"tiled dot products (a warp's columns over {32 // samples} units x {samples} samples)" in p.reason
                   for p in plans), [p.reason for p in plans]
        shapes |= {(p.chunks > 1, p.groups > 1, p.units_per_cta % (32 // samples) != 0) for p in plans}
        results, tiles = _block_run_with_norms(sm_count, hidden, batch, lengths, path="grid", samples=samples,
                                               step_sync=sync, tiled_dots=True)
        assert {t[0] for t in tiles} == {samples}
        runs.append(results)
    if hidden == 300:
        assert (True, False, False) in shapes and (False, True, False) in shapes, shapes
    else:
        assert any(partial for _, _, partial in shapes), shapes
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


def _tiled_layer_under_every_schedule(path, batch, hidden, lengths, sm_count, **forced):
    """The backward plan of `path` with the tiled dot products and `forced` on an emulated
    device of sm_count SMs, after checking that the layer's forward and backward (reverse, the
    given lengths) are bitwise alike under the forward schedule and every other, within the
    tolerance rule of the float64 reference, and zero past each sample's length."""
    args = layer_args(4, batch, 3, hidden, dtype=torch.float64)
    cast = [a.to(torch.float32) for a in args]
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(4, batch, hidden, generator=g, dtype=torch.float64),
                  torch.randn(batch, hidden, generator=g, dtype=torch.float64)]
    with simt.emulated_device(sm_count=sm_count, sms_per_gpc=0), launch_plan.forced_tiling(tiled_dots=True, **forced):
        plan = rnn_fused.plan(hidden, batch, path=path, backward=True)
        assert plan.tiled_dots, plan.reason
        runs = []
        for mode, seed in (("forward", 0), *simt.ALL_SCHEDULES):
            with simt.schedule(mode, seed):
                runs.append(run_layer(cast, lengths, "tanh", True, "emulated", cotangents, path))
    _assert_reverse_runs_alike_and_within_tolerance(args, cast, lengths, cotangents, runs)
    return plan


def _assert_reverse_runs_alike_and_within_tolerance(args, cast, lengths, cotangents, runs):
    """runs: run_layer's results of the float32 `cast` of the float64 layer `args` (reverse,
    tanh): bitwise alike, the first within the tolerance rule of the float64 reference (stock:
    the reference in float32), its output zero past each sample's length."""
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b), "results differ between runs"
    reference = reference_results(args, lengths, "tanh", True, cotangents, torch.float64)
    stock = reference_results(cast, lengths, "tanh", True, cotangents, torch.float32)
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(runs[0]) - 2)]
    for name, r, s_, o in zip(names, reference, stock, runs[0], strict=True):
        assert_within_tolerance(r, s_, o, name=name)
    for b, n in enumerate(lengths.tolist()):
        assert torch.all(runs[0][0][n:, b] == 0)


@pytest.mark.parametrize("samples,sm_count", [(8, 9), (4, 3), (8, 2)], ids=["pieces", "groups", "chunks"])
def test_grid_tiled_dots_under_every_schedule(samples, sm_count):
    """A lane that read another warp's tile total before it was written (the barrier between
    the tiles and the epilogues), or a piece of the state rows before it landed, would differ
    under some schedule: the tiled forward and backward are bitwise alike under every schedule,
    with the rows staged in pieces (one chunk, several CTAs per group), several groups, and
    several chunks per CTA; and within the tolerance rule of the float64 reference."""
    plan = _tiled_layer_under_every_schedule("grid", 5, 300, torch.tensor([4, 1, 3, 0, 2]), sm_count,
                                             samples=samples, step_sync="grid_barrier")
    expected_shape = {"pieces": plan.chunks == 1 and plan.groups == 1 and plan.ctas_per_group > 1,
                      "groups": plan.groups > 1, "chunks": plan.chunks > 1}
    assert sum(expected_shape.values()) >= 1, plan.reason


def test_tiled_dots_are_planned_only_where_they_run():
    """Forced, the tiled dot products bind the grid and cluster paths: float64 rules them out
    (named), the samples per chunk are 4 or 8 on the grid path and 4 on the cluster path (others
    forced: ruled out, named); the cluster path's split kernels take them at H = 1024 (two passes
    of 32 units; four passes of 16 do not fit, named); the block path plans as before; their
    totals take shared memory of their own (where both plans take the same launch shape); and
    the cost model prices them faster at H = 1024, B = 32 and 128 (grid; cluster) and H = 512,
    B = 32 (cluster) on the emulated H200 (fewer shared-memory wavefronts per multiply-add), a
    prediction until a GPU times it (gpu-check)."""
    with launch_plan.forced_tiling(tiled_dots=True):
        for path in ("grid", "cluster"):
            refused = rnn_fused.plan(512, 32, torch.float64, path=None).candidate(path)
            assert not refused.feasible and "float32 only" in refused.reason, path
        block = rnn_fused.plan(64, 8, path=None).candidate("block")
        assert block.feasible and "tiled" not in block.reason
        # (H = 1024: 64 rows a CTA over 16 CTAs, too many for shared memory: the split kernels
        # hold part of each in registers, in the tile's layout; 4 passes of 16 do not fit)
        split = rnn_fused.plan(1024, 32, path=None).candidate("cluster")
        assert split.feasible and split.tiled_dots and split.samples == 4 and split.units_per_pass == 32
        assert "each tile's first 4 rows in registers up to column 384 and its last 4 up to 256" in split.reason
        with launch_plan.forced_tiling(tiled_dots=True, units_per_pass=16):
            with pytest.raises(ValueError, match="cluster.*shared memory"):
                rnn_fused.plan(1024, 32, path="cluster")
    with launch_plan.forced_tiling(tiled_dots=True, samples=2):
        refused = rnn_fused.plan(1024, 32, path=None).candidate("grid")
        assert not refused.feasible and "grid path's tiled dot products take 4 or 8 samples per chunk, not 2" in \
            refused.reason
    with launch_plan.forced_tiling(tiled_dots=True, samples=8):
        refused = rnn_fused.plan(512, 32, path=None).candidate("cluster")
        assert not refused.feasible and "cluster path's tiled dot products take 4 samples per chunk, not 8" in \
            refused.reason
    for hidden, batch in ((512, 32), (1024, 28), (1024, 128)):
        with launch_plan.forced_tiling(samples=4):
            plain = rnn_fused.plan(hidden, batch, path="cluster")
        with launch_plan.forced_tiling(samples=4, tiled_dots=True):
            tiled = rnn_fused.plan(hidden, batch, path="cluster")
        assert tiled.tiled_dots and tiled.predicted_us_per_step < 0.8 * plain.predicted_us_per_step, (plain.reason,
                                                                                                       tiled.reason)
    with pytest.raises(TypeError, match="tiled_dots must be a bool"):
        with launch_plan.forced_tiling(tiled_dots=1):
            pass
    for batch in (32, 128):
        with launch_plan.forced_tiling(samples=8, step_sync="grid_barrier"):
            plain = rnn_fused.plan(1024, batch, path="grid")
        with launch_plan.forced_tiling(samples=8, step_sync="grid_barrier", tiled_dots=True):
            tiled = rnn_fused.plan(1024, batch, path="grid")
        assert tiled.predicted_us_per_step < 0.8 * plain.predicted_us_per_step, (plain.reason, tiled.reason)
        if tiled.units_per_cta == plain.units_per_cta and tiled.chunks == plain.chunks:
            totals = -(-plain.units_per_cta // 4) * 4 * 8 * 4  # whole tiles of 4 units x 8 samples, float32
            assert tiled.shared_mem_bytes == plain.shared_mem_bytes + totals


@pytest.mark.parametrize("hidden", [37, 300])
def test_cluster_tiled_dots_round_as_the_grid_paths(hidden):
    """The cluster path's tiled dot products (forced_tiling(tiled_dots=True): 4 samples per chunk,
    every weight row of a CTA in its shared memory) sum each output in the grid path's tiled
    order (lane l's chunks l, l + 32, ... over the whole row, the same 32-lane tree), so under
    the cluster barrier and the asynchronous exchange, with 32 and 16 units per pass, on 3 and 6
    SMs (clusters of several CTAs; H = 37: CTAs whose units are not whole tiles), the forward and
    the backward with lengths, randomized truncation and recorded norms give bitwise the grid
    path's tiled results, within the tolerance rule of the float64 run."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    grid, tiles = _block_run_with_norms(2, hidden, batch, lengths, path="grid", samples=4, step_sync="grid_barrier",
                                        tiled_dots=True)
    assert tiles == {(4, 32)}
    runs, shapes = [grid], set()
    for sync, per_pass, sm_count in itertools.product(launch_plan.CLUSTER_STEP_SYNCS, (16, 32), (3, 6)):
        with simt.emulated_device(sm_count=sm_count, sms_per_gpc=0), \
                launch_plan.forced_tiling(samples=4, step_sync=sync, units_per_pass=per_pass, tiled_dots=True):
            plans = [rnn_fused.plan(hidden, batch, path="cluster", backward=b) for b in (False, True)]
        assert all(p.tiled_dots and "tiled dot products (a warp's columns over 8 units x 4 samples)" in p.reason
                   for p in plans), [p.reason for p in plans]
        shapes |= {(p.ctas_per_group, p.units_per_cta % 8 != 0) for p in plans}
        results, tiles = _block_run_with_norms(sm_count, hidden, batch, lengths, path="cluster", samples=4,
                                               step_sync=sync, units_per_pass=per_pass, tiled_dots=True)
        assert tiles == {(4, per_pass)}
        runs.append(results)
    assert any(ctas > 1 for ctas, _ in shapes), shapes
    if hidden == 37:
        assert any(partial for _, partial in shapes), shapes
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("hidden", [777, 800, 1024])
def test_cluster_split_tiled_dots_round_as_the_grid_paths(hidden):
    """Past H = 768 the cluster path's split kernels at 4 samples (16 CTAs of up to 64 units,
    part of each row in registers) take the tiled dot products with their registers and shared
    rows in the tile's layout (each tile's first 4 rows to column 384, its last 4 to 256;
    recurrence_paths.cuh kTiledSplitTileRows), in the other tiled paths' order: forward and
    backward with lengths, randomized truncation and recorded norms, under the cluster barrier
    and the asynchronous exchange, bitwise the grid path's tiled results and within the
    tolerance rule of float64. H = 777 and 800: rows of 195 and 200 chunks of the 256 compiled,
    CTAs of 49-56 units (a partial tile or a warp without one, a last CTA of fewer); H = 1024: 16
    CTAs of 64 (8 tiles)."""
    batch = 5
    lengths = torch.tensor([5, 6, 2, 6, 1])
    grid, tiles = _block_run_with_norms(32, hidden, batch, lengths, path="grid", samples=4, step_sync="grid_barrier",
                                        tiled_dots=True)
    assert tiles == {(4, 32)}
    runs = [grid]
    for sync in launch_plan.CLUSTER_STEP_SYNCS:
        with simt.emulated_device(sm_count=16, sms_per_gpc=0), \
                launch_plan.forced_tiling(samples=4, step_sync=sync, tiled_dots=True):
            plans = [rnn_fused.plan(hidden, batch, path="cluster", backward=b) for b in (False, True)]
        assert all(p.tiled_dots and p.compiled_passes == 2 and
                   "each tile's first 4 rows in registers" in p.reason for p in plans), [p.reason for p in plans]
        results, tiles = _block_run_with_norms(16, hidden, batch, lengths, path="cluster", samples=4,
                                               step_sync=sync, tiled_dots=True)
        assert tiles == {(4, 32)}
        runs.append(results)
    _assert_tiles_round_alike(hidden, batch, lengths, runs)


@pytest.mark.parametrize("step_sync", launch_plan.CLUSTER_STEP_SYNCS)
def test_cluster_tiled_dots_under_every_schedule(step_sync):
    """A lane that read another warp's tile total before it was written, or a tile of the next
    step that overwrote a total before every epilogue had read it (the CTA barrier of the
    state's exchange between them), would differ under some schedule: the cluster path's tiled
    forward and backward, several CTAs a cluster and two sample groups, are bitwise alike under
    every schedule and within the tolerance rule of the float64 reference."""
    plan = _tiled_layer_under_every_schedule("cluster", 6, 70, torch.tensor([4, 1, 3, 0, 2, 4]), 3, samples=4,
                                             step_sync=step_sync)
    assert plan.ctas_per_group > 1 and plan.groups == 2, plan.reason


@pytest.mark.parametrize("hidden,samples,dtype,run_time_passes", [
    (37, 1, torch.float32, False), (64, 4, torch.float32, False), (128, 8, torch.float32, False),
    (200, 2, torch.float32, False), (100, 2, torch.float32, True), (45, 2, torch.float64, False)])
def test_operand_ring_gives_the_results_of_the_loads_ahead(hidden, samples, dtype, run_time_passes):
    """The block path's general kernels with their step operands through the ring in shared
    memory (forced_tiling(operand_ring=True): XW_t forward, dy_t and h_t backward, each lane's
    copied 4 steps ahead) compute the same sums of the same values: bitwise the results with
    the operands loaded one step ahead, with lengths shorter than the ring (a lane's copies
    stop at its sample's length), randomized truncation and recorded norms; on the kernels
    compiled for their passes (H = 37-128 at 1, 4 and 8 samples per CTA; H = 200, split weights),
    on those reading them at run time (forced), and in float64."""
    batch = 9
    lengths = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])
    forced = {"samples": samples, "run_time_passes": run_time_passes}
    with simt.emulated_device(sm_count=2, sms_per_gpc=0), launch_plan.forced_tiling(**forced):
        plain = [rnn_fused.plan(hidden, batch, dtype, path="block", backward=b) for b in (False, True)]
        with launch_plan.forced_tiling(**forced, operand_ring=True):
            ringed = [rnn_fused.plan(hidden, batch, dtype, path="block", backward=b) for b in (False, True)]
    for p, r in zip(plain, ringed):
        assert "step operands" not in p.reason and \
            ", each lane's step operands 4 steps ahead in shared memory" in r.reason, r.reason
        # the ring's room: 4 steps of 2 operands for each of the CTA's samples and units
        ring_bytes = 4 * 2 * samples * r.units_per_cta * dtype.itemsize
        assert r.shared_mem_bytes == p.shared_mem_bytes + ring_bytes, (p.shared_mem_bytes, r.shared_mem_bytes)
    assert (plain[0].compiled_passes > 0) == (not run_time_passes and dtype == torch.float32), plain[0].reason
    loads_ahead, _ = _block_run_with_norms(2, hidden, batch, lengths, dtype, **forced)
    through_ring, _ = _block_run_with_norms(2, hidden, batch, lengths, dtype, **forced, operand_ring=True)
    for a, b in zip(loads_ahead, through_ring, strict=True):
        assert torch.equal(a, b)


def test_operand_ring_under_every_schedule():
    """A lane that read its ring slot before waiting for the copies into it (the emulator makes
    a copy when its group is waited for), or that refilled a slot it had yet to read, would see
    stale values: the ring's forward and backward (reverse, full BPTT: the backward's plain copy)
    are bitwise alike under every schedule, bitwise the loads ahead, within the tolerance rule of
    the float64 reference and zero past each sample's length. The input is short enough for the
    kernel to project it itself: the ring's first copies read what the CTA's threads wrote before
    the barrier that ends the projection."""
    batch, hidden = 5, 70
    lengths = torch.tensor([7, 1, 3, 0, 5])
    args = layer_args(7, batch, 3, hidden, dtype=torch.float64)
    cast = [a.to(torch.float32) for a in args]
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(7, batch, hidden, generator=g, dtype=torch.float64),
                  torch.randn(batch, hidden, generator=g, dtype=torch.float64)]
    with simt.emulated_device(sm_count=2, sms_per_gpc=0):
        with launch_plan.forced_tiling(samples=2):
            assert launch_plan.kernel_projects_input(7, batch, 3, hidden)
            loads_ahead = run_layer(cast, lengths, "tanh", True, "emulated", cotangents, "block")
        with launch_plan.forced_tiling(samples=2, operand_ring=True):
            assert "step operands 4 steps ahead" in rnn_fused.plan(hidden, batch, path="block", backward=True).reason
            runs = []
            for mode, seed in (("forward", 0), *simt.ALL_SCHEDULES):
                with simt.schedule(mode, seed):
                    runs.append(run_layer(cast, lengths, "tanh", True, "emulated", cotangents, "block"))
    _assert_reverse_runs_alike_and_within_tolerance(args, cast, lengths, cotangents, [*runs, loads_ahead])


def test_operand_ring_is_the_block_paths_and_refused_with_the_lane_row_step():
    """operand_ring binds the block path's general kernels only (the other paths plan as
    before); with the lane-row step, which has its own operands' ring in registers, it is
    refused, naming both; a value that is not a bool is refused as the other switches are."""
    with simt.emulated_device(sm_count=4, sms_per_gpc=0):
        before = rnn_fused.plan(256, 8, path="cluster")
        block = rnn_fused.plan(64, 8, path="block")
        with launch_plan.forced_tiling(operand_ring=True):
            after = rnn_fused.plan(256, 8, path="cluster")
            ring = rnn_fused.plan(64, 8, path="block")
    assert (before.reason, before.shared_mem_bytes) == (after.reason, after.shared_mem_bytes)
    assert not after.operand_ring and not block.operand_ring
    # The plan reports the ring, and counts its slots (4 steps x 2 operands x S x U scalars).
    assert ring.operand_ring and "each lane's step operands 4 steps ahead in shared memory" in ring.reason
    assert (ring.samples, ring.units_per_cta) == (block.samples, block.units_per_cta)
    assert ring.shared_mem_bytes - block.shared_mem_bytes == 4 * 2 * ring.samples * ring.units_per_cta * 4
    with pytest.raises(ValueError, match="operand_ring=True is the block path's general kernels' and "
                                         "lane_rows_step=True runs the lane-row step instead"):
        with launch_plan.forced_tiling(operand_ring=True, lane_rows_step=True):
            pass
    with pytest.raises(TypeError, match="operand_ring must be a bool, got 1"):
        with launch_plan.forced_tiling(operand_ring=1):
            pass


def _cluster_device(sm_count, optin):
    """An emulated device of sm_count SMs, with at most `optin` bytes of shared memory per CTA
    (None: the default's)."""
    limits = {} if optin is None else {"shared_mem_per_block": min(optin, 48 * 1024), "shared_mem_per_block_optin": optin}
    return simt.emulated_device(sm_count=sm_count, **limits)


def _cluster_run(sm_count, hidden, batch, lengths, dtype, step_sync, samples, bidirectional=False, optin=None):
    """Output, h_n, every gradient and the recorded step norms of a 1-layer module
    (bidirectional: a reversed direction too) with randomized truncation, on the cluster path of
    an emulated device (_cluster_device) with the samples per chunk and the step synchronisation
    forced."""
    torch.manual_seed(0)
    module = RNN(5, hidden, bidirectional=bidirectional, truncation=rnn_fused.RandomTruncation(0.7, seed=3)).to(dtype)
    module.backend, module.path = "emulated", "cluster"
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(6, batch, 5, generator=g, dtype=torch.float64) * 0.5).to(dtype).requires_grad_()
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    with _cluster_device(sm_count, optin), launch_plan.forced_tiling(samples=samples, step_sync=step_sync):
        with rnn_fused.record_gradients(module) as recording:
            out, h_n = module(packed)
        (out.data.sin().sum() + h_n.cos().sum()).backward()
    return [out.data.detach(), h_n.detach(), x.grad, *[p.grad for p in module.parameters()], recording.step_norms]


CLUSTER_LENGTHS = torch.tensor([6, 2, 5, 6, 1, 1, 3, 6, 4])


@pytest.mark.parametrize("hidden,sm_count,samples,dtype,bidirectional,optin,vectors", [
    (128, 2, 8, torch.float32, False, None, True), (70, 3, 2, torch.float32, True, None, True),
    (300, 2, 8, torch.float32, False, None, True), (96, 3, 1, torch.float64, False, None, True),
    (204, 3, 8, torch.float32, False, None, True), (129, 132, 2, torch.float64, False, 15800, False)])
def test_cluster_async_exchange_rounds_as_the_cluster_barrier(hidden, sm_count, samples, dtype, bidirectional, optin,
                                                              vectors):
    """The cluster path's steps may end without the cluster barrier: each CTA stores its slice
    of the new state into the others' buffers by asynchronous stores that an mbarrier per buffer
    counts, and waits on its own (StepSync::AsyncExchange; the CTAs' norm sums reach rank 0 the
    same way, counted by its phase of the next step). Forward and backward with uneven lengths,
    randomized truncation, recorded norms and a reversed direction give bitwise the cluster
    barrier's results: slices in 16-byte vectors (H = 128, 70, 96 in float64; 300 at 8 samples,
    several pieces per thread; 204 on 3 CTAs at 8 samples: 136 pieces, each for both other ranks,
    which threads 136-255 would store again were they given pieces: each CTA's mbarrier counts
    every byte once) and in scalars (H = 129 in float64 with the shared memory per CTA cut so
    that the planner takes 12 CTAs of 11 units forward, 15 of 9 backward). The step norms
    are summed CTA by CTA: bitwise where both backward plans split H alike, else within a
    rounding per term."""
    batch = 9
    plans = {}
    for sync in ("grid_barrier", "async_exchange"):
        with _cluster_device(sm_count, optin), launch_plan.forced_tiling(samples=samples, step_sync=sync):
            plans[sync] = [rnn_fused.plan(hidden, batch, dtype, path="cluster", backward=b) for b in (False, True)]
    assert all(p.step_sync == launch_plan.STEP_SYNCS.index("async_exchange") and p.ctas_per_group > 1 and
               "asynchronous stores counted by mbarriers" in p.reason for p in plans["async_exchange"])
    vec = 16 // torch.empty(0, dtype=dtype).element_size()
    assert all((p.units_per_cta % vec == 0) == vectors for p in plans["async_exchange"]), \
        [p.reason for p in plans["async_exchange"]]
    expected = _cluster_run(sm_count, hidden, batch, CLUSTER_LENGTHS, dtype, "grid_barrier", samples, bidirectional,
                            optin)
    got = _cluster_run(sm_count, hidden, batch, CLUSTER_LENGTHS, dtype, "async_exchange", samples, bidirectional,
                       optin)
    for a, b in zip(expected[:-1], got[:-1], strict=True):
        assert torch.equal(a, b)
    split = [(p.ctas_per_group, p.units_per_cta) for p in (plans["grid_barrier"][1], plans["async_exchange"][1])]
    if split[0] == split[1]:
        assert torch.equal(expected[-1], got[-1])
    else:
        torch.testing.assert_close(got[-1], expected[-1], rtol=hidden * torch.finfo(torch.float64).eps, atol=0)


def test_cluster_async_exchange_under_every_schedule():
    """A CTA that read a peer's slice before its mbarrier's phase completed would read the step
    before's (the emulator performs asynchronous stores only then): under every schedule the
    exchange gives the cluster barrier's results bitwise."""
    expected = _cluster_run(3, 70, 9, CLUSTER_LENGTHS, torch.float32, "grid_barrier", 2)
    for mode, seed in simt.ALL_SCHEDULES:
        with simt.schedule(mode, seed):
            got = _cluster_run(3, 70, 9, CLUSTER_LENGTHS, torch.float32, "async_exchange", 2)
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b), (mode, seed)


def test_cluster_async_exchange_is_priced_apart_and_forced_on_the_cluster_path_only():
    """Measured on an H200 (2026-12-04): the fastest way to end the cluster path's steps at
    every recurrence autotuning timed; its fitted wait is below every cluster barrier's, so the
    planner takes it. A forced step synchronisation binds only the path that has it."""
    for backward in (False, True):
        assert rnn_fused.plan(256, 8, path="cluster", backward=backward).step_sync == 3
    constants = launch_plan.cost_constants()
    for hidden in (64, 256, 512):
        barrier = dict(vars(rnn_fused.plan(hidden, 8, path="cluster")), step_sync=0)
        priced = launch_plan.step_cost_us(dict(barrier, step_sync=3), hidden, 8, term="barrier")
        assert priced == constants["async_exchange_us"] < launch_plan.step_cost_us(barrier, hidden, 8, term="barrier")
    with launch_plan.forced_tiling(step_sync="grid_barrier"):
        assert rnn_fused.plan(256, 8, path="cluster").step_sync == 0
    barrier = dict(vars(rnn_fused.plan(256, 8, path="cluster")), step_sync=0)
    exchange = dict(barrier, step_sync=3)
    assert launch_plan.step_cost_us(exchange, 256, 8, constants={"async_exchange_us": 0.05}, term="barrier") == 0.05
    assert launch_plan.step_cost_us(exchange, 256, 8, constants={"async_exchange_us": 0.05}) < \
        launch_plan.step_cost_us(barrier, 256, 8)
    with launch_plan.forced_tiling(step_sync="async_exchange"):
        assert rnn_fused.plan(256, 8, path="cluster").step_sync == 3
        assert rnn_fused.plan(1024, 8, path="grid").step_sync in (0, 1, 2)  # (the grid path chooses its own)
    with pytest.raises(ValueError, match=r"step_sync must be 0 \(the path's barrier\), or on path 'grid' 1 .* or on "
                                         r"path 'cluster' 3 \(the asynchronous exchange\), got 3 on path 'grid'"):
        launch_plan.step_cost_us(dict(vars(rnn_fused.plan(1024, 8, path="grid")), step_sync=3), 1024, 8)


@pytest.mark.parametrize("hidden,batch", [(64, 8), (300, 9), (1024, 8), (1024, 128)])
def test_planner_ends_grid_steps_the_way_the_model_prices_fastest(hidden, batch):
    """The grid path's three step synchronisations, each measured on an H200 (their constants
    in recurrence_cost_model.h): the planner's grid plan takes the one whose best launch shape
    the model prices fastest (tests/test_planner_measured.py holds that choice to the measured
    one); in float64 never the tagged exchange, whose words carry float32 state."""
    for backward in (False, True):
        plan = rnn_fused.plan(hidden, batch, path="grid", backward=backward)
        priced = {}
        for sync in launch_plan.GRID_STEP_SYNCS:
            with launch_plan.forced_tiling(step_sync=sync):
                priced[sync] = rnn_fused.plan(hidden, batch, path="grid", backward=backward).predicted_us_per_step
        assert launch_plan.STEP_SYNCS[plan.step_sync] == min(priced, key=priced.get), (priced, plan.reason)
        assert plan.predicted_us_per_step == min(priced.values())
        assert rnn_fused.plan(hidden, batch, torch.float64, path="grid", backward=backward).step_sync != 2


def test_the_step_syncs_are_priced_by_their_own_constants():
    constants = launch_plan.cost_constants()
    plan = rnn_fused.plan(1024, 32, path="grid")
    barrier = dict(vars(plan), step_sync=0)
    flags, tagged = dict(vars(plan), step_sync=1), dict(vars(plan), step_sync=2)
    as_the_grid_barrier = {"flag_barrier_us": constants["grid_barrier_us"],
                           "tagged_exchange_us": constants["grid_barrier_us"]}
    assert launch_plan.step_cost_us(flags, 1024, 32, constants=as_the_grid_barrier) == \
        launch_plan.step_cost_us(barrier, 1024, 32)
    # At the same price per step the tagged exchange costs more: its staging waits in full.
    assert launch_plan.step_cost_us(tagged, 1024, 32, constants=as_the_grid_barrier) > \
        launch_plan.step_cost_us(barrier, 1024, 32)
    cheaper = {"flag_barrier_us": 0.4, "tagged_exchange_us": 0.1}
    assert launch_plan.step_cost_us(flags, 1024, 32, constants=cheaper, term="barrier") == 0.4
    assert launch_plan.step_cost_us(tagged, 1024, 32, constants=cheaper, term="barrier") == 0.0
    assert launch_plan.step_cost_us(barrier, 1024, 32, constants=cheaper, term="barrier") == \
        constants["grid_barrier_us"]
    with pytest.raises(ValueError, match=r"step_sync must be 0 \(the path's barrier\), or on path 'grid' 1"):
        launch_plan.step_cost_us(dict(vars(rnn_fused.plan(64, 1)), step_sync=1), 64, 1)
    with launch_plan.forced_tiling(step_sync="tagged_exchange"):
        with pytest.raises(ValueError, match="path 'grid' cannot run .* float64.*the tagged exchange carries float32"):
            rnn_fused.plan(1024, 8, torch.float64, path="grid")


def test_forced_tiling_is_checked_and_restored():
    with pytest.raises(ValueError, match=r"forced_tiling: samples must be 1, 2, 4 or 8 \(or None: each plan's own "
                                         r"choice\), got 3"):
        with launch_plan.forced_tiling(samples=3):
            pass
    with pytest.raises(ValueError, match=r"units_per_pass must be 16 or 32 .*got 0"):
        with launch_plan.forced_tiling(units_per_pass=0):
            pass
    with pytest.raises(TypeError, match=r"forced_tiling: lane_rows_step must be a bool, got 1"):
        with launch_plan.forced_tiling(lane_rows_step=1):
            pass
    chosen = rnn_fused.plan(200, 9)
    with launch_plan.forced_tiling(samples=2, units_per_pass=16):
        with pytest.raises(ValueError, match=r"path 'block' cannot run hidden_size=200.*200 units per CTA exceed the "
                                             r"128 that 8 passes of 16 units hold"):
            rnn_fused.plan(200, 9, path="block")
        with launch_plan.forced_tiling(samples=8):
            assert rnn_fused.plan(100, 9, path="block").samples == 8
        grid = rnn_fused.plan(200, 9, path="grid")
        assert (grid.samples, grid.units_per_pass) == (2, 16) and "dot products on 4 warps" in grid.reason
    with pytest.raises(ValueError, match=r"step_sync must be 'grid_barrier', 'flag_barrier', 'tagged_exchange' or "
                                         r"'async_exchange' \(or None: each plan's own choice\), got 'atomic'"):
        with launch_plan.forced_tiling(step_sync="atomic"):
            pass
    with launch_plan.forced_tiling(step_sync="flag_barrier"):
        assert rnn_fused.plan(200, 9, path="grid").step_sync == 1
        assert rnn_fused.plan(200, 9, path="block").step_sync == 0  # (the block path has no choice)
        # (the flag barrier is the grid path's: the cluster path chooses its own)
        assert rnn_fused.plan(200, 9, path="cluster").step_sync == 3
    assert rnn_fused.plan(200, 9) == chosen


# A reduced version of the module parity grid (tests/test_module_parity.py): layers,
# directions, packing, batch_first, hx, nonlinearity, bias; small sizes.
MODULE_CASES = [
    RNNCase(num_layers=1, bidirectional=False, packing="none", with_hx=True, seq_len=5, batch=3, hidden_size=7),
    RNNCase(num_layers=2, bidirectional=True, packing="sorted", with_hx=False, seq_len=4, batch=3, hidden_size=7),
    RNNCase(num_layers=1, bidirectional=True, packing="unsorted", with_hx=True, seq_len=5, batch=3,
            nonlinearity="relu", hidden_size=33),
    RNNCase(num_layers=2, bidirectional=False, packing="none", batch_first=True, bias=False, seq_len=3, batch=2,
            hidden_size=9),
    RNNCase(num_layers=1, bidirectional=False, unbatched=True, with_hx=True, seq_len=4, hidden_size=5),
    RNNCase(num_layers=1, bidirectional=True, packing="sorted", nonlinearity="relu", bias=False, seq_len=2, batch=1,
            hidden_size=1),
    RNNCase(num_layers=1, bidirectional=True, packing="unsorted", with_hx=True, seq_len=3, batch=2,
            hidden_size=200),  # block: split weights in float32, the directions side by side
]


@pytest.mark.parametrize("path", PATH_CHOICES, ids=[str(p) for p in PATH_CHOICES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(MODULE_CASES)))
def test_module_matches_nn_rnn(case, dtype, path, monkeypatch, generator):
    """rnn_fused.RNN on the emulated CUDA kernels, each path, vs torch.nn.RNN (tolerance
    rule): layers, bidirectional, packed, batch_first, unbatched, hx, relu, no bias."""
    rnn_case = MODULE_CASES[case]
    input, hx = rnn_case.inputs(generator)
    monkeypatch.setattr(RNN, "backend", "emulated")
    monkeypatch.setattr(RNN, "path", path)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    with simt.emulated_device(**SMALL_GPU):
        if path is not None and not rnn_fused.plan(rnn_case.hidden_size, dtype=dtype).candidate(path).feasible:
            with pytest.raises(ValueError, match=f"path '{path}' cannot run hidden_size={rnn_case.hidden_size}"):
                compare_with_torch(rnn_case.torch_module(), input, hx, dtype=dtype, ulps=ulps)
            return
        compare_with_torch(rnn_case.torch_module(), input, hx, dtype=dtype, ulps=ulps)


@pytest.mark.parametrize("side_by_side", [True, False, None], ids=["at-once", "in-turn", "planner"])
@pytest.mark.parametrize("case", [1, 2])
def test_bidirectional_module_directions_side_by_side_match_nn_rnn(case, side_by_side, monkeypatch, generator):
    """RNN.side_by_side: True plans each direction of a bidirectional layer for half the SMs
    (side_by_side=2; on CUDA the reverse one's launches on a side stream), False for the whole
    device, None as the planner prices it (on CPU tensors, which have no streams: the whole
    device); either way both directions in one op pair (rnn_directions_forward), none in a layer op.
    4-SM emulated device, packed input, vs torch.nn.RNN (tolerance rule); a value other than
    None, True or False is refused."""
    from rnn_fused import functional

    rnn_case = MODULE_CASES[case]
    input, hx = rnn_case.inputs(generator)
    shares = []
    layer, directions = functional.rnn_layer, OPS.rnn_directions_forward

    def spy(*args, side_by_side=1, **kwargs):
        shares.append(("layer", side_by_side))
        return layer(*args, side_by_side=side_by_side, **kwargs)

    def directions_spy(*args):
        shares.append(("directions", args[-1]))  # (side_by_side, the op's last argument)
        return directions(*args)

    def layers_spy(*args):  # every layer in one op: its directions_op (argument 13) is each layer's
        shares.append(("directions", args[13]) if args[13] else ("layer", 1))
        return layers(*args)

    layers = OPS.rnn_layers_forward
    monkeypatch.setattr(functional, "rnn_layer", spy)
    monkeypatch.setattr(functional.torch.ops.rnn_fused, "rnn_directions_forward", directions_spy)
    monkeypatch.setattr(functional.torch.ops.rnn_fused, "rnn_layers_forward", layers_spy)
    monkeypatch.setattr(RNN, "backend", "emulated")
    monkeypatch.setattr(RNN, "side_by_side", side_by_side)
    with simt.emulated_device(sm_count=4):
        compare_with_torch(rnn_case.torch_module(), input, hx, dtype=torch.float32)
    assert shares and set(shares) == {("directions", 2 if side_by_side else 1)}
    monkeypatch.setattr(RNN, "side_by_side", "yes")
    with pytest.raises(ValueError, match="rnn: side_by_side must be None, True or False, got 'yes'"):
        RNN.from_torch(rnn_case.torch_module().double())(input, hx)


@pytest.mark.parametrize("path", EMULATED_PATHS)
@pytest.mark.parametrize("nonlinearity,reverse,bias,hx,lengths", [
    ("tanh", False, True, True, [4, 2, 0]),
    ("tanh", True, False, False, None),
    ("relu", True, True, True, [1, 4, 3]),
])
def test_gradcheck_through_emulated_kernels(nonlinearity, reverse, bias, hx, lengths, path):
    args = layer_args(4, 3, 2, 6, bias=bias, hx=hx)
    lengths = None if lengths is None else torch.tensor(lengths)
    present = [a.requires_grad_() for a in args if a is not None]

    def layer(*tensors):
        it = iter(tensors)
        full = [next(it) if a is not None else None for a in args]
        return rnn_fused.rnn_layer(*full, lengths, nonlinearity, reverse, backend="emulated", path=path)

    with simt.emulated_device(**SMALL_GPU):
        assert torch.autograd.gradcheck(layer, present)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_runs_in_float32(dtype):
    args = layer_args(6, 2, 3, 9)
    reference, _ = reference_layer(*args)
    stock, _ = reference_layer(*[a.to(dtype) for a in args])
    with simt.emulated_device(**SMALL_GPU):
        ours, h_n = rnn_fused.rnn_layer(*[a.to(dtype) for a in args], backend="emulated")
    assert ours.dtype == dtype and h_n.dtype == dtype
    assert_within_tolerance(reference, stock, ours, name="output")


def test_empty_batch_and_zero_steps():
    with simt.emulated_device(**SMALL_GPU):
        out, h_n = rnn_fused.rnn_layer(*layer_args(3, 0, 2, 4), backend="emulated")
        assert out.shape == (3, 0, 4) and h_n.shape == (0, 4)
        args = layer_args(0, 2, 2, 4)
        out, h_n = rnn_fused.rnn_layer(*args, backend="emulated")
        assert out.shape == (0, 2, 4) and torch.equal(h_n, args[1])


@contextlib.contextmanager
def uninitialized_memory_is_nan():
    """New tensors, torch.empty and the ops' at::empty alike, come filled with NaN (torch's
    deterministic mode), so a result read from a buffer nobody wrote is NaN, not zero."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(4).isnan().all()
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill


@pytest.mark.parametrize("backend,path", [("cpu", None), *[("emulated", p) for p in EMULATED_PATHS],
                                          ("emulated", "lane-rows")])
@pytest.mark.parametrize("lengths", [None, [4, 1, 0]], ids=["all-steps", "lengths"])
@pytest.mark.parametrize("hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_buffers_left_uncleared_are_written_everywhere(backend, path, lengths, hx, reverse):
    """Without hx no initial state is materialised, and neither the output nor dz nor the step
    norms are cleared before the recurrences write them, lengths or not (the kernels write zero
    past each sample's length): every entry must be written. The same calls with every new
    buffer full of NaN give bitwise the results of an ordinary run. "lane-rows": the block
    path's lane-row step (forced_tiling(lane_rows_step=True))."""
    args = layer_args(4, 3, 2, 9, dtype=torch.float32, hx=hx)
    length_tensor = None if lengths is None else torch.tensor(lengths)
    g = torch.Generator().manual_seed(5)
    grad_output, grad_h_n = torch.randn(4, 3, 9, generator=g), torch.randn(3, 9, generator=g)
    forward_args = (*args, length_tensor, "tanh", reverse)
    lane_rows = path == "lane-rows"
    kwargs = dict(backend=backend, path="block" if lane_rows else path)

    def run():
        with launch_plan.forced_tiling(lane_rows_step=lane_rows), simt.recording_launches() as launches:
            out, h_n = OPS.rnn_layer_forward(*forward_args, **kwargs)
            grads = OPS.rnn_layer_backward(grad_output, grad_h_n, out, [True, hx, True, True, True], True,
                                           *forward_args, **kwargs)
        assert not lane_rows or ("forward_lane_rows_kernel" in launches[0]
                                 and "backward_lane_rows_kernel" in launches[1]), launches
        return [out, h_n, *grads]

    with simt.emulated_device(**SMALL_GPU):
        expected = run()
        with uninitialized_memory_is_nan():
            filled = run()
    assert all(t.isfinite().all() for t in expected)
    for name, a, b in zip(["output", "h_n", "grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh",
                           "grad_bias", "step_norms", "grad_sq_norms", "nonfinite"], expected, filled):
        assert torch.equal(a, b), name


# ATen ops that do device work (each a kernel launch or memset on a GPU).
_WORK_OPS = {"aten::fill_", "aten::zero_", "aten::copy_", "aten::add", "aten::add_", "aten::addmm", "aten::mm",
             "aten::bmm", "aten::sum", "aten::where", "aten::masked_fill_", "aten::masked_fill", "aten::mul",
             "aten::sqrt_", "aten::arange", "aten::ge", "aten::lt", "aten::eq"}


def _device_work(call) -> collections.Counter:
    """The outermost device-work ATen ops that call() runs (zeros -> zero_ -> fill_ counts once)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    counts = collections.Counter()
    for event in profile.events():
        if event.name not in _WORK_OPS:
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in _WORK_OPS:
            parent = parent.cpu_parent
        if parent is None:
            counts[event.name] += 1
    return counts


@pytest.mark.parametrize("path", ["block", "grid"])
@pytest.mark.parametrize("lengths", [None, [5, 2]], ids=["all-steps", "lengths"])
def test_host_issues_only_the_layer_gemms_beside_the_recurrence(path, lengths):
    """At small sizes a GPU waits for the host, and each ATen call is a launch. The emulated
    backend runs the CUDA backend's host code, so its ATen calls are the GPU's launches: with
    no hx the forward issues the bias sum and the input projection (none on the
    block path, whose kernel projects so short an input itself); the backward no ATen work at
    all: its recurrence kernel, then the gradients kernel (short_gradients_kernel: 10 rows),
    and with the gradients on the host (forced_tiling(gradients_on_host=True)) dX, dW_ih, dW_hh
    (a sum of 8 rows: one product) and the bias gradient instead. No state, dz or W_hh^T is
    materialised, and the grid path's exchange buffer is not cleared (its kernels stage the
    first state from h0, or zeros, themselves). Lengths add nothing: the kernels write zero past
    each sample's length, so neither the output nor dz is cleared or masked by the host."""
    args = layer_args(5, 2, 3, 8, dtype=torch.float32, hx=False)
    forward_args = (*args, None if lengths is None else torch.tensor(lengths), "tanh", False)
    kwargs = dict(backend="emulated", path=path)
    grad_output, grad_h_n = torch.ones(5, 2, 8), torch.ones(2, 8)
    with simt.emulated_device(**SMALL_GPU):
        out, _ = OPS.rnn_layer_forward(*forward_args, **kwargs)
        forward = _device_work(lambda: OPS.rnn_layer_forward(*forward_args, **kwargs))
        with launch_plan.forced_tiling(input_projection_on_host=True):
            forward_projected_on_host = _device_work(lambda: OPS.rnn_layer_forward(*forward_args, **kwargs))
        mask = [True, False, True, True, True]
        with simt.recording_launches() as launches:
            backward = _device_work(
                lambda: OPS.rnn_layer_backward(grad_output, grad_h_n, out, mask, False, *forward_args, **kwargs))
        backward_without_h_n = _device_work(
            lambda: OPS.rnn_layer_backward(grad_output, None, out, mask, False, *forward_args, **kwargs))
        with launch_plan.forced_tiling(gradients_on_host=True), simt.recording_launches() as launches_on_host:
            backward_on_host = _device_work(
                lambda: OPS.rnn_layer_backward(grad_output, None, out, mask, False, *forward_args, **kwargs))
    host_projection = collections.Counter({"aten::add": 1, "aten::addmm": 1})
    assert forward == (collections.Counter() if path == "block" else host_projection)
    assert forward_projected_on_host == host_projection
    assert backward == backward_without_h_n == collections.Counter()
    assert len(launches) == 2 and "backward" in launches[0] and launches[1] == "short_gradients_kernel", launches
    assert backward_on_host == collections.Counter({"aten::mm": 3, "aten::sum": 1})
    assert launches_on_host == launches[:1]


@pytest.mark.parametrize("layers", [1, 2])
def test_a_modules_backward_issues_only_its_layer_ops_work(layers):
    """Through autograd a layer's backward adds no device work to its op's: h_n unused gets
    no zeros (its absent gradient goes to the op as None, read as zero by the time loops), and
    the biases get the two rows of the op's grad_bias [2,H] (AccumulateGrad would copy one
    tensor handed to both). Per layer, with the gradients on the host: dX (not for layer 0, whose
    input needs no gradient), dW_ih, dW_hh (one product) and the bias rows; as planned, none of
    them (the gradients kernel makes them: no ATen work at all)."""
    torch.manual_seed(0)
    model = RNN(3, 8, layers)
    model.backend = "emulated"
    x, grad_output = torch.randn(5, 2, 3), torch.randn(5, 2, 8)
    works = []
    with simt.emulated_device(**SMALL_GPU):
        out, _ = model(x)
        for on_host in (False, True):
            model.zero_grad(set_to_none=True)  # (else AccumulateGrad adds to the first run's)
            with launch_plan.forced_tiling(gradients_on_host=on_host):
                works.append(_device_work(lambda: torch.autograd.backward(out, grad_output, retain_graph=True)))
            for layer in range(layers):
                b_ih, b_hh = getattr(model, f"bias_ih_l{layer}").grad, getattr(model, f"bias_hh_l{layer}").grad
                assert torch.equal(b_ih, b_hh) and b_ih.data_ptr() != b_hh.data_ptr()
    assert works[0] == collections.Counter()
    assert works[1] == collections.Counter({"aten::mm": 3 * layers - 1, "aten::sum": layers})


# steps, batch, input, hidden, nonlinearity, reverse, bias, hx, lengths: layers whose backward
# makes its whole-sequence gradients in the gradients kernel (T B <= 64 rows, a small kernel).
GRADIENT_KERNEL_CASES = [
    (5, 3, 4, 7, "tanh", False, True, True, [5, 2, 4]),
    (6, 4, 3, 33, "relu", True, False, True, [2, 6, 0, 4]),  # an empty sample: grad_hx is h_n's
    (1, 1, 2, 5, "tanh", False, True, False, None),        # one row: dW_hh has no term
    (8, 8, 5, 40, "tanh", True, True, True, None),         # 64 rows, the limit
]
GRADIENT_NAMES = ["grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh", "grad_bias"]


def _gradients_with_mask(args, lengths, nonlinearity, reverse, cotangents, mask, path, record_norms=False):
    """The op's forward, then its backward asked for `mask`'s gradients, on the emulated backend."""
    inputs = rnn_fused._ops.LayerInputs(*args, lengths)
    options = rnn_fused._ops.LayerOptions.make(nonlinearity, reverse, TruncationArgs(every=3), 0, "emulated", path)
    out, _ = rnn_fused._ops.layer_forward(inputs, options)
    return rnn_fused._ops.layer_backward(cotangents[0], cotangents[1], out, mask, record_norms, inputs, options)


@pytest.mark.parametrize("path", ["block", "grid"])
@pytest.mark.parametrize("case", GRADIENT_KERNEL_CASES, ids=_case_id)
def test_the_gradients_kernel_makes_a_short_layers_gradients(case, path):
    """A short float32 layer's backward makes dX, h_0's gradient, dW_ih, dW_hh and the biases'
    in one launch of short_gradients_kernel after its recurrence: within the
    tolerance rule of the float64 results, with the host's GEMMs (forced_tiling's
    gradients_on_host) as the stock float32 implementation; the norms of its gradients are the
    norms the GEMMs' would have, within rounding. Each gradient's bits do not depend on which
    others the call asks for (every mask of one gradient gives the full mask's bits) nor on the
    emulator's schedule. Truncation every 3 steps."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    lengths, args, cotangents, cast = case_inputs(steps, batch, input_size, hidden, bias, hx, lengths,
                                                  torch.float32, seed=3)
    cast_cotangents = [c.float() for c in cotangents]
    full = [True, hx, True, True, bias]
    with simt.emulated_device(**SMALL_GPU):
        runs = []
        for mode, seed in simt.ALL_SCHEDULES:
            with simt.schedule(mode, seed), simt.recording_launches() as launches:
                runs.append(_gradients_with_mask(cast, lengths, nonlinearity, reverse, cast_cotangents, full, path,
                                                 True))
            # the forward's recurrence, the backward's (and the sum of its deferred norms where the
            # plain copy ran it), then the gradients kernel
            deferred = ["step_norms_kernel"] if launches[1].endswith(", true>") else []
            assert launches[2:] == deferred + ["short_gradients_kernel"] and "backward" in launches[1], launches
        with launch_plan.forced_tiling(gradients_on_host=True), simt.recording_launches() as launches:
            stock = _gradients_with_mask(cast, lengths, nonlinearity, reverse, cast_cotangents, full, path, True)
        assert "short_gradients_kernel" not in launches
        reference = _gradients_with_mask(args, lengths, nonlinearity, reverse, cotangents, full, path, True)
        single = {}
        for i in range(5):
            if full[i]:
                mask = [j == i for j in range(5)]
                single[i] = _gradients_with_mask(cast, lengths, nonlinearity, reverse, cast_cotangents, mask, path)[i]
    ours = runs[0]
    for other in runs[1:]:
        for name, a, b in zip(GRADIENT_NAMES, ours, other):
            assert torch.equal(a, b), name
    for i, name in enumerate(GRADIENT_NAMES):
        if not full[i]:
            assert ours[i].numel() == 0, name
            continue
        assert torch.equal(single[i], ours[i]), name
        assert_within_tolerance(reference[i], stock[i], ours[i], name=name, ulps=8)
    assert torch.equal(ours[4][0], ours[4][1]) if bias else True
    # The squared norms of the five gradients: those of the GEMMs' results, within the rounding
    # the gradients differ by.
    torch.testing.assert_close(ours[6], stock[6], rtol=1e-5, atol=0)


@pytest.mark.parametrize("steps,batch,hidden,dtype,taken", [
    (8, 8, 40, torch.float32, True),      # 64 rows
    (13, 5, 40, torch.float32, False),    # 65 rows: dW_hh is not one product on the host either
    (4, 2, 180, torch.float32, True),     # 131 CTAs of float64 sums of 180 terms: 1 wave, 1.6 us
    (4, 2, 190, torch.float32, False),    # 146 CTAs: 2 waves, 3.5 us, over a quarter launch (2.6 us)
    (8, 8, 40, torch.float64, False),     # float32 only
])
def test_the_gradients_kernel_runs_where_the_cost_model_prices_it(steps, batch, hidden, dtype, taken):
    """Where the backward makes its gradients in one launch (cost::kernel_makes_gradients): at
    most 64 rows (T B), as long as dW_hh's single product on the host, and under a quarter of a
    launch of GPU time by the model (the waves of 256-thread CTAs over 132 SMs, each thread's
    float64 sum at a quarter of an SM's float64 multiply-add rate); float32 only. Elsewhere the
    host's GEMMs."""
    args = layer_args(steps, batch, 3, hidden, dtype=dtype, hx=True)
    g = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(steps, batch, hidden, generator=g, dtype=dtype), None]
    with simt.emulated_device(**SMALL_GPU), simt.recording_launches() as launches:
        _gradients_with_mask(args, None, "tanh", False, cotangents, [True] * 5, "stepwise")
    assert ("short_gradients_kernel" in launches) == taken, launches


@pytest.mark.parametrize("backend,path", [("cpu", None)] + [("emulated", p) for p in EMULATED_PATHS])
def test_an_absent_h_n_gradient_reads_as_zeros(backend, path):
    """grad_h_n None (an unused h_n, whose gradient the layer's autograd node no longer fills
    with zeros) gives bitwise the results of grad_h_n = zeros on every backend and path: the
    five gradients (an empty sample's grad_hx, which is h_n's gradient: zero), the step norms and
    the squared norms; with hx, lengths, reverse, relu and truncation every 2 steps. grad_bias
    holds the bias gradient twice, as its two equal rows."""
    args = layer_args(5, 4, 3, 9, dtype=torch.float32)
    lengths = torch.tensor([5, 0, 3, 2])
    g = torch.Generator().manual_seed(4)
    grad_output = torch.randn(5, 4, 9, generator=g)
    with simt.emulated_device(**SMALL_GPU):
        runs = [run_layer_op(args, lengths, "relu", True, TruncationArgs(every=2), (grad_output, grad_h_n),
                             path=path, backend=backend)
                for grad_h_n in (None, torch.zeros(4, 9))]
    names = ["grad_input", "grad_hx", "grad_weight_ih", "grad_weight_hh", "grad_bias", "step_norms",
             "grad_sq_norms", "nonfinite"]
    for name, a, b in zip(names, *runs, strict=True):
        assert torch.equal(a, b), name
    grad_bias, grad_sq_norms = runs[0][4], runs[0][6]
    assert grad_bias.shape == (2, 9) and torch.equal(grad_bias[0], grad_bias[1])
    # The norm of one bias's gradient (one row, not two): the same 9 float64 squares summed in
    # another order, within the bound of a length-9 float64 sum.
    torch.testing.assert_close(grad_sq_norms[4], grad_bias[0].double().pow(2).sum(),
                               rtol=9 * torch.finfo(torch.float64).eps, atol=0)
    assert not runs[0][1][1].any()


# steps, batch, input, hidden, nonlinearity, reverse, bias, hx, lengths, samples per CTA (None: the plan's)
KERNEL_PROJECTION_CASES = [
    (5, 3, 4, 7, "tanh", False, True, True, [5, 2, 4], None),
    (6, 4, 3, 33, "relu", True, False, False, [2, 6, 0, 4], None),
    (4, 9, 5, 20, "tanh", False, True, False, [4, 0, 2, 4, 1, 3, 4, 4, 2], 2),  # 5 CTAs, the last one half empty
    (3, 1, 1, 1, "relu", True, True, True, None, None),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", KERNEL_PROJECTION_CASES, ids=_case_id)
def test_block_kernel_projects_a_short_input_within_the_tolerance_rule(case, dtype):
    """Where the block path's kernel projects the input itself (each CTA its samples' XW_t +
    b_ih + b_hh at every step, before its first step), the forward issues no ATen work, and the
    results keep to the tolerance rule against the float64 step loop, as those from the host's
    projection (forced_tiling(input_projection_on_host=True)) do; they come out the same under
    every emulator schedule."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths, samples = case
    lengths, args, cotangents, cast = case_inputs(steps, batch, input_size, hidden, bias, hx, lengths, dtype, seed=5)
    forward_args = (*cast, lengths, nonlinearity, reverse)
    results = {}
    with simt.emulated_device(**SMALL_GPU):
        for on_host in (False, True):
            with launch_plan.forced_tiling(samples=samples, input_projection_on_host=on_host):
                work = _device_work(lambda: OPS.rnn_layer_forward(*forward_args, backend="emulated", path="block"))
                assert ("aten::addmm" in work or "aten::mm" in work) == on_host
                runs = []
                for mode, seed in (*simt.ALL_SCHEDULES, ("forward", 0)):
                    with simt.schedule(mode, seed):
                        runs.append(run_layer(cast, lengths, nonlinearity, reverse, "emulated", cotangents, "block"))
            for other in runs[1:]:
                for a, b in zip(runs[0], other):
                    assert torch.equal(a, b), "results differ between emulator schedules"
            results[on_host] = runs[0]
    reference = reference_results(args, lengths, nonlinearity, reverse, cotangents, torch.float64)
    stock = reference_results(cast, lengths, nonlinearity, reverse, cotangents, dtype)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(reference) - 2)]
    for on_host, ours in results.items():
        for name, r, s, o in zip(names, reference, stock, ours, strict=True):
            assert_within_tolerance(r, s, o, name=f"{name} (input projected on the host: {on_host})", ulps=ulps)
    if lengths is not None:
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(results[False][0][n:, b] == 0)


def test_block_kernel_projects_the_input_only_below_a_quarter_launch():
    """The cost model's rule (cost::kernel_projects_input): the kernel projects the input where
    its T S H I multiply-adds on one CTA, at a quarter of an SM's rate, take under a quarter of
    a launch; one input column more and the host makes the projection."""
    constants = launch_plan.cost_constants()
    steps, batch, hidden = 4, 2, 16
    with simt.emulated_device(**SMALL_GPU):
        plan = rnn_fused.plan(hidden, batch)
        assert plan.path == "block" and not plan.lane_rows
        rate = constants["fma_per_sm_per_us"] * 0.25
        limit = 0.25 * constants["launch_us"]
        widest = max(i for i in range(1, 100_000) if steps * plan.samples * hidden * i / rate < limit)
        for input_size, in_kernel in ((widest, True), (widest + 1, False)):
            args = layer_args(steps, batch, input_size, hidden, dtype=torch.float32, hx=False)
            work = _device_work(lambda: OPS.rnn_layer_forward(*args, None, "tanh", False, backend="emulated"))
            assert ("aten::addmm" not in work) == in_kernel, input_size


def test_host_layer_names_its_stages_to_the_profiler():
    """A short layer's host time is the whole cost on a GPU: torch.profiler sees the host layer's
    stages as scopes (the plan, the launch, the input projection, the gradients after the time
    loop; benchmarks/host_overhead.py reads them), each once per forward or backward call, the
    ATen work inside them."""
    args = layer_args(5, 2, 3, 8, dtype=torch.float32, hx=False)
    forward_args = (*args, None, "tanh", False)
    # (on the host: the block kernel would project so short an input itself)
    with simt.emulated_device(**SMALL_GPU), launch_plan.forced_tiling(input_projection_on_host=True):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            out, _ = OPS.rnn_layer_forward(*forward_args, backend="emulated")
            OPS.rnn_layer_backward(torch.ones(5, 2, 8), torch.ones(2, 8), out, [True] * 5, False, *forward_args,
                                   backend="emulated")
    events = [e for e in profile.events() if e.name.startswith("rnn_fused::")]
    counts = collections.Counter(e.name for e in events)
    assert counts == {"rnn_fused::rnn_layer_forward": 1, "rnn_fused::rnn_layer_backward": 1, "rnn_fused::plan": 2,
                      "rnn_fused::launch": 2, "rnn_fused::input_projection": 1, "rnn_fused::gradients_from_dz": 1}
    projection = next(e for e in events if e.name == "rnn_fused::input_projection")
    assert {c.name for c in projection.cpu_children} >= {"aten::addmm"}


def test_the_planner_keeps_its_answer_per_request():
    """The planner's choice is kept per request (shape, dtype, forced tiling, path asked for):
    asked again, the same plan; another request, its own; a forced path the shape cannot take is
    refused every time; under autotuning the measured choice, not the kept one."""
    with simt.emulated_device(**SMALL_GPU):
        first, again = rnn_fused.plan(200, 9), rnn_fused.plan(200, 9)
        assert first == again
        forced = rnn_fused.plan(200, 9, path="grid")
        assert forced.path == "grid" and forced.reason.startswith("forced: ") and rnn_fused.plan(200, 9) == first
        with launch_plan.forced_tiling(samples=2, units_per_pass=16):
            assert rnn_fused.plan(200, 9, path="grid").samples == 2
            for _ in range(2):
                with pytest.raises(ValueError, match=r"path 'block' cannot run hidden_size=200"):
                    rnn_fused.plan(200, 9, path="block")
        assert rnn_fused.plan(200, 9, path="grid") == forced
        with launch_plan.autotune(steps=2):
            assert rnn_fused.plan(23, 2).measured_us_per_step > 0
        assert rnn_fused.plan(23, 2).measured_us_per_step is None


@pytest.mark.parametrize("path", ["block", "cluster", "grid"])
def test_step_phase_timing_changes_no_result(path):
    """recurrence_step_phases runs the layer kernels with the phase clock on. Its forward is a
    layer whose projection is xw (weight_ih = I, no biases) from a zero state, its backward
    the same layer's with dy = xw and dh_n = 0, whose dz is grad_input when weight_ih = I: both
    must equal the ordinary op's bitwise, and only the grid path spends time staging."""
    g = torch.Generator().manual_seed(2)
    steps, batch, hidden = 5, 3, 33
    xw = torch.randn(steps, batch, hidden, generator=g) * 0.5
    w_hh = torch.randn(hidden, hidden, generator=g) * 0.1
    eye = torch.eye(hidden)
    with simt.emulated_device(**SMALL_GPU):
        forward_cycles, h = OPS.recurrence_step_phases(
            xw, w_hh, False, path=path, backend="emulated")
        backward_cycles, dz = OPS.recurrence_step_phases(xw, w_hh, True, path=path, backend="emulated")
        layer = (xw, None, eye, w_hh, None, None, None, "tanh", False)
        out, h_n = OPS.rnn_layer_forward(*layer, backend="emulated", path=path)
        grad_input = OPS.rnn_layer_backward(xw, torch.zeros_like(h_n), out, [True, False, False, False, False],
                                            False, *layer, backend="emulated", path=path)[0]
        ctas = rnn_fused.plan(hidden, batch, path=path).grid
    assert torch.equal(h, out) and torch.equal(dz, grad_input)
    for cycles in (forward_cycles, backward_cycles):
        assert cycles.shape == (ctas, 3) and cycles.dtype == torch.int64
        stage, compute, barrier = cycles.unbind(1)
        assert (compute > 0).all() and (barrier > 0).all()
        assert ((stage > 0) if path == "grid" else (stage == 0)).all()


def test_step_phase_timing_needs_a_persistent_kernel_backend():
    xw, w_hh = torch.randn(3, 2, 5), torch.randn(5, 5)
    with simt.emulated_device(**SMALL_GPU):
        with pytest.raises(ValueError, match="path 'stepwise' launches two kernels per step"):
            OPS.recurrence_step_phases(xw, w_hh, False, path="stepwise", backend="emulated")
        with pytest.raises(ValueError, match="backend 'cpu' runs no GPU kernels to time"):
            OPS.recurrence_step_phases(xw, w_hh, False)
        with pytest.raises(ValueError, match="xw must be float32 or float64"):
            OPS.recurrence_step_phases(xw.half(), w_hh.half(), False, backend="emulated")


def test_zero_steps_without_hx_give_a_zero_state():
    for backend in ("cpu", "emulated"):
        with simt.emulated_device(**SMALL_GPU):
            out, h_n = OPS.rnn_layer_forward(*layer_args(0, 2, 2, 4, hx=False), None, "tanh", False, backend=backend)
        assert out.shape == (0, 2, 4) and torch.equal(h_n, torch.zeros(2, 4, dtype=torch.float64))


def test_rejects_lengths_outside_range_like_the_cpu_backend():
    args = layer_args(5, 2, 3, 4)
    for backend in ("cpu", "emulated"):
        with pytest.raises(ValueError, match=r"lengths\[0\] = 6 is outside \[0, 5\]"):
            OPS.rnn_layer_forward(*args, torch.tensor([6, 1]), "tanh", False, backend=backend)


def test_opcheck_emulated_ops():
    args = layer_args(4, 3, 2, 5, dtype=torch.float32)
    lengths = torch.tensor([4, 2, 3])
    with simt.emulated_device(**SMALL_GPU):
        forward_args = (*args, lengths, "tanh", True)
        kwargs = dict(backend="emulated")
        torch.library.opcheck(OPS.rnn_layer_forward.default, forward_args, kwargs)
        out, h_n = OPS.rnn_layer_forward(*forward_args, **kwargs)
        torch.library.opcheck(OPS.rnn_layer_backward.default,
                              (torch.randn_like(out), torch.randn_like(h_n), out, [True] * 5, False, *forward_args),
                              kwargs)


# ---- path planner ----

def test_plan_reports_every_path_with_a_prediction():
    with simt.emulated_device(**SMALL_GPU):
        plan = rnn_fused.plan(33, 5)
    assert [c.path for c in plan.candidates] == ["block", "cluster", "grid", "stepwise"]
    feasible = [c for c in plan.candidates if c.feasible]
    assert {c.path for c in feasible} >= {"block", "grid", "stepwise"}
    assert all(c.predicted_us_per_step > 0 for c in feasible)
    # The planner takes the fastest predicted feasible path.
    assert plan.predicted_us_per_step == min(c.predicted_us_per_step for c in feasible)
    assert plan.path == "block" and "fastest" in plan.reason
    block = plan.candidate("block")
    assert block.units_per_cta == 33 and block.ctas_per_group == 1 and block.block_threads == 256
    assert block.groups * block.samples_per_group >= 5 and block.grid == block.groups


@pytest.mark.parametrize("hidden,threads", [(1, 32), (33, 64), (64, 64), (100, 128), (128, 128)])
def test_block_path_takes_the_lane_rows_where_forced(hidden, threads):
    """forced_tiling(lane_rows_step=True), float32 at H <= 128: the block path's launch is the
    lane-row step (a thread per hidden unit, H rounded up to whole warps; a CTA per sample, or
    per 2 at H <= 64), forward and backward, priced from its counts and the wait measured on the
    H200; not the planner's own choice (measured no faster there), not in float64, not at
    H = 129, and not with what only the general kernels have (16 units per pass, passes read at
    run time) or samples per CTA it is not compiled for (4, 8; 2 past H = 64)."""
    with simt.emulated_device():
        for backward in (False, True):
            assert not rnn_fused.plan(hidden, 8, torch.float32, backward=backward, path="block").lane_rows
            with launch_plan.forced_tiling(lane_rows_step=True):
                plan = rnn_fused.plan(hidden, 8, torch.float32, backward=backward, path="block")
            assert plan.path == "block" and plan.lane_rows, plan.reason
            assert plan.block_threads == threads and plan.units_per_cta == hidden and plan.ctas_per_group == 1
            assert plan.samples in (1, 2) and plan.grid == plan.groups == -(-8 // plan.samples)
            assert "lane-row step" in plan.reason and plan.predicted_us_per_step > 0
            assert plan.predicted_us_per_step == step_cost_us(plan, hidden, 8)
        with launch_plan.forced_tiling(samples=2, lane_rows_step=True):
            two = rnn_fused.plan(hidden, 8, path="block")
        assert two.samples == 2 and two.lane_rows == (hidden <= 64), two.reason
        with launch_plan.forced_tiling(lane_rows_step=True):
            assert not rnn_fused.plan(hidden, 8, torch.float64, path="block").lane_rows
            assert not rnn_fused.plan(129, 8, torch.float32, path="block").lane_rows
        for forced in (dict(units_per_pass=16), dict(samples=4), dict(samples=8), dict(run_time_passes=True)):
            with launch_plan.forced_tiling(lane_rows_step=True, **forced):
                general = rnn_fused.plan(hidden, 8, torch.float32, path="block")
            assert general.feasible and not general.lane_rows and general.block_threads == 256, forced
            assert "lane-row" not in general.reason


def test_plan_rules_out_paths_with_their_limits():
    with simt.emulated_device(**NO_COOPERATIVE):
        grid = rnn_fused.plan(33, 4).candidate("grid")
    assert not grid.feasible and "cooperative" in grid.reason
    with simt.emulated_device(**TINY_SHARED):
        plan = rnn_fused.plan(33, 4)
    assert plan.path == "stepwise"
    for path in ("block", "grid"):
        assert "shared_mem_per_block_optin = 64" in plan.candidate(path).reason
    with simt.emulated_device(**SMALL_GPU):
        assert "at most 256 hidden units" in rnn_fused.plan(300).candidate("block").reason


def test_forced_path_that_cannot_run_is_refused_before_anything_runs():
    args = layer_args(3, 2, 2, 300, dtype=torch.float32)
    with simt.emulated_device(**SMALL_GPU):
        with pytest.raises(ValueError, match=r"path 'block' cannot run hidden_size=300, batch_size=2 in float32 "
                                             r"\(forward\) on this device: one CTA owns at most 256 hidden units"):
            rnn_fused.rnn_layer(*args, backend="emulated", path="block")
        with pytest.raises(ValueError, match=r"path 'grid' cannot run hidden_size=33"):
            with simt.emulated_device(**NO_COOPERATIVE):
                rnn_fused.plan(33, 2, path="grid")
    with pytest.raises(ValueError, match="path must be 'block', 'cluster', 'grid', 'stepwise' or None, got 'warp'"):
        rnn_fused.plan(33, path="warp")
    with pytest.raises(ValueError, match="backend 'cpu' runs its own loops: pass path=None"):
        rnn_fused.rnn_layer(*layer_args(3, 2, 2, 4), path="block")


def test_plan_large_batches_take_chunks_on_the_grid_path():
    """A cooperative grid must be co-resident: on a 2-SM device holding one CTA per SM, 40
    samples go to at most 2 sample groups, each computing several chunks per step."""
    with simt.emulated_device(sm_count=2, max_blocks_per_sm=1):
        grid = rnn_fused.plan(20, 40, path="grid")
    assert grid.grid <= 2 and grid.groups * grid.samples_per_group >= 40 and "chunks" in grid.reason


# (H, B, dtype, compute capability) -> the path the planner takes on an H100/H200-like device
# (132 SMs, 227 KB of shared memory per block) and on an A100-like one (no clusters).
PLANNED_PATHS = [
    (64, 1, torch.float32, (9, 0), "block"), (64, 8, torch.float64, (9, 0), "block"),  # W_hh in one CTA
    (128, 32, torch.float32, (9, 0), "block"),  # W_hh rows in registers: no cluster barrier needed
    # H = 256: one CTA with split weights (128 rows in registers) streams 128 KB of rows through its
    # shared memory each step; 16 CTAs of a cluster stream 16 KB each and pay the cluster barrier
    (256, 8, torch.float32, (9, 0), "cluster"),
    (300, 8, torch.float32, (9, 0), "cluster"),
    (512, 32, torch.float32, (9, 0), "cluster"), (256, 8, torch.float64, (9, 0), "cluster"),
    (1024, 8, torch.float32, (9, 0), "cluster"),  # split weights: 32 rows in registers, 32 in shared memory
    # split weights at 2 samples (the first pass's rows to column 768 in registers): one wave of
    # 8 clusters; at B = 32 one wave of 8 four-sample clusters (test_plan_h1024_sample_tiles)
    (1024, 16, torch.float32, (9, 0), "cluster"), (1024, 32, torch.float32, (9, 0), "cluster"),
    (1024, 8, torch.float32, (8, 0), "grid"),
    # Measured on an H200 (2026-12-04, autotuning): four-sample clusters 19.7-19.9 us per step,
    # the stepwise path 23.4-27.7, the grid path 25.1-26.1 (on 2026-11-30 stepwise beat the grid)
    (1024, 128, torch.float32, (9, 0), "cluster"),
    (1024, 256, torch.float64, (9, 0), "stepwise"),  # float64: half the FMA rate, twice the W_hh bytes
    (4096, 4, torch.float32, (9, 0), "stepwise"),  # 64 MB of W_hh: beyond the chip
    (128, 32, torch.float32, (8, 0), "block"), (256, 8, torch.float32, (8, 0), "block"),
    (300, 8, torch.float32, (8, 0), "grid"),
    (512, 32, torch.float32, (8, 0), "grid"), (4096, 4, torch.float32, (8, 0), "stepwise"),
]


@pytest.mark.parametrize("hidden,batch,dtype,capability,path", PLANNED_PATHS,
                         ids=lambda v: str(v).replace("torch.", "").replace(" ", ""))
def test_plan_per_shape_dtype_and_architecture(hidden, batch, dtype, capability, path):
    simt.reset_device_properties()
    with simt.emulated_device(compute_capability=capability):
        plan = rnn_fused.plan(hidden, batch, dtype)
    assert plan.path == path, plan.reason
    assert plan.candidate("stepwise").feasible
    if capability < (9, 0):
        assert "compute capability 9.0" in plan.candidate("cluster").reason


@pytest.mark.parametrize("batch,samples,waves", [(7, 1, 1), (8, 2, 1), (16, 4, 1), (28, 4, 1), (32, 2, 3),
                                                  (64, 4, 3)])
@pytest.mark.parametrize("backward", [False, True])
def test_plan_h1024_sample_tiles(batch, samples, waves, backward):
    """H = 1024 on the H100/H200-like device: 16-CTA clusters with split weights, of which 7 fit
    at once (one CTA per SM; a cluster sits in one GPC, the device's 132 SMs 7 x 18 + 6, as the
    H200 placed them). The planner takes one sample per cluster to B = 7, two to B = 14, and to
    B = 28 four (the first pass's rows to column 640 in registers, 208 KB of shared memory with
    the norm sums) in one wave; B = 32 takes 16 two-sample clusters in 3 waves, which the model
    prices below 8 four-sample ones in 2 (the H200 measured 7.74 and 7.87 us a step); B = 64
    four-sample clusters in 3 waves (the grid path's 4 sample groups: slower in the model)."""
    simt.reset_device_properties()
    plan = rnn_fused.plan(1024, batch, backward=backward)
    assert (plan.path, plan.samples, plan.cluster, plan.waves) == ("cluster", samples, 16, waves), plan.reason
    assert plan.compiled_passes == 2 and "1 pass in registers" in plan.reason, plan.reason
    if samples == 4:
        assert "up to column 640" in plan.reason and plan.shared_mem_bytes <= 232448, plan
    for other in (2, 4):
        if other > samples:
            with launch_plan.forced_tiling(samples=other):
                tile = rnn_fused.plan(1024, batch, backward=backward, path="cluster")
            assert tile.waves <= waves and tile.predicted_us_per_step > plan.predicted_us_per_step, tile
        elif other < samples:
            with launch_plan.forced_tiling(samples=other):
                tile = rnn_fused.plan(1024, batch, backward=backward, path="cluster")
            assert tile.waves > waves and tile.predicted_us_per_step > plan.predicted_us_per_step, tile


def test_plan_computes_on_half_the_warps_where_it_saves_instructions():
    """H = 1024, B = 32 on the grid path of the H100/H200-like device: 4 sample groups x 32
    CTAs of 32 units, 8 samples per chunk. With all 8 warps computing, a lane's tile holds one
    unit x 8 samples and each warp loads every state chunk for 4 units; on warps 0-3, a tile of
    2 units x 8 samples halves those loads per multiply-add, and the model (issue term) takes
    it. At H = 128 the block path keeps its weights in registers and all 8 warps compute."""
    simt.reset_device_properties()
    grid = rnn_fused.plan(1024, 32, path="grid")
    assert (grid.path, grid.samples, grid.units_per_cta, grid.units_per_pass) == ("grid", 8, 32, 16), grid.reason
    with launch_plan.forced_tiling(units_per_pass=32):
        assert rnn_fused.plan(1024, 32, path="grid").predicted_us_per_step > grid.predicted_us_per_step
    block = rnn_fused.plan(128, 8)
    assert (block.path, block.units_per_pass) == ("block", 32) and "registers" in block.reason, block.reason
    assert rnn_fused.plan(2048, 64).candidate("stepwise").units_per_pass == 0


@pytest.mark.parametrize("hidden,dtype,held", [(128, torch.float32, "all"), (160, torch.float32, "all"),
                                               (200, torch.float32, "4 passes"), (8, torch.float64, None)])
def test_plan_keeps_weight_rows_in_registers_where_they_fit(hidden, dtype, held):
    """A lane holds its weight chunks in registers when they take at most 4 passes x 4 chunk
    iterations (64 registers): H <= 128 in float32 on the block path; past that, at one sample
    per chunk, as many whole passes as 32 chunks take (split weights: all 5 passes to H = 160,
    4 of 7 at H = 200, the others' rows in shared memory); never in float64 (it would spill),
    nor on the grid path (whose kernels have no room for them). The cluster path's CTAs of 1
    or 2 passes hold all theirs past H = 128 in float32 (cluster_rows_in_registers: H = 160 on
    3 CTAs, 200 on 16), none below."""
    with launch_plan.forced_tiling(samples=1):
        plan = rnn_fused.plan(hidden, 8, dtype, path="block")
        cluster, grid = (rnn_fused.plan(hidden, 8, dtype, path=path) for path in ("cluster", "grid"))
    if held == "all":
        assert "weight rows in registers" in plan.reason, plan.reason
        assert "the others in shared memory" not in plan.reason, plan.reason
    elif held:
        assert f"the weight rows of {held} in registers, the others in shared memory" in plan.reason, plan.reason
    else:
        assert "in registers" not in plan.reason, plan.reason
    assert "in registers" not in grid.reason, grid.reason
    if hidden > 128 and dtype == torch.float32:
        assert cluster.compiled_passes <= 2 and ", weight rows in registers" in cluster.reason, cluster.reason
    else:
        assert "in registers" not in cluster.reason, cluster.reason


def test_plan_float64_halves_what_fits():
    simt.reset_device_properties()
    assert rnn_fused.plan(224, 8).candidate("block").feasible
    block64 = rnn_fused.plan(224, 8, dtype=torch.float64).candidate("block")
    assert not block64.feasible and "shared_mem_per_block_optin" in block64.reason


def test_plan_side_by_side_takes_its_share_of_the_device():
    """side_by_side=n plans one of n recurrences that run at once (the directions of a
    bidirectional layer: 2) for 1/n of the SMs. H = 384, B = 32 on the H100/H200-like device:
    the whole device's plan takes 96 CTAs of the cluster path (16 clusters of 6), half of it at
    most 66; the
    model prices the half-device step slower, but less than twice as slow, so two such
    recurrences at once beat two one after the other. The grid path is ruled out beside
    another recurrence (every CTA of a cooperative grid must be resident at once), and where
    1/n of the SMs is none only the stepwise path is left. Each setting is planned apart."""
    simt.reset_device_properties()
    whole, half = (rnn_fused.plan(384, 32, side_by_side=n) for n in (1, 2))
    assert (whole.path, half.path) == ("cluster", "cluster")
    assert whole.grid == 96 and half.grid <= 66 * half.blocks_per_sm, (whole.reason, half.reason)
    assert whole.predicted_us_per_step < half.predicted_us_per_step < 2 * whole.predicted_us_per_step
    assert rnn_fused.plan(1024, 8).candidate("grid").feasible
    grid = rnn_fused.plan(1024, 8, side_by_side=2).candidate("grid")
    assert not grid.feasible and "planned for the whole device" in grid.reason
    with pytest.raises(ValueError, match=r"path 'grid' cannot run hidden_size=1024, batch_size=8 in float32 "
                                         r"\(forward\), one of 2 side by side, on this device"):
        rnn_fused.plan(1024, 8, path="grid", side_by_side=2)
    with simt.emulated_device(sm_count=1):
        alone = rnn_fused.plan(64, 4, side_by_side=2)
    assert alone.path == "stepwise" and "1/2 of 1 SMs is no SM" in alone.candidate("block").reason
    with pytest.raises(ValueError, match=r"side_by_side must be >= 1 \(how many recurrences run side by side on "
                                         r"the device\), got 0"):
        rnn_fused.plan(64, side_by_side=0)


@pytest.mark.parametrize("path", ["block", "cluster", None])
def test_layer_side_by_side_matches_the_reference(path):
    """A direction planned for half the device (side_by_side=2) on a 4-SM emulated device, forward
    and backward with lengths and h0, against the float64 step loop under the tolerance rule."""
    steps, batch, input_size, hidden = 5, 6, 3, 40
    lengths = torch.tensor([5, 2, 4, 0, 5, 1])
    args = layer_args(steps, batch, input_size, hidden)
    g = torch.Generator().manual_seed(11)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    cast = [None if a is None else a.to(torch.float32) for a in args]
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in cast]
    with simt.emulated_device(sm_count=4):
        plans = [rnn_fused.plan(hidden, batch, path=path, side_by_side=n) for n in (1, 2)]
        out, h_n = rnn_fused.rnn_layer(*leaves, lengths, "tanh", True, backend="emulated", path=path, side_by_side=2)
        present = [a for a in leaves if a is not None]
        grads = torch.autograd.grad((out, h_n), present, [c.to(out.dtype) for c in cotangents])
    assert plans[1].grid <= 2 * plans[1].blocks_per_sm < plans[0].grid, [p.reason for p in plans]
    ours = [out.detach(), h_n.detach(), *grads]
    reference = reference_results(args, lengths, "tanh", True, cotangents, torch.float64)
    stock = reference_results(cast, lengths, "tanh", True, cotangents, torch.float32)
    names = ["output", "h_n"] + [f"grad_{i}" for i in range(len(ours) - 2)]
    for name, r, s, o in zip(names, reference, stock, ours, strict=True):
        assert_within_tolerance(r, s, o, name=name, ulps=8)


def test_layer_backward_is_planned_side_by_side_as_its_forward():
    """Autograd hands the forward's side_by_side to the backward op, which plans with it: on a
    1-SM emulated device half the SMs is none, so both recurrences take the stepwise path (a
    product per step) where the whole device runs them in one block-path launch each."""
    steps = 6
    args = layer_args(steps, 2, 3, 8, dtype=torch.float32, hx=False)
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    products = []
    for side_by_side in (1, 2):
        with simt.emulated_device(sm_count=1):
            out, _ = rnn_fused.rnn_layer(*leaves, None, "tanh", False, backend="emulated", side_by_side=side_by_side)
            work = _device_work(lambda: torch.autograd.grad(out.sum(), leaves[3]))
        products.append(work["aten::mm"])
    assert products[0] < steps <= products[1], products


def test_plan_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="hidden_size must be positive, got 0"):
        rnn_fused.plan(0)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        rnn_fused.plan(8, 0)


def test_bad_calls_leave_the_emulated_device_usable():
    """Every bad argument is refused on the host, before a launch: the next good call runs and
    gives the result it gives without the bad calls before it."""
    args = layer_args(5, 2, 3, 4)
    g = torch.Generator().manual_seed(5)
    cotangents = [torch.randn(5, 2, 4, dtype=torch.float64, generator=g), torch.randn(2, 4, dtype=torch.float64, generator=g)]
    with simt.emulated_device(**SMALL_GPU):
        before = run_layer(args, torch.tensor([5, 3]), "tanh", False, "emulated", cotangents)
        bad_calls = [
            (dict(lengths=torch.tensor([6, 1])), ValueError, r"lengths\[0\] = 6 is outside \[0, 5\]"),
            (dict(lengths=torch.tensor([2, -1])), ValueError, r"lengths\[1\] = -1 is outside"),
            (dict(path="block", hidden=300), ValueError, "path 'block' cannot run"),
            (dict(path="warp"), ValueError, "path must be"),
            (dict(nonlinearity="gelu"), ValueError, "nonlinearity must be"),
        ]
        for bad, error, message in bad_calls:
            hidden = bad.pop("hidden", 4)
            call_args = layer_args(5, 2, 3, hidden)
            kwargs = dict(lengths=None, nonlinearity="tanh", path=None) | bad
            with pytest.raises(error, match=message):
                rnn_fused.rnn_layer(*call_args, kwargs["lengths"], kwargs["nonlinearity"], backend="emulated",
                                    path=kwargs["path"])
        after = run_layer(args, torch.tensor([5, 3]), "tanh", False, "emulated", cotangents)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
