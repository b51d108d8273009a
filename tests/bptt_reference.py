"""Autograd references for truncated BPTT and per-step gradient norms (docs/bptt.md).

Built from plain torch ops only, never from rnn_fused's kernels or step loop, so a defect
shared by the library's code paths cannot hide here:

- BPTTReferenceRNN: a multi-layer, bidirectional, variable-length Elman step loop with
  nn.RNN's parameters, forward forms and semantics (state frozen past a sample's length,
  zero outputs there, h_n = state after the last valid step, the reverse direction running
  each sample's valid steps last to first). Truncation K detaches the state entering
  processing step s when s % K == 0 and s > 0, sample by sample; edge scales multiply the
  gradient of that edge by c[s, b] through a gradient hook; hooks on every h_t as the cell
  produces it record ||dL/dh_t||_2 per sample, indexed by time.
- philox4x32_10 / philox_edge_scales: the counter-based generator of the randomized
  truncation, written from the published algorithm (Salmon et al., SC 2011) in numpy.
- mean_within_confidence: the statistical check that an estimator is unbiased.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

# --- Philox4x32-10 -----------------------------------------------------------------------

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key) -> tuple[np.ndarray, ...]:
    """Philox4x32 with 10 rounds, elementwise over broadcastable uint32 words.

    counter: 4 words (c0, c1, c2, c3); key: 2 words (k0, k1). Returns the 4 output words
    as uint32 arrays. One round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (64-bit
    products), c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the key is bumped by
    (W0, W1) between rounds.
    """
    c0, c1, c2, c3 = (np.asarray(w, dtype=np.uint64) & _MASK32 for w in counter)
    k0, k1 = (np.asarray(w, dtype=np.uint64) & _MASK32 for w in key)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    for round_index in range(PHILOX_ROUNDS):
        if round_index > 0:
            k0 = (k0 + np.uint64(PHILOX_W0)) & _MASK32
            k1 = (k1 + np.uint64(PHILOX_W1)) & _MASK32
        p0 = m0 * c0  # both factors < 2^32: the product is exact in 64 bits
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK32)
    return tuple(np.asarray(w, dtype=np.uint32) for w in (c0, c1, c2, c3))


def philox_uniforms(steps: int, batch: int, seed: int, layer: int = 0,
                    reverse: bool = False) -> np.ndarray:
    """u[s, b] = (r0 >> 8) * 2^-24 for counter (s, b, 2 * layer + direction, 0) and key
    (seed low 32 bits, seed high 32 bits), as docs/bptt.md specifies. float64 [T, B]."""
    s = np.arange(steps, dtype=np.uint64)[:, None]
    b = np.arange(batch, dtype=np.uint64)[None, :]
    stream = np.uint64(2 * layer + (1 if reverse else 0))
    key = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF)
    r0, _, _, _ = philox4x32_10((s, b, stream, np.uint64(0)), key)
    r0 = np.broadcast_to(r0, (steps, batch))
    return (r0 >> np.uint32(8)).astype(np.float64) * 2.0 ** -24


def philox_edge_scales(steps: int, batch: int, keep_prob: float, seed: int, layer: int = 0,
                       reverse: bool = False, lengths: Tensor | None = None) -> Tensor:
    """Randomized-truncation scales c [T, B] (processing order, float64): 1/p where u < p,
    else 0, for steps 1 <= s < lengths[b]; 1 at s = 0 (the edge from h_0 is never cut) and
    at steps past a sample's length (no edge there; the value is never used)."""
    u = torch.from_numpy(philox_uniforms(steps, batch, seed, layer, reverse))
    scales = torch.where(u < keep_prob, torch.tensor(1.0 / keep_prob, dtype=torch.float64),
                         torch.tensor(0.0, dtype=torch.float64))
    drawn = edge_steps(steps, batch, lengths)
    return torch.where(drawn, scales, torch.ones_like(scales))


def edge_steps(steps: int, batch: int, lengths: Tensor | None = None) -> Tensor:
    """bool [T, B]: processing steps s with a recurrent edge into them, 1 <= s < lengths[b]."""
    lengths = _lengths_or_full(lengths, steps, batch)
    s = torch.arange(steps).unsqueeze(1)
    return (s >= 1) & (s < lengths.unsqueeze(0))


