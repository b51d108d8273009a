"""Truncation of backpropagation through time, as the fused backward applies it.

The user-facing forms (`None`, an int K, `RandomTruncation(keep_prob, seed)`) are checked
and turned here into the op arguments (truncate_every, keep_prob, seed); the kernels
compute the edge scales themselves (edge_scale in the extension's csrc/recurrence_math.h,
the same function on the host and the device).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

# Seeds are int64 op arguments; Philox takes them as two 32-bit key words.
_SEED_LIMIT = 2**63


@dataclass(frozen=True)
class RandomTruncation:
    """Randomized truncation (Tallec & Ollivier): each recurrent edge h_{s-1} -> h_s, s >= 1,
    of each sample is kept with probability `keep_prob` and then scaled by 1/keep_prob, or
    cut; the gradient is unbiased. Steps s count in each direction's own processing order,
    per layer and direction, over a sample's valid steps.

    The draws come from Philox4x32-10, keyed by the seed and counted by (step, sample,
    2 * layer + direction): the same seed gives the same cuts on every backend and run
    (rnn_fused.edge_scales shows them). `seed` (an int in [0, 2**63)) fixes the draws; None
    draws a fresh seed from torch's default CPU generator at every forward, so
    torch.manual_seed makes a run reproducible, and record_gradients reports the seed used.
    """

    keep_prob: float
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.keep_prob, bool) or not isinstance(self.keep_prob, numbers.Real):
            raise TypeError(f"RandomTruncation: keep_prob must be a float in (0, 1], "
                            f"got {type(self.keep_prob).__name__} {self.keep_prob!r}")
        if not 0.0 < float(self.keep_prob) <= 1.0:
            raise ValueError(f"RandomTruncation: keep_prob must be in (0, 1], got {self.keep_prob!r}")
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
                raise TypeError(f"RandomTruncation: seed must be an int in [0, 2**63) or None, "
                                f"got {type(self.seed).__name__} {self.seed!r}")
            if not 0 <= int(self.seed) < _SEED_LIMIT:
                raise ValueError(f"RandomTruncation: seed must be in [0, 2**63), got {self.seed!r}")


@dataclass(frozen=True)
class TruncationArgs:
    """The op arguments of one forward call: cut every `every` steps (0: never), keep with
    probability `keep_prob` (1: always), Philox `seed` (already drawn when it was None).

    A seed drawn for the call is an int64 0-d CPU tensor (torch.randint), not an int: under
    torch.compile the draw is then an op of the graph, made afresh at every call, instead of
    a constant baked into it. The ops take the seed as such a tensor (seed_tensor)."""

    every: int = 0
    keep_prob: float = 1.0
    seed: int | Tensor = 0

    @property
    def randomized(self) -> bool:
        return self.keep_prob < 1.0

    @property
    def full(self) -> bool:
        """No cut at all: the full BPTT gradient."""
        return self.every == 0 and not self.randomized

    def seed_int(self) -> int:
        """The seed as a Python int (eager code only: reads a drawn seed's value)."""
        return int(self.seed)

    def seed_tensor(self) -> Tensor | None:
        """The ops' `seed` argument: None without randomized truncation (no seed is read),
        else an int64 0-d CPU tensor."""
        if not self.randomized:
            return None
        if isinstance(self.seed, Tensor):
            return self.seed
        return torch.tensor(self.seed, dtype=torch.int64)


FULL_BPTT = TruncationArgs()


def check_truncation(truncation) -> None:
    """Raises TypeError/ValueError naming `truncation` for anything but None, an int >= 1 or
    a RandomTruncation (whose own fields were checked when it was built); also passes the
    already resolved TruncationArgs that the layers hand down."""
    if truncation is None or isinstance(truncation, (RandomTruncation, TruncationArgs)):
        return
    allowed = "None, an int K >= 1 (cut every K steps) or rnn_fused.RandomTruncation(keep_prob, seed)"
    if isinstance(truncation, bool) or not isinstance(truncation, numbers.Integral):
        raise TypeError(f"truncation must be {allowed}, got {type(truncation).__name__} {truncation!r}")
    if truncation < 1:
        raise ValueError(f"truncation must be {allowed}, got {truncation!r}")


def resolve_truncation(truncation) -> TruncationArgs:
    """The op arguments for one forward call; a RandomTruncation without seed gets a fresh
    one from torch's default CPU generator (so torch.manual_seed makes runs reproducible),
    kept as a 0-d tensor (see TruncationArgs): a compiled graph draws it at every call."""
    check_truncation(truncation)
    if isinstance(truncation, TruncationArgs):
        return truncation
    if truncation is None:
        return FULL_BPTT
    if isinstance(truncation, RandomTruncation):
        seed = truncation.seed
        if seed is None:
            return TruncationArgs(0, float(truncation.keep_prob), draw_seed())
        return TruncationArgs(0, float(truncation.keep_prob), int(seed))
    return TruncationArgs(int(truncation), 1.0, 0)


def draw_seed() -> Tensor:
    """A fresh seed in [0, 2**63 - 1): int64 0-d tensor from torch's default CPU generator."""
    return torch.randint(0, _SEED_LIMIT - 1, (), dtype=torch.int64)


def edge_scales(steps: int, batch: int, truncation, layer: int = 0, reverse: bool = False,
                lengths: Tensor | None = None) -> Tensor:
    """The edge scales c [T, B] (float64, processing order: row s is each sample's s-th
    step in its direction) that the backward applies for `truncation` in layer `layer`,
    direction `reverse`. A RandomTruncation needs an explicit seed here. Entries past a
    sample's length (lengths int64 [B], any device) are zero: those edges do not exist."""
    check_truncation(truncation)
    if isinstance(truncation, RandomTruncation) and truncation.seed is None:
        raise ValueError("edge_scales: RandomTruncation needs an explicit seed to name its draws, got seed=None")
    return edge_scales_for_args(steps, batch, resolve_truncation(truncation), layer, reverse, lengths)


def edge_scales_for_args(steps: int, batch: int, args: TruncationArgs, layer: int, reverse: bool,
                         lengths: Tensor | None) -> Tensor:
    """edge_scales for resolved op arguments (the kernels' own function, csrc/recurrence_math.h)."""
    scales = torch.ops.rnn_fused.edge_scales(steps, batch, args.every, args.keep_prob, args.seed_int(), layer,
                                             reverse)
    if lengths is not None:
        valid = torch.arange(steps).unsqueeze(1) < lengths.cpu().unsqueeze(0)
        scales = scales.masked_fill(~valid, 0.0)
    return scales
