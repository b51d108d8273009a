"""Autograd for one fused RNN layer, and the composition of layers and directions."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch import Tensor

from . import _ops, launch_plan
from .launch_plan import log_layer_plan
from .reference import reference_layer
from .truncation import TruncationArgs, check_truncation, resolve_truncation


def _differentiable_backward(grad_output: Tensor, grad_h_n: Tensor, needs, inputs: _ops.LayerInputs,
                             options: _ops.LayerOptions) -> list:
    """Gradient with a graph of its own (create_graph=True), for double backward: autograd
    through reference.py's step loop, with the truncation's edge scales. needs: which of
    (input, hx, weight_ih, weight_hh, bias_ih, bias_hh) to differentiate. Returns those six
    gradients (None where not needed)."""
    args = list(inputs[:6])
    scales = None
    truncation = options.truncation
    if not truncation.full:
        steps, batch = inputs.input.shape[0], inputs.input.shape[1]
        scales = torch.ops.rnn_fused.edge_scales(steps, batch, truncation.every, truncation.keep_prob,
                                                 truncation.seed_int(), options.layer, options.reverse)
        scales = scales.to(inputs.input.device, inputs.input.dtype)
    with torch.enable_grad():
        out, h_n = reference_layer(*args, inputs.lengths, options.nonlinearity, options.reverse, scales)
        return list(_gradients_with_graph((out, h_n), (grad_output, grad_h_n), args, needs))


def _backward_with_graph(grad_output, grad_h_n, needs, *forward_args):
    """Kernel of rnn_fused::rnn_layer_backward_with_graph, which the op's C++ autograd
    (csrc/layer_autograd.cpp) calls for a double backward. Registered as
    CompositeImplicitAutograd: autograd records the ATen ops it runs."""
    inputs, options = _ops.split_forward_arguments(forward_args)
    grads = _differentiable_backward(grad_output, grad_h_n, needs, inputs, options)
    return [grad if grad is not None else grad_output.new_empty(0) for grad in grads]


_library = torch.library.Library("rnn_fused", "IMPL")
_library.impl("rnn_layer_backward_with_graph", _backward_with_graph, "CompositeImplicitAutograd")


_NO_GRAPH_WHILE_RECORDING = ("rnn_fused.record_gradients: gradient norms are reduced by the fused backward, "
                              "which has no graph of its own; record without create_graph=True")


class _RecordingLayer(torch.autograd.Function):
    """One layer whose backward hands the gradient norms the fused backward reduces to a sink
    (recording.LayerSink). Eager only: the norms leave the backward as a Python side effect,
    which a compiled graph would not replay. Every other call differentiates through the op's
    own autograd (csrc/layer_autograd.cpp), the same ops in C++."""

    @staticmethod
    def forward(ctx, *args):
        """args: the LayerInputs fields, then the LayerOptions and the sink."""
        *inputs, options, sink = args
        output = _ops.layer_forward(_ops.LayerInputs(*inputs), options)  # grad mode is off here: no graph node
        ctx.save_for_backward(*inputs, output[0])
        ctx.options = options
        ctx.sink = sink
        ctx.set_materialize_grads(False)  # (as the op's autograd node: an unused h_n costs no zeros)
        return output

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_GRAPH_WHILE_RECORDING)
        *saved, out = ctx.saved_tensors
        if grad_output is None:  # only h_n used
            grad_output = torch.zeros_like(out)
        inputs = _ops.LayerInputs(*saved)
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1] and inputs.hx is not None, needs[2], needs[3], needs[4] or needs[5]]
        (grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias, step_norms, grad_sq_norms,
         nonfinite) = _ops.layer_backward(grad_output, grad_h_n, out, mask, True, inputs, ctx.options)
        grads = (
            grad_input if needs[0] else None,
            grad_hx if needs[1] else None,
            grad_w_ih if needs[2] else None,
            grad_w_hh if needs[3] else None,
            # grad_bias [2,H]: a row for each bias, in memory of its own, so that autograd hands
            # each bias its gradient without a copy and the recorded norm stays tied to it
            # (recording.py).
            grad_bias[0] if needs[4] else None,
            grad_bias[1] if needs[5] else None,
        )
        ctx.sink(step_norms, grad_sq_norms, nonfinite, grads)
        # No gradient for lengths, the options and the sink.
        return grads + (None, None, None)


def rnn_layer(input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor | None = None,
              nonlinearity: str = "tanh", reverse: bool = False, *, backend: str | None = None,
              path: str | None = None, truncation=None, layer: int = 0, sink=None,
              side_by_side: int = 1) -> tuple[Tensor, Tensor]:
    """One fused layer and direction.

    input [T,B,I] time-major; hx [B,H] or None (zeros); lengths int64 [B] or None (all T).
    The input past a sample's length changes no result where it is finite (the GEMMs may
    multiply it by zero: NaN or inf there can reach weight_ih's gradient).
    backend: None (the input device's own: 'cpu' or 'cuda'), or 'emulated' (the CUDA
    kernels run on CPU tensors by the SIMT emulator, rnn_fused.simt).
    path: for the GPU kernels ('cuda', 'emulated'), force a recurrence path: 'block',
    'cluster', 'grid' or 'stepwise' (rnn_fused.plan); None lets the planner choose. A path
    that cannot run the shape raises ValueError naming the limit, before anything runs.
    side_by_side: for the GPU kernels, how many recurrences run side by side on the device
    (rnn() passes 2 for the directions of a bidirectional layer that it runs at once): the
    planner gives this one 1/side_by_side of the SMs.
    truncation: truncated BPTT in the fused backward (forward values never depend on it):
    None (full), an int K >= 1 (cut the recurrent gradient every K steps), a
    RandomTruncation (see its docstring), or the already resolved TruncationArgs; `layer`
    keys the randomized draws (with the direction).
    Under torch.autocast the op runs in the autocast dtype (float64 arguments excepted).
    sink: where the backward hands the norms it reduces (recording.LayerSink), or None.
    On the GPU kernels with path=None the batch may run as two layer ops, one after the other,
    where the cost model prices that faster (launch_plan.batch_pieces: a last wave of few groups).
    Returns output [T,B,H] (zeros at t >= lengths[b]) and h_n [B,H].
    """
    args = truncation if isinstance(truncation, TruncationArgs) else resolve_truncation(truncation)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"rnn_layer: layer must be an int >= 0, got {layer!r}")
    pieces = _batch_pieces(input, hx, (weight_ih, weight_hh, bias_ih, bias_hh), lengths, backend, path, args,
                           sink, side_by_side)
    if len(pieces) > 1:
        return _split_layer(pieces, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                            reverse, backend, args, layer)
    return _one_layer(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity, reverse, backend,
                      path, args, layer, sink, side_by_side)


def _batch_pieces(input: Tensor, hx: Tensor | None, weights, lengths: Tensor | None, backend: str | None,
                  path: str | None, truncation: TruncationArgs, sink, side_by_side: int) -> tuple[int, ...]:
    """launch_plan.batch_pieces for a call of rnn_layer, or the whole batch where the call is not
    split (_may_split)."""
    if not _may_split(input, hx, weights[1], lengths, backend, path, truncation, sink, side_by_side):
        return (input.shape[1],) if input.dim() == 3 else (0,)
    steps, batch, input_size = input.shape
    device = "emulated" if backend == "emulated" else input.device
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, hx, *weights))
    pieces = launch_plan.batch_pieces(steps, batch, input_size, weights[1].shape[0], input.dtype, device, backward)
    if len(pieces) > 1 and input.is_cuda:
        launch_plan.log_split_once(pieces, (str(input.device), input.dtype, steps, batch, input_size,
                                            weights[1].shape[0], backward))
    return pieces


def _may_split(input: Tensor, hx: Tensor | None, weight_hh: Tensor, lengths: Tensor | None, backend: str | None,
               path: str | None, truncation: TruncationArgs, sink, side_by_side: int) -> bool:
    """Whether a call of rnn_layer must ask launch_plan.batch_pieces how to split its batch: not
    on the CPU loops, under torch.compile, with a forced path or half the SMs, where a sample's
    results would depend on its index in the batch (randomized truncation draws by it) or the
    backward's norms must reach one sink; and only where the layer's plan runs in waves
    (launch_plan.runs_in_waves, which depends on neither the steps nor the input size)."""
    emulated = backend == "emulated"
    if (input.dim() != 3 or path is not None or side_by_side != 1 or sink is not None or truncation.randomized
            or not (input.is_cpu if emulated else input.is_cuda and backend in (None, "cuda"))
            or torch.compiler.is_compiling()):
        return False
    steps, batch = input.shape[0], input.shape[1]
    # Malformed arguments are the op's to reject, with its messages: never split them.
    if (batch < 2 or steps < 1 or weight_hh.dim() != 2 or weight_hh.shape[0] < 1
            or not input.dtype.is_floating_point or (hx is not None and hx.shape[:1] != (batch,))
            or (lengths is not None and lengths.shape != (batch,))):
        return False
    # (In the input's dtype: under autocast float16 and bfloat16 plan as float32 does.)
    return launch_plan.runs_in_waves(weight_hh.shape[0], batch, input.dtype, "emulated" if emulated else input.device)


def _split_layer(pieces: tuple[int, ...], input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor,
                 bias_ih: Tensor | None, bias_hh: Tensor | None, lengths: Tensor | None, nonlinearity: str,
                 reverse: bool, backend: str | None, truncation: TruncationArgs, layer: int) -> tuple[Tensor, Tensor]:
    """rnn_layer over the batch's samples in pieces (launch_plan.batch_pieces), one layer op each,
    one after the other. Each sample's values are its own whatever the piece (no kernel mixes
    samples), up to the summation order of the whole-sequence GEMMs; autograd adds the pieces'
    weight gradients and joins their input gradients."""
    count = len(pieces)
    states = (None,) * count if hx is None else hx.split(pieces, dim=0)
    piece_lengths = (None,) * count if lengths is None else lengths.split(pieces)
    results = [_one_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, piece_length, nonlinearity, reverse,
                          backend, None, truncation, layer, None, 1)
               for x, h0, piece_length in zip(input.split(pieces, dim=1), states, piece_lengths)]
    return torch.cat([out for out, _ in results], dim=1), torch.cat([h_n for _, h_n in results], dim=0)


def _one_layer(input: Tensor, hx: Tensor | None, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor | None,
               bias_hh: Tensor | None, lengths: Tensor | None, nonlinearity: str, reverse: bool,
               backend: str | None, path: str | None, args: TruncationArgs, layer: int, sink,
               side_by_side: int) -> tuple[Tensor, Tensor]:
    """rnn_layer's one op call (after its checks; args resolved)."""
    log_layer_plan(input, weight_hh.shape[0], path, side_by_side)
    inputs = _ops.LayerInputs(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths)
    options = _ops.LayerOptions.make(nonlinearity, reverse, args, layer, backend, path, side_by_side)
    if sink is None:
        # The op's own autograd (C++); under autocast its Autocast kernel casts first.
        return _ops.layer_forward(inputs, options)
    if torch.compiler.is_compiling():
        raise RuntimeError("rnn_fused.record_gradients does not work under torch.compile: the norms leave "
                           "the backward as a Python side effect; record in eager mode")
    # Cast outside the autograd.Function, so that its backward sees the inputs the op ran on
    # (inside it the op's autocast kernel would cast behind the Function's back).
    return _RecordingLayer.apply(*_ops.autocast_layer_inputs(inputs), options, sink)


