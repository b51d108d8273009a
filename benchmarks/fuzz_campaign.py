"""A long differential fuzz campaign: rnn_fused.RNN against torch.nn.RNN under the tolerance rule,
on wider shapes than the suite's fuzz test (tests/test_module_fuzz.py: 300 derandomized
examples), for as long as asked, counting every result over its bound instead of stopping at
the first.

    python benchmarks/fuzz_campaign.py --backend cpu --seconds 1200
    python benchmarks/fuzz_campaign.py --backend emulated --seconds 1200 --seed 7
    PYTHONPATH=. python3 benchmarks/fuzz_campaign.py --backend cuda --seconds 120   (on a GPU)

Example i of a campaign is drawn from a generator seeded with (seed, i) alone, so every line it
prints reproduces with `--replay i` (and the same --seed and --backend). Each example: 1-3
layers, either direction, bias or not, batch-first or not, tanh or relu, a packed batch (sorted or
not), an unbatched input, h_0 or not, T 1-13, B 0-11, I 1-9, H from a list of odd and even sizes
(1 to 257), float32 or float64; the module's parameters are nn.RNN's own initialisation.

Prints one line per example with a result over its bound (the case, and each such result's error
as a multiple of its bound), then the count. A result summed from heavily cancelling terms (a
hidden size of 1, an input gradient of one feature) is where another valid summation order can
land past twice stock PyTorch's error: such lines say where the rule, not the code, may be the
one to doubt (docs/testing.md, the rule's limits). Exits 0 whatever it finds: it measures.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from rnn_fused.tools.testing import DEFAULT_ULPS, FLOAT64_PARITY_ULPS, RNNCase, measure_against_torch

HIDDEN_SIZES = (1, 2, 3, 7, 16, 31, 33, 47, 64, 65, 97, 129, 200, 257)


def draw_example(seed: int, index: int) -> tuple[RNNCase, int, torch.dtype]:
    """The campaign's example `index`: a case, the seed of its data, and the dtype."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    def integer(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=g))

    unbatched = pick([False, True])
    packing = "none" if unbatched else pick(["none", "sorted", "unsorted"])
    case = RNNCase(num_layers=integer(1, 3), bidirectional=pick([False, True]), bias=pick([False, True]),
                   batch_first=pick([False, True]), nonlinearity=pick(["tanh", "relu"]), packing=packing,
                   unbatched=unbatched, with_hx=pick([False, True]), seq_len=integer(1, 13),
                   batch=integer(1 if packing != "none" else 0, 11), input_size=integer(1, 9),
                   hidden_size=pick(HIDDEN_SIZES))
    return case, integer(0, 2**31 - 1), pick([torch.float32, torch.float64])


def run_example(case: RNNCase, data_seed: int, dtype: torch.dtype, backend: str) -> list[str]:
    """Every result of one example over its bound, as text (empty: all within)."""
    generator = torch.Generator().manual_seed(data_seed)
    torch.manual_seed(data_seed)
    input, hx = case.inputs(generator)
    if backend == "cuda":
        input, hx = input.cuda(), None if hx is None else hx.cuda()
    ulps = FLOAT64_PARITY_ULPS if dtype == torch.float64 else DEFAULT_ULPS
    module = case.torch_module().to(input.data.device)
    results, mismatches = measure_against_torch(module, input, hx, dtype=dtype, seed=data_seed, ulps=ulps,
                                                backend=None if backend == "cuda" else backend)
    return mismatches + [f"{r.name} {r.ours_error / r.bound:.2f}x its bound ({r})" for r in results if not r.passed]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["cpu", "emulated", "cuda"], default="cpu")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--replay", type=int, help="run only this example of the campaign")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    indices = [args.replay] if args.replay is not None else range(sys.maxsize)
    start, examples, failing = time.monotonic(), 0, 0
    for index in indices:
        if args.replay is None and time.monotonic() - start > args.seconds:
            break
        case, data_seed, dtype = draw_example(args.seed, index)
        try:
            over = run_example(case, data_seed, dtype, args.backend)
        except Exception as error:  # a raise is a finding too: report it with its example
            over = [f"raised {type(error).__name__}: {error}"]
        examples += 1
        if over:
            failing += 1
            print(f"example {index}: {case}, data seed {data_seed}, {dtype}:\n  " + "\n  ".join(over), flush=True)
    print(f"{examples} examples on the {args.backend} backend in {time.monotonic() - start:.0f} s: "
          f"{failing} with a result over its bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
