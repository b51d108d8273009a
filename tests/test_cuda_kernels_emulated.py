"""The CUDA backend's kernels and launch planner, executed on the CPU by the SIMT emulator.

Backend "emulated" of the op pair runs the exact sources of csrc/cuda/ (kernels and host
launch code) on CPU tensors. The emulated device is small (2-4 SMs) so grid-wide
barriers span several blocks; some configurations force the per-step fallback; hidden
sizes are not multiples of the planner's tile. Sizes stay small: every emulated CUDA
thread is a fiber.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import rnn_fused
from rnn_fused import simt
from rnn_fused.modules import RNN
from rnn_fused.reference import reference_layer
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance, compare_with_torch

from rnn_cases import RNNCase, layer_args

OPS = torch.ops.rnn_fused

SMALL_GPU = dict(sm_count=2)
# Cooperative launch unavailable: the planner must take the per-step path.
NO_COOPERATIVE = dict(sm_count=2, cooperative_launch=False)
# Shared memory too small for any W_hh slice of the sizes below (>= 4 rows of >= 7 floats).
TINY_SHARED = dict(sm_count=4, shared_mem_per_block=64, shared_mem_per_block_optin=64, shared_mem_per_sm=4096)
DEVICES = {"2sm": SMALL_GPU, "4sm": dict(sm_count=4), "no_coop": NO_COOPERATIVE, "tiny_smem": TINY_SHARED}


def run_layer(args, lengths, nonlinearity, reverse, backend, cotangents):
    """Forward and backward of one layer; returns [output, h_n, *grads of present args]."""
    leaves = [None if a is None else a.detach().clone().requires_grad_() for a in args]
    out, h_n = rnn_fused.rnn_layer(*leaves, lengths, nonlinearity, reverse, backend=backend)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, [c.to(out.dtype) for c in cotangents])
    return [out.detach(), h_n.detach(), *grads]


def reference_results(args, lengths, nonlinearity, reverse, cotangents, dtype):
    leaves = [None if a is None else a.detach().to(dtype).requires_grad_() for a in args]
    out, h_n = reference_layer(*leaves, lengths, nonlinearity, reverse)
    present = [a for a in leaves if a is not None]
    grads = torch.autograd.grad((out, h_n), present, [c.to(dtype) for c in cotangents])
    return [out.detach(), h_n.detach(), *grads]


# steps, batch, input, hidden, nonlinearity, reverse, bias, hx, lengths
LAYER_CASES = [
    (5, 3, 4, 7, "tanh", False, True, True, [5, 2, 4]),
    (5, 3, 4, 7, "tanh", True, True, True, [5, 2, 4]),
    (6, 4, 3, 33, "relu", False, False, False, [2, 6, 0, 4]),   # unsorted, an empty sample
    (6, 4, 3, 33, "tanh", True, True, False, [6, 5, 3, 1]),     # packed (sorted) order
    (4, 2, 5, 100, "tanh", False, True, True, None),
    (3, 1, 2, 1, "relu", True, True, True, None),
]


def _case_id(case):
    return "-".join(str(v) for v in case).replace(" ", "")


@pytest.mark.parametrize("device", list(DEVICES), ids=list(DEVICES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=_case_id)
def test_layer_matches_reference_under_every_schedule(case, dtype, device):
    """Emulated CUDA kernels vs the float64 step loop (tolerance rule, stock = step loop in
    dtype) and vs the CPU backend; bitwise-equal results under every emulator schedule."""
    steps, batch, input_size, hidden, nonlinearity, reverse, bias, hx, lengths = case
    lengths = None if lengths is None else torch.tensor(lengths)
    args = layer_args(steps, batch, input_size, hidden, bias=bias, hx=hx)
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(steps, batch, hidden, dtype=torch.float64, generator=g),
                  torch.randn(batch, hidden, dtype=torch.float64, generator=g)]
    cast = [None if a is None else a.to(dtype) for a in args]
    with simt.emulated_device(**DEVICES[device]):
        runs = []
        for mode, seed in simt.ALL_SCHEDULES:
            with simt.schedule(mode, seed):
                runs.append(run_layer(cast, lengths, nonlinearity, reverse, "emulated", cotangents))
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
def test_persistent_and_fallback_paths_agree_bitwise(hidden):
    """Both paths share one step body, so they round identically."""
    args = layer_args(5, 3, 4, hidden, dtype=torch.float32)
    lengths = torch.tensor([5, 1, 3])
    g = torch.Generator().manual_seed(3)
    cotangents = [torch.randn(5, 3, hidden, generator=g), torch.randn(3, hidden, generator=g)]
    results = {}
    for device in ("2sm", "no_coop", "tiny_smem"):
        with simt.emulated_device(**DEVICES[device]):
            results[device] = (rnn_fused.plan(hidden).path,
                               run_layer(args, lengths, "tanh", True, "emulated", cotangents))
    assert [results[d][0] for d in ("2sm", "no_coop", "tiny_smem")] == ["persistent", "fallback", "fallback"]
    for device in ("no_coop", "tiny_smem"):
        for a, b in zip(results["2sm"][1], results[device][1]):
            assert torch.equal(a, b)


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
]


@pytest.mark.parametrize("device", ["2sm", "4sm", "tiny_smem"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(MODULE_CASES)))
def test_module_matches_nn_rnn(case, dtype, device, monkeypatch, generator):
    """rnn_fused.RNN on the emulated CUDA kernels vs torch.nn.RNN (tolerance rule)."""
    rnn_case = MODULE_CASES[case]
    input, hx = rnn_case.inputs(generator)
    monkeypatch.setattr(RNN, "backend", "emulated")
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else 8
    with simt.emulated_device(**DEVICES[device]):
        compare_with_torch(rnn_case.torch_module(), input, hx, dtype=dtype, ulps=ulps)


@pytest.mark.parametrize("device", ["2sm", "no_coop"])
@pytest.mark.parametrize("nonlinearity,reverse,bias,hx,lengths", [
    ("tanh", False, True, True, [4, 2, 0]),
    ("tanh", True, False, False, None),
    ("relu", True, True, True, [1, 4, 3]),
])
def test_gradcheck_through_emulated_kernels(nonlinearity, reverse, bias, hx, lengths, device):
    args = layer_args(4, 3, 2, 6, bias=bias, hx=hx)
    lengths = None if lengths is None else torch.tensor(lengths)
    present = [a.requires_grad_() for a in args if a is not None]

    def layer(*tensors):
        it = iter(tensors)
        full = [next(it) if a is not None else None for a in args]
        return rnn_fused.rnn_layer(*full, lengths, nonlinearity, reverse, backend="emulated")

    with simt.emulated_device(**DEVICES[device]):
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


# ---- launch planner ----

def test_plan_small_gpu_spans_several_blocks():
    with simt.emulated_device(**SMALL_GPU):
        plan = rnn_fused.plan(33)
    assert plan.path == "persistent"
    # 9 blocks of 4 units would need 5 per SM, registers allow 4 (64 per thread): so 8 blocks
    # at most, tiles of 5 units, 7 blocks, the last one holding 3 units.
    assert plan.blocks_per_sm == 4
    assert (plan.grid, plan.units_per_block, plan.block_threads) == (7, 5, 256)
    assert plan.shared_mem_bytes == 5 * 33 * 4
    assert plan.grid > 2 and plan.blocks_per_sm * 2 >= plan.grid
    assert "co-resident" in plan.reason


def test_plan_takes_bigger_slices_when_blocks_per_sm_are_few():
    with simt.emulated_device(sm_count=2, max_blocks_per_sm=1):
        plan = rnn_fused.plan(100, dtype=torch.float64, backward=True)
    assert plan.path == "persistent"
    assert (plan.grid, plan.units_per_block, plan.shared_mem_bytes) == (2, 50, 50 * 100 * 8)


@pytest.mark.parametrize("device,why", [("no_coop", "does not support cooperative launch"),
                                        ("tiny_smem", "does not stay on chip")])
def test_plan_falls_back_with_reason(device, why):
    with simt.emulated_device(**DEVICES[device]):
        plan = rnn_fused.plan(33)
    assert plan.path == "fallback" and why in plan.reason
    assert (plan.grid, plan.units_per_block, plan.shared_mem_bytes) == (5, 8, 0)


def test_plan_h100_like_device_keeps_h1024_float32_on_chip():
    """The default emulated device resembles an H100 (132 SMs, 227 KB shared per block)."""
    simt.reset_device_properties()
    for hidden, backward in itertools.product([128, 256, 512, 1024], [False, True]):
        plan = rnn_fused.plan(hidden, backward=backward)
        assert plan.path == "persistent", plan.reason
        assert plan.grid * plan.units_per_block >= hidden > (plan.grid - 1) * plan.units_per_block
    # W_hh of H = 4096 in float32 is 64 MB, beyond the chip's 132 x 228 KB.
    assert rnn_fused.plan(4096).path == "fallback"


def test_plan_rejects_non_positive_hidden():
    with pytest.raises(ValueError, match="hidden_size must be positive, got 0"):
        rnn_fused.plan(0)
