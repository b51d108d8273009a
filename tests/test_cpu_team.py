"""The CPU time loops on torch's threads (csrc/cpu/step_team.h), split by rows (each thread runs the
whole loop for its own samples) or by units (each thread owns a slice of the hidden units and
computes its slice of every step, one barrier per step).

Each entry of a step's product is one dot product over the whole state row on any team, but BLAS
may sum it in another order for a narrower or shorter matrix (MKL does for some: H = 33 in 3 unit
slices, float64 H = 100 in 3), so the loops' last bits may change with their team, as MKL's own
GEMMs' do with torch's thread count. Hence: the same bits run to run for a given team, and the
team's values within the tolerance rule of the float64 reference, with one thread's float32
values as the stock yardstick (tools/testing.py). The tests hold torch's threads and force the
loops' own (launch_plan.forced_cpu_loop_team)."""

from __future__ import annotations

import copy

import pytest
import torch

import rnn_fused
from rnn_cases import module_outputs_and_gradients
from rnn_fused.launch_plan import cpu_loop_team, forced_cpu_loop_team
from rnn_fused.tools.testing import DEFAULT_ULPS, FLOAT64_PARITY_ULPS, assert_within_tolerance

OPS = torch.ops.rnn_fused


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


CASES = [
    # steps, batch, input, hidden, layers, bidirectional, bias, hx, lengths, nonlinearity, truncation, dtype
    (20, 8, 16, 128, 1, False, True, False, None, "tanh", None, torch.float32),
    (15, 4, 8, 129, 2, False, False, True, [15, 2, 9, 1], "tanh", 4, torch.float32),  # a short last slice
    (12, 7, 5, 100, 1, True, True, True, [12, 3, 12, 1, 7, 9, 2], "relu", rnn_fused.RandomTruncation(0.7, seed=5),
     torch.float64),
    (70, 1, 4, 256, 1, False, True, False, None, "tanh", None, torch.float32),  # one row: vector_matrix's slices
    (10, 64, 6, 33, 1, False, True, True, None, "tanh", 3, torch.float32),  # 3 blocks of 16 units, 2 then 1
    (9, 32, 40, 200, 1, True, True, False, None, "relu", None, torch.float32),
    # packed lengths from 30 down to 1: shares of equal summed steps, not of equal row counts
    (30, 16, 5, 48, 1, False, True, True, [30, 2, 27, 1, 25, 20, 3, 18, 15, 4, 12, 9, 7, 6, 5, 1], "tanh", None,
     torch.float32),
]


def _assert_team_agrees(run, module: torch.nn.Module, threads: int, split: str, names: list[str]) -> None:
    """run(module) on `threads` threads split by `split`, twice (the same bits), against one
    thread under the tolerance rule, the float64 module on one thread the reference."""
    with forced_cpu_loop_team(1):
        alone = run(module)
        reference = run(copy.deepcopy(module).double())
    with forced_cpu_loop_team(threads, split):
        on_team = run(module)
        again = run(module)
    assert len(names) == len(on_team)
    for name, a, b in zip(names, on_team, again):
        assert torch.equal(a, b), name
    ulps = FLOAT64_PARITY_ULPS if on_team[0].dtype == torch.float64 else DEFAULT_ULPS
    for name, r, s, o in zip(names, reference, alone, on_team):
        assert_within_tolerance(r, s, o, name=name, ulps=ulps)


TEAMS = [(threads, split) for threads in (2, 3) for split in ("rows", "units")]


# Every case on every team but one sample split by rows (which has nothing to share out).
CASE_TEAMS = [pytest.param(case, threads, split, id="-".join(str(v) for v in case[:10]) + f"-{threads}-{split}")
              for case in CASES for threads, split in TEAMS if split == "units" or case[1] >= 2]


@pytest.mark.parametrize("case,threads,split", CASE_TEAMS)
def test_time_loops_on_the_team(case, threads, split, restore_threads):
    """torch's team of 2 threads throughout; the loops forced to 1, 2 or 3 threads. Three on
    a team of two: one OpenMP thread owns two shares, the other one (a split by units' barrier
    counts slices)."""
    steps, batch, input_size, hidden, layers, bidirectional, bias, with_hx, lengths, nonlinearity, truncation, \
        dtype = case
    torch.set_num_threads(2)
    torch.manual_seed(0)
    module = rnn_fused.RNN(input_size, hidden, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                           bidirectional=bidirectional, truncation=truncation).to(dtype)
    module.side_by_side = False  # each direction's loops on the team, not the two directions at once
    x = torch.randn(steps, batch, input_size, dtype=dtype)
    directions = 2 if bidirectional else 1
    hx = torch.randn(directions * layers, batch, hidden, dtype=dtype) if with_hx else None
    lengths = None if lengths is None else torch.tensor(lengths)
    with forced_cpu_loop_team(threads, split):
        assert cpu_loop_team(steps, batch, hidden) == (min(threads, batch) if split == "rows" else threads, split)

    def run(m):
        to = next(m.parameters()).dtype
        return module_outputs_and_gradients(m, x.to(to), None if hx is None else hx.to(to), lengths)

    names = ["output", "h_n", "grad input"] + (["grad hx"] if with_hx else []) + \
        [f"grad {n}" for n, _ in module.named_parameters()]
    _assert_team_agrees(run, module, threads, split, names)


