"""The op pair rnn_fused::rnn_layer_forward / rnn_layer_backward from Python.

Loading rnn_fused._C registers the ops (TORCH_LIBRARY in csrc/ops.cpp). This module is the
one home of their argument list on the Python side: LayerInputs and LayerOptions, in schema
order, drive the calls, the fake kernels (torch.compile, FakeTensor) and the recording
Function. The backward takes (grad_output, grad_h_n, output, output_mask, record_norms)
followed by exactly the forward's arguments; the double backward's op (grad_output,
grad_h_n, needs) followed by them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import _build  # noqa: F401  (loads rnn_fused._C, or says how to build it)
from .truncation import FULL_BPTT, TruncationArgs

ops = torch.ops.rnn_fused


class LayerInputs(NamedTuple):
    """The op pair's tensor arguments. input [T,B,I]; hx [B,H] or None; weight_ih [H,I];
    weight_hh [H,H]; bias_ih, bias_hh [H] or None; lengths int64 [B] or None (all T)."""

    input: Tensor
    hx: Tensor | None
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    lengths: Tensor | None


class LayerOptions(NamedTuple):
    """The op pair's other arguments, in schema order after the tensors."""

    nonlinearity: str = "tanh"
    reverse: bool = False
    truncate_every: int = 0
    keep_prob: float = 1.0
    seed: Tensor | None = None  # int64 0-d CPU tensor when keep_prob < 1 (TruncationArgs.seed_tensor)
    layer: int = 0
    backend: str | None = None  # 'cpu', 'cuda', 'emulated' or None (the input device's own)
    path: str | None = None  # GPU kernels: 'block', 'cluster', 'grid', 'stepwise' or None (the planner's choice)
    side_by_side: int = 1  # GPU kernels: recurrences running side by side, each planned for 1/side_by_side of the SMs

    @classmethod
    def make(cls, nonlinearity: str, reverse: bool, truncation: TruncationArgs = FULL_BPTT, layer: int = 0,
             backend: str | None = None, path: str | None = None, side_by_side: int = 1) -> LayerOptions:
        return cls(nonlinearity, reverse, truncation.every, truncation.keep_prob, truncation.seed_tensor(), layer,
                   backend, path, side_by_side)

    @property
    def truncation(self) -> TruncationArgs:
        return TruncationArgs(self.truncate_every, self.keep_prob, 0 if self.seed is None else self.seed)


FORWARD_ARGUMENTS = LayerInputs._fields + LayerOptions._fields
# The backward's own arguments before the forward's.
BACKWARD_PREFIX = ("grad_output", "grad_h_n", "output", "output_mask", "record_norms")


def _schema_names(op) -> tuple[str, ...]:
    return tuple(argument.name for argument in op.default._schema.arguments)


if _schema_names(ops.rnn_layer_forward) != FORWARD_ARGUMENTS or \
        _schema_names(ops.rnn_layer_backward) != BACKWARD_PREFIX + FORWARD_ARGUMENTS or \
        _schema_names(ops.rnn_layer_backward_with_graph) != ("grad_output", "grad_h_n", "needs") + FORWARD_ARGUMENTS or \
        not hasattr(ops, "rnn_layers_forward"):
    raise ImportError("rnn_fused: the compiled extension's op schemas do not match this Python package; "
                      "rebuild it (make build, or pip install --no-build-isolation .)")


def split_forward_arguments(args) -> tuple[LayerInputs, LayerOptions]:
    """The forward's positional arguments (as the op, its fake kernel or setup_context see
    them; trailing defaults may be missing) as (LayerInputs, LayerOptions)."""
    count = len(LayerInputs._fields)
    return LayerInputs(*args[:count]), LayerOptions(*args[count:])


def _bind(op, args: tuple, kwargs: dict) -> tuple:
    """All arguments of a call in schema order, defaults filled in."""
    arguments = op.default._schema.arguments
    values = list(args)
    for argument in arguments[len(args):]:
        values.append(kwargs[argument.name] if argument.name in kwargs else argument.default_value)
    return tuple(values)


def layer_forward(inputs: LayerInputs, options: LayerOptions) -> tuple[Tensor, Tensor]:
    """(output [T,B,H], zero at t >= lengths[b]; h_n [B,H]). Differentiable: the op's autograd
    kernel is C++ (csrc/layer_autograd.cpp), which records a graph node only where grad mode
    is on and an input requires grad."""
    return ops.rnn_layer_forward(*inputs, *options)


def layer_backward(grad_output: Tensor, grad_h_n: Tensor | None, output: Tensor, output_mask: list[bool],
                   record_norms: bool, inputs: LayerInputs, options: LayerOptions):
    """output_mask: which of (grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias)
    to compute; the others come back as empty tensors. grad_h_n None: h_n was not used (a
    zero gradient). Returns those five (grad_bias [2,H]: the gradients of bias_ih and bias_hh,
    equal rows), then step_norms [T,B], grad_sq_norms [5] float64 and nonfinite (empty unless
    record_norms)."""
    return ops.rnn_layer_backward(grad_output, grad_h_n, output, output_mask, record_norms, *inputs, *options)


# --- autocast --------------------------------------------------------------------------
# nn.RNN's ops are on autocast's lower-precision list: under autocast their floating
# arguments (float64 excepted) are cast to the autocast dtype of their device, which the
# user chooses (torch.autocast(..., dtype=...)). torch.library.register_autocast casts to
# one fixed dtype, so the forward op gets kernels of its own for the Autocast keys, built
# the same way: cast, then run the op below autocast. The backward ops cast nothing (autograd
# hands them gradients in the dtype of the outputs, and they saved the cast inputs), and
# neither do the ops whose arguments functional casts before calling them (the directions'
# op pair, the packed inference op); their Autocast kernels only run them below autocast, so
# that a backward called inside an autocast region makes its products in the compute dtype,
# as one outside it does.