def rnn(input: Tensor, hx: Tensor | None, weights, num_layers: int, bidirectional: bool,
        nonlinearity: str = "tanh", dropout: float = 0.0, training: bool = False,
        lengths: Tensor | None = None, layer_fn=None, *, backend: str | None = None, path: str | None = None,
        truncation=None, record=None, stack: bool | None = None,
        side_by_side: bool | None = None) -> tuple[Tensor, Tensor]:
    """Multi-layer, optionally bidirectional Elman RNN over a time-major padded batch.

    input [T,B,I]; hx [num_layers*D,B,H] or None (zeros), D = 2 if bidirectional else 1;
    weights: one sequence per (layer, direction) in nn.RNN's order (l0, l0_reverse, l1, ...),
    each (weight_ih, weight_hh) or (weight_ih, weight_hh, bias_ih, bias_hh);
    lengths int64 [B] (valid steps per sample, on the CPU or input's device; the CPU costs no
    host synchronisation) or None (all T); the input past a sample's length must be finite, as
    for rnn_layer (a PackedSequence through RNN pads with zeros).
    Dropout with probability `dropout` is applied to every layer's output but the last,
    only when `training`, with nn.RNN's random draws (dropout_between_layers).
    truncation: None, an int K >= 1 or a RandomTruncation (as for rnn_layer), for every
    layer and direction (a RandomTruncation without seed draws one seed for this call).
    record: a recording.ForwardRecord whose sinks receive each layer's gradient norms, or None.
    `layer_fn` replaces the fused layer (reference_layer's signature): tests pass the step
    loop of reference.py to compose stock torch ops the same way; it takes no truncation.
    stack: whether a unidirectional stack's forward recurrences run in one launch of the GPU
    kernels, and its backward recurrences in another (layer l a few steps behind layer l - 1;
    _LayerStack): None where the cost model predicts it faster and the call allows it (float32,
    eager mode, no autocast; H <= 128 on the block path, path None or 'block'; beyond, the
    cluster path's stack, path None or 'cluster', whose backward with recorded norms runs the
    layers one by one),
    False never, True always (ValueError saying why a call cannot). With
    dropout in training the stack draws the layers' masks first, as the layers one by one would
    (the same calls, shapes and order), and applies each to its layer's output where the next
    layer reads it. The results are the layers' run one by one, within rounding.
    side_by_side: whether the two directions of a bidirectional layer run at once or one after the
    other: on the GPU kernels each planned for half the SMs (rnn_layer's side_by_side=2; on CUDA
    the reverse one's launches on a side stream), None where the planner prices them faster at
    once (directions_side_by_side); on the CPU kernels each time loop on a thread of torch's team,
    None where a direction's loop is long enough (_cpu_directions_on_two_threads); True, False.
    Either way the results are those of each direction's layer op planned so. In eager mode the
    GPU kernels run a layer's directions in one op pair (rnn_directions_forward / _backward, at
    once or not; not where the batch runs in pieces, launch_plan.batch_pieces), as do the CPU
    kernels where they run them at once. Where every layer takes the same route (_layers_route),
    the loop over layers runs in one op call, rnn_layers_forward (C++, the same ops in the same
    order: the same values bit for bit, less host time).
    Returns output [T,B,D*H] (zeros at t >= lengths[b]) and h_n [num_layers*D,B,H].
    """
    directions = 2 if bidirectional else 1
    if len(weights) != num_layers * directions:
        raise ValueError(f"expected {num_layers * directions} weight groups "
                         f"(num_layers={num_layers}, bidirectional={bidirectional}), got {len(weights)}")
    if hx is not None and input.dim() == 3 and weights and len(weights[0]) >= 2:
        # nn.RNN's checks and messages (RNN.forward's, for a module), before any path takes a slice
        # of hx: an extra layer's state would otherwise go unnoticed, a short one fail in whichever
        # op reads it first.
        if hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        expected = (num_layers * directions, input.shape[1], weights[0][1].shape[0])
        if tuple(hx.shape) != expected:
            raise RuntimeError(f"Expected hidden size {expected}, got {list(hx.shape)}")
    check_truncation(truncation)
    if layer_fn is not None and (truncation is not None or record is not None):
        raise ValueError("rnn: a custom layer_fn takes neither truncation nor record")
    if stack not in (None, True, False):
        raise ValueError(f"rnn: stack must be None, True or False, got {stack!r}")
    if side_by_side not in (None, True, False):
        raise ValueError(f"rnn: side_by_side must be None, True or False, got {side_by_side!r}")
    args = resolve_truncation(truncation)
    if stack is not False:
        why_not = _why_no_stack(input, hx, weights, num_layers, bidirectional, layer_fn, backend, path,
                                decide=stack is None)
        if why_not is None:
            p = dropout if training else 0.0
            sinks = None if record is None else [record.sink(layer, 0, tuple(weights[layer]))
                                                 for layer in range(num_layers)]
            return _run_stack(input, hx, weights, num_layers, nonlinearity, lengths, backend, path, args, p, sinks)
        if stack:
            raise ValueError(f"rnn: stack=True, but this call cannot run its layers in one launch: {why_not}")
    directions_op = _layers_route(input, hx, weights, num_layers, bidirectional, dropout, training, lengths,
                                  layer_fn, backend, path, args, record, side_by_side)
    if directions_op is not None:
        # Every layer takes the same route: the loop below in one op call (C++), the same layer
        # ops in the same order (host time: a short call's whole cost).
        if directions_op == 0:
            log_layer_plan(input, weights[0][1].shape[0], path, 1)
        return _ops.ops.rnn_layers_forward(input, hx, [w for group in weights for w in group], len(weights[0]) == 4,
                                           num_layers, bidirectional, lengths, nonlinearity, args.every,
                                           args.keep_prob, args.seed_tensor(), backend, path, directions_op,
                                           dropout if training else 0.0)
    layer_input = input
    state_groups = []  # the final states, [directions run in one op, B, H] per op (or per direction)
    for layer in range(num_layers):
        # A bidirectional layer's directions in one op pair (rnn_directions_forward / _backward): on the
        # GPU kernels in eager mode at once (each planned for half the SMs, the reverse one's launches
        # on a side stream) or one after the other, on the CPU kernels at once (each time loop on a
        # thread of torch's team); else in two layer ops, one after the other.
        share, in_one_op = 1, False
        if directions == 2 and layer_fn is None:
            share, in_one_op = _directions_route(layer_input, None if hx is None else hx[2 * layer], weights[2 * layer],
                                                 lengths, backend, path, args, side_by_side)

        def run_direction(direction):
            index = layer * directions + direction
            weight_ih, weight_hh, *biases = weights[index]
            bias_ih, bias_hh = biases if biases else (None, None)
            h0 = None if hx is None else hx[index]
            reverse = direction == 1
            if layer_fn is not None:
                return layer_fn(layer_input, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                                reverse)
            sink = None if record is None else record.sink(layer, direction, tuple(weights[index]))
            return rnn_layer(layer_input, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                             reverse, backend=backend, path=path, truncation=args, layer=layer, sink=sink,
                             side_by_side=share)

        if in_one_op:
            tensors = _autocast_directions((layer_input, None if hx is None else hx[2 * layer:2 * layer + 2],
                                            *weights[2 * layer], *weights[2 * layer + 1]))
            has_biases = len(weights[2 * layer]) == 4
            if record is None:  # the op pair's own autograd (C++)
                layer_output, layer_states = torch.ops.rnn_fused.rnn_directions_forward(
                    tensors[0], tensors[1], list(tensors[2:]), has_biases, lengths, nonlinearity, args.every,
                    args.keep_prob, args.seed_tensor(), layer, backend, path, share)
            else:
                sinks = tuple(record.sink(layer, direction, tuple(weights[2 * layer + direction]))
                              for direction in range(2))
                config = _DirectionsConfig(nonlinearity, backend, path, share, args, layer, has_biases, sinks)
                layer_output, layer_states = _LayerDirections.apply(tensors[0], tensors[1], lengths, config,
                                                                    *tensors[2:])
            state_groups.append(layer_states)
        else:
            results = [run_direction(direction) for direction in range(directions)]
            direction_outputs = [out for out, _ in results]
            state_groups.extend(h_n.unsqueeze(0) for _, h_n in results)
            layer_output = (direction_outputs[0] if directions == 1
                            else torch.cat(direction_outputs, dim=2))
        if dropout > 0 and training and layer < num_layers - 1:
            layer_output = dropout_between_layers(layer_output, dropout, lengths)
        layer_input = layer_output
    # One group needs no concatenation (a launch on a GPU): a one-layer model's h_n is its op's.
    h_n = state_groups[0] if len(state_groups) == 1 else torch.cat(state_groups)
    return layer_input, h_n