@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("lengths,empty", [([11, 0, 4, 11, 0, 7], [1, 4]), ([11, 11, 7, 4, 0, 0], [4, 5])],
                         ids=["unsorted", "non-increasing"])
def test_zero_lengths_on_the_team(split, lengths, empty, restore_threads):
    """A sample of length 0 keeps h_0 and gets zero gradients but for grad hx, on the team as on
    one thread (rnn_layer directly: a packed sequence cannot hold an empty sample). Non-increasing
    lengths take finished samples out of each step's product and balance a split by rows by them."""
    torch.manual_seed(1)
    T, B, I, H = 11, 6, 5, 112
    x = torch.randn(T, B, I)
    hx = torch.randn(B, H)
    weights = [torch.randn(H, I) / H**0.5, torch.randn(H, H) / H**0.5, torch.randn(H), torch.randn(H)]
    lengths = torch.tensor(lengths)
    torch.set_num_threads(2)

    def run(dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, hx, *weights)]
        out, h_n = rnn_fused.rnn_layer(*leaves[:2], *leaves[2:], lengths=lengths)
        return [out, h_n, *torch.autograd.grad(out.sin().sum() + h_n.square().sum(), leaves)]

    with forced_cpu_loop_team(1):
        alone, reference = run(torch.float32), run(torch.float64)
    with forced_cpu_loop_team(2, split):
        on_team = run(torch.float32)
    names = ["output", "h_n", "grad input", "grad hx", "grad weight_ih", "grad weight_hh", "grad bias_ih",
             "grad bias_hh"]
    for name, r, s, o in zip(names, reference, alone, on_team):
        assert_within_tolerance(r, s, o, name=name)
    out, h_n, grad_x, grad_hx = on_team[:4]
    for b in empty:
        assert torch.equal(h_n[b], hx[b])
        assert not out[:, b].any() and not grad_x[:, b].any()
        assert torch.equal(grad_hx[b], 2 * hx[b])


@pytest.mark.parametrize("threads,split", TEAMS)
def test_recorded_norms_on_the_team(threads, split, restore_threads):
    """Recorded norms with both loops on the team: by units each thread sums g^2 over its units,
    and after the step's barrier the first slice's thread adds the threads' sums in slice order; by
    rows each thread sums its samples' whole rows. The values, step norms and gradients within the
    tolerance rule of the float64 module's, one thread's as the yardstick (on one thread a step's
    norm is its row's own sum, as before); each run's parameters' squared norms (float64 sums) those
    of its own gradients, within float64 rounding."""
    torch.manual_seed(3)
    module = rnn_fused.RNN(7, 129, num_layers=2, truncation=rnn_fused.RandomTruncation(0.8, seed=4))
    x = torch.randn(25, 8, 7)
    torch.set_num_threads(2)

    def run(m):
        m.zero_grad(set_to_none=True)
        with rnn_fused.record_gradients(m) as recorder:
            out, h_n = m(x.to(next(m.parameters()).dtype))
            (out.square().sum() + h_n.sum()).backward()
        assert recorder.parameter_sq_norms.keys() == dict(m.named_parameters()).keys()
        for name, p in m.named_parameters():
            exact = p.grad.double().square().sum()
            assert_within_tolerance(exact, exact, recorder.parameter_sq_norms[name], name=f"sq norm {name}",
                                    ulps=FLOAT64_PARITY_ULPS)
        return [out, h_n, recorder.step_norms, *[p.grad for p in m.parameters()]]

    names = ["output", "h_n", "step norms"] + [f"grad {n}" for n, _ in module.named_parameters()]
    _assert_team_agrees(run, module, threads, split, names)


