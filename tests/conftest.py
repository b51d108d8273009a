"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch
import torch._functorch.config
import torch._inductor.config

# Compiled graphs are cached on disk keyed by Python source, not by the C++ op schemas
# they call: after a schema change a cached graph would call the op with stale arguments.
torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global RNG state, so results do not depend on order."""
    torch.manual_seed(0)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def stack_launches(monkeypatch):
    """The inputs' shapes of every layer stack run in one launch (functional._LayerStack) while
    the test runs, in order."""
    from rnn_fused import functional

    launches = []
    real = functional._LayerStack.apply

    def counting(*args):
        launches.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(functional._LayerStack, "apply", counting)
    return launches