def _directions_route(layer_input: Tensor, hx_forward: Tensor | None, forward_weights, lengths: Tensor | None,
                      backend: str | None, path: str | None, args: TruncationArgs,
                      side_by_side: bool | None) -> tuple[int, bool]:
    """(share, in_one_op) of a bidirectional layer in rnn(): share, rnn_layer's side_by_side for
    each direction (2: each planned for half the SMs); in_one_op, whether the directions run in
    one call of the op pair (rnn_directions_forward) instead of two layer ops: on the GPU kernels
    in eager mode at once (the reverse one's launches on a side stream) or one after the other,
    on the CPU kernels at once (each time loop on a thread of torch's team). hx_forward and
    forward_weights: the forward direction's."""
    weight_hh = forward_weights[1]
    if _cpu_loops(layer_input, backend, path):
        return 1, side_by_side is not False and (side_by_side or _cpu_directions_on_two_threads(layer_input,
                                                                                               weight_hh))
    share = 1
    if side_by_side is not False:
        share = 2 if side_by_side else _directions_side_by_side(layer_input, weight_hh, path)
    in_one_op = _gpu_kernels_in_eager_mode(layer_input, backend) and (
        share == 2 or len(_batch_pieces(layer_input, hx_forward, forward_weights, lengths, backend, path, args, None,
                                        1)) == 1)
    return share, in_one_op


def _layers_route(input: Tensor, hx: Tensor | None, weights, num_layers: int, bidirectional: bool, dropout: float,
                  training: bool, lengths: Tensor | None, layer_fn, backend: str | None, path: str | None,
                  args: TruncationArgs, record, side_by_side: bool | None) -> int | None:
    """rnn_layers_forward's directions_op where rnn() can hand it all its layers, else None (the
    loop in Python). It can where every layer takes the route the first one takes: no custom
    layer_fn, no recorder (its sinks are Python; the op draws dropout between layers as
    dropout_between_layers does), eager mode without autocast (the directions' op pair is cast
    in Python), one weight layout,
    and no layer's batch in pieces (_may_split: only where the plan runs in waves, which the
    layers' shared hidden size and batch decide). Each layer's route depends on its input only
    through T, B, the device and the dtype, which every layer shares (_directions_route: the
    first layer's answer is every layer's). 0: each direction a layer op; 1 or 2: the directions'
    op pair with that side_by_side."""
    if (layer_fn is not None or record is not None or num_layers < 1 or input.dim() != 3
            or torch.compiler.is_compiling()
            or _ops.autocast_dtype(_ops.device_type_of(input)) is not None):
        return None
    width = len(weights[0])
    if width not in (2, 4) or any(len(group) != width for group in weights):
        return None
    if _may_split(input, None if hx is None else hx[0], weights[0][1], lengths, backend, path, args, None, 1):
        return None
    if not bidirectional:
        return 0
    share, in_one_op = _directions_route(input, None if hx is None else hx[0], weights[0], lengths, backend, path,
                                         args, side_by_side)
    if in_one_op:
        return share
    return 0 if share == 1 else None