def valid_steps(steps: int, batch: int, lengths: Tensor | None = None) -> Tensor:
    """bool [T, B]: t < lengths[b] (valid time steps, equally valid processing steps)."""
    lengths = _lengths_or_full(lengths, steps, batch)
    return torch.arange(steps).unsqueeze(1) < lengths.unsqueeze(0)


def truncation_scales(steps: int, batch: int, truncation: int) -> Tensor:
    """Scales of truncation=K [T, B] (processing order, float64): 0 where s % K == 0 and
    s > 0, else 1."""
    s = torch.arange(steps).unsqueeze(1).expand(steps, batch)
    return torch.where((s > 0) & (s % truncation == 0), 0.0, 1.0).to(torch.float64)


def _lengths_or_full(lengths: Tensor | None, steps: int, batch: int) -> Tensor:
    if lengths is None:
        return torch.full((batch,), steps, dtype=torch.long)
    return lengths.detach().to("cpu", torch.long)


# --- the step loop -------------------------------------------------------------------------


def _scaled_edge(h: Tensor, scale: Tensor) -> Tensor:
    """h unchanged forward; the gradient through it multiplied by scale[b] per sample."""
    if not h.requires_grad:
        return h
    edge = h.clone()  # a node of its own: the hook must not touch h's other uses
    factor = scale.to(h.dtype).unsqueeze(1)
    edge.register_hook(lambda grad: grad * factor)
    return edge


def reference_direction(input: Tensor, h0: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
                        bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor,
                        nonlinearity: str, reverse: bool, *, cut: Tensor | None = None,
                        scales: Tensor | None = None, norms: Tensor | None = None,
                        ) -> tuple[Tensor, Tensor]:
    """One layer and direction over a time-major padded batch.

    input [T, B, I]; h0 [B, H] or None; lengths int64 [B] (CPU); cut bool [T, B] and
    scales [T, B] in processing order (the edge into step s of sample b is detached where
    cut[s, b], its gradient scaled by scales[s, b]); norms [T, B] (time order) receives
    ||dL/dh_t|| from hooks during backward (entries of invalid steps are left alone).
    Returns output [T, B, H] (zeros at t >= lengths[b]) and h_n [B, H].
    """
    act = {"tanh": torch.tanh, "relu": torch.relu}[nonlinearity]
    steps, batch, input_size = input.shape
    hidden = weight_hh.shape[0]
    valid = valid_steps(steps, batch, lengths).to(input.device)
    t = torch.arange(steps, device=input.device).unsqueeze(1)
    lengths_row = lengths.to(input.device).unsqueeze(0)
    # time of processing step s of sample b; the same map takes time back to step
    time_of_step = torch.where(valid, (lengths_row - 1 - t) if reverse else t.expand(-1, batch),
                               torch.zeros_like(t))
    x_steps = input.gather(0, time_of_step.unsqueeze(2).expand(-1, -1, input_size))
    h = input.new_zeros(batch, hidden) if h0 is None else h0
    step_outputs = []
    for s in range(steps):
        edge = h
        if cut is not None:
            edge = torch.where(cut[s].to(input.device).unsqueeze(1), edge.detach(), edge)
        if scales is not None:
            edge = _scaled_edge(edge, scales[s].to(input.device))
        h_new = act(F.linear(x_steps[s], weight_ih, bias_ih) + F.linear(edge, weight_hh, bias_hh))
        if norms is not None and h_new.requires_grad:
            h_new.register_hook(_norm_recorder(norms, s, time_of_step[s], valid[s]))
        active = valid[s].unsqueeze(1)
        h = torch.where(active, h_new, h)  # frozen past the sample's length
        step_outputs.append(torch.where(active, h_new, torch.zeros_like(h_new)))
    if steps == 0:
        return input.new_zeros(0, batch, hidden), h
    by_step = torch.stack(step_outputs)
    output = by_step.gather(0, time_of_step.unsqueeze(2).expand(-1, -1, hidden))
    return torch.where(valid.unsqueeze(2), output, torch.zeros_like(output)), h


def _norm_recorder(norms: Tensor, step: int, times: Tensor, valid: Tensor):
    samples = valid.nonzero().squeeze(1)

    def hook(grad: Tensor) -> None:
        with torch.no_grad():
            per_sample = torch.linalg.vector_norm(grad.detach(), dim=1)
            norms[times[samples].to(norms.device), samples.to(norms.device)] = (
                per_sample[samples].to(norms.dtype))

    return hook


