"""The project's tolerance rule, the configurations the tests and `rnn-fused check` draw
(RNNCase, layer_args), and a runner that compares rnn_fused.RNN with torch.nn.RNN.

The rule. A float64 run of stock torch.nn.RNN is the reference. Stock torch.nn.RNN run in
the test dtype shows some error against it; ours, in the same dtype, may show at most

    2 * stock_error + ulps * eps(dtype) * max|reference|

"Stock error" is the largest of the float32 evaluations with stock torch ops: torch.nn.RNN
itself, nn.RNN on the batch in reverse order (plain batched input), and the plain step loop
of reference.py composed into the same layers. All are valid summation orders; for a
gradient that is a single, heavily cancelled sum (hidden size 1) one order alone can be
arbitrarily lucky, and the rule would then measure luck rather than accuracy. Two more
stock runs see weights, input and hx moved by one unit of roundoff (as the cast to the
dtype moves them anyway), which measures how sensitive each result is to its inputs.

The second term is a floor of a few units in the last place at the reference's scale: where
stock PyTorch happens to be (nearly) exact, e.g. a float64 run compared with itself or a
single step whose rounding cancels, the 2x rule alone would demand bitwise agreement, which
a different but equally valid summation order cannot give. There is no other slack.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

DEFAULT_ULPS = 8

# For float64 against float64 stock is the reference itself, so its error is 0 and only the
# floor applies. Gradient entries are sums over up to T*B terms (512 in the parity grid)
# taken in a different order, and with small hidden sizes they cancel far below the size of
# their terms; measured worst case on the parity grid: 244 ulps of max|reference|.
# 1024 ulps is 2.3e-13 relative: a real defect (a wrong step, index or mask) is orders of
# magnitude above it.
FLOAT64_PARITY_ULPS = 1024


@dataclass
class ToleranceResult:
    name: str
    ours_error: float
    stock_error: float
    floor: float
    bound: float
    scale: float = 0.0  # max|reference|, the unit of the relative figures below

    @property
    def passed(self) -> bool:
        return self.ours_error <= self.bound  # False for NaN

    @property
    def relative_error(self) -> float:
        """ours_error / max|reference| (absolute when the reference is all zeros)."""
        return self.ours_error / self.scale if self.scale > 0 else self.ours_error

    @property
    def relative_bound(self) -> float:
        return self.bound / self.scale if self.scale > 0 else self.bound

    def __str__(self) -> str:
        return (f"{self.name}: ours {self.ours_error:.3e} vs bound {self.bound:.3e} "
                f"(2 x stock {self.stock_error:.3e} + floor {self.floor:.3e})")


def measure(reference: Tensor, stock: Tensor | Sequence[Tensor], ours: Tensor, *,
            name: str = "value", ulps: float = DEFAULT_ULPS) -> ToleranceResult:
    """Errors of `stock` and `ours` (max abs difference) against the float64 `reference`.

    `stock` may be several evaluations with stock torch ops; the largest error counts.
    """
    stocks = [stock] if isinstance(stock, Tensor) else list(stock)
    for s in stocks:
        if ours.shape != reference.shape or s.shape != reference.shape:
            raise AssertionError(f"{name}: shapes differ: reference {tuple(reference.shape)}, "
                                 f"stock {tuple(s.shape)}, ours {tuple(ours.shape)}")
        if ours.dtype != s.dtype:
            raise AssertionError(f"{name}: dtypes differ: stock {s.dtype}, ours {ours.dtype}")
    if reference.numel() == 0:
        return ToleranceResult(name, 0.0, 0.0, 0.0, 0.0)
    reference = reference.detach().double()
    ours_error = (ours.detach().double() - reference).abs().max().item()
    stock_error = max((s.detach().double() - reference).abs().max().item() for s in stocks)
    scale = reference.abs().max().item()
    floor = ulps * torch.finfo(ours.dtype).eps * scale
    return ToleranceResult(name, ours_error, stock_error, floor, 2 * stock_error + floor, scale)


def assert_within_tolerance(reference: Tensor, stock: Tensor, ours: Tensor, *,
                            name: str = "value", ulps: float = DEFAULT_ULPS) -> ToleranceResult:
    """Apply the rule; the assertion message carries every measured error."""
    result = measure(reference, stock, ours, name=name, ulps=ulps)
    if not result.passed:
        raise AssertionError(f"outside tolerance: {result}")
    return result


@contextlib.contextmanager
def true_float32_on_cuda() -> Iterator[None]:
    """TF32 off for cuBLAS and cuDNN inside the block, so stock nn.RNN on a GPU is an honest
    float32 baseline (for the tolerance rule and for timings); restored on exit."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- configurations and their inputs (parity grids, fuzzing, rnn-fused check) ----------------


