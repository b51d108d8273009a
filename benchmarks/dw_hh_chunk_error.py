"""The rounding error of dW_hh's two-level sum by chunk length, simulated in float32, and
(--time) the time of the sum as the host layer batches it, on this CPU.

dW_hh = sum_t dz_t^T h_{t-1} is summed as chunk products (csrc/outer_product_chunks.h): each
product adds its steps_per_chunk * B rows in one chain, then the chunks' partials are added in
another. This models a GPU's sequential accumulation (a batched GEMM adds each entry's rows one
after another; the partials' sum runs along the chunks) in float32 and reports the relative
error against float64, on random data of the given shape (dz normal, h = tanh of normal).
It is a model of the chains, not of cuBLAS's kernels: read the ratios between rows.

    python benchmarks/dw_hh_chunk_error.py 1000 32 128 32 6 0
        (T, B, H, then chunk lengths in steps; 0 = split each chunk of 32 steps 8 ways along K)
    python benchmarks/dw_hh_chunk_error.py --time 999 8 64 32 11
        (S pairs of steps, B, H, chunk lengths: the batched product of the full chunks and its
        sum, and one product for the rest, at 2 threads; medians of 50 runs)
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np


def chained_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_k outer(a[k], b[k]) accumulated row by row in float32."""
    total = np.zeros((a.shape[1], b.shape[1]), np.float32)
    for k in range(a.shape[0]):
        total += np.outer(a[k], b[k]).astype(np.float32)
    return total


def two_level(a: np.ndarray, b: np.ndarray, rows: int, split: int = 1) -> np.ndarray:
    """Chunks of `rows` rows, each (in `split` pieces summed in order) one partial; the partials
    added in order."""
    partials = []
    for start in range(0, a.shape[0], rows):
        piece = -(-min(rows, a.shape[0] - start) // split)
        parts = [chained_sum(a[s:s + piece], b[s:s + piece])
                 for s in range(start, min(start + rows, a.shape[0]), piece)]
        partials.append(chained_sum(np.ones((len(parts), 1), np.float32), np.stack(parts).reshape(len(parts), -1))
                        .reshape(a.shape[1], b.shape[1]))
    return chained_sum(np.ones((len(partials), 1), np.float32),
                       np.stack(partials).reshape(len(partials), -1)).reshape(a.shape[1], b.shape[1])


def batched_sum_ms(pairs: int, batch: int, hidden: int, steps: int) -> float:
    """Median time of sum_of_outer_products' batched branch (one group) with chunks of `steps`."""
    import torch

    torch.set_num_threads(2)
    a, b = torch.randn(pairs, batch, hidden), torch.randn(pairs, batch, hidden)
    full = pairs // steps

    def run():
        rows = full * steps
        total = torch.bmm(a[:rows].reshape(full, steps * batch, hidden).transpose(1, 2),
                          b[:rows].reshape(full, steps * batch, hidden)).sum(0)
        if rows < pairs:
            total.add_(a[rows:].reshape(-1, hidden).t() @ b[rows:].reshape(-1, hidden))

    for _ in range(5):
        run()
    times = []
    for _ in range(50):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--time":
        pairs, batch, hidden, *chunk_steps = (int(v) for v in argv[1:])
        for n in chunk_steps:
            print(f"S, B, H = {pairs}, {batch}, {hidden}, chunks of {n} steps: "
                  f"{batched_sum_ms(pairs, batch, hidden, n):.3f} ms")
        return
    steps, batch, hidden, *chunk_steps = (int(v) for v in argv)
    rng = np.random.default_rng(0)
    dz = rng.standard_normal((steps * batch, hidden)).astype(np.float32)
    h = np.tanh(rng.standard_normal((steps * batch, hidden))).astype(np.float32)
    exact = dz.astype(np.float64).T @ h.astype(np.float64)
    print(f"T, B, H = {steps}, {batch}, {hidden}: dW_hh's relative error in float32 by chunk length")
    for n in chunk_steps or [32]:
        rows, split = (32 * batch, 8) if n == 0 else (n * batch, 1)
        got = two_level(dz, h, rows, split)
        error = np.linalg.norm(got.astype(np.float64) - exact) / np.linalg.norm(exact)
        label = "32 steps, each split 8 ways along K" if n == 0 else f"{n} steps"
        print(f"  chunks of {label}: {rows} rows, {-(-steps * batch // rows)} chunks: {error:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
