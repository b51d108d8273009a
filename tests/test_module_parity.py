"""Parity of rnn_fused.RNN with torch.nn.RNN over a sampled grid of configurations.

The full product of options and sizes has ~40,000 cases. The grid below covers every
pair of values of any two factors at least once (greedy pairwise construction), then adds
seeded random cases up to GRID_SIZE; both steps are deterministic.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from rnn_cases import RNNCase
from rnn_fused import RNN, launch_plan
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, compare_with_torch

FACTORS = {
    "num_layers": [1, 2, 3],
    "bidirectional": [False, True],
    "bias": [False, True],
    "batch_first": [False, True],
    "nonlinearity": ["tanh", "relu"],
    "packing": ["none", "sorted", "unsorted"],
    "unbatched": [False, True],
    "with_hx": [False, True],
    "seq_len": [1, 2, 17, 64],
    "batch": [1, 3, 8],
    "input_size": [1, 5, 16],
    "hidden_size": [1, 7, 32],
}
GRID_SIZE = 150


def _valid(assignment: dict) -> bool:
    return not (assignment.get("unbatched") and assignment.get("packing", "none") != "none")


def _random_case(rng: random.Random) -> dict:
    while True:
        case = {name: rng.choice(values) for name, values in FACTORS.items()}
        if _valid(case):
            return case


def _pairs(case: dict):
    return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(FACTORS, 2)}


def sampled_grid(size: int = GRID_SIZE, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    uncovered = set()
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if _valid({a: va, b: vb}):
                uncovered.add(((a, va), (b, vb)))
    grid = []
    while uncovered:
        best = max((_random_case(rng) for _ in range(64)),
                   key=lambda case: len(_pairs(case) & uncovered))
        grid.append(best)
        uncovered -= _pairs(best)
    while len(grid) < size:
        grid.append(_random_case(rng))
    return grid


GRID = sampled_grid()


def _case_id(case: dict) -> str:
    return "-".join(f"{value}" for value in case.values())


def test_grid_covers_every_pair_of_values():
    covered = set().union(*(_pairs(case) for case in GRID))
    for a, b in itertools.combinations(FACTORS, 2):
        for va, vb in itertools.product(FACTORS[a], FACTORS[b]):
            if _valid({a: va, b: vb}):
                assert ((a, va), (b, vb)) in covered
    assert len(GRID) == GRID_SIZE


@pytest.mark.parametrize("case", GRID, ids=_case_id)
def test_float32_matches_stock_under_tolerance_rule(case, generator):
    rnn_case = RNNCase(**case)
    input, hx = rnn_case.inputs(generator)
    compare_with_torch(rnn_case.torch_module(), input, hx, dtype=torch.float32)


# Every fifth grid case: float64 parity checks the same code paths as float32 above.
@pytest.mark.parametrize("case", GRID[::5], ids=_case_id)
def test_float64_matches_stock(case, generator):
    rnn_case = RNNCase(**case)
    input, hx = rnn_case.inputs(generator)
    compare_with_torch(rnn_case.torch_module(), input, hx, dtype=torch.float64,
                       ulps=FLOAT64_PARITY_ULPS)


# Packed batches at sizes where the CPU backend's GEMMs multiply only the valid rows
# (csrc/valid_rows.h: the multiply-adds of the padding outweigh the valid rows' copies), in two
# layers, one of them bidirectional; the grid's sizes above are all smaller.
VALID_ROW_CASES = [
    dict(num_layers=2, bidirectional=True, packing="sorted", with_hx=True, seq_len=20, batch=12, input_size=192,
         hidden_size=256),
    dict(num_layers=2, nonlinearity="relu", packing="unsorted", batch_first=True, seq_len=20, batch=12, input_size=192,
         hidden_size=256),
]


def _row_gathers(module, input) -> int:
    """The valid rows' gathers (rnn_fused::gather_rows, csrc/valid_rows.h) of one forward and
    backward of module on input."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        output, h_n = module(input)
        (output.data.sum() + h_n.sum()).backward()
    return sum(1 for e in profile.events() if e.name == "rnn_fused::gather_rows")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", VALID_ROW_CASES, ids=_case_id)
def test_packed_batches_whose_gemms_take_the_valid_rows_alone_match_stock(case, dtype, generator):
    """A PackedSequence through the padded batch (RNN.packed_layout False) at sizes where the CPU's
    whole-sequence GEMMs multiply the rows of valid steps alone (their gathers run, none with every
    row forced: the route is taken) meets the tolerance rule against torch.nn.RNN, which multiplies
    only those rows too."""
    rnn_case = RNNCase(**case)
    input, hx = rnn_case.inputs(generator)
    compare_with_torch(rnn_case.torch_module(), input, hx, dtype=dtype, packed_layout=False,
                       **({"ulps": FLOAT64_PARITY_ULPS} if dtype == torch.float64 else {}))
    ours = RNN.from_torch(rnn_case.torch_module())
    ours.packed_layout = False
    with launch_plan.forced_tiling(every_row=True):
        assert _row_gathers(ours, input.float()) == 0
    assert _row_gathers(ours, input.float()) > 0
