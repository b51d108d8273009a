"""Results of the op pair are bitwise equal to stored ones: refactors must not move a bit.

tests/data/stored_layer_results.json holds SHA-256 digests of every result of the op pair
(forward: output, h_n; backward: the five gradients, step norms, squared norms, flag) for
24 configurations (dtypes float32/float64/bfloat16, tanh/relu, both directions, lengths with
empty samples, hx and biases present or not, full / K / randomized / K + randomized
truncation, norms recorded or not), on the CPU backend and through the emulated CUDA
kernels on each recurrence path (2-SM emulated device). The inputs are drawn again here from
the same seeds. The CPU digests date from the forward that multiplies by W_hh as stored (BLAS
transposes it; a transposed copy only for 64 or more one-row steps), whose products round
differently from the copy's at small batches; since 2026-12-07 a loop of 8 steps or more
multiplies by the copy (csrc/cpu/blas.h StepWeights), and every case here has T = 7, so none moved;
the emulated ones from the rewrite of the GPU kernels into block/grid/stepwise paths, whose
new summation order (8-lane dot products, a fixed reduce-scatter) changed their rounding, and
the emulated float64 step norms from the CTA's sums of g^2 in 8 partial sums
(cta_sample_sum, 2026-12-03).

Bitwise equality needs the same BLAS and ATen code paths on every machine: MKL picks its
branch by processor, not only by instruction set (on 2026-12-03 a Sapphire Rapids machine and
the machine the digests had been made on, both "AVX512" to ATen, differed in 493 of 1200
results, the products of the input projection among them). So the digests are computed in a
child process with the paths pinned (PINNED_ENV): MKL's AVX2 code (MKL_ENABLE_INSTRUCTIONS)
with conditional numerical reproducibility on that branch (MKL_CBWR=AVX2,STRICT: the same bits
on any processor with AVX2; the branch also decided the float64 step norms of the emulated
paths here, whose square roots ATen takes), ATen's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2),
one thread. Where that cannot hold (no MKL in torch, or no AVX2) the test skips and says why.
The file was regenerated so on 2026-12-03 from commit 38f5856's arithmetic, which matched the
digests before on the machine they were made on (its CI run passed). Pinned, the branch still
depends on the processor's vendor: on 2026-12-04 an AMD EPYC gave other digests than that Intel
machine for every backend, the CPU's and float64 included (MKL's AVX2 code is not the same
there). The digests carry the vendor they were made on, and on another vendor the test skips and
says so. Regenerated on 2026-12-04 on the AMD EPYC, with the block path's lane-row step (float32,
H <= 128: its own summation order) in the emulated block results; again that night for dW_hh's
balanced chunks (csrc/outer_product_chunks.h: another summation order of grad_weight_hh, and so
of the squared norms; no other result moved), and on 2026-12-05 for dW_hh's sums of at most 64
rows in one product (kOneProductRows: every case here has T = 7; grad_weight_hh and the squared
norms moved, nothing else); later that day for the block kernel's own projection of a short
input (elman_forward_kernel.cuh project_input, its summation order instead of the GEMM's):
the emulated block results of the H = 33 float32 and float64 cases moved, every one of their
results; at H = 6 (three input columns) and in bfloat16 none did, nor any other backend's.
Again at midday for grad_bias's new shape, [2, H] (a row for each bias, one reduction): with its
first row in its place, every one of the 1200 stored digests matched; no arithmetic moved.
Again that afternoon for the gradients kernel (csrc/cuda/elman_gradients_kernel.cuh: a short
layer's whole-sequence gradients in one launch, its own fixed-order sums instead of the GEMMs';
every case here has T B <= 54 rows): 144 of the 1200 moved, all of them float32 gradients of
the emulated paths (grad_input, grad_weight_ih and grad_bias in every float32 case, grad_weight_hh
in 6 of 8, grad_hx in 2, the squared norms in the 4 that record them); the bfloat16 cases take
the kernel too, and their rounded gradients came out the same; the CPU's, float64's, every
forward result and every step norm did not move.

On 2026-12-06 a Zen 3 EPYC (family 25, model 1: AVX2 and FMA, no AVX-512) gave other CPU
digests than the stored ones for 30 results of 7 cases (float32 and float64: outputs, h_n,
gradients, step norms), every emulated digest equal: the CPU backend's vectorized functions run
another clone there (RNN_FUSED_SIMD_CLONES, csrc/cpu/activation.h: avx512f, avx2 with FMA, or
default, picked by the processor at load time; the machine that made the digests presumably
took avx512f, whose features were not recorded), and MKL may branch with the same features. So
the CPU digests are stored per vector ISA (`cpu/avx512f`: the digests made before, renamed;
`cpu/avx2`: made on that machine), and the test of the CPU's compares those of this machine's
ISA, skipping with the reason where none are stored; the emulated digests, the same on both,
are one set. `--write` keeps the other ISAs' CPU digests.

Later on 2026-12-06 the CPU backend's tanh became evaluated in double (csrc/cpu/vector_math.h: a
float32 tanh correctly rounded but within 2^-35 of a tie): 33 CPU digests moved, those of every
float32 and bfloat16 case with tanh (30 and 3); no float64, relu or emulated digest did. Regenerated
here (`cpu/avx2`); the `cpu/avx512f` digests, which no machine here can remake, were dropped, so
on an AVX-512 machine the CPU test skips and says so until they are made there.
Then for the gradients kernel's sums in float64, rounded once (elman_gradients_kernel.cuh): 163
emulated digests moved, float32 and bfloat16 gradients and squared norms only (grad_input,
grad_weight_ih, grad_weight_hh and grad_bias in every float32 case, grad_hx in half of them, the
squared norms where recorded; three bfloat16 results); no forward result, step norm or CPU digest.

On 2026-12-07 the CPU backend's small float32 layers began to sum their whole-sequence
gradients in float64, rounded once (csrc/elman_gemms.h sums_in_float64: every case here), and its
backward epilogue to evaluate g and dz in double, rounded once, and to sum the step norms' squares
in double (csrc/cpu/activation.h; the float32 row cloned per vector ISA since): on an
Intel Xeon with AVX-512, pinned, 51 of the 240 CPU results moved between the two builds (float32
gradients and step norms in every float32 case, 6 bfloat16 gradients; no forward result, no float64
result) and none of the 960 emulated ones. The stored file was from an AMD EPYC (`cpu/avx2`), which
no machine here could remake and whose CPU digests that change made stale, and it skipped on Intel
machines; it was regenerated on the Intel machine (`cpu/avx512f` and the emulated digests), so the
test runs there and skips on AMD processors until they are made on one. That afternoon those
float64 sums became plain loops of double products (csrc/elman_gemms.h small_sums_in_float64, in
another order within double than ATen's float64 products): every digest stayed the same.

When a change of the kernels' arithmetic is intended (a new summation order), regenerate the
file with `python tests/test_stored_results.py --write` and say why in the commit (and, where
the CPU backend's arithmetic moved, on a machine of each stored ISA).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import rnn_fused
from rnn_fused import _ops, simt
from rnn_fused.truncation import TruncationArgs

STORED = os.path.join(os.path.dirname(__file__), "data", "stored_layer_results.json")
EMULATED_PATHS = ("block", "cluster", "grid", "stepwise")
# The code paths every digest is computed on (see the module's docstring).
PINNED_ENV = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}
PINNED_CAPABILITY = "AVX2"
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
            results = {cpu_key(): [digest(t) for t in run(case, *args, "cpu")]}
            with simt.emulated_device(sm_count=2):
                for path in EMULATED_PATHS:
                    results["emulated-" + path] = [digest(t) for t in run(case, *args, "emulated", path)]
            records.append(dict(case={k: str(v) if k == "trunc" else v for k, v in case.items()}, seed=seed,
                                results=results))
    return records


def cpu_vendor() -> str:
    """The processor's vendor (/proc/cpuinfo's vendor_id: GenuineIntel, AuthenticAMD), or the
    platform's name for it where that file has none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def vector_isa() -> str:
    """The vector instruction set the CPU backend's SIMD functions run here: the clone of
    RNN_FUSED_SIMD_CLONES (csrc/cpu/activation.h) that GCC's resolver picks, "avx512f", "avx2"
    (with FMA) or "default", read from the flags /proc/cpuinfo lists (those the kernel enabled)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "avx512f" in flags:
        return "avx512f"
    return "avx2" if "avx2" in flags and "fma" in flags else "default"


def cpu_key() -> str:
    """The key of the CPU backend's digests in a record's results: per vector ISA."""
    return "cpu/" + vector_isa()


def stored():
    with open(STORED) as f:
        return json.load(f)


def pinned_digests():
    """all_digests() in a child process on the pinned code paths: (capability, records)."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "digests.json")
        # (the child imports the rnn_fused this process imported, installed or not)
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(rnn_fused.__file__)))
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--digests", out], check=True,
                       env={**os.environ, **PINNED_ENV, "PYTHONPATH": path})
        with open(out) as f:
            child = json.load(f)
    return child["cpu_capability"], child["records"]


