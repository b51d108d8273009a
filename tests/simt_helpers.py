"""What the emulator's own tests share (tests/test_simt.py, tests/test_simt_cluster.py): the
error-message patterns, the skip marker for CUDA-only checks, a fresh emulated device per
test, and the run-under-every-schedule check."""

from __future__ import annotations

import pytest
import torch

from rnn_fused import simt

KERNEL_SITE = r"selftest_kernels\.cuh:\d+"
LAUNCH_SITE = r"selftest_launch\.h:\d+"
COORDS = r"block \(\d+,\d+,\d+\) thread \(\d+,\d+,\d+\)"

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


@pytest.fixture(autouse=True)
def fresh_emulator():
    """Every test starts from the default device and forward schedule, and leaves them so."""
    simt.reset_device_properties()
    with simt.schedule("forward"):
        yield
    simt.reset_device_properties()


def each_schedule(run):
    """run() under every schedule; asserts the results (a tensor or a tuple of them) are
    bitwise equal; returns the forward schedule's."""
    results = []
    for mode, seed in simt.ALL_SCHEDULES:
        with simt.schedule(mode, seed):
            out = run()
        results.append(out if isinstance(out, tuple) else (out,))
    first = results[0]
    for (mode, seed), other in zip(simt.ALL_SCHEDULES[1:], results[1:]):
        for a, b in zip(first, other):
            assert torch.equal(a, b), f"result under schedule {mode}/{seed} differs from forward"
    return first if len(first) > 1 else first[0]
