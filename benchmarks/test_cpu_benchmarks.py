"""pytest-benchmark suites: nn.RNN and rnn_fused.RNN at the CPU benchmark shapes.

Run with `.venv/bin/python -m pytest benchmarks --benchmark-enable` (not part of `make test`);
compare groups with `--benchmark-group-by=param:shape,param:pass_`.
"""

from __future__ import annotations

import pytest
import torch

from rnn_fused.tools.benchmark import CPU_SHAPES, build_pair, forward_backward_fn, forward_fn


@pytest.fixture(autouse=True)
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("impl", ["torch", "rnn_fused"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rnn_cpu(benchmark, impl, pass_, shape):
    stock, ours, x, grad_out = build_pair(shape, torch.device("cpu"), torch.float32)
    module = stock if impl == "torch" else ours
    fn = forward_backward_fn(module, x, grad_out) if pass_ == "fwd+bwd" else forward_fn(module, x)
    benchmark.group = f"{shape} {pass_}"
    benchmark(fn)
