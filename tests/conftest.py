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
