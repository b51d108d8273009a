"""Dropout between layers draws what torch.nn.RNN draws on the CPU: for the same generator
state, the same Bernoulli masks (same calls, shapes and order), hence the same zeroed
positions, the same generator state afterwards, and outputs and gradients equal to nn.RNN's
under the tolerance rule.

nn.RNN's dropout runs inside its ATen kernel (at::dropout on each layer's output but the
last: the [T,B,D*H] tensor for a padded batch, the packed data [N,D*H] for a
PackedSequence), where Python cannot see it; a dispatch mode can: it records every
bernoulli_ (the mask, scaled in place by 1/(1-p) afterwards) and the product that applies it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils._python_dispatch import TorchDispatchMode

import rnn_fused
from rnn_fused.tools.testing import FLOAT64_PARITY_ULPS, assert_within_tolerance


class DropoutRecorder(TorchDispatchMode):
    """Records the dropout masks drawn inside the block and the tensors they were applied to."""

    def __init__(self):
        super().__init__()
        self.masks: list[torch.Tensor] = []     # the noise tensors (bernoulli_, then / (1-p) in place)
        self.dropped: list[torch.Tensor] = []   # input * noise, as computed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.bernoulli_.float:
            self.masks.append(out)
        elif func is torch.ops.aten.mul.Tensor and any(a is m for a in args for m in self.masks):
            self.dropped.append(out.detach().clone())
        return out


CASES = {
    # name: (nn.RNN kwargs, input shape (T, B) or (T,) unbatched, lengths for packing or None, enforce_sorted)
    "padded-3layer": (dict(num_layers=3, dropout=0.4), (7, 3), None, False),
    "padded-bidirectional-batch_first": (dict(num_layers=2, dropout=0.5, bidirectional=True, batch_first=True),
                                         (3, 6), None, False),
    "unbatched-relu": (dict(num_layers=3, dropout=0.3, nonlinearity="relu"), (5,), None, False),
    "packed-unsorted-bidirectional": (dict(num_layers=3, dropout=0.5, bidirectional=True), (6, 4),
                                      [6, 2, 5, 3], False),
    "packed-sorted": (dict(num_layers=2, dropout=0.25), (6, 3), [6, 4, 1], True),
    "packed-p1": (dict(num_layers=2, dropout=1.0, bidirectional=True), (5, 3), [3, 5, 2], False),
}


def _input(shape, lengths, enforce_sorted, batch_first, dtype):
    """(the module's input, the leaf whose gradient is compared: the padded tensor)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, 4, generator=generator, dtype=torch.float64).to(dtype).requires_grad_()
    if lengths is None:
        return x, x
    return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted), x


def _run(module, case, dtype, seed=1234):
    """Forward and backward in training mode from generator state `seed`; returns results,
    the recorded masks and applications, and the generator state after the forward."""
    kwargs, shape, lengths, enforce_sorted = case
    input, leaf = _input(shape, lengths, enforce_sorted, kwargs.get("batch_first", False), dtype)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with DropoutRecorder() as recorder:
        output, h_n = module(input)
    state_after_forward = torch.get_rng_state()
    output = output.data if isinstance(output, PackedSequence) else output
    generator = torch.Generator().manual_seed(5)
    cotangents = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(dtype) for t in (output, h_n)]
    torch.autograd.backward([output, h_n], cotangents)
    results = {"output": output.detach(), "h_n": h_n.detach(), "grad_input": leaf.grad,
               **{f"grad_{name}": p.grad for name, p in module.named_parameters()}}
    return results, recorder, state_after_forward


def _pair(case, dtype):
    kwargs = case[0]
    torch.manual_seed(0)
    theirs = nn.RNN(4, 5, **kwargs).to(dtype).train()
    return theirs, rnn_fused.RNN.from_torch(theirs).train()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_dropout_masks_and_generator_state_equal_nn_rnn(case, dtype):
    theirs, ours = _pair(case, dtype)
    expected, expected_recorder, expected_state = _run(theirs, case, dtype)
    got, got_recorder, got_state = _run(ours, case, dtype)
    # The same draws: one mask per layer but the last (none at p = 1), of the same shape,
    # equal bit for bit, so the zeroed positions coincide; the generator advanced alike.
    assert [m.shape for m in got_recorder.masks] == [m.shape for m in expected_recorder.masks]
    assert all(torch.equal(a, b) for a, b in zip(got_recorder.masks, expected_recorder.masks))
    applications = 0 if case[0]["dropout"] == 1 else case[0]["num_layers"] - 1  # p = 1 multiplies by 0, draws none
    assert len(got_recorder.dropped) == len(expected_recorder.dropped) == applications
    for a, b in zip(got_recorder.dropped, expected_recorder.dropped):
        assert torch.equal(a == 0, b == 0)
    assert torch.equal(got_state, expected_state)
    if dtype == torch.float64:
        # float64 nn.RNN is the reference itself: only the rule's float64 floor applies.
        for name in expected:
            assert_within_tolerance(expected[name], expected[name], got[name], name=name, ulps=FLOAT64_PARITY_ULPS)
    else:
        reference_module, _ = _pair(case, torch.float64)
        reference, reference_recorder, _ = _run(reference_module, case, torch.float64)
        # The masks do not depend on the dtype: the float64 run is the reference of this one.
        assert all(torch.equal(a.to(dtype), b) for a, b in zip(reference_recorder.masks, expected_recorder.masks))
        for name in expected:
            assert_within_tolerance(reference[name], expected[name], got[name], name=name)


def test_dropout_draws_follow_the_generator_state():
    """Two forwards from one state draw the same masks; from another state, other masks."""
    case = CASES["packed-unsorted-bidirectional"]
    _, ours = _pair(case, torch.float64)
    first, first_recorder, _ = _run(ours, case, torch.float64)
    again, again_recorder, _ = _run(ours, case, torch.float64)
    other, other_recorder, _ = _run(ours, case, torch.float64, seed=99)
    assert all(torch.equal(a, b) for a, b in zip(first_recorder.masks, again_recorder.masks))
    assert torch.equal(first["grad_weight_ih_l1"], again["grad_weight_ih_l1"])
    assert not any(torch.equal(a, b) for a, b in zip(first_recorder.masks, other_recorder.masks))


@pytest.mark.parametrize("name", ["padded-3layer", "unbatched-relu", "packed-sorted"])
def test_a_stack_run_in_one_launch_draws_the_masks_of_nn_rnn(name, stack_launches):
    """On the GPU kernels (emulated here) a unidirectional float32 stack runs in one launch
    (RNN.stack = True) and draws its masks before the launch, with nn.RNN's calls: the same
    masks, the same generator state afterwards, and outputs and gradients within the tolerance
    rule of the float64 nn.RNN."""
    from rnn_fused import simt

    case = CASES[name]
    theirs, ours = _pair(case, torch.float32)
    ours.backend, ours.stack = "emulated", True
    expected, expected_recorder, expected_state = _run(theirs, case, torch.float32)
    with simt.emulated_device(sm_count=16):
        got, got_recorder, got_state = _run(ours, case, torch.float32)
    assert len(stack_launches) == 1, "the module did not run its stack in one launch"
    assert [m.shape for m in got_recorder.masks] == [m.shape for m in expected_recorder.masks]
    assert all(torch.equal(a, b) for a, b in zip(got_recorder.masks, expected_recorder.masks))
    assert torch.equal(got_state, expected_state)
    reference_module, _ = _pair(case, torch.float64)
    reference, _, _ = _run(reference_module, case, torch.float64)
    for name_ in expected:
        assert_within_tolerance(reference[name_], expected[name_], got[name_], name=name_)