def _why_no_stack(input: Tensor, hx: Tensor | None, weights, num_layers: int, bidirectional: bool, layer_fn,
                  backend: str | None, path: str | None, decide: bool) -> str | None:
    """None where rnn() may run the stack's forward in one launch (_LayerStack), else why not;
    with `decide`, also None only where the cost model predicts it faster."""
    if num_layers < 2 or bidirectional:
        return "it needs 2 or more layers in one direction (a bidirectional layer reads all of the layer below)"
    if layer_fn is not None:
        return "a custom layer_fn runs the layers one by one"
    emulated = backend == "emulated"
    if not (input.is_cpu if emulated else input.is_cuda and backend in (None, "cuda")):
        return "the stack runs on the GPU kernels (a CUDA input, or backend='emulated' with a CPU input)"
    if torch.compiler.is_compiling() or _ops.autocast_dtype(_ops.device_type_of(input)) is not None:
        return "it runs in eager mode without autocast"
    if decide and input.dim() == 3 and input.shape[0] > 0 and input.shape[1] > 0 and \
            input.dtype == torch.float32 and weights[0][1].dim() == 2:
        # The cost model first: at most shapes it keeps the layers one by one, and its answer is
        # cached per shape, where the checks below read every weight (about 5 us a call).
        why_not = _stack_cost_reason(input, weights[0][1].shape[0], num_layers, emulated, path, decide)
        if why_not is not None:
            return why_not
    hidden = weights[0][1].shape[0]
    float32 = [input] + ([] if hx is None else [hx]) + [w for group in weights for w in group]
    if any(t.dtype != torch.float32 or t.device != input.device for t in float32):
        return "it runs float32 tensors on one device"
    if input.dim() != 3 or input.shape[0] == 0 or input.shape[1] == 0:
        return "it needs a [T, B, I] input with T, B > 0"
    if any(len(group) != len(weights[0]) for group in weights) or \
            any(group[1].shape != (hidden, hidden) for group in weights) or \
            any(group[0].shape != (hidden, hidden) for group in weights[1:]):
        return "its layers must have one hidden size and all or none have biases"
    if hx is not None and hx.shape != (num_layers, input.shape[1], hidden):
        return f"hx must have shape [{num_layers}, {input.shape[1]}, {hidden}]"
    return _stack_cost_reason(input, hidden, num_layers, emulated, path, decide)


def _stack_cost_reason(input: Tensor, hidden: int, num_layers: int, emulated: bool, path: str | None,
                       decide: bool) -> str | None:
    """_why_no_stack's questions to the planner (cached per shape): whether the stack's kernel can
    run the shape on the path asked for, and with `decide` whether it is the faster."""
    stack_step_us, layers_step_us, measured, stack_path, lead_steps = _stack_step_costs(
        input.device, emulated, hidden, input.shape[1], num_layers)
    if stack_step_us is None:
        return layers_step_us  # the limit the stack's kernel exceeds
    if path not in (None, stack_path):
        return f"path={path!r} forces another kernel than the {stack_path} path's, whose stack this shape takes"
    steps = input.shape[0]
    if decide and not (steps + lead_steps) * stack_step_us < steps * layers_step_us:
        return ("the layers one after another measured faster" if measured else
                "the cost model predicts the layers one after another faster")
    return None


@functools.lru_cache(maxsize=1024)
def _stack_step_costs(device: torch.device, emulated: bool, hidden: int, batch: int, layers: int):
    """(the stack kernel's us per step, the layers' one after another per step, whether measured:
    under launch_plan.autotune, else predicted; the stack's path, its steps beyond T), or (None,
    why it cannot run, False, None, 0), asked of the planner once per shape in a process (the
    planner's settings clear it: launch_plan._apply_planner_setting)."""
    report = launch_plan.stack_plan(hidden, batch, 1, layers, "emulated" if emulated else device)
    if not report.feasible:
        return None, report.reason, False, None, 0
    steps = 1 + report.lead_steps  # (of the one-step plan)
    if report.measured_stack_us is not None:
        return report.measured_stack_us / steps, report.measured_layers_us, True, report.path, report.lead_steps
    return report.predicted_stack_us / steps, report.predicted_layers_us, False, report.path, report.lead_steps


def _run_stack(input: Tensor, hx: Tensor | None, weights, num_layers: int, nonlinearity: str,
               lengths: Tensor | None, backend: str | None, path: str | None, truncation,
               dropout: float, sinks) -> tuple[Tensor, Tensor]:
    if input.is_cuda:
        hidden, batch = weights[0][1].shape[0], input.shape[1]
        key = (str(input.device), input.dtype, hidden, batch, num_layers)
        if ("stack", key) not in launch_plan._logged_plan_keys:  # the common case: no plan query
            report = launch_plan.stack_plan(hidden, batch, 1, num_layers, input.device)
            launch_plan.log_stack_plan_once(report, 1, num_layers, key)
    flat = [w for group in weights for w in group]
    masks = None
    if dropout > 0:
        # Each layer's mask, drawn as dropout_between_layers draws it on that layer's output
        # (dropout of ones is its mask: 0 or 1 / (1 - p)), in layer order.
        ones = input.new_ones(input.shape[0], input.shape[1], weights[0][1].shape[0])
        masks = torch.stack([dropout_between_layers(ones, dropout, lengths) for _ in range(num_layers - 1)])
    output, h_n = _LayerStack.apply(input, hx, lengths, masks, (nonlinearity, backend, path, truncation, num_layers,
                                                                len(weights[0]) == 4, sinks), *flat)
    if output.grad_fn is None:
        # No backward will read the layers below: the top layer's output on its own, so that the
        # [L,T,B,H] outputs are freed now rather than kept alive by a view.
        output = output.clone()
    return output, h_n


def _backward_with_graph_if_asked(ctx, backward_with_graph, grad_output, grad_h_n):
    """In a Function's backward under create_graph=True (grad mode on): its differentiable
    backward, refused while the Function records norms (the sinks, last in ctx.config); else
    None, for its fused backward."""
    if not torch.is_grad_enabled():
        return None
    if ctx.config[-1] is not None:
        raise RuntimeError(_NO_GRAPH_WHILE_RECORDING)
    return backward_with_graph(ctx, grad_output, grad_h_n)


def _gradients_with_graph(outputs, cotangents, candidates, needs) -> tuple:
    """A Function's double-backward gradients from its recomputed outputs: for each candidate
    input (None where the input is no tensor) that autograd needs (needs_input_grad), its
    gradient with a graph of its own, zeros where it does not reach the outputs; None for the rest.
    A cotangent None (an unused output: the Functions leave such gradients unmaterialised) is zero."""
    cotangents = [torch.zeros_like(output) if c is None else c for output, c in zip(outputs, cotangents)]
    wanted = [i for i, (t, need) in enumerate(zip(candidates, needs)) if need and t is not None]
    grads = torch.autograd.grad(outputs, [candidates[i] for i in wanted], cotangents, create_graph=True,
                                allow_unused=True)
    result = [None] * len(candidates)
    for i, grad in zip(wanted, grads):
        result[i] = grad if grad is not None else torch.zeros_like(candidates[i])
    return tuple(result)


