"""Gradient norms reduced by the fused backward: the recorder, and clipping that reuses them.

`record_gradients(module)` makes the module's forwards run layers whose backward also
reduces, in the same pass, ||dL/dh_t|| per step and sample, the squared norms of the
parameter gradients and a non-finite flag (results of the op rnn_layer_backward with
record_norms, csrc/ops.cpp); the backward hands them to
a ForwardRecord through one LayerSink per layer and direction. Nothing is reduced for a
forward run outside a recorder. `clip_grad_norm_` is torch.nn.utils.clip_grad_norm_ with
the squared norms of such gradients taken from the backward instead of a new pass.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .truncation import TruncationArgs, edge_scales_for_args

# Order of the squared norms in the backward op's grad_sq_norms [5].
_SQ_INDEX = {"input": 0, "hx": 1, "weight_ih": 2, "weight_hh": 3, "bias": 4}


@dataclass
class _FusedNorm:
    """The squared norm the backward reduced for the gradient it returned for a parameter,
    with what identifies that gradient tensor later: its storage (held, so its memory
    cannot be reused by another tensor while this entry lives), its place in it (the two
    biases' gradients are the rows of one [2,H] tensor) and its version counter (bumped by
    any in-place change, e.g. a second backward accumulating into it; the two rows share
    one, so a change to either forgets both norms)."""

    storage: torch.UntypedStorage | None
    offset: int
    version: int
    numel: int
    sq_norm: Tensor | None  # None: the parameter got several contributions in one backward
    graph_task: int


# parameter -> _FusedNorm of its latest recorded gradient.
_FUSED_SQ_NORMS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _register_fused_norm(param: Tensor, grad: Tensor, sq_norm: Tensor) -> None:
    task = torch._C._current_graph_task_id()
    previous = _FUSED_SQ_NORMS.get(param)
    if previous is not None and previous.graph_task == task:
        # Used twice in one graph (e.g. the module called twice): autograd sums the parts,
        # whose norms do not add up to the norm of the sum.
        _FUSED_SQ_NORMS[param] = _FusedNorm(None, 0, 0, 0, None, task)
        return
    _FUSED_SQ_NORMS[param] = _FusedNorm(grad.untyped_storage(), grad.storage_offset(), grad._version, grad.numel(),
                                         sq_norm, task)


def fused_sq_norm(param: Tensor) -> Tensor | None:
    """The backward's squared norm of param.grad (float64, 0-d), when param.grad is still
    exactly the tensor that backward returned, unchanged; otherwise None."""
    entry = _FUSED_SQ_NORMS.get(param)
    grad = param.grad
    if entry is None or entry.sq_norm is None or grad is None:
        return None
    same_tensor = (grad.untyped_storage().data_ptr() == entry.storage.data_ptr()
                   and grad.storage_offset() == entry.offset and grad.numel() == entry.numel
                   and grad._version == entry.version)
    return entry.sq_norm if same_tensor else None


class LayerSink:
    """Receives what the backward of one layer and direction reduced."""

    def __init__(self, record: ForwardRecord, layer: int, direction: int, weights: tuple):
        self.record, self.layer, self.direction = record, layer, direction
        self.weights = weights  # (weight_ih, weight_hh[, bias_ih, bias_hh]) as passed to the layer

    def __call__(self, step_norms: Tensor, grad_sq_norms: Tensor, nonfinite: Tensor, grads: tuple) -> None:
        """step_norms [T,B] (padded batch order); grad_sq_norms [5] float64; nonfinite bool 0-d;
        grads: what the layer's backward returned for (input, hx, weight_ih, weight_hh, bias_ih, bias_hh)."""
        record = self.record
        record._store(self.layer, self.direction, step_norms, grad_sq_norms, nonfinite)
        which = ("weight_ih", "weight_hh", "bias", "bias")
        for param, grad, kind in zip(self.weights, grads[2:], which):
            # Only leaves get grad tensors of their own (a weight cast under autocast does not).
            if grad is not None and param.is_leaf and param.requires_grad and grad.dtype == param.dtype:
                _register_fused_norm(param, grad, grad_sq_norms[_SQ_INDEX[kind]])


