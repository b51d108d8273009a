"""Differential fuzz: rnn_fused.RNN against torch.nn.RNN over random tiny configurations."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rnn_cases import RNNCase
from rnn_fused.tools.testing import DEFAULT_ULPS, FLOAT64_PARITY_ULPS, compare_with_torch


@st.composite
def rnn_cases(draw):
    unbatched = draw(st.booleans())
    packing = "none" if unbatched else draw(st.sampled_from(["none", "sorted", "unsorted"]))
    # Batch 0 cannot be packed (pack_padded_sequence needs a sample).
    min_batch = 1 if packing != "none" else 0
    return RNNCase(
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        packing=packing,
        unbatched=unbatched,
        with_hx=draw(st.booleans()),
        seq_len=draw(st.integers(1, 6)),
        batch=draw(st.integers(min_batch, 4)),
        input_size=draw(st.integers(1, 4)),
        hidden_size=draw(st.integers(1, 5)),
    )


@settings(max_examples=300, deadline=None, derandomize=True)
@given(case=rnn_cases(), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_matches_torch_rnn(case, seed, dtype):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    input, hx = case.inputs(generator)
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else DEFAULT_ULPS
    compare_with_torch(case.torch_module(), input, hx, dtype=dtype, seed=seed, ulps=ulps)