@dataclass(frozen=True)
class RNNCase:
    """One configuration of module and input, as drawn by the parity grid and the fuzz test.

    packing: "none", "sorted" (enforce_sorted=True) or "unsorted" (enforce_sorted=False).
    unbatched: a 2-D input (batch is then ignored); never combined with packing.
    """

    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    batch_first: bool = False
    nonlinearity: str = "tanh"
    packing: str = "none"
    unbatched: bool = False
    with_hx: bool = False
    seq_len: int = 3
    batch: int = 2
    input_size: int = 2
    hidden_size: int = 3

    def __post_init__(self):
        if self.unbatched and self.packing != "none":
            raise ValueError("a PackedSequence is always batched")

    def torch_module(self) -> nn.RNN:
        return nn.RNN(self.input_size, self.hidden_size, self.num_layers, self.nonlinearity,
                      bias=self.bias, batch_first=self.batch_first,
                      bidirectional=self.bidirectional)

    def inputs(self, generator: torch.Generator, dtype=torch.float64):
        """(input, hx) for this case: a tensor or PackedSequence, and hx or None."""
        directions = 2 if self.bidirectional else 1
        if self.unbatched:
            x = torch.randn(self.seq_len, self.input_size, generator=generator, dtype=dtype)
            hx_shape = (self.num_layers * directions, self.hidden_size)
        else:
            shape = ((self.batch, self.seq_len) if self.batch_first
                     else (self.seq_len, self.batch))
            x = torch.randn(*shape, self.input_size, generator=generator, dtype=dtype)
            hx_shape = (self.num_layers * directions, self.batch, self.hidden_size)
        hx = torch.randn(hx_shape, generator=generator, dtype=dtype) if self.with_hx else None
        if self.packing == "none":
            return x, hx
        # One sample runs the full length so the packed sequence keeps seq_len steps.
        lengths = torch.randint(1, self.seq_len + 1, (self.batch,), generator=generator)
        lengths[torch.randint(0, self.batch, (1,), generator=generator)] = self.seq_len
        if self.packing == "sorted":
            lengths = lengths.sort(descending=True).values
        packed = pack_padded_sequence(x, lengths, batch_first=self.batch_first,
                                      enforce_sorted=self.packing == "sorted")
        return packed, hx