@functools.cache
def current_digests() -> list:
    """This machine's digests on the pinned code paths (computed once for both tests), or a
    pytest skip where the stored ones cannot apply here."""
    if not torch.backends.mkl.is_available():
        pytest.skip("torch has no MKL here: the stored digests were made on MKL's AVX2 branch (MKL_CBWR)")
    data = stored()
    assert data["meta"]["pinned"] == PINNED_ENV
    if data["meta"]["cpu_vendor"] != cpu_vendor():
        pytest.skip(f"the stored digests were made on a {data['meta']['cpu_vendor']} processor, this is "
                    f"{cpu_vendor()}: MKL's pinned branch differs between vendors (regenerate here with --write)")
    capability, now = pinned_digests()
    if capability != PINNED_CAPABILITY:
        pytest.skip(f"ATen runs its {capability} kernels here, not the {PINNED_CAPABILITY} ones the stored "
                    "digests were made with (a processor without AVX2)")
    assert len(now) == len(data["records"])
    return now


def mismatches_of(backends) -> list[str]:
    """Every result of the `backends` (keys of a record's results) whose digest differs."""
    mismatches = []
    for then, current in zip(stored()["records"], current_digests(), strict=True):
        assert then["seed"] == current["seed"]
        for backend in backends:
            for index, (want, got) in enumerate(zip(then["results"][backend], current["results"][backend],
                                                    strict=True)):
                if want != got:
                    mismatches.append(f"case {then['seed']} ({then['case']}), {backend}, result {index}: "
                                      f"stored {want}, now {got}")
    return mismatches