def device_type_of(tensor: Tensor) -> str:
    """tensor.device.type without building a torch.device for the common two (every layer call
    asks, and at small sizes host time is the whole cost)."""
    return "cuda" if tensor.is_cuda else "cpu" if tensor.is_cpu else tensor.device.type


def autocast_dtype(device_type: str, input_dtype: torch.dtype | None = None) -> torch.dtype | None:
    """The dtype autocast runs RNNs in on this device type, or None when it is off there. On
    CUDA that is float16 whatever dtype autocast was given, wherever torch would run the layer
    on cuDNN (cuDNN enabled and available, an input of float16, float32 or float64): ATen's
    autocast kernel of the cuDNN RNN casts to float16 (measured on an H200: torch.rnn_tanh under
    autocast(dtype=torch.bfloat16) returns float16). Elsewhere, the autocast dtype."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return None
    if device_type == "cuda" and input_dtype in (torch.float16, torch.float32, torch.float64) \
            and torch.backends.cudnn.enabled and torch.backends.cudnn.is_available():
        return torch.float16
    return torch.get_autocast_dtype(device_type)


def autocast_cast(value, device_type: str, dtype: torch.dtype):
    """What autocast does to one argument: a floating tensor on `device_type`, other than
    float64, is cast to `dtype`; anything else passes unchanged."""
    if isinstance(value, Tensor) and value.is_floating_point() and value.device.type == device_type \
            and value.dtype != torch.float64:
        return value.to(dtype)
    return value


def autocast_layer_inputs(inputs: LayerInputs) -> LayerInputs:
    """inputs as the forward op's autocast kernel casts them (unchanged without autocast)."""
    device_type = device_type_of(inputs.input)
    dtype = autocast_dtype(device_type, inputs.input.dtype)
    if dtype is None:
        return inputs
    return LayerInputs(*(autocast_cast(value, device_type, dtype) for value in inputs))


_autocast_library = torch.library.Library("rnn_fused", "IMPL")


def _register_autocast_kernel(op: torch._ops.OpOverload, device_type: str, cast: bool = True) -> None:
    """op's kernel for the device type's Autocast key: the floating arguments cast (with `cast`),
    then op run below autocast."""
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def kernel(*args, **kwargs):
        if cast:
            first = args[0] if args else next(iter(kwargs.values()), None)  # the layer's input
            dtype = autocast_dtype(device_type, first.dtype if isinstance(first, Tensor) else None) \
                or torch.get_autocast_dtype(device_type)
            args = tuple(autocast_cast(value, device_type, dtype) for value in args)
            kwargs = {name: autocast_cast(value, device_type, dtype) for name, value in kwargs.items()}
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*args, **kwargs)

    # The Python dispatcher (tracing under torch.compile) looks up py_impl; eager calls go
    # through the C++ dispatcher to the library kernel. Both run the same cast.
    op.py_impl(key)(kernel)
    _autocast_library.impl(op.__name__.split(".")[0], lambda _keyset, *args, **kwargs: kernel(*args, **kwargs),
                           key_name, with_keyset=True)


BELOW_AUTOCAST_OPS = ("rnn_layer_backward", "rnn_layer_backward_with_graph", "rnn_directions_forward",
                      "rnn_directions_backward", "rnn_directions_backward_with_graph", "rnn_stack_backward",
                      "rnn_packed_inference", "rnn_packed_layer_backward")

for _device_type in ("cpu", "cuda"):
    _register_autocast_kernel(ops.rnn_layer_forward.default, _device_type)
    for _name in BELOW_AUTOCAST_OPS:
        _register_autocast_kernel(getattr(ops, _name).default, _device_type, cast=False)


@torch.library.register_fake("rnn_fused::rnn_layer_forward")
def _layer_forward_fake(*args, **kwargs):
    inputs, _ = split_forward_arguments(_bind(ops.rnn_layer_forward, args, kwargs))
    steps, batch, _ = inputs.input.shape
    hidden = inputs.weight_hh.shape[0]
    return inputs.input.new_empty(steps, batch, hidden), inputs.input.new_empty(batch, hidden)


@torch.library.register_fake("rnn_fused::rnn_layer_backward")
def _layer_backward_fake(*args, **kwargs):
    values = _bind(ops.rnn_layer_backward, args, kwargs)
    output_mask, record_norms = values[3], values[4]
    inputs, _ = split_forward_arguments(values[len(BACKWARD_PREFIX):])
    input = inputs.input
    steps, batch, _ = input.shape
    hidden = inputs.weight_hh.shape[0]
    shapes = (input.shape, (batch, hidden), inputs.weight_ih.shape, inputs.weight_hh.shape, (2, hidden))
    grads = tuple(input.new_empty(shape if wanted else (0,)) for shape, wanted in zip(shapes, output_mask))
    # Norms are in the compute dtype: float32 for float16/bfloat16 inputs.
    norm_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    if record_norms:
        extras = (input.new_empty(steps, batch, dtype=norm_dtype), input.new_empty(5, dtype=torch.float64),
                  input.new_empty((), dtype=torch.bool))
    else:
        extras = (input.new_empty(0, dtype=norm_dtype), input.new_empty(0, dtype=torch.float64),
                  input.new_empty(0, dtype=torch.bool))
    return grads + extras