class _LayerStack(torch.autograd.Function):
    """A unidirectional stack whose forward and backward recurrences each run in one launch
    (rnn_fused::rnn_stack_forward / rnn_stack_backward): the gradients of the layers run one by
    one (rnn() with stack=False), with the same truncation draws (layer l's keyed as layer l's
    op keys them), within rounding. With create_graph=True it differentiates the layers run one
    by one instead (their ops' own double backward), recomputing the forward: the stack's saved
    outputs carry no graph. masks: the dropout masks [L-1,T,B,H] of the layers' outputs, or None;
    sinks: one recording.LayerSink per layer, handed the norms the backward reduces, or None."""

    @staticmethod
    def forward(ctx, input, hx, lengths, masks, config, *flat):
        nonlinearity, backend, path, truncation, num_layers, has_biases, _ = config
        outputs, h_n = torch.ops.rnn_fused.rnn_stack_forward(input, hx, list(flat), has_biases, lengths, nonlinearity,
                                                             backend, masks)
        ctx.save_for_backward(input, hx, lengths, masks, outputs, *flat)
        ctx.config = config
        # An unused output's gradient stays None (no zeros launched): the op reads an absent
        # h_n gradient as zero; an absent output gradient becomes zeros in the backward.
        ctx.set_materialize_grads(False)
        return outputs[num_layers - 1], h_n

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        with_graph = _backward_with_graph_if_asked(ctx, _LayerStack._backward_with_graph, grad_output, grad_h_n)
        if with_graph is not None:
            return with_graph
        sinks = ctx.config[-1]
        input, hx, lengths, masks, outputs, *flat = ctx.saved_tensors
        nonlinearity, backend, path, truncation, num_layers, has_biases, _ = ctx.config
        if grad_output is None:  # only h_n used
            grad_output = torch.zeros_like(outputs[num_layers - 1])
        per_layer = 4 if has_biases else 2
        needs = ctx.needs_input_grad
        mask = []
        for layer in range(num_layers):
            at = 5 + layer * per_layer  # this layer's weight_ih among the Function's inputs
            mask += [layer == 0 and needs[0], hx is not None and needs[1], needs[at], needs[at + 1],
                     has_biases and (needs[at + 2] or needs[at + 3])]
        grads = torch.ops.rnn_fused.rnn_stack_backward(
            grad_output, grad_h_n, outputs, mask, input, hx, list(flat), has_biases, lengths, nonlinearity,
            truncation.every, truncation.keep_prob, truncation.seed_tensor(), backend, masks, sinks is not None)
        per = 8 if sinks is not None else 5  # each layer's gradients, then its norms when recorded
        grad_input = grads[0] if needs[0] else None
        grad_weights = []
        for layer in range(num_layers):
            at = 5 + layer * per_layer
            _, grad_hx, grad_ih, grad_hh, grad_bias = grads[per * layer:per * layer + 5]
            layer_grads = [grad_ih if needs[at] else None, grad_hh if needs[at + 1] else None]
            if has_biases:  # each bias its own row of grad_bias [2,H]
                layer_grads += [grad_bias[0] if needs[at + 2] else None, grad_bias[1] if needs[at + 3] else None]
            if sinks is not None:
                step_norms, grad_sq_norms, nonfinite = grads[per * layer + 5:per * layer + 8]
                returned = (grad_input if layer == 0 else None, grad_hx if hx is not None and needs[1] else None)
                sinks[layer](step_norms, grad_sq_norms, nonfinite, returned + tuple(layer_grads))
            grad_weights += layer_grads
        grad_h = torch.stack(grads[1::per]) if hx is not None and needs[1] else None
        return (grad_input, grad_h, None, None, None, *grad_weights)

    @staticmethod
    def _backward_with_graph(ctx, grad_output, grad_h_n):
        input, hx, lengths, masks, _, *flat = ctx.saved_tensors
        nonlinearity, backend, path, truncation, num_layers, has_biases, _ = ctx.config
        per_layer = 4 if has_biases else 2
        candidates = [input, hx, None, None, None, *flat]
        # The layers one by one, each output times its mask where the next layer reads it.
        layer_input, states = input, []
        for layer in range(num_layers):
            weight_ih, weight_hh, *biases = flat[layer * per_layer:(layer + 1) * per_layer]
            out, state = rnn_layer(layer_input, None if hx is None else hx[layer], weight_ih, weight_hh,
                                   *(biases or (None, None)), lengths, nonlinearity, backend=backend, path=path,
                                   truncation=truncation, layer=layer)
            states.append(state)
            layer_input = out * masks[layer] if masks is not None and layer < num_layers - 1 else out
        output, h_n = layer_input, torch.stack(states)
        return _gradients_with_graph((output, h_n), (grad_output, grad_h_n), candidates, ctx.needs_input_grad)


def _cpu_loops(layer_input: Tensor, backend: str | None, path: str | None) -> bool:
    """Whether a bidirectional layer's directions can run their time loops on two CPU threads
    (_LayerDirections): the CPU backend's own loops, in eager mode without autocast (the
    ops have no fake or autocast kernels)."""
    return _cpu_backend_without_autocast(layer_input, backend, path) and not torch.compiler.is_compiling()


def _cpu_backend(layer_input: Tensor, backend: str | None, path: str | None) -> bool:
    """Whether a call runs the CPU backend's own loops (a CPU input, backend None or 'cpu', no GPU
    path)."""
    return layer_input.is_cpu and backend in (None, "cpu") and path is None


def _cpu_backend_without_autocast(layer_input: Tensor, backend: str | None, path: str | None) -> bool:
    """_cpu_backend, without autocast."""
    return _cpu_backend(layer_input, backend, path) and _ops.autocast_dtype("cpu") is None


def _gpu_kernels_in_eager_mode(layer_input: Tensor, backend: str | None) -> bool:
    """Whether a bidirectional layer runs on the GPU kernels (a CUDA input on backend None or
    'cuda', a CPU input on 'emulated') in eager mode, where its directions can run in one op pair
    (the ops have no fake kernels; autocast is applied before them, _autocast_directions)."""
    gpu_kernels = layer_input.is_cpu if backend == "emulated" else layer_input.is_cuda and backend in (None, "cuda")
    return gpu_kernels and not torch.compiler.is_compiling()


def _autocast_directions(tensors: tuple) -> tuple:
    """The layer's input, hx and both directions' weights as the layer op's autocast kernel casts
    its arguments (unchanged without autocast): the directions' op pair has no autocast kernel."""
    device_type = _ops.device_type_of(tensors[0])
    dtype = _ops.autocast_dtype(device_type, tensors[0].dtype)
    if dtype is None:
        return tensors
    return tuple(_ops.autocast_cast(value, device_type, dtype) for value in tensors)


# The directions' time loops on two threads (the second thread of torch's OpenMP team) pay for the
# hand-off from about this many multiply-adds of a direction's recurrence (T x B x H^2) on
# (measured on the 2-core development CPU, 2026-12-01: 1.3-1.6x forward from 4e5 on, 1.0-1.2x at
# 1e5, within noise below).
_MIN_TWO_THREAD_DIRECTION_MACS = 1 << 18


def _cpu_directions_on_two_threads(layer_input: Tensor, weight_hh: Tensor) -> bool:
    """Whether the directions of a bidirectional CPU layer run faster with their time loops at once
    (each on a thread of torch's team) than one after the other: torch may use 2 threads or more, the loop
    is long enough to pay for the second thread, and one direction's loop would not run on more than 2
    threads by itself (launch_plan.cpu_loop_team). On 2 threads the pair was about as fast as the
    directions in turn with each loop on both threads, and faster where a loop could not be shared
    out (measured on the 2-core development CPU, 2026-12-01, docs/benchmarks.md: 0.93-1.09x by rows
    at B = 8-32, 1.0-1.2x by units, 1.16-1.58x at 1000, 1, 32, 128); with more threads a loop's own
    team is predicted faster (not measured: no such CPU here)."""
    if layer_input.dim() != 3 or weight_hh.dim() != 2:
        return False  # the op's checks say what is wrong
    return _cpu_directions_at_once(layer_input.shape[0], layer_input.shape[1], weight_hh.shape[0])


def _cpu_directions_at_once(steps: int, batch: int, hidden: int) -> bool:
    """_cpu_directions_on_two_threads for a loop of T steps of B samples of H units."""
    return (torch.get_num_threads() >= 2 and steps * batch * hidden ** 2 >= _MIN_TWO_THREAD_DIRECTION_MACS
            and torch.ops.rnn_fused.cpu_loop_team(steps, batch, hidden)[0] <= 2)


