"""RNN: a drop-in for torch.nn.RNN whose layers run the fused kernels.

Not derived from nn.RNN / nn.RNNBase: torch.compile graph-breaks on those. The
constructor, parameters, state_dict keys, init, attributes, forward forms and the
errors for bad arguments mirror torch.nn.RNN (torch 2.14).
"""

from __future__ import annotations

import enum
import inspect
import math
import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _ops, functional
from .recording import ForwardRecord
from .truncation import RandomTruncation, check_truncation, resolve_truncation


class _ModuleSetting(enum.Enum):
    """Type of MODULE_SETTING, the default of forward's `truncation`: use the module's."""

    MODULE_SETTING = "the module's truncation"

    def __repr__(self) -> str:
        return "MODULE_SETTING"


MODULE_SETTING = _ModuleSetting.MODULE_SETTING

# c10 ScalarType names, as ATen spells them in the error nn.RNN raises for an hx whose dtype
# differs from the weights' ("mat1 and mat2 must have the same dtype, ...").
_SCALAR_TYPE_NAMES = {
    torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}

_PROJ_SIZE_MESSAGE = "proj_size argument is only supported for LSTM, not RNN or GRU"


def _scalar_type_name(dtype: torch.dtype) -> str:
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype))


class RNN(nn.Module):
    r"""Multi-layer Elman RNN (tanh or relu) whose layers run fused forward and BPTT kernels:
    a drop-in for torch.nn.RNN (same constructor, parameters, state_dict, initialization,
    forward forms, results and errors), with truncated BPTT inside the fused backward.

    For each element of the input sequence, each layer computes

        h_t = nonlinearity(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)

    where x_t is the layer's input at time t (the previous layer's output for layers after
    the first) and h_{t-1} the layer's state at t-1 (hx, or zeros, at t = 0).

    Args:
        input_size: number of features of the input x.
        hidden_size: number of features of the hidden state h.
        num_layers: number of stacked recurrent layers. Default 1.
        nonlinearity: 'tanh' or 'relu'. Default 'tanh'.
        bias: whether the layers have the biases b_ih and b_hh. Default True.
        batch_first: input and output are [B, T, feature] instead of [T, B, feature] (hx
            and h_n keep the batch in dimension 1). Default False.
        dropout: probability of zeroing each element of every layer's output but the last,
            in training mode. Default 0. On the CPU the masks are those torch.nn.RNN draws
            from the same generator state (same calls, shapes and order: one Bernoulli mask
            per layer from the default CPU generator, over [T, B, D*H] for a tensor input,
            over the packed data for a PackedSequence). On CUDA they come from torch's CUDA
            generator, while torch.nn.RNN on cuDNN draws from cuDNN's own dropout state:
            the same distribution, not the same masks.
        bidirectional: run a reverse direction too (D = 2). Default False.
        device, dtype: of the parameters (factory keyword arguments, as in torch.nn.RNN).
        truncation (keyword only): truncated BPTT in the fused backward; forward values
            never depend on it. None: full BPTT. An int K >= 1: the recurrent gradient is
            cut every K steps of each sample (what detaching the hidden state every K steps
            of a step loop gives). RandomTruncation(keep_prob, seed=None): each recurrent
            edge of each sample is kept with probability keep_prob and scaled by
            1/keep_prob, or cut (an unbiased gradient); seed=None draws a fresh seed from
            torch's default CPU generator at every forward (torch.manual_seed makes runs
            reproducible). Also an attribute; forward(..., truncation=...) overrides it
            for one call.

    Inputs: input, hx
        input: [T, B, input_size] (batch_first: [B, T, input_size]), [T, input_size]
            unbatched, or a torch.nn.utils.rnn.PackedSequence.
        hx: [num_layers * D, B, hidden_size] ([num_layers * D, hidden_size] unbatched), the
            initial state of each layer and direction in the order (layer 0, layer 0
            reverse, layer 1, ...); None means zeros.

    Outputs: output, h_n
        output: [T, B, D * hidden_size] (batch_first: [B, T, D * hidden_size]), the last
            layer's h_t of both directions (forward first); a PackedSequence for a packed
            input.
        h_n: [num_layers * D, B, hidden_size], each layer's and direction's final state
            (for a packed input, at each sequence's own last step).

    Attributes:
        weight_ih_l{k}[_reverse]: [hidden_size, input_size] for k = 0, else
            [hidden_size, D * hidden_size].
        weight_hh_l{k}[_reverse]: [hidden_size, hidden_size].
        bias_ih_l{k}[_reverse], bias_hh_l{k}[_reverse]: [hidden_size].
        All initialized from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), in registration
        order, as torch.nn.RNN does (the same draws for the same generator state).
        backend: which implementation of the layer ops runs: None (the input device's own:
            the CPU kernels or the CUDA kernels), or "emulated" (the CUDA kernels run on CPU
            tensors by the SIMT emulator, for testing them without a GPU). Not a
            constructor argument, so the constructor stays torch.nn.RNN's; set it on an
            instance.
        path, stack, side_by_side: the GPU kernels' recurrence path (rnn_fused.plan),
            whether a unidirectional float32 stack runs its recurrences in one launch each
            (rnn_fused.functional.rnn's `stack`), and whether a bidirectional layer's two
            directions run at once, on the GPU kernels each on half the SMs, on the CPU each
            time loop on a thread (its `side_by_side`); None: the planner's choice. Set on an
            instance, like backend.
        packed_layout: whether a PackedSequence on the CPU kernels runs in its packed layout
            itself (True, the default: each layer's projection and gradients products of the
            packed rows, no padded batch; recorded gradient norms included) or through the
            padded batch (False: to compare or time the two). Set on an instance, like backend.

    Under torch.autocast the layers run in the autocast dtype, like torch.nn.RNN (float64
    tensors are left alone). torch.compile(fullgraph=True) traces the module without a
    graph break, randomized truncation included. rnn_fused.record_gradients(module) records
    the per-step gradient norms and the parameter gradients' squared norms that the fused
    backward reduces in the same pass (eager mode only).

    Example::

        >>> rnn = rnn_fused.RNN(10, 20, num_layers=2, truncation=rnn_fused.RandomTruncation(0.9))
        >>> output, h_n = rnn(torch.randn(5, 3, 10), torch.randn(2, 3, 20))
        >>> output.shape, h_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    backend: str | None = None
    # The GPU kernels' recurrence path ('block', 'cluster', 'grid', 'stepwise'), or None for the
    # planner's choice (rnn_fused.plan). Like backend, set on an instance.
    path: str | None = None
    # Whether a unidirectional stack's recurrences run in one launch each on the GPU kernels
    # (functional.rnn's `stack`): None where the planner predicts it faster, True or False.
    stack: bool | None = None
    # Whether a bidirectional layer's directions run at once: on the GPU kernels each planned for
    # half the SMs, on the CPU each time loop on a thread (functional.rnn's `side_by_side`): None
    # where that is priced (GPU) or sized (CPU) to be faster.
    side_by_side: bool | None = None
    # Whether a PackedSequence runs in its packed layout itself where the call allows it (the CPU
    # backend's loops, no stack: functional.runs_packed_layout):
    # inference in one op, training a layer at a time. False: always through the padded batch (to
    # compare or time the two routes). Like backend, set on an instance.
    packed_layout: bool = True
    # The GradientRecorder of an enclosing record_gradients(self) block, or None.
    _gradient_recorder = None
    # What a subclass's _run passes functional.rnn as layer_fn in place of the fused layer op (the
    # test tools' step loop over stock torch ops, rnn_fused.tools.testing), or None: the fused
    # layers, which alone run a PackedSequence in the packed layout (_forward_packed).
    _layer_fn = None

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: torch.device | str | int | None = None, dtype: torch.dtype | None = None, *,
                 truncation: int | RandomTruncation | None = None, **unsupported) -> None:
        # `unsupported` only lets proj_size (which nn.RNN accepts to reject) meet nn.RNN's
        # error; it is left out of the signature shown (see below the class).
        if "proj_size" in unsupported:
            raise ValueError(_PROJ_SIZE_MESSAGE)
        for name in unsupported:
            raise TypeError(f"RNNBase.__init__() got an unexpected keyword argument '{name}'")
        check_truncation(truncation)
        if nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__()
        self.nonlinearity = nonlinearity
        self.mode = mode
        self._build(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device, dtype)
        self.truncation = truncation

    @property
    def truncation(self):
        return self._truncation

    @truncation.setter
    def truncation(self, value) -> None:
        check_truncation(value)
        self._truncation = value

    def _build(self, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, device,
               dtype) -> None:
        # Same order of assignments and checks as nn.RNNBase, so that the same bad argument
        # fails with the same exception first.
        factory_kwargs = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = 0
        if (not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1
                or isinstance(dropout, bool)):
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so "
                          "non-zero dropout expects num_layers greater than 1, but got "
                          f"dropout={dropout} and num_layers={num_layers}", stacklevel=3)
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")

        directions = 2 if bidirectional else 1
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            layer_input_size = input_size if layer == 0 else hidden_size * directions
            for direction in range(directions):
                suffix = "_reverse" if direction == 1 else ""
                shapes = {f"weight_ih_l{layer}{suffix}": (hidden_size, layer_input_size),
                          f"weight_hh_l{layer}{suffix}": (hidden_size, hidden_size)}
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (hidden_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (hidden_size,)
                for name, shape in shapes.items():
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                self._flat_weights_names.extend(shapes)
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.RNN's init: every parameter uniform in ±1/sqrt(hidden_size), registration order."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """No-op, kept so code written for nn.RNN (which repacks weights for cuDNN) runs."""

    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        # Registered parameters straight from _parameters (Module.__getattr__ per weight is a
        # measurable part of a short call); getattr where something took a name over: a
        # parametrization's property, weight_norm's recomputed attribute.
        registered = self._parameters
        return [[registered[name] if name in registered else getattr(self, name) for name in names]
                for names in self._all_weights]

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        s = s.format(**self.__dict__)
        if self.truncation is not None:
            s += f", truncation={self.truncation!r}"
        return s

    # --- conversion --------------------------------------------------------------------

    def _config(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, nonlinearity=self.nonlinearity, bias=self.bias,
                    batch_first=self.batch_first, dropout=self.dropout,
                    bidirectional=self.bidirectional)

    @classmethod
    def from_torch(cls, module: nn.RNN) -> RNN:
        """A copy of a torch.nn.RNN (configuration, weights, device, dtype, training mode)."""
        if not isinstance(module, nn.RNN):
            raise TypeError(f"from_torch expects a torch.nn.RNN, got {type(module).__name__}")
        first = module.weight_ih_l0
        with warnings.catch_warnings():
            # The dropout/num_layers warning was already given when `module` was built.
            warnings.simplefilter("ignore", UserWarning)
            converted = cls(module.input_size, module.hidden_size, module.num_layers,
                            module.nonlinearity, module.bias, module.batch_first,
                            module.dropout, module.bidirectional,
                            device=first.device, dtype=first.dtype)
        converted.load_state_dict(module.state_dict())
        return converted.train(module.training)

    def to_torch(self) -> nn.RNN:
        """A torch.nn.RNN with this module's configuration, weights, device, dtype and mode."""
        first = self.weight_ih_l0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            converted = nn.RNN(**self._config(), device=first.device, dtype=first.dtype)
        converted.load_state_dict(self.state_dict())
        return converted.train(self.training)

    # --- forward -----------------------------------------------------------------------

    # nn.RNN's argument checks, public under the same names and signatures.

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        weight_dtype = self.weight_ih_l0.dtype
        if input.dtype != weight_dtype and _ops.autocast_dtype(_ops.device_type_of(input)) is None:
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({input.dtype})")
        expected_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError("input.size(-1) must be equal to input_size. "
                               f"Expected {self.input_size}, got {input.size(-1)}")

    def get_expected_hidden_size(self, input: Tensor,
                                 batch_sizes: Tensor | None) -> tuple[int, int, int]:
        if batch_sizes is not None:
            mini_batch = int(batch_sizes[0])
        else:
            mini_batch = input.size(0) if self.batch_first else input.size(1)
        directions = 2 if self.bidirectional else 1
        return (self.num_layers * directions, mini_batch, self.hidden_size)

    def check_hidden_size(self, hx: Tensor, expected_hidden_size: tuple[int, int, int],
                          msg: str = "Expected hidden size {}, got {}") -> None:
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(self, input: Tensor, hidden: Tensor | None,
                           batch_sizes: Tensor | None) -> None:
        """input: batched [T,B,I] / [B,T,I], or packed data [N,I] with its batch_sizes."""
        self.check_input(input, batch_sizes)
        if hidden is not None:  # None stands for the zeros nn.RNN would build, which fit
            self.check_hidden_size(hidden, self.get_expected_hidden_size(input, batch_sizes))

    def permute_hidden(self, hx: Tensor, permutation: Tensor | None) -> Tensor:
        if permutation is None:
            return hx
        return hx.index_select(1, permutation)

    def _check_kernel_args(self, input: Tensor, hx: Tensor | None, packed: bool) -> None:
        """The checks nn.RNN leaves to its ATen kernel, in its order, with its messages."""
        if hx is not None and hx.device != input.device:
            if packed:
                raise RuntimeError(
                    f"Tensor on device {input.device} is not on the expected device {hx.device}!")
            raise RuntimeError("Input and hidden tensors are not at the same device, found input "
                               f"tensor at {input.device} and hidden tensor at {hx.device}")
        if not packed and input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        # nn.RNN meets these in its first matrix products (input, then hx, times a weight);
        # without autocast a mismatched input was already rejected by check_input.
        autocast_dtype = _ops.autocast_dtype(_ops.device_type_of(input))
        weight_dtype = _compute_dtype(self.weight_ih_l0.dtype, autocast_dtype)
        for operand in (input, hx):
            if operand is None:
                continue
            operand_dtype = _compute_dtype(operand.dtype, autocast_dtype)
            if operand_dtype != weight_dtype:
                raise RuntimeError("mat1 and mat2 must have the same dtype, but got "
                                   f"{_scalar_type_name(operand_dtype)} and "
                                   f"{_scalar_type_name(weight_dtype)}")

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | None = None, *,
                truncation: int | RandomTruncation | None | _ModuleSetting = MODULE_SETTING
                ) -> tuple[Tensor | PackedSequence, Tensor]:
        """(output, h_n) for input [T, B, input_size] ([B, T, input_size] with batch_first),
        [T, input_size] unbatched, or a PackedSequence, and hx [num_layers * D, B,
        hidden_size] or None (zeros); see the class docstring for the shapes.

        truncation: this call's truncated BPTT (None, an int K >= 1 or a RandomTruncation),
        overriding the module's; MODULE_SETTING (the default) uses self.truncation."""
        if truncation is MODULE_SETTING:
            truncation = self.truncation
        else:
            check_truncation(truncation)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx, truncation)
        if input.dim() not in (2, 3):
            raise ValueError(f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError("For unbatched 2-D input, hx should also be 2-D but got "
                                       f"{hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        self.check_forward_args(input, hx, None)
        self._check_kernel_args(input, hx, packed=False)
        time_major = input.transpose(0, 1) if self.batch_first else input
        output, h_n = self._run(time_major, hx, None, truncation, batch_order=None)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            return output.squeeze(batch_dim), h_n.squeeze(1)
        return output, h_n

    def _forward_packed(self, input: PackedSequence, hx: Tensor | None, truncation):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None:
            # hx rows follow the caller's batch order; the packed data is sorted by length.
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data, hx, batch_sizes)
        self._check_kernel_args(data, hx, packed=True)
        # (a recorder's sinks are Python side effects: under torch.compile the padded route says so)
        if (self.packed_layout and self._layer_fn is None
                and (self._gradient_recorder is None or not torch.compiler.is_compiling())
                and functional.runs_packed_layout(data, self.backend, self.path, self.stack)):
            # The packed layout itself: inference in one op, training a layer at a time. The padded
            # route would draw a RandomTruncation's seed (rnn()): drawn here too, so that torch's
            # generator ends the call in the same state.
            truncation = resolve_truncation(truncation)
            if functional.wants_gradients(data, hx, self.all_weights):
                record = None
                if self._gradient_recorder is not None:
                    batch = int(batch_sizes[0])
                    lengths = (batch_sizes.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
                    record = ForwardRecord(self.num_layers, 2 if self.bidirectional else 1, batch_sizes.numel(),
                                           batch, self._all_weights, unsorted_indices, lengths, truncation)
                    self._gradient_recorder.records.append(record)
                output, h_n = functional.packed_training(data, batch_sizes, hx, self.all_weights, self.num_layers,
                                                         self.bidirectional, self.nonlinearity, self.dropout,
                                                         self.training, backend=self.backend,
                                                         side_by_side=self.side_by_side, truncation=truncation,
                                                         record=record)
            else:
                output, h_n = functional.packed_inference(data, batch_sizes, hx, self.all_weights, self.num_layers,
                                                          self.bidirectional, self.nonlinearity, self.dropout,
                                                          self.training, backend=self.backend,
                                                          side_by_side=self.side_by_side)
            return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(h_n, unsorted_indices))
        padded, lengths, positions = functional.packed_to_padded(data, batch_sizes)
        output, h_n = self._run(padded, hx, lengths, truncation, batch_order=unsorted_indices)
        packed_output = PackedSequence(functional.padded_to_packed_data(output, positions),
                                       batch_sizes, sorted_indices, unsorted_indices)
        return packed_output, self.permute_hidden(h_n, unsorted_indices)

    def _run(self, time_major: Tensor, hx: Tensor | None, lengths: Tensor | None, truncation,
             batch_order: Tensor | None):
        """time_major [T,B,I] padded; lengths [B] or None; batch_order: the padded column of
        each of the caller's samples (a PackedSequence's unsorted_indices) or None."""
        # Under autocast the layer op casts its own arguments (its autocast kernel, _ops.py).
        weights = self.all_weights
        record = None
        if self._gradient_recorder is not None:
            truncation = resolve_truncation(truncation)  # the seed drawn now is the one recorded
            record = ForwardRecord(self.num_layers, 2 if self.bidirectional else 1, time_major.shape[0],
                                   time_major.shape[1], self._all_weights, batch_order, lengths, truncation)
            self._gradient_recorder.records.append(record)
        return functional.rnn(time_major.contiguous(), hx, weights, self.num_layers, self.bidirectional,
                              self.nonlinearity, self.dropout, self.training, lengths,
                              backend=self.backend, path=self.path, truncation=truncation, record=record,
                              stack=self.stack, side_by_side=self.side_by_side)


def _compute_dtype(dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype autocast gives a tensor of `dtype` (_ops.autocast_cast): floating tensors
    other than float64 take the autocast dtype; others keep theirs."""
    if autocast_dtype is not None and dtype.is_floating_point and dtype != torch.float64:
        return autocast_dtype
    return dtype


# The signature shown (inspect.signature, help) is nn.RNN's plus truncation, without the
# catch-all that only exists to reject proj_size with nn.RNN's message.
RNN.__init__.__signature__ = inspect.signature(RNN.__init__).replace(
    parameters=[p for p in inspect.signature(RNN.__init__).parameters.values() if p.kind != p.VAR_KEYWORD])
