"""AddressSanitizer checks of the SIMT emulator; run by `make sanitize` only.

`make sanitize` builds an ASan-instrumented copy of the extension (RNN_FUSED_SANITIZE=1)
in build/sanitize and runs tests/test_simt.py there (good kernels must run clean: any
ASan report aborts the run) plus this file, which asserts that out-of-bounds shared
memory accesses in a kernel (also through distributed shared memory, into another block of
a cluster) and accesses to an exited block's shared memory produce an ASan report. Each bad kernel runs in a child
process because ASan aborts the process it reports in.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("RNN_FUSED_SANITIZER_RUN") != "1",
    reason="AddressSanitizer checks run only under `make sanitize` (ASan build + LD_PRELOAD of libasan)",
)


def test_extension_is_asan_instrumented():
    import rnn_fused

    with open(rnn_fused._C.__file__, "rb") as f:
        image = f.read()
    assert b"__asan_report_store4" in image, f"{rnn_fused._C.__file__} is not an ASan build"
    assert b"__sanitizer_start_switch_fiber" in image, "fiber switches are not annotated for ASan"


# A self-test kernel's frame in the report: its name, qualified by its namespaces where the
# symbolizer gives them (the kernels have external linkage: csrc/simt/simt_types.h).
KERNEL = r"(?:rnn_fused::simt_selftest::emulated::)?"


@pytest.mark.parametrize(
    "fault,access",
    [("shared_out_of_bounds", "WRITE of size 4"), ("dynamic_shared_out_of_bounds", "READ of size 4")],
)
def test_shared_memory_out_of_bounds_is_reported(fault, access):
    report = asan_report(f"simt_selftest.faulty({fault!r}, torch.ones(64), 1, 64)", "heap-buffer-overflow")
    assert access in report, report
    # The emulated shared array is 64 floats; the access is the element just past it,
    # made from the kernel body.
    assert re.search(r"0 bytes (after|to the right of) 256-byte region", report), report
    assert re.search(rf"SUMMARY: AddressSanitizer: heap-buffer-overflow .*selftest_kernels\.cuh:\d+ in "
                     rf"{KERNEL}faulty_kernel\b", report), report
    assert "allocate_shared" in report, report  # the region is the emulator's shared memory


def asan_report(statement: str, error: str) -> str:
    """Runs `statement` (a faulty self-test kernel; torch, simt and simt_selftest imported) in a
    child process, asserts that AddressSanitizer stopped it with `error`, returns the report."""
    code = ("import torch\nfrom rnn_fused import simt\nfrom rnn_fused.tools import simt_selftest\n"
            f"{statement}\nprint('NO ASAN REPORT')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))
    report = proc.stderr
    assert proc.returncode != 0, f"the faulty kernel ran to completion:\n{proc.stdout}\n{report}"
    assert f"ERROR: AddressSanitizer: {error}" in report, report
    return report


def test_distributed_shared_memory_out_of_bounds_is_reported():
    # Each block's shared memory is its own allocation, so a mapped pointer into another
    # block of the cluster is bounds-checked like the block's own shared memory.
    report = asan_report("simt_selftest.faulty_cluster('remote_shared_out_of_bounds', torch.ones(64), 16, 2)",
                         "heap-buffer-overflow")
    assert "WRITE of size 4" in report, report
    # The dynamic shared memory is [2, n] floats, n = 2 blocks x 16 threads: 256 bytes.
    assert re.search(r"0 bytes (after|to the right of) 256-byte region", report), report
    assert re.search(rf"SUMMARY: AddressSanitizer: heap-buffer-overflow .*selftest_kernels\.cuh:\d+ in "
                     rf"{KERNEL}faulty_cluster_kernel\b", report), report
    assert "allocate_shared" in report, report


def test_access_to_an_exited_blocks_shared_memory_is_reported():
    # Rank 0 mapped rank 1's shared memory before the last cluster_sync and writes through it
    # afterwards; under the reverse schedule rank 1 has exited by then.
    report = asan_report("with simt.schedule('reverse'):\n"
                         "    simt_selftest.faulty_cluster('stale_remote_access', torch.ones(64), 16, 2)",
                         "use-after-poison")
    assert re.search(rf"SUMMARY: AddressSanitizer: use-after-poison .*selftest_kernels\.cuh:\d+ in "
                     rf"{KERNEL}faulty_cluster_kernel\b", report), report