class _DirectionsConfig(NamedTuple):
    """_LayerDirections' arguments that are not tensors. path: the GPU kernels' forced path or
    None; side_by_side: 2 where the GPU kernels run the directions at once, each planned for half
    the SMs (the reverse one's launches on a side stream), else 1 (ignored by the CPU loops);
    sinks: one recording.LayerSink per direction, handed the norms the backward reduces."""

    nonlinearity: str
    backend: str | None
    path: str | None
    side_by_side: int
    truncation: TruncationArgs
    layer: int
    has_biases: bool
    sinks: tuple


class _LayerDirections(torch.autograd.Function):
    """A bidirectional layer with its directions at once (rnn_fused::rnn_directions_forward /
    _backward) whose backward hands the gradient norms it reduces to a sink per direction
    (recording.LayerSink). Eager only, and no graph of the backward (as _RecordingLayer); every
    other call differentiates through the op pair's own autograd (csrc/layer_autograd.cpp), the
    same ops in C++. flat: the forward direction's weights, then the reverse one's."""

    @staticmethod
    def forward(ctx, input, hx, lengths, config: _DirectionsConfig, *flat):
        truncation = config.truncation
        output, h_n = torch.ops.rnn_fused.rnn_directions_forward(
            input, hx, list(flat), config.has_biases, lengths, config.nonlinearity, truncation.every,
            truncation.keep_prob, truncation.seed_tensor(), config.layer, config.backend, config.path,
            config.side_by_side)
        ctx.save_for_backward(input, hx, lengths, output, *flat)
        ctx.config = config
        ctx.set_materialize_grads(False)  # (as _LayerStack's)
        return output, h_n

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        if torch.is_grad_enabled():
            raise RuntimeError(_NO_GRAPH_WHILE_RECORDING)
        config = ctx.config
        sinks, has_biases, truncation = config.sinks, config.has_biases, config.truncation
        input, hx, lengths, output, *flat = ctx.saved_tensors
        if grad_output is None:  # only h_n used
            grad_output = torch.zeros_like(output)
        needs = ctx.needs_input_grad
        per_direction = len(flat) // 2
        mask = [needs[0]]
        for direction in range(2):
            at = 4 + direction * per_direction  # this direction's weight_ih among the Function's inputs
            mask += [hx is not None and needs[1], needs[at], needs[at + 1],
                     has_biases and (needs[at + 2] or needs[at + 3])]
        grads = torch.ops.rnn_fused.rnn_directions_backward(
            grad_output, grad_h_n, output, mask, input, hx, list(flat), has_biases, lengths, config.nonlinearity,
            truncation.every, truncation.keep_prob, truncation.seed_tensor(), config.layer, config.backend,
            True, config.path, config.side_by_side)
        grad_input = grads[0] if needs[0] else None
        grad_weights = []
        for direction in range(2):
            at = 4 + direction * per_direction
            grad_hx, grad_ih, grad_hh, grad_bias = grads[1 + 4 * direction:5 + 4 * direction]
            direction_grads = [grad_ih if needs[at] else None, grad_hh if needs[at + 1] else None]
            if has_biases:  # each bias its own row of grad_bias [2,H]
                direction_grads += [grad_bias[0] if needs[at + 2] else None,
                                    grad_bias[1] if needs[at + 3] else None]
            # (a sink reads the weights' gradients, which autograd is handed next)
            step_norms, grad_sq_norms, nonfinite = grads[9 + 3 * direction:12 + 3 * direction]
            sinks[direction](step_norms, grad_sq_norms, nonfinite,
                             (grad_input, grad_hx if hx is not None and needs[1] else None, *direction_grads))
            grad_weights += direction_grads
        grad_hx = torch.stack([grads[1], grads[5]]) if hx is not None and needs[1] else None
        return (grad_input, grad_hx, None, None, *grad_weights)


def _directions_backward_with_graph(grad_output, grad_h_n, needs, input, hx, weights, has_biases, lengths,
                                    nonlinearity="tanh", truncate_every=0, keep_prob=1.0, seed=None, layer=0,
                                    backend=None, path=None, side_by_side=1):
    """Kernel of rnn_fused::rnn_directions_backward_with_graph, which the directions' C++ autograd
    (csrc/layer_autograd.cpp) calls for a double backward. Registered as
    CompositeImplicitAutograd: the directions' layer ops run again (each differentiable by its own
    double backward), and autograd records the ATen ops. needs: input, hx, then each weight."""
    truncation = TruncationArgs(truncate_every, keep_prob, 0 if seed is None else seed)
    per_direction = len(weights) // 2
    results = []
    for direction in range(2):
        weight_ih, weight_hh, *biases = weights[direction * per_direction:(direction + 1) * per_direction]
        results.append(rnn_layer(input, None if hx is None else hx[direction], weight_ih, weight_hh,
                                 *(biases or (None, None)), lengths, nonlinearity, reverse=direction == 1,
                                 backend=backend, path=path, truncation=truncation, layer=layer))
    output = torch.cat([out for out, _ in results], dim=2)
    h_n = torch.stack([state for _, state in results])
    candidates = [input, hx, *weights]
    grads = _gradients_with_graph((output, h_n), (grad_output, grad_h_n), candidates, needs[:len(candidates)])
    return [grad if grad is not None else grad_output.new_empty(0) for grad in grads]


_library.impl("rnn_directions_backward_with_graph", _directions_backward_with_graph, "CompositeImplicitAutograd")


def _directions_side_by_side(layer_input: Tensor, weight_hh: Tensor, path: str | None) -> int:
    """How many directions of a bidirectional layer the planner runs at once where they can go
    to two streams (CUDA tensors in eager mode, and a batch to launch anything for):
    directions_side_by_side's answer for the layer's shape and steps; else 1."""
    if not layer_input.is_cuda or torch.compiler.is_compiling() or layer_input.shape[1] == 0:
        return 1
    return directions_side_by_side(layer_input.device, layer_input.dtype, weight_hh.shape[0], layer_input.shape[1],
                                   path, layer_input.shape[0])


# The host's cost of running a layer's directions at once, in launches: the side stream's fork and
# join (two events created, recorded, waited for and destroyed in the op: about one ATen launch's
# host time; predicted, not measured), in the forward and again in the backward.
_SIDE_STREAM_LAUNCHES = 2.0


@functools.lru_cache(maxsize=1024)
def directions_side_by_side(device: torch.device | str, dtype: torch.dtype, hidden: int, batch: int,
                            path: str | None, steps: int | None = None) -> int:
    """2 where the two directions of a bidirectional layer are faster at once, each planned for
    half the SMs (side_by_side=2: the reverse one on a side stream), than one after the other,
    each on the whole device; else 1. Per direction, the forward and backward step on the
    block or cluster path (a cooperative grid wants the whole device, and the stepwise path's
    launches are priced alone) against twice those of the whole-device plans, as autotuning
    measured them where it did, else as the cost model predicts (_directions_step_us). With
    `steps`, also only where the GPU time the steps save exceeds the side stream's host cost
    (_SIDE_STREAM_LAUNCHES launches at the cost model's launch_us): a short sequence's call waits
    for its host, not for its few microseconds of recurrence. Answered once per shape and
    process: a device's answer does not change. `device` as for launch_plan.plan ('emulated' or a
    CUDA device)."""
    whole, half = _directions_step_us(device, dtype, hidden, batch, path)
    if half is None or whole is None or half >= 2 * whole:
        return 1
    if steps is not None:
        from .launch_plan import cost_constants

        if steps * (2 * whole - half) < _SIDE_STREAM_LAUNCHES * cost_constants()["launch_us"]:
            return 1
    return 2