def reference_rnn(input: Tensor, hx: Tensor | None, weights, num_layers: int, bidirectional: bool,
                  nonlinearity: str = "tanh", lengths: Tensor | None = None, *,
                  truncation: int | None = None, edge_scales: Tensor | None = None,
                  norms: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Layers x directions over a time-major padded batch (caller's batch order).

    weights: per (layer, direction) in nn.RNN's order, (w_ih, w_hh[, b_ih, b_hh]);
    truncation: None or K; edge_scales [L, D, T, B] (processing order) or None;
    norms [L, D, T, B] (time order) filled with ||dL/dh_t|| during backward, or None.
    """
    steps, batch, _ = input.shape
    directions = 2 if bidirectional else 1
    lengths = _lengths_or_full(lengths, steps, batch)
    cut = None
    if truncation is not None:
        cut = truncation_scales(steps, batch, truncation) == 0
    layer_input, finals = input, []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            w_ih, w_hh, *biases = weights[layer * directions + direction]
            b_ih, b_hh = biases if biases else (None, None)
            h0 = None if hx is None else hx[layer * directions + direction]
            out, h_n = reference_direction(
                layer_input, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, direction == 1,
                cut=cut,
                scales=None if edge_scales is None else edge_scales[layer, direction],
                norms=None if norms is None else norms[layer, direction])
            outputs.append(out)
            finals.append(h_n)
        layer_input = torch.cat(outputs, dim=2)
    return layer_input, torch.stack(finals)


class BPTTReferenceRNN(nn.Module):
    """nn.RNN's parameters, names and forward forms (batched tensor, batch_first,
    PackedSequence) over reference_rnn.

    truncation (None or K) and edge_scales ([L, D, T, B] in the caller's batch order,
    processing order in time, or None) shape the backward. After a backward, step_norms
    [L, D, T, B] holds ||dL/dh_t|| per time step and sample (caller's batch order, zero at
    t >= lengths[b]) in the module's dtype.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 bidirectional: bool = False, dtype=torch.float64):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.nonlinearity, self.bias, self.batch_first = nonlinearity, bias, batch_first
        self.bidirectional = bidirectional
        self.truncation: int | None = None
        self.edge_scales: Tensor | None = None
        self.step_norms: Tensor | None = None
        # nn.RNN's own parameter names and shapes, grouped by layer and direction.
        stock = nn.RNN(input_size, hidden_size, num_layers, bias=bias, bidirectional=bidirectional, device="meta")
        self._groups = stock._all_weights
        for name, param in stock.named_parameters():
            self.register_parameter(name, nn.Parameter(torch.zeros(param.shape, dtype=dtype)))

    @classmethod
    def from_module(cls, module: nn.Module) -> BPTTReferenceRNN:
        """Same configuration and parameter values as an nn.RNN or rnn_fused.RNN."""
        first = module.weight_ih_l0
        reference = cls(module.input_size, module.hidden_size, module.num_layers,
                        module.nonlinearity, module.bias, module.batch_first,
                        module.bidirectional, dtype=first.dtype)
        with torch.no_grad():
            for name, param in reference.named_parameters():
                param.copy_(getattr(module, name))
        return reference

    @property
    def all_weights(self) -> list[list[Tensor]]:
        return [[getattr(self, name) for name in names] for names in self._groups]

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None):
        packed = isinstance(input, PackedSequence)
        if packed:
            padded, lengths = pad_packed_sequence(input)  # caller's batch order
            lengths = lengths.to(torch.long)
        else:
            padded = input.transpose(0, 1) if self.batch_first else input
            lengths = None
        steps, batch = padded.shape[:2]
        directions = 2 if self.bidirectional else 1
        self.step_norms = padded.new_zeros(self.num_layers, directions, steps, batch).detach()
        output, h_n = reference_rnn(padded, hx, self.all_weights, self.num_layers,
                                    self.bidirectional, self.nonlinearity, lengths,
                                    truncation=self.truncation, edge_scales=self.edge_scales,
                                    norms=self.step_norms)
        if packed:
            return _packed_like(output, lengths, input), h_n
        return (output.transpose(0, 1) if self.batch_first else output), h_n