@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("steps", [8, 9])
def test_each_thread_copies_its_weights_once(split, steps, restore_threads):
    """Each thread of a team copies the W_hh it multiplies once per loop (csrc/cpu/blas.h
    StepWeights): the forward's rows of its units transposed, from 8 steps; the backward's columns
    of its units contiguous, from 8 products (T - 1), only where they are a slice (split by
    units: rows H apart otherwise)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    module = rnn_fused.RNN(3, 64)
    x = torch.randn(steps, 8, 3, requires_grad=True)

    def copies(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            result = fn()
        return result, sum(1 for e in profile.events() if e.name == "rnn_fused::copy_step_weights")

    with forced_cpu_loop_team(2, split):
        (out, _), forward_copies = copies(lambda: module(x))
        _, backward_copies = copies(lambda: out.sum().backward())
    assert forward_copies == 2
    assert backward_copies == (2 if split == "units" and steps - 1 >= 8 else 0)


def test_row_shares_hold_equal_summed_steps():
    """A split by rows gives each thread about the same sum of its samples' lengths (a packed
    batch's rows run from the longest sample to the shortest), never an empty share; equal row
    counts where the lengths are all equal."""
    shares = OPS.cpu_row_shares
    assert shares([5] * 8, 2) == [0, 4, 8]
    assert shares([5] * 7, 3) == [0, 2, 4, 7]
    assert shares([0] * 4, 2) == [0, 2, 4]
    assert shares(list(range(10, 0, -1)), 2) == [0, 3, 10]  # 27 and 28 steps
    assert shares(list(range(9, 0, -1)), 3) == [0, 2, 4, 9]  # 17, 13 and 15: no split does better than 17
    assert shares([100] + [1] * 9, 2) == [0, 1, 10]
    assert shares([100, 0, 0, 0], 3) == [0, 1, 2, 4]  # one row at least per share
    assert shares([3, 2, 2, 1], 1) == [0, 4]
    assert shares([9, 9] + [1] * 6, 2) == [0, 1, 8]  # 9 against 15 (a row more: 18 against 6)
    for lengths in ([7, 7, 6, 6, 6, 5, 3, 3, 2, 1, 1, 1], [64] * 3 + list(range(40, 0, -3))):
        for threads in (2, 3, 4):
            starts = shares(lengths, threads)
            sums = [sum(lengths[a:b]) for a, b in zip(starts, starts[1:])]
            # Each boundary within one row of the sum's exact share.
            assert all(b > a for a, b in zip(starts, starts[1:])), starts
            assert max(sums) - min(sums) <= 2 * max(lengths), (starts, sums)
    with pytest.raises(ValueError, match=r"threads must be in \[1, 3\] \(one row at least per share\), got 4"):
        shares([1, 2, 3], 4)
    with pytest.raises(ValueError, match="row_steps must be >= 0, got -1"):
        shares([1, -1], 2)


def test_which_team_runs_a_loop(restore_threads):
    torch.set_num_threads(2)
    assert cpu_loop_team(1000, 8, 64) == (2, "rows")  # 4 samples per thread
    assert cpu_loop_team(10, 8, 64) == (2, "rows")  # 2^18 multiply-adds in the loop: the threshold
    assert cpu_loop_team(5, 8, 64) == (1, "none")  # below it
    assert cpu_loop_team(1000, 4096, 16) == (2, "rows")
    assert cpu_loop_team(1000, 4, 128) == (2, "units")  # 2^16 multiply-adds per step: the threshold
    assert cpu_loop_team(1000, 3, 128) == (1, "none")  # below it
    assert cpu_loop_team(1000, 1, 256) == (2, "units")
    assert cpu_loop_team(1000, 64, 512) == (2, "units")  # W_hh beyond a core's L2: each thread its rows of it
    assert cpu_loop_team(1000, 0, 512) == (1, "none")
    torch.set_num_threads(8)
    assert cpu_loop_team(1000, 8, 128) == (2, "rows")  # at least 4 samples per thread
    assert cpu_loop_team(1000, 64, 256) == (8, "rows")
    assert cpu_loop_team(1000, 4, 128) == (2, "units")  # at least 2^15 multiply-adds per slice
    assert cpu_loop_team(1000, 64, 1024) == (8, "units")
    assert cpu_loop_team(1000, 7, 40) == (1, "none")
    assert cpu_loop_team(1000, 4, 1024) == (8, "units")
    assert cpu_loop_team(1000, 4, 100) == (1, "none")  # a step of 40000 multiply-adds
    torch.set_num_threads(1)
    assert cpu_loop_team(1000, 64, 1024) == (1, "none")
    torch.set_num_threads(2)
    with forced_cpu_loop_team(5):  # any size; at most one thread per sample or per block of 16 units
        assert cpu_loop_team(3, 1, 64) == (4, "units")
        assert cpu_loop_team(3, 1, 8) == (1, "none")
        assert cpu_loop_team(3, 16, 8) == (5, "rows")
    with forced_cpu_loop_team(5, "rows"):
        assert cpu_loop_team(3, 3, 64) == (3, "rows")
    with forced_cpu_loop_team(3, "units"):
        assert cpu_loop_team(3, 64, 64) == (3, "units")
    assert cpu_loop_team(3, 1, 64) == (1, "none")  # restored
    with pytest.raises(ValueError, match="steps, batch and hidden must be >= 0, got -1, 1 and 64"):
        OPS.cpu_loop_team(-1, 1, 64)
    with pytest.raises(ValueError, match=r"threads must be >= 0 \(0: the loops' own choice\), got -2"):
        OPS.set_cpu_loop_team(-2)
    with pytest.raises(ValueError, match="split must be 'rows', 'units' or '' \\(the loops' own choice\\), got 'cols'"):
        OPS.set_cpu_loop_team(2, "cols")
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=f"threads must be an int >= 1, got {bad!r}"):
            with forced_cpu_loop_team(bad):
                pass
    with pytest.raises(ValueError, match="split must be 'rows', 'units' or None .* got 'cols'"):
        with forced_cpu_loop_team(2, "cols"):
            pass
    assert OPS.set_cpu_loop_team(0) == (0, "")  # nothing left forced
