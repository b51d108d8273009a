"""The backpropagation-through-time experiments of `rnn-fused demo`, run on rnn_fused kernels.

Each function runs one experiment and returns plain numbers; demo.py draws and reports
them. Nothing here knows what a result is expected to be, except `accuracy_outcome`,
which names a measured accuracy by fixed thresholds stated in the report.

The task ("remember the first character"): a sequence of T characters from an alphabet of
CLASSES, one-hot; the model (rnn_fused.RNN(CLASSES, HIDDEN) and a linear read-out) must
name the first character after reading the last one. The gradient that teaches it
travels T - 1 steps back through the recurrence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

import rnn_fused

CLASSES = 8
HIDDEN = 32
CHANCE = 1.0 / CLASSES
# Held-out sequences of length T come from a generator seeded with EVAL_SEED + T, the same
# for every run; training data of a run seeded s from DATA_SEED_OFFSET + s (apart from the
# model's initialisation, which torch.manual_seed(s) fixes).
EVAL_SEED = 1 << 20
DATA_SEED_OFFSET = 10_000
# Outcome names for an accuracy: "learned" at or above LEARNED_ACCURACY; "chance" when it is
# not above chance at this one-sided z (99.95%) for the held-out set's size; otherwise
# "above chance".
LEARNED_ACCURACY = 0.9
CHANCE_Z = 3.29


@dataclass(frozen=True)
class Protocol:
    """How every training run trains: Adam, cross-entropy at the last step."""

    batch: int = 32
    train_steps: int = 500
    learning_rate: float = 1e-2
    eval_size: int = 2000


def first_character_batch(steps: int, batch: int, generator: torch.Generator):
    """x [T, B, CLASSES] one-hot float32 and the first character of each sequence [B]."""
    characters = torch.randint(0, CLASSES, (steps, batch), generator=generator)
    return nn.functional.one_hot(characters, CLASSES).float(), characters[0]


def chance_ceiling(eval_size: int) -> float:
    """The highest accuracy that is not above chance (one-sided z = CHANCE_Z)."""
    return CHANCE + CHANCE_Z * math.sqrt(CHANCE * (1 - CHANCE) / eval_size)


def accuracy_outcome(accuracy: float, eval_size: int) -> str:
    if accuracy >= LEARNED_ACCURACY:
        return "learned"
    if accuracy <= chance_ceiling(eval_size):
        return "chance"
    return "above chance"


def truncation_label(truncation) -> str:
    if truncation is None:
        return "full"
    if isinstance(truncation, rnn_fused.RandomTruncation):
        return f"random p={truncation.keep_prob:g}"
    return f"K={truncation}"


def initial_model(seed: int, truncation=None) -> tuple[rnn_fused.RNN, nn.Linear]:
    torch.manual_seed(seed)
    return rnn_fused.RNN(CLASSES, HIDDEN, truncation=truncation), nn.Linear(HIDDEN, CLASSES)


def last_step_loss(model: rnn_fused.RNN, head: nn.Linear, x, target):
    output, _ = model(x)
    return nn.functional.cross_entropy(head(output[-1]), target)


@dataclass
class TrainRun:
    length: int
    seed: int
    clip: float | None          # max norm, or None (no clipping)
    truncation: str             # truncation_label
    accuracy: float = 0.0
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping, every step
    nonfinite_steps: int = 0    # steps whose backward produced NaN/Inf (the recorder's flag)
    model: rnn_fused.RNN | None = field(default=None, repr=False)
    head: nn.Linear | None = field(default=None, repr=False)


def evaluate(model: rnn_fused.RNN, head: nn.Linear, length: int, eval_size: int) -> float:
    x, target = first_character_batch(length, eval_size, torch.Generator().manual_seed(EVAL_SEED + length))
    with torch.no_grad():
        output, _ = model(x)
        return (head(output[-1]).argmax(1) == target).float().mean().item()


def train(length: int, seed: int, protocol: Protocol, clip: float | None = None, truncation=None) -> TrainRun:
    """One training run. The pre-clip gradient norm of every step is clip_grad_norm_'s return
    value (with max_norm = inf when not clipping, which leaves the gradients as they are)."""
    model, head = initial_model(seed, truncation)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=protocol.learning_rate)
    data = torch.Generator().manual_seed(DATA_SEED_OFFSET + seed)
    run = TrainRun(length, seed, clip, truncation_label(truncation), model=model, head=head)
    for _ in range(protocol.train_steps):
        x, target = first_character_batch(length, protocol.batch, data)
        with rnn_fused.record_gradients(model) as recorder:
            loss = last_step_loss(model, head, x, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = rnn_fused.clip_grad_norm_(params, math.inf if clip is None else clip)
        run.losses.append(loss.item())
        run.grad_norms.append(norm.item())
        run.nonfinite_steps += recorder.nonfinite
        optimizer.step()
    run.accuracy = evaluate(model, head, length, protocol.eval_size)
    return run


def step_gradient_norms(model: rnn_fused.RNN, head: nn.Linear, length: int, batch: int, seed: int) -> list[float]:
    """||dL/dh_t|| for t = 0..T-1 (mean over a batch), L the batch's mean last-step loss, from
    the norms the fused backward reduces (rnn_fused.record_gradients)."""
    x, target = first_character_batch(length, batch, torch.Generator().manual_seed(EVAL_SEED + length))
    with rnn_fused.record_gradients(model) as recorder:
        loss = last_step_loss(model, head, x, target)
    loss.backward()
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    return recorder.step_norms[0, 0].mean(1).tolist()


def orthogonal_recurrence(sigma: float, generator: torch.Generator) -> torch.Tensor:
    """W_hh = sigma * Q, Q a random orthogonal matrix: every singular value (and so
    sigma_max) is sigma."""
    q, r = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # the uniformly distributed orthogonal matrix
    return (sigma * q).float()


def jacobian_product_norms(sigma: float, steps: int, batch: int, seed: int) -> list[list[float]]:
    """Spectral norms ||dh_t/dh_0|| = ||prod_k dh_k/dh_{k-1}|| for t = 1..steps, [steps][batch].

    The layer (tanh, no bias, W_ih as nn.RNN initialises it, W_hh = sigma * orthogonal) reads
    one-hot random characters from h_0 = 0. Every sample is repeated HIDDEN times in the
    batch and the copy i gets the unit cotangent e_i at h_t, so one fused backward gives all
    rows of dh_t/dh_0.
    """
    generator = torch.Generator().manual_seed(seed)
    weight_hh = orthogonal_recurrence(sigma, generator)
    bound = 1.0 / math.sqrt(HIDDEN)
    weight_ih = (torch.rand(HIDDEN, CLASSES, generator=generator) * 2 - 1) * bound
    x, _ = first_character_batch(steps, batch, generator)
    copies = x.repeat_interleave(HIDDEN, dim=1)
    h0 = torch.zeros(batch * HIDDEN, HIDDEN, requires_grad=True)
    output, _ = rnn_fused.rnn_layer(copies, h0, weight_ih, weight_hh, None, None)
    unit_rows = torch.eye(HIDDEN).repeat(batch, 1)
    norms = []
    for t in range(steps):
        cotangent = torch.zeros_like(output)
        cotangent[t] = unit_rows
        (rows,) = torch.autograd.grad(output, h0, cotangent, retain_graph=t < steps - 1)
        norms.append(torch.linalg.matrix_norm(rows.view(batch, HIDDEN, HIDDEN).double(), ord=2).tolist())
    return norms