@functools.lru_cache(maxsize=1024)
def _directions_step_us(device: torch.device | str, dtype: torch.dtype, hidden: int, batch: int,
                        path: str | None) -> tuple[float | None, float | None]:
    """(whole, half): a direction's forward plus backward microseconds per step planned for the
    whole device and for half of it (side_by_side=2), None where that plan is infeasible or (half)
    not on the block or cluster path. Asked of the planner once per shape in a process: a plan
    query costs about 24 us of host time (measured on the emulated device), which a small
    bidirectional layer would pay on every call."""
    from .launch_plan import plan

    def step_us(side_by_side: int) -> float | None:
        total = 0.0
        for backward in (False, True):
            chosen = plan(hidden, batch, dtype, device, backward=backward, side_by_side=side_by_side)
            if path is not None:
                chosen = chosen.candidate(path)
            if not chosen.feasible or (side_by_side > 1 and chosen.path not in ("block", "cluster")):
                return None
            total += chosen.measured_us_per_step or chosen.predicted_us_per_step
        return total

    return step_us(1), step_us(2)


def dropout_between_layers(layer_output: Tensor, p: float, lengths: Tensor | None) -> Tensor:
    """Dropout of one layer's output [T,B,F] with the random draws of nn.RNN's CPU kernel.

    ATen (aten/src/ATen/native/RNN.cpp, apply_layer_stack) calls at::dropout(output, p,
    train=true) on each layer's output but the last, in layer order, as it holds it: the
    whole [T,B,F] tensor for a padded batch, the packed data [N,F] (valid positions in
    (step, sample) order) for a PackedSequence; on the CPU at::dropout draws one Bernoulli
    mask the shape of its input from the default generator. So without lengths the draws are
    over [T,B,F]; with lengths over the valid positions t < lengths[b] in (step, sample)
    order, which is the packed data's order when the batch is a PackedSequence padded in its
    own order (packed_to_padded). Same calls, same shapes, same order: same masks and the
    same generator state afterwards. Positions past a sample's length stay zero. With lengths
    this is the op rnn_fused::dropout_between_layers (C++, csrc/model_forward.cpp, which
    rnn_layers_forward applies too), run eagerly under torch.compile (its rows are found on the
    host: data-dependent, a graph break, as the boolean mask's count was before).
    """
    if lengths is None:
        return torch.nn.functional.dropout(layer_output, p, training=True)
    return _dropout_over_valid_positions(layer_output, p, lengths)


@torch.compiler.disable
def _dropout_over_valid_positions(layer_output: Tensor, p: float, lengths: Tensor) -> Tensor:
    return _ops.ops.dropout_between_layers(layer_output, p, lengths)


@torch.compiler.disable
def valid_positions(lengths: Tensor, steps: int, device: torch.device | str) -> Tensor:
    """The rows of a flattened time-major batch [T*B,F] at steps t < lengths[b], in (step,
    sample) order: int64 [N] on `device`. That is a PackedSequence's data order when the batch
    is padded in its own order (packed_to_padded). Found on the host (rnn_fused::valid_positions,
    C++) and copied without waiting for the device, where indexing a GPU tensor by a boolean mask
    reads the mask's count back (a host synchronisation per call); lengths on a GPU are read back
    first."""
    return _ops.ops.valid_positions(lengths, steps, torch.device(device))


def runs_packed_layout(data: Tensor, backend: str | None, path: str | None, stack: bool | None) -> bool:
    """Whether a PackedSequence's call can run in the packed layout itself (packed_inference
    without gradients, packed_training with): the CPU backend's loops (a CPU input, backend None or
    'cpu', no path), and no stack asked for (stack=True: rnn() says why a CPU call has none). Under
    autocast too (its casts made before the packed ops, _packed_autocast), and under torch.compile
    as in eager mode: both run eagerly there, so a compiled model gives eager's values."""
    return not stack and _cpu_backend(data, backend, path)


def _packed_autocast(data: Tensor, hx: Tensor | None, weights) -> tuple:
    """(data, hx, weights) for the packed ops: under autocast the floating ones cast as the layer
    op's autocast kernel casts its own (float64 excepted), unchanged without.
    The packed ops run below autocast (their Autocast kernels, _ops.BELOW_AUTOCAST_OPS): their
    products in the compute dtype, as the layer op's."""
    device_type = _ops.device_type_of(data)
    dtype = _ops.autocast_dtype(device_type, data.dtype)
    if dtype is None:
        return data, hx, weights

    def cast(value):
        return _ops.autocast_cast(value, device_type, dtype)
    return cast(data), cast(hx), [tuple(cast(w) for w in group) for group in weights]


def wants_gradients(data: Tensor, hx: Tensor | None, weights) -> bool:
    """Whether a call records a graph: grad mode on and some tensor requiring grad."""
    if not torch.is_grad_enabled():
        return False
    tensors = [data, hx, *(w for group in weights for w in group)]
    return any(t is not None and t.requires_grad for t in tensors)


def runs_packed_inference(data: Tensor, hx: Tensor | None, weights, backend: str | None, path: str | None,
                          stack: bool | None) -> bool:
    """Whether a PackedSequence's call runs packed_inference: runs_packed_layout, and no gradient
    wanted (grad mode off, or no tensor requiring grad)."""
    return runs_packed_layout(data, backend, path, stack) and not wants_gradients(data, hx, weights)


@torch.compiler.disable
def packed_inference(data: Tensor, batch_sizes: Tensor, hx: Tensor | None, weights, num_layers: int,
                     bidirectional: bool, nonlinearity: str = "tanh", dropout: float = 0.0, training: bool = False,
                     *, backend: str | None = None, side_by_side: bool | None = None) -> tuple[Tensor, Tensor]:
    """A multi-layer, optionally bidirectional Elman RNN over a PackedSequence's data, without
    gradients, in the packed layout (rnn_fused::rnn_packed_inference, C++; runs_packed_inference
    says where it can): each layer's input projection one GEMM of the packed rows, its time loop
    reading and writing each step's rows where the packed data holds them, instead of the padded
    batch rnn() runs (packed_to_padded and back). The values are rnn()'s on the padded batch within
    rounding (the same loops; the projection's GEMM of all N rows at once).

    data [N,I] and batch_sizes [T] (int64, CPU) of a PackedSequence; hx [num_layers*D,B,H] or None,
    in the packed (sorted) order; weights as for rnn(); dropout between layers as rnn() draws it
    (only when `training`); side_by_side as for rnn() (the CPU loops of a bidirectional layer's
    directions at once). Returns output [N,D*H] (the packed data) and h_n [num_layers*D,B,H].
    Run eagerly under torch.compile (B is data, as for packed_to_padded; the op has no fake kernel).
    """
    hidden = weights[0][1].shape[0]
    at_once = bidirectional and side_by_side is not False and (
        side_by_side or _cpu_directions_at_once(batch_sizes.numel(), int(batch_sizes[0]), hidden))
    data, hx, weights = _packed_autocast(data, hx, weights)
    return torch.ops.rnn_fused.rnn_packed_inference(
        data, batch_sizes, hx, [w for group in weights for w in group], len(weights[0]) == 4, num_layers,
        bidirectional, nonlinearity, backend, at_once, dropout if training else 0.0)


class _PackedConfig(NamedTuple):
    """_PackedLayer's arguments that are not tensors. at_once: the CPU loops of a bidirectional
    layer's directions at once (each on a thread of torch's team); sinks: one recording.LayerSink
    per direction, handed the norms the backward reduces, or None."""

    bidirectional: bool
    has_biases: bool
    nonlinearity: str
    backend: str | None
    at_once: bool
    truncation: TruncationArgs
    layer: int
    sinks: tuple | None