def layer_args(steps, batch, input_size, hidden, *, dtype=torch.float64, bias=True, hx=True,
               requires_grad=False, generator=None):
    """Arguments of one layer: [input [T,B,I], hx [B,H] or None, weight_ih [H,I],
    weight_hh [H,H] (scaled so the recurrence neither explodes nor vanishes quickly),
    bias_ih [H] or None, bias_hh [H] or None], drawn in float64 and cast to dtype."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0):
        t = torch.randn(*shape, dtype=torch.float64, generator=generator) * scale
        return t.to(dtype).requires_grad_(requires_grad)

    return [
        leaf(steps, batch, input_size),
        leaf(batch, hidden) if hx else None,
        leaf(hidden, input_size, scale=0.5),
        leaf(hidden, hidden, scale=0.5 / max(hidden, 1) ** 0.5),
        leaf(hidden) if bias else None,
        leaf(hidden) if bias else None,
    ]


# --- running nn.RNN and rnn_fused.RNN side by side ------------------------------------------


def cast_input(input: Tensor | PackedSequence, dtype: torch.dtype, requires_grad: bool):
    """A fresh leaf copy of input (tensor or the data of a PackedSequence) in dtype."""
    if isinstance(input, PackedSequence):
        data = input.data.detach().to(dtype).requires_grad_(requires_grad)
        return PackedSequence(data, input.batch_sizes, input.sorted_indices,
                              input.unsorted_indices)
    return input.detach().to(dtype).requires_grad_(requires_grad)


def _input_leaf(input: Tensor | PackedSequence) -> Tensor:
    return input.data if isinstance(input, PackedSequence) else input


def _output_tensor(output: Tensor | PackedSequence) -> Tensor:
    return output.data if isinstance(output, PackedSequence) else output


def run_rnn(module: nn.Module, input: Tensor | PackedSequence, hx: Tensor | None,
            cotangents: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None,
            ) -> dict[str, Tensor]:
    """Forward, and backward with cotangents(output, h_n) -> (grad_output, grad_h_n) unless None.

    Returns output (packed data for packed input), h_n, and the gradients of the input,
    hx (when given) and every parameter, keyed "grad_input", "grad_hx", "grad_<param name>".
    """
    module.zero_grad(set_to_none=True)
    output, h_n = module(input, hx)
    results = {"output": _output_tensor(output).detach(), "h_n": h_n.detach()}
    if isinstance(output, PackedSequence):
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            results[field] = getattr(output, field)
    if cotangents is None:
        return results
    output = _output_tensor(output)
    torch.autograd.backward([output, h_n], list(cotangents(output, h_n)))
    results["grad_input"] = _input_leaf(input).grad
    if hx is not None:
        results["grad_hx"] = hx.grad
    for name, param in module.named_parameters():
        results[f"grad_{name}"] = param.grad
    return results


_EXACT_FIELDS = ("batch_sizes", "sorted_indices", "unsorted_indices")


def compare_with_torch(torch_module: nn.RNN, input: Tensor | PackedSequence,
                       hx: Tensor | None = None, *, dtype: torch.dtype = torch.float32,
                       backward: bool = True, ulps: float = DEFAULT_ULPS,
                       seed: int = 0, packed_layout: bool = True) -> list[ToleranceResult]:
    """Check rnn_fused.RNN against torch.nn.RNN under the tolerance rule (measure_against_torch).

    Raises AssertionError listing every quantity out of tolerance; returns the measured results.
    """
    results, mismatches = measure_against_torch(torch_module, input, hx, dtype=dtype,
                                                backward=backward, ulps=ulps, seed=seed,
                                                packed_layout=packed_layout)
    failures = mismatches + [str(r) for r in results if not r.passed]
    if failures:
        raise AssertionError("outside tolerance vs torch.nn.RNN:\n  " + "\n  ".join(failures))
    return results


def measure_against_torch(torch_module: nn.RNN, input: Tensor | PackedSequence,
                          hx: Tensor | None = None, *, dtype: torch.dtype = torch.float32,
                          backward: bool = True, ulps: float = DEFAULT_ULPS, seed: int = 0,
                          backend: str | None = None, packed_layout: bool = True,
                          ) -> tuple[list[ToleranceResult], list[str]]:
    """Measure rnn_fused.RNN against torch.nn.RNN under the tolerance rule, without judging.

    The reference is a float64 copy of torch_module, stock a copy in `dtype`, ours
    RNN.from_torch(stock) (on `backend` when given; a PackedSequence through the padded batch
    where packed_layout is False: RNN.packed_layout). All three see the same input,
    hx and output cotangents (drawn from `seed`, float64, then cast). Returns the result of
    every output and gradient, and a line for each packed-sequence field that differs.
    """
    from ..modules import RNN

    reference_module = copy.deepcopy(torch_module).double()
    stock_module = copy.deepcopy(torch_module).to(dtype)
    ours_module = RNN.from_torch(stock_module)
    if backend is not None:
        ours_module.backend = backend
    ours_module.packed_layout = packed_layout

    def leaves(cast_dtype):
        x = cast_input(input, cast_dtype, backward)
        h = None if hx is None else hx.detach().to(cast_dtype).requires_grad_(backward)
        return x, h

    drawn = []

    def draw_cotangents(output, h_n):
        generator = torch.Generator().manual_seed(seed)
        drawn.extend(torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.device)
                     for t in (output, h_n))
        return drawn

    def cast_cotangents(output, h_n):
        return [c.to(dtype) for c in drawn]

    reference = run_rnn(reference_module, *leaves(torch.float64),
                        draw_cotangents if backward else None)
    stock = run_rnn(stock_module, *leaves(dtype), cast_cotangents if backward else None)
    step_loop = run_rnn(_StepLoopRNN.from_torch(stock_module), *leaves(dtype),
                        cast_cotangents if backward else None)
    stock_runs = [stock, step_loop]
    for perturbation_seed in (1, 2):
        stock_runs.append(_run_ulp_perturbed(stock_module, *leaves(dtype), cast_cotangents,
                                             backward, perturbation_seed))
    if isinstance(input, Tensor) and input.dim() == 3:
        stock_runs.append(_run_batch_reversed(stock_module, *leaves(dtype), drawn, dtype, backward))
    ours = run_rnn(ours_module, *leaves(dtype), cast_cotangents if backward else None)

    if set(ours) != set(reference):
        raise AssertionError(f"results differ in kind: reference {sorted(reference)}, "
                             f"ours {sorted(ours)}")
    mismatches, results = [], []
    for key in reference:
        if key in _EXACT_FIELDS:
            if not _same_optional(reference[key], ours[key]):
                mismatches.append(f"{key}: reference {reference[key]}, ours {ours[key]}")
            continue
        results.append(measure(reference[key], [run[key] for run in stock_runs], ours[key],
                               name=key, ulps=ulps))
    return results, mismatches


def _ulp_perturbed(t: Tensor, generator: torch.Generator) -> Tensor:
    """t with every entry moved by one unit of roundoff, up or down at random."""
    signs = torch.randint(0, 2, t.shape, generator=generator).to(t.device, t.dtype) * 2 - 1
    return t * (1 + signs * torch.finfo(t.dtype).eps / 2)


def _run_ulp_perturbed(module: nn.Module, input, hx: Tensor | None, cotangents, backward: bool,
                       seed: int) -> dict[str, Tensor]:
    """run_rnn with weights, input and hx moved by one unit of roundoff.

    Casting the float64 problem to float32 already moves every input by up to that much,
    so how far this run lands from the reference is part of the error the dtype itself
    imposes; for ill-conditioned results (cancelled sums) it exceeds rounding luck.
    """
    generator = torch.Generator().manual_seed(seed)
    perturbed = copy.deepcopy(module)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.copy_(_ulp_perturbed(param, generator))
    if isinstance(input, PackedSequence):
        data = _ulp_perturbed(input.data.detach(), generator).requires_grad_(backward)
        input = PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
    else:
        input = _ulp_perturbed(input.detach(), generator).requires_grad_(backward)
    if hx is not None:
        hx = _ulp_perturbed(hx.detach(), generator).requires_grad_(backward)
    return run_rnn(perturbed, input, hx, cotangents if backward else None)


def _run_batch_reversed(module: nn.Module, input: Tensor, hx: Tensor | None, drawn: list[Tensor],
                        dtype: torch.dtype, backward: bool) -> dict[str, Tensor]:
    """run_rnn on the batch in reverse order (another valid summation order for every
    reduction over the batch), with every batch-indexed result put back in order."""
    batch_dim = 0 if getattr(module, "batch_first", False) else 1
    x = input.detach().flip(batch_dim).requires_grad_(backward)
    h = None if hx is None else hx.detach().flip(1).requires_grad_(backward)

    def flipped_cotangents(output, h_n):
        return [drawn[0].to(dtype).flip(batch_dim), drawn[1].to(dtype).flip(1)]

    results = run_rnn(module, x, h, flipped_cotangents if backward else None)
    batch_dims = {"output": batch_dim, "h_n": 1, "grad_input": batch_dim, "grad_hx": 1}
    return {key: value.flip(batch_dims[key]) if key in batch_dims else value
            for key, value in results.items()}


def _step_loop_rnn_class():
    from .. import functional
    from ..modules import RNN
    from ..reference import reference_layer

    class StepLoopRNN(RNN):
        """rnn_fused.RNN's composition of layers over reference.py's step loop: stock torch
        ops in a second valid evaluation order."""

        _layer_fn = staticmethod(reference_layer)

        def _run(self, time_major, hx, lengths, truncation, batch_order):
            return functional.rnn(time_major.contiguous(), hx, self.all_weights, self.num_layers,
                                  self.bidirectional, self.nonlinearity, self.dropout,
                                  self.training, lengths, layer_fn=self._layer_fn, truncation=truncation)

    return StepLoopRNN


class _LazyStepLoop:
    def from_torch(self, module):
        return _step_loop_rnn_class().from_torch(module)


_StepLoopRNN = _LazyStepLoop()


def _same_optional(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


def module_as_function(module: nn.Module, input: Tensor | PackedSequence, hx: Tensor | None):
    """(f, leaves) for torch.autograd.gradcheck of a module: f maps (input data, hx,
    *parameters) to (output data, h_n); leaves are fresh copies requiring grad (a missing hx
    stays None)."""
    names = [name for name, _ in module.named_parameters()]

    def f(data, hx, *params):
        x = (PackedSequence(data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
             if isinstance(input, PackedSequence) else data)
        output, h_n = torch.func.functional_call(module, dict(zip(names, params)), (x, hx))
        return _output_tensor(output), h_n

    leaves = [_input_leaf(input), hx, *module.parameters()]
    return f, tuple(None if t is None else t.detach().clone().requires_grad_() for t in leaves)


LAYER_ARG_NAMES = ("input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh")


def layer_results(layer_fn: Callable, args: Sequence[Tensor | None], cotangents: Sequence[Tensor],
                  dtype: torch.dtype, **kwargs) -> dict[str, Tensor]:
    """Forward and backward of one layer (rnn_fused.rnn_layer or reference_layer) on `args`
    (layer_args' order, None for absent ones) cast to dtype, with cotangents (for output
    and h_n) cast alike; kwargs go to layer_fn. Returns output, h_n and grad_<arg name> of
    every present argument."""
    leaves = [None if a is None else a.detach().to(dtype).requires_grad_() for a in args]
    out, h_n = layer_fn(*leaves, **kwargs)
    present = [(name, leaf) for name, leaf in zip(LAYER_ARG_NAMES, leaves) if leaf is not None]
    grads = torch.autograd.grad((out, h_n), [leaf for _, leaf in present],
                                [c.to(out.device, dtype) for c in cotangents])
    results = {"output": out.detach(), "h_n": h_n.detach()}
    results.update({f"grad_{name}": grad for (name, _), grad in zip(present, grads)})
    return results