class ForwardRecord:
    """What one recorded forward of an RNN leaves once its backward has run.

    names: parameter names per (layer, direction) index, in nn.RNN's order; batch_order:
    for each of the caller's samples, its column in the padded batch (a PackedSequence's
    unsorted_indices), or None; lengths int64 [B] (padded order) or None.
    """

    def __init__(self, num_layers: int, directions: int, steps: int, batch: int, names: list[list[str]],
                 batch_order: Tensor | None, lengths: Tensor | None, truncation: TruncationArgs):
        self.num_layers, self.directions, self.steps, self.batch = num_layers, directions, steps, batch
        self.names, self.batch_order, self.lengths, self.truncation = names, batch_order, lengths, truncation
        self._step_norms: dict[tuple[int, int], Tensor] = {}
        self._sq_norms: dict[str, Tensor] = {}
        self._nonfinite: list[Tensor] = []

    def sink(self, layer: int, direction: int, weights: tuple) -> LayerSink:
        return LayerSink(self, layer, direction, weights)

    def _store(self, layer: int, direction: int, step_norms: Tensor, sq_norms: Tensor, nonfinite: Tensor) -> None:
        self._step_norms[(layer, direction)] = step_norms
        index_names = self.names[layer * self.directions + direction]
        for name in index_names:
            kind = name.split("_l")[0]  # weight_ih_l0_reverse -> weight_ih
            self._sq_norms[name] = sq_norms[_SQ_INDEX["bias" if kind.startswith("bias") else kind]]
        self._nonfinite.append(nonfinite)

    @property
    def complete(self) -> bool:
        return len(self._step_norms) == self.num_layers * self.directions

    def _in_caller_order(self, per_sample: Tensor) -> Tensor:
        return per_sample if self.batch_order is None else per_sample.index_select(-1, self.batch_order)

    def step_norms(self) -> Tensor:
        rows = [torch.stack([self._step_norms[(layer, d)] for d in range(self.directions)])
                for layer in range(self.num_layers)]
        return self._in_caller_order(torch.stack(rows))

    def edge_scales(self) -> Tensor:
        rows = [torch.stack([edge_scales_for_args(self.steps, self.batch, self.truncation, layer, d == 1,
                                                  self.lengths) for d in range(self.directions)])
                for layer in range(self.num_layers)]
        return self._in_caller_order(torch.stack(rows))

    def parameter_sq_norms(self) -> dict[str, Tensor]:
        return dict(self._sq_norms)

    def nonfinite(self) -> bool:
        return bool(torch.stack([flag.reshape(()) for flag in self._nonfinite]).any())


class GradientRecorder:
    """The forwards a module ran inside record_gradients(module), and what their backward
    reduced. The properties describe the latest recorded forward whose backward has run."""

    def __init__(self, module):
        self.module = module
        self.records: list[ForwardRecord] = []

    def _latest(self) -> ForwardRecord:
        if not self.records:
            raise RuntimeError("record_gradients: no forward of the module was recorded")
        for record in reversed(self.records):
            if record.complete:
                return record
        raise RuntimeError("record_gradients: the backward of the recorded forward has not run yet "
                           "(call loss.backward() first)")

    @property
    def step_norms(self) -> Tensor:
        """[layers, directions, T, B]: ||dL/dh_t||_2 by time step t and sample (caller's order)."""
        return self._latest().step_norms()

    @property
    def edge_scales(self) -> Tensor:
        """[layers, directions, T, B] float64: the edge scales c the backward applied, by
        processing step (zero past a sample's length)."""
        return self._latest().edge_scales()

    @property
    def seed(self) -> int | None:
        """The seed of the latest recorded forward's randomized truncation, else None."""
        truncation = self._latest().truncation
        return truncation.seed_int() if truncation.randomized else None

    @property
    def parameter_sq_norms(self) -> dict[str, Tensor]:
        """{parameter name: squared L2 norm of the gradient the backward produced for it}.

        These are the norms of the gradients this process's backward computed. Under
        DistributedDataParallel they are each rank's local norms, before DDP averages the
        gradients across ranks: the norm of an average is not a function of the ranks'
        norms, so no reduction of these gives the global one. For the global norm, compute
        it from p.grad after the backward (DDP has averaged it by then);
        rnn_fused.clip_grad_norm_ does so by itself, see its docstring."""
        return self._latest().parameter_sq_norms()

    @property
    def nonfinite(self) -> bool:
        """Whether any gradient of the module's layers (or any dL/dh_t) is NaN or Inf."""
        return self._latest().nonfinite()


@contextlib.contextmanager
def record_gradients(module):
    """Records what the fused backward reduces for the forwards `module` (an rnn_fused.RNN)
    runs inside the block; the backward itself may run inside or after it."""
    # The modules that run recorded layers keep a recorder slot (modules.RNN); checking for it
    # keeps this module free of an import of modules.py, which imports this one.
    if not hasattr(type(module), "_gradient_recorder"):
        raise TypeError(f"record_gradients expects an rnn_fused.RNN, got {type(module).__name__}")
    recorder = GradientRecorder(module)
    previous = module._gradient_recorder
    module._gradient_recorder = recorder
    try:
        yield recorder
    finally:
        module._gradient_recorder = previous


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ (same arguments, result and return value), taking the
    2-norm of each gradient that a recorded rnn_fused backward produced (and that has not
    changed since) from the squared norm that backward reduced, instead of a new pass.

    A fused norm is reused only while p.grad is exactly the tensor that backward returned
    (same storage, unchanged version counter); any other gradient gets a new pass. So under
    DistributedDataParallel, which writes the averaged gradients into p.grad after the
    backward (copied into it, or p.grad replaced by a view of its bucket), the norm is that
    of the averaged gradients, as with torch's clip_grad_norm_; the recorded local norms
    are not used. The same holds after gradient accumulation over several backwards."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and len(parameters) == 0:
            # torch warns the same way: an exhausted generator is a likely mistake.
            return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return torch.tensor(0.0)
    norm_type = float(norm_type)
    norms = []
    for p in with_grad:
        sq = fused_sq_norm(p) if norm_type == 2.0 else None
        if sq is not None:
            norms.append(sq.sqrt().to(p.grad.dtype))
        else:
            norms.append(torch.linalg.vector_norm(p.grad, norm_type))
    first_device = with_grad[0].grad.device
    total_norm = torch.linalg.vector_norm(torch.stack([n.to(first_device) for n in norms]), norm_type)
    if error_if_nonfinite and torch.logical_or(total_norm.isnan(), total_norm.isinf()):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it "
            "cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
            "anyway, set `error_if_nonfinite=False`")
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    return total_norm