class _PackedLayer(torch.autograd.Function):
    """One layer (both directions where bidirectional) of a PackedSequence in the packed layout:
    its forward the packed inference op for that layer alone (rnn_packed_inference with one layer,
    grad mode off inside the Function), its backward rnn_packed_layer_backward (C++: the CPU
    backend's backward loops on the packed rows and the whole-sequence gradients as products of
    them, truncation as the layer ops draw it), which with sinks also reduces the gradient norms
    the layer ops' would (step norms [T,B] in the packed batch's order, which is the padded one's)
    and hands them to a sink per direction. With create_graph=True it differentiates the layer
    ops run again on the padded batch instead (their own double backward; refused while
    recording, as the layer ops' Functions refuse it): the packed ops' saved output carries no
    graph. flat: the forward direction's weights, then the reverse one's."""

    @staticmethod
    def forward(ctx, data, batch_sizes, hx, config: _PackedConfig, *flat):
        output, h_n = torch.ops.rnn_fused.rnn_packed_inference(
            data, batch_sizes, hx, list(flat), config.has_biases, 1, config.bidirectional, config.nonlinearity,
            config.backend, config.at_once, 0.0)
        ctx.save_for_backward(data, batch_sizes, hx, output, *flat)
        ctx.config = config
        ctx.set_materialize_grads(False)  # an unused h_n costs no zeros
        return output, h_n

    @staticmethod
    def backward(ctx, grad_output, grad_h_n):
        data, batch_sizes, hx, output, *flat = ctx.saved_tensors
        config = ctx.config
        needs = ctx.needs_input_grad  # data, batch_sizes, hx, config, then each weight
        if grad_output is None:  # only h_n used
            grad_output = torch.zeros_like(output)
        if torch.is_grad_enabled():
            if config.sinks is not None:
                raise RuntimeError(_NO_GRAPH_WHILE_RECORDING)
            return _PackedLayer._backward_with_graph(ctx, grad_output, grad_h_n)
        mask = [needs[0], hx is not None and needs[2], *needs[4:]]
        truncation = config.truncation
        grads = torch.ops.rnn_fused.rnn_packed_layer_backward(
            grad_output, grad_h_n, output, mask + [False] * (10 - len(mask)), data, batch_sizes, hx, flat,
            config.has_biases, config.bidirectional, config.nonlinearity, truncation.every, truncation.keep_prob,
            truncation.seed_int(), config.layer, config.backend, config.at_once, config.sinks is not None)
        weights_end = 2 + len(flat)
        grad_weights = [grad if need else None for grad, need in zip(grads[2:weights_end], needs[4:])]
        grad_data = grads[0] if needs[0] else None
        grad_hx = grads[1] if mask[1] else None
        if config.sinks is not None:
            per_direction = len(flat) // len(config.sinks)
            for direction, sink in enumerate(config.sinks):
                first = weights_end + 3 * direction
                step_norms, grad_sq_norms, nonfinite = grads[first:first + 3]
                # (a sink reads the weights' gradients, which autograd is handed next)
                sink(step_norms, grad_sq_norms, nonfinite,
                     (grad_data, None if grad_hx is None else grad_hx[direction],
                      *grad_weights[direction * per_direction:(direction + 1) * per_direction]))
        return (grad_data, None, grad_hx, None, *grad_weights)

    @staticmethod
    def _backward_with_graph(ctx, grad_output, grad_h_n):
        data, batch_sizes, hx, _, *flat = ctx.saved_tensors
        config = ctx.config
        padded, lengths, positions = packed_to_padded(data, batch_sizes)
        per_direction = len(flat) // (2 if config.bidirectional else 1)
        outputs, states = [], []
        for direction in range(2 if config.bidirectional else 1):
            weight_ih, weight_hh, *biases = flat[direction * per_direction:(direction + 1) * per_direction]
            out, state = rnn_layer(padded, None if hx is None else hx[direction], weight_ih, weight_hh,
                                   *(biases or (None, None)), lengths, config.nonlinearity, reverse=direction == 1,
                                   backend=config.backend, truncation=config.truncation, layer=config.layer)
            outputs.append(out)
            states.append(state)
        output = padded_to_packed_data(torch.cat(outputs, dim=2), positions)
        needs = ctx.needs_input_grad
        grads = _gradients_with_graph((output, torch.stack(states)), (grad_output, grad_h_n), [data, hx, *flat],
                                      [needs[0], needs[2], *needs[4:]])
        return (grads[0], None, grads[1], None, *grads[2:])


@torch.compiler.disable
def packed_training(data: Tensor, batch_sizes: Tensor, hx: Tensor | None, weights, num_layers: int,
                    bidirectional: bool, nonlinearity: str = "tanh", dropout: float = 0.0, training: bool = False,
                    *, backend: str | None = None, side_by_side: bool | None = None,
                    truncation=None, record=None) -> tuple[Tensor, Tensor]:
    """packed_inference's model where gradients are wanted: each layer one _PackedLayer (the packed
    inference op for that layer, and a backward in the packed layout, rnn_packed_layer_backward),
    dropout between layers as nn.RNN draws it on the packed data (torch's dropout, differentiable),
    truncation as for rnn() (a RandomTruncation without seed draws one seed for this call). The
    values are rnn()'s on the padded batch within rounding, the gradients too (the same loops; the
    products of the packed rows instead of the padded ones). record: a recording.ForwardRecord
    whose sinks receive each layer's gradient norms (as rnn()'s), or None. Arguments and results as
    packed_inference's. Run eagerly under torch.compile (as packed_inference)."""
    args = resolve_truncation(truncation)
    directions = 2 if bidirectional else 1
    hidden = weights[0][1].shape[0]
    at_once = bidirectional and side_by_side is not False and (
        side_by_side or _cpu_directions_at_once(batch_sizes.numel(), int(batch_sizes[0]), hidden))
    has_biases = len(weights[0]) == 4
    # A sink per layer and direction, holding the weights as passed (the parameters, not their casts).
    sinks = [None if record is None else
             tuple(record.sink(layer, direction, tuple(weights[layer * directions + direction]))
                   for direction in range(directions)) for layer in range(num_layers)]
    # (the casts are autograd's: the leaves' gradients come back through them, in their dtype)
    data, hx, weights = _packed_autocast(data, hx, weights)
    layer_input, states = data, []
    for layer in range(num_layers):
        group = weights[layer * directions:(layer + 1) * directions]
        config = _PackedConfig(bidirectional, has_biases, nonlinearity, backend, at_once, args, layer, sinks[layer])
        layer_hx = None if hx is None else hx[layer * directions:(layer + 1) * directions]
        layer_input, layer_states = _PackedLayer.apply(layer_input, batch_sizes, layer_hx, config,
                                                       *(w for direction in group for w in direction))
        states.append(layer_states)
        if dropout > 0 and training and layer < num_layers - 1:
            layer_input = torch.nn.functional.dropout(layer_input, dropout, training=True)
    return layer_input, states[0] if len(states) == 1 else torch.cat(states)


@torch.compiler.disable
def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A PackedSequence's data as a time-major padded batch, in the packed (sorted) order.

    data [N,I] (N = sum of batch_sizes); batch_sizes int64 [T] on the CPU, non-increasing.
    Returns padded [T,B,I] with zeros past each sample's length, lengths int64 [B] on the CPU
    (the layers check CPU lengths on the host and copy them to the device without waiting for
    it; device lengths would cost a host synchronisation per layer) and positions int64 [N] on
    data's device (valid_positions' rows: the padded rows that hold the packed data), B =
    batch_sizes[0]. One op call (rnn_fused::packed_to_padded, C++): lengths and positions found
    by a loop on the host, then on a GPU the positions' copy, the zeros and one copy by index,
    and no synchronisation (no mask is counted on the device). Run eagerly under torch.compile
    (B is data: a graph break, as reading batch_sizes[0] was before).
    """
    return _ops.ops.packed_to_padded(data, batch_sizes)


def padded_to_packed_data(padded: Tensor, positions: Tensor) -> Tensor:
    """Inverse of packed_to_padded: padded [T,B,F] and its positions [N] -> packed data [N,F]."""
    return padded.reshape(-1, padded.shape[-1]).index_select(0, positions)
