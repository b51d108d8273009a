"""Results of the op pair are bitwise equal to stored ones: refactors must not move a bit.

tests/data/stored_layer_results.json holds SHA-256 digests of every result of the op pair
(forward: output, h_n; backward: the five gradients, step norms, squared norms, flag) for
24 configurations (dtypes float32/float64/bfloat16, tanh/relu, both directions, lengths with
empty samples, hx and biases present or not, full / K / randomized / K + randomized
truncation, norms recorded or not), on the CPU backend and through the emulated CUDA
kernels on each recurrence path (2-SM emulated device). The inputs are drawn again here from
the same seeds. The CPU digests date from the forward that multiplies by W_hh as stored (BLAS
transposes it; a transposed copy only for 64 or more one-row steps), whose products round
differently from the copy's at small batches;
the emulated ones from the rewrite of the GPU kernels into block/grid/stepwise paths, whose
new summation order (8-lane dot products, a fixed reduce-scatter) changed their rounding, and
the emulated float64 step norms from the CTA's sums of g^2 in 8 partial sums
(cta_sample_sum, 2026-12-03).

Bitwise equality needs the same BLAS code path: the stored digests name the CPU capability
they were made on (torch.backends.cpu.get_cpu_capability()) and the test runs single-threaded,
as they were made. On another capability the test skips and says so.

When a change of the kernels' arithmetic is intended (a new summation order), regenerate the
file with `python tests/test_stored_results.py --write` and say why in the commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import sys

import pytest
import torch

from rnn_fused import _ops, simt
from rnn_fused.truncation import TruncationArgs

STORED = os.path.join(os.path.dirname(__file__), "data", "stored_layer_results.json")
EMULATED_PATHS = ("block", "cluster", "grid", "stepwise")
DTYPES = {"torch.float32": torch.float32, "torch.float64": torch.float64, "torch.bfloat16": torch.bfloat16}


def cases():
    shapes = [(7, 5, 3, 6), (6, 9, 4, 33)]
    lengths_by_batch = {5: [None, [7, 0, 3, 7, 5]], 9: [None, [6, 6, 4, 2, 2, 1, 1, 0, 0]]}
    truncations = [TruncationArgs(), TruncationArgs(2, 1.0, 0), TruncationArgs(0, 0.7, 5), TruncationArgs(3, 0.6, 11)]
    combos = itertools.product(shapes, DTYPES, ["tanh", "relu"], [False, True])
    for i, ((steps, batch, input_size, hidden), dtype, nonlinearity, reverse) in enumerate(combos):
        yield dict(T=steps, B=batch, I=input_size, H=hidden, dtype=dtype, act=nonlinearity, reverse=reverse,
                   lengths=lengths_by_batch[batch][i % 2], hx=i % 3 != 0, bias=i % 4 != 1, trunc=truncations[i % 4],
                   record=i % 2 == 0, layer=i % 3)


def inputs(case, seed):
    generator = torch.Generator().manual_seed(seed)
    dtype = DTYPES[case["dtype"]]

    def draw(*shape):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * 0.5).to(dtype)

    steps, batch, input_size, hidden = case["T"], case["B"], case["I"], case["H"]
    x = draw(steps, batch, input_size)
    hx = draw(batch, hidden) if case["hx"] else None
    w_ih, w_hh = draw(hidden, input_size), draw(hidden, hidden)
    b_ih = draw(hidden) if case["bias"] else None
    b_hh = draw(hidden) if case["bias"] else None
    lengths = None if case["lengths"] is None else torch.tensor(case["lengths"])
    layer_inputs = _ops.LayerInputs(x, hx, w_ih, w_hh, b_ih, b_hh, lengths)
    return layer_inputs, draw(steps, batch, hidden), draw(batch, hidden)


def run(case, layer_inputs, grad_output, grad_h_n, backend, path=None):
    options = _ops.LayerOptions.make(case["act"], case["reverse"], case["trunc"], case["layer"], backend, path)
    out, h_n = _ops.layer_forward(layer_inputs, options)
    mask = [True, layer_inputs.hx is not None, True, True, True]
    backward = _ops.layer_backward(grad_output, grad_h_n, out, mask, case["record"], layer_inputs, options)
    return [out, h_n, *backward]


def digest(t: torch.Tensor) -> list:
    t = t.detach().contiguous()
    data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return [str(t.dtype), list(t.shape), hashlib.sha256(data).hexdigest()]


@contextlib.contextmanager
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def all_digests():
    records = []
    with single_thread():
        for seed, case in enumerate(cases()):
            args = inputs(case, seed)
            results = {"cpu": [digest(t) for t in run(case, *args, "cpu")]}
            with simt.emulated_device(sm_count=2):
                for path in EMULATED_PATHS:
                    results["emulated-" + path] = [digest(t) for t in run(case, *args, "emulated", path)]
            records.append(dict(case={k: str(v) if k == "trunc" else v for k, v in case.items()}, seed=seed,
                                results=results))
    return records


def stored():
    with open(STORED) as f:
        return json.load(f)


def test_results_are_bitwise_equal_to_the_stored_ones():
    data = stored()
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != data["meta"]["cpu_capability"]:
        pytest.skip(f"the stored digests were made with the {data['meta']['cpu_capability']} BLAS code path; "
                    f"this machine runs {capability}, whose float rounding may differ")
    now = all_digests()
    assert len(now) == len(data["records"])
    mismatches = []
    for then, current in zip(data["records"], now):
        assert then["seed"] == current["seed"]
        for backend, expected in then["results"].items():
            for index, (want, got) in enumerate(zip(expected, current["results"][backend])):
                if want != got:
                    mismatches.append(f"case {then['seed']} ({then['case']}), {backend}, result {index}: "
                                      f"stored {want}, now {got}")
    assert not mismatches, "\n".join(mismatches[:20]) + f"\n({len(mismatches)} mismatches)"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    meta = dict(cpu_from="the forward's products on W_hh as stored", emulated_from="the block/grid/stepwise kernels",
                cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=1, torch=torch.__version__)
    with open(STORED, "w") as f:
        json.dump(dict(meta=meta, records=all_digests()), f, indent=1)