def test_emulated_results_are_bitwise_equal_to_the_stored_ones():
    mismatches = mismatches_of(["emulated-" + path for path in EMULATED_PATHS])
    assert not mismatches, "\n".join(mismatches[:20]) + f"\n({len(mismatches)} mismatches)"


def test_cpu_results_are_bitwise_equal_to_the_stored_ones():
    current_digests()  # (the skips above first)
    if cpu_key() not in stored()["records"][0]["results"]:
        pytest.skip(f"no CPU digests are stored for processors whose vector ISA is {vector_isa()} (the CPU "
                    f"backend's {vector_isa()} clones; stored: {sorted(stored()['records'][0]['results'])}): "
                    "regenerate here with --write, which keeps the other ISAs' digests")
    mismatches = mismatches_of([cpu_key()])
    assert not mismatches, "\n".join(mismatches[:20]) + f"\n({len(mismatches)} mismatches)"


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--digests":  # (the child of pinned_digests)
    with open(sys.argv[2], "w") as f:
        json.dump(dict(cpu_capability=torch.backends.cpu.get_cpu_capability(), records=all_digests()), f)
elif __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    capability, records = pinned_digests()
    assert capability == PINNED_CAPABILITY, f"ATen ran its {capability} kernels, not {PINNED_CAPABILITY}"
    meta = dict(cpu_from="the forward's products on W_hh as stored", emulated_from="the block/grid/stepwise kernels",
                pinned=PINNED_ENV, cpu_capability=capability, cpu_vendor=cpu_vendor(), threads=1,
                torch=torch.__version__)
    # The other vector ISAs' CPU digests stay (this machine cannot make them), where the cases and
    # the vendor are those they were made for.
    previous = stored()
    if previous["meta"]["cpu_vendor"] == meta["cpu_vendor"] and len(previous["records"]) == len(records):
        for then, now in zip(previous["records"], records, strict=True):
            assert then["case"] == now["case"], "the cases changed: regenerate every ISA's digests"
            for key, value in then["results"].items():
                if key.startswith("cpu/") and key not in now["results"]:
                    now["results"][key] = value
    with open(STORED, "w") as f:
        json.dump(dict(meta=meta, records=records), f, indent=1)