def _packed_like(padded: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """padded [T, B, F] (caller's order) as a PackedSequence with like's batch_sizes and
    sorted_indices: step by step, the first batch_sizes[t] samples in sorted order."""
    order = like.sorted_indices
    if order is not None:
        padded = padded.index_select(1, order.to(padded.device))
    batch = padded.shape[1]
    present = torch.arange(batch).unsqueeze(0) < like.batch_sizes.unsqueeze(1)
    return PackedSequence(padded[present.to(padded.device)], like.batch_sizes, like.sorted_indices,
                          like.unsorted_indices)


# --- statistics ------------------------------------------------------------------------------


def mean_within_confidence(samples: Tensor, expected: Tensor, *, z: float = 5.0,
                           slack: float | None = None) -> tuple[bool, str]:
    """Is the mean of samples [N, ...] within z standard errors of expected (per element)?

    The standard error is the sample standard deviation over sqrt(N); slack (default
    1e-9 * max|expected|) absorbs the rounding of the mean where every sample is equal.
    Returns (passed, a report naming the worst element).
    """
    samples = samples.double().flatten(1)
    expected = expected.double().flatten()
    count = samples.shape[0]
    mean = samples.mean(0)
    standard_error = samples.std(0, correction=1) / count ** 0.5
    if slack is None:
        slack = 1e-9 * expected.abs().max().item()
    bound = z * standard_error + slack
    excess = (mean - expected).abs() - bound
    worst = int(excess.argmax())
    report = (f"N={count}: element {worst}: mean {mean[worst].item():.6e}, expected "
              f"{expected[worst].item():.6e}, |diff| {(mean[worst] - expected[worst]).abs().item():.3e}"
              f" vs bound {bound[worst].item():.3e} ({z} x SE {standard_error[worst].item():.3e}"
              f" + {slack:.1e}); largest |diff|/SE where SE > 0: {_largest_z(mean, expected, standard_error)}")
    return bool((excess <= 0).all()), report


def _largest_z(mean: Tensor, expected: Tensor, standard_error: Tensor) -> str:
    spread = standard_error > 0
    if not spread.any():
        return "none"
    return f"{((mean - expected).abs()[spread] / standard_error[spread]).max().item():.2f}"


# --- cotangents and special weights shared by the tests ---------------------------------------


def cotangents(seed: int, *, output_scale: float = 1.0, h_n_scale: float = 1.0):
    """cotangents(output, h_n) -> [grad_output, grad_h_n], drawn in float64 from seed and cast
    to each tensor's dtype, so runs in different dtypes see the same values (for
    rnn_fused.tools.testing.run_rnn). A scale of 0 gives zeros (e.g. a loss on h_n only)."""
    def draw(output: Tensor, h_n: Tensor) -> list[Tensor]:
        generator = torch.Generator().manual_seed(seed)
        drawn = []
        for tensor, scale in ((output, output_scale), (h_n, h_n_scale)):
            value = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * scale
            drawn.append(value.to(tensor.device, tensor.dtype))
        return drawn
    return draw


def vanishing_weights(module: nn.Module, sigma: float = 0.3, seed: int = 0) -> None:
    """Every W_hh := sigma * a random orthogonal matrix (all singular values sigma), in place.

    With tanh (|tanh'| <= 1) and a loss on h_n only, ||dL/dh_t|| shrinks at least by sigma
    per step away from the last processing step."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith("weight_hh"):
                q, r = torch.linalg.qr(torch.randn(param.shape, generator=generator,
                                                   dtype=torch.float64))
                param.copy_(sigma * q * torch.sign(torch.diagonal(r)))


def exploding_weights(module: nn.Module) -> None:
    """W_hh := 2 I, W_ih := |W_ih|, biases := 0, in place. With relu and positive inputs
    every unit stays active (z > 0), so with a loss on h_n only dL/dh_t = 2^(s_last - s)
    dL/dh_n exactly (powers of two): the norm doubles per step away from the last step."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith("weight_hh"):
                param.copy_(2 * torch.eye(param.shape[0], dtype=param.dtype))
            elif name.startswith("weight_ih"):
                param.abs_()
            else:
                param.zero_()
