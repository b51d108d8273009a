"""torch.compile(fullgraph=True) traces a model using rnn_fused.RNN without a graph break; torch.export
exports one."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import rnn_fused


class Tagger(nn.Module):
    """A small sequence model: a bidirectional two-layer RNN and a linear read-out."""

    def __init__(self):
        super().__init__()
        self.rnn = rnn_fused.RNN(5, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, hx):
        output, h_n = self.rnn(x, hx)
        return self.head(output), h_n


def _run(model, x, hx):
    """Forward and backward; gradients of x, hx and every parameter (by unprefixed name)."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    hx = hx.detach().clone().requires_grad_()
    logits, h_n = model(x, hx)
    (logits.square().sum() + h_n.sum()).backward()
    grads = {name.removeprefix("_orig_mod."): p.grad for name, p in model.named_parameters()}
    return logits.detach(), h_n.detach(), x.grad, hx.grad, grads


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled:UserWarning")
def test_compiled_fullgraph_matches_eager(monkeypatch):
    # The compiled backward must run the fused BPTT op, not the differentiable step loop
    # kept for double backward: make that path fail loudly if anything takes it.
    def no_double_backward(*args):
        raise AssertionError("the compiled backward took the double-backward path")

    monkeypatch.setattr(rnn_fused.functional, "_differentiable_backward", no_double_backward)
    torch._dynamo.reset()
    model = Tagger()
    x, hx = torch.randn(4, 6, 5), torch.randn(4, 4, 8)
    eager = _run(model, x, hx)
    # fullgraph=True turns any graph break into an error. Caches off: a compiled graph cached
    # on disk before a change of the ops' schemas would be replayed against the new ones.
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = _run(torch.compile(model, fullgraph=True), x, hx)
    for name, e, c in zip(("logits", "h_n", "grad_x", "grad_hx"), eager[:4], compiled[:4]):
        _assert_close_eager(c, e, name)
    assert eager[4].keys() == compiled[4].keys()
    for name in eager[4]:
        _assert_close_eager(compiled[4][name], eager[4][name], f"grad {name}")
    torch._dynamo.reset()


def _assert_close_eager(compiled, eager, name):
    # The RNN ops are the same kernels in both runs; only the Linear and the loss may be
    # fused differently by the compiler, which reorders a few float32 additions.
    scale = eager.abs().max().item()
    error = (compiled - eager).abs().max().item()
    assert error <= 8 * torch.finfo(eager.dtype).eps * max(scale, 1.0), (name, error, scale)


def _weight_grads(result):
    return [result[4][name] for name in sorted(result[4])]


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled:UserWarning")
def test_random_truncation_without_seed_compiles_and_draws_a_seed_per_call():
    """RandomTruncation(p) with seed=None: the seed is drawn inside the graph (a tensor op,
    not a constant), so every compiled call draws afresh, torch.manual_seed replays a run,
    and with torch's own random ops (fallback_random) the compiled run equals eager."""
    torch._dynamo.reset()
    model = Tagger()
    model.rnn.truncation = rnn_fused.RandomTruncation(0.5)
    x, hx = torch.randn(4, 12, 5), torch.randn(4, 4, 8)
    assert torch._dynamo.explain(model)(x, hx).graph_break_count == 0
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        compiled = torch.compile(model, fullgraph=True)
        torch.manual_seed(7)
        first = _run(compiled, x, hx)
        second = _run(compiled, x, hx)  # no reseeding: a fresh seed
        torch.manual_seed(7)
        replay = _run(compiled, x, hx)
    assert all(torch.equal(a, b) for a, b in zip(_weight_grads(first), _weight_grads(replay)))
    assert not torch.equal(first[4]["rnn.weight_hh_l0"], second[4]["rnn.weight_hh_l0"])
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True, fallback_random=True):
        torch.manual_seed(11)
        compiled = _run(torch.compile(model, fullgraph=True), x, hx)
    torch.manual_seed(11)
    eager = _run(model, x, hx)
    for name in eager[4]:
        _assert_close_eager(compiled[4][name], eager[4][name], f"grad {name}")
    torch._dynamo.reset()


def test_eager_seed_is_the_default_generators_next_draw():
    """In eager mode the seed of a forward is torch.randint(0, 2**63 - 1, ()) from the default
    CPU generator, as before seeds became tensors; the recorder reports it as an int."""
    model = rnn_fused.RNN(3, 4, 2, truncation=rnn_fused.RandomTruncation(0.5))
    x = torch.randn(6, 2, 3)
    torch.manual_seed(5)
    expected = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    torch.manual_seed(5)
    with rnn_fused.record_gradients(model) as recorder:
        model(x)[0].sum().backward()
    assert type(recorder.seed) is int and recorder.seed == expected


@pytest.mark.parametrize("backend", [None, "emulated"])
def test_torch_export_gives_the_eager_models_values(backend):
    """torch.export traces the model into the layer ops (their fake kernels: no loop in C++ there,
    rnn_layers_forward is eager's) and the exported program gives eager's values bit for bit."""
    torch.manual_seed(0)
    model = Tagger()
    model.rnn.backend = backend
    x, hx = torch.randn(3, 6, 5), torch.randn(4, 3, 8)
    exported = torch.export.export(model, (x, hx))
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert "rnn_fused.rnn_layer_forward.default" in ops and "rnn_fused.rnn_layers_forward.default" not in ops
    with torch.no_grad():
        for ours, eager in zip(exported.module()(x, hx), model(x, hx)):
            assert torch.equal(ours, eager)


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled:UserWarning")
@pytest.mark.parametrize("inference", [False, True], ids=["grad", "no_grad"])
def test_a_packed_batch_compiles_with_its_conversion_run_eagerly(inference):
    """torch.compile of a model called on a PackedSequence: the packed batch's conversion to the
    padded batch (rnn_fused::packed_to_padded, whose batch size is data) runs eagerly (a graph
    break, as before it became an op), as does inference in the packed layout
    (rnn_fused::rnn_packed_inference, under no_grad), and the compiled model gives eager's values."""
    torch.manual_seed(0)
    model = rnn_fused.RNN(3, 4, num_layers=2, dropout=0.3).eval()
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 3), [5, 3, 2])
    compiled = torch.compile(model)
    with torch.no_grad() if inference else contextlib.nullcontext():
        (out, h_n), (expected, expected_h_n) = compiled(packed), model(packed)
    assert out.data.requires_grad != inference
    torch.testing.assert_close(out.data, expected.data, rtol=0, atol=0)
    torch.testing.assert_close(h_n, expected_h_n, rtol=0, atol=0)
