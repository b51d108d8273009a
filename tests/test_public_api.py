"""The documented, typed surface: RNN's signature and help text, readable defaults, the
version, py.typed, and the planner's log of the path it chose."""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import pydoc
import tomllib
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import rnn_fused
from rnn_fused import _version, launch_plan
from rnn_fused.modules import MODULE_SETTING

ROOT = Path(__file__).resolve().parent.parent
P = inspect.Parameter

NN_RNN_ARGUMENTS = [("input_size", P.empty), ("hidden_size", P.empty), ("num_layers", 1), ("nonlinearity", "tanh"),
                    ("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                    ("device", None), ("dtype", None)]


def test_signature_is_nn_rnns_plus_keyword_only_truncation():
    parameters = list(inspect.signature(rnn_fused.RNN).parameters.values())
    assert [(p.name, p.default) for p in parameters[:-1]] == NN_RNN_ARGUMENTS
    assert all(p.kind == P.POSITIONAL_OR_KEYWORD for p in parameters[:-1])
    truncation = parameters[-1]
    assert (truncation.name, truncation.kind, truncation.default) == ("truncation", P.KEYWORD_ONLY, None)


def test_arguments_bind_by_position_and_keyword_like_nn_rnn():
    args = (4, 3, 2, "relu", False, True, 0.5, True)
    assert repr(rnn_fused.RNN(*args)) == repr(nn.RNN(*args))
    ours = rnn_fused.RNN(4, 3, 2, "tanh", True, False, 0.0, False, "cpu", torch.float64, truncation=3)
    assert ours.weight_hh_l1.dtype == torch.float64 and ours.truncation == 3


@pytest.mark.parametrize("kwargs", [dict(foo=1), dict(proj_size=1)])
def test_unexpected_keywords_fail_like_nn_rnn(kwargs):
    with pytest.raises(Exception) as theirs:
        nn.RNN(4, 3, **kwargs)
    with pytest.raises(Exception) as ours:
        rnn_fused.RNN(4, 3, **kwargs)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))


def test_help_shows_the_signature_and_a_self_contained_docstring():
    text = pydoc.render_doc(rnn_fused.RNN, renderer=pydoc.plaintext)
    assert "RNN(input_size: 'int', hidden_size: 'int', num_layers: 'int' = 1" in text
    for needle in ("Args:", "Inputs: input, hx", "Outputs: output, h_n", "Attributes:", "weight_hh_l{k}",
                   "truncation (keyword only)", "RandomTruncation(keep_prob, seed=None)", "backend:", "\"emulated\"",
                   "batch_first: input and output are [B, T, feature]", "dropout: probability", "autocast",
                   "[num_layers * D, B, hidden_size]"):
        assert needle in text, needle


def _public_docstrings():
    """(name, docstring) of the package, its public objects and their public members."""
    yield "rnn_fused", rnn_fused.__doc__
    for name in rnn_fused.__all__:
        obj = getattr(rnn_fused, name)
        yield name, obj.__doc__
        for member_name, member in vars(obj).items() if isinstance(obj, type) else ():
            if not member_name.startswith("_") or member_name == "__init__":
                yield f"{name}.{member_name}", getattr(member, "__doc__", None)
    for module in (rnn_fused.functional, rnn_fused.modules, rnn_fused.truncation, rnn_fused.recording,
                   rnn_fused.launch_plan, rnn_fused._ops):
        yield module.__name__, module.__doc__


def test_docstrings_do_not_send_the_reader_to_files_an_installed_package_lacks():
    offenders = [name for name, doc in _public_docstrings() if doc and ("docs/" in doc or "README" in doc)]
    assert not offenders


def test_forward_default_truncation_reads_module_setting():
    text = str(inspect.signature(rnn_fused.RNN.forward))
    assert "truncation: 'int | RandomTruncation | None | _ModuleSetting' = MODULE_SETTING" in text
    assert "object at" not in text
    model = rnn_fused.RNN(3, 4, truncation=2)
    x = torch.randn(5, 2, 3)
    assert torch.equal(model(x, truncation=MODULE_SETTING)[0], model(x)[0])


def test_version_is_pyprojects():
    with (ROOT / "pyproject.toml").open("rb") as file:
        expected = tomllib.load(file)["project"]["version"]
    assert rnn_fused.__version__ == expected


def test_version_of_an_installed_copy_comes_from_its_metadata(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"rnn_fused": "9.8.7"}[name])
    assert _version.package_version(tmp_path / "pyproject.toml") == "9.8.7"  # no pyproject beside it
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "something_else"\nversion = "1.0"\n')
    assert _version.package_version(other) == "9.8.7"  # not this distribution's pyproject


def test_version_without_pyproject_or_metadata_is_unknown(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert _version.package_version(tmp_path / "pyproject.toml") == "0+unknown"


def test_py_typed_ships_as_package_data():
    assert (ROOT / "rnn_fused" / "py.typed").is_file()
    with (ROOT / "pyproject.toml").open("rb") as file:
        package_data = tomllib.load(file)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["rnn_fused"]


# --- the planner's log --------------------------------------------------------------------


@pytest.fixture
def fresh_plan_log():
    launch_plan._logged_plan_keys.clear()
    yield
    launch_plan._logged_plan_keys.clear()


def _plan(path: str) -> rnn_fused.LaunchPlan:
    return rnn_fused.LaunchPlan(path, True, samples_per_group=8, samples=8, chunks=1, groups=2, ctas_per_group=4,
                                units_per_cta=64, units_per_pass=32, step_sync=0, grid=8, block_threads=256,
                                cluster=4 if path == "cluster" else 1,
                                shared_mem_bytes=1024 if path != "stepwise" else 0, blocks_per_sm=1, waves=1,
                                compiled_passes=0, predicted_us_per_step=0.5, reason=f"why {path}")


def test_plan_is_logged_once_per_key_at_info(caplog, fresh_plan_log):
    caplog.set_level(logging.INFO, logger="rnn_fused")
    key = ("cuda:0", "forward", torch.float32, 256)
    assert launch_plan.log_plan_once(_plan("cluster"), key)
    assert not launch_plan.log_plan_once(_plan("cluster"), key)
    assert launch_plan.log_plan_once(_plan("grid"), ("cuda:0", "backward", torch.float32, 256))
    records = [r for r in caplog.records if r.name == "rnn_fused"]
    assert [r.levelno for r in records] == [logging.INFO, logging.INFO]
    assert "cluster path" in records[0].getMessage() and "why cluster" in records[0].getMessage()
    assert str(key) in records[0].getMessage()


def test_stepwise_plan_is_a_warning_seen_without_logging_configuration(caplog, fresh_plan_log):
    caplog.set_level(logging.WARNING, logger="rnn_fused")
    assert launch_plan.log_plan_once(_plan("stepwise"), ("cuda:0", "forward", torch.float32, 8192))
    (record,) = [r for r in caplog.records if r.name == "rnn_fused"]
    assert record.levelno == logging.WARNING
    assert "stepwise path" in record.getMessage() and "why stepwise" in record.getMessage()
    # No handler of the library's own hides it: an unconfigured application sees warnings.
    assert not any(isinstance(h, logging.NullHandler) for h in logging.getLogger("rnn_fused").handlers)


def test_a_real_plan_can_be_logged(caplog, fresh_plan_log):
    caplog.set_level(logging.INFO, logger="rnn_fused")
    plan = rnn_fused.plan(64, device="emulated")
    assert launch_plan.log_plan_once(plan, ("emulated", 64))
    assert plan.reason in caplog.records[-1].getMessage()


def test_an_empty_cuda_batch_is_not_planned(monkeypatch, fresh_plan_log):
    """B = 0 launches nothing; the planner would reject batch_size = 0, so rnn_layer on an
    empty CUDA batch must not ask it (a stand-in for a CUDA tensor: only is_cuda, device and
    shape are read before the plan)."""
    planned = []
    monkeypatch.setattr(launch_plan, "plan", lambda *args, **kwargs: planned.append(args) or _plan("block"))
    empty = types.SimpleNamespace(device=torch.device("cuda"), is_cuda=True, dtype=torch.float32, shape=(3, 0, 2))
    launch_plan.log_layer_plan(empty, 4, None)
    assert planned == []
    launch_plan.log_layer_plan(types.SimpleNamespace(device=torch.device("cuda"), is_cuda=True, dtype=torch.float32,
                                                     shape=(3, 1, 2)), 4, None)
    assert planned == [(4, 1, torch.float32, torch.device("cuda"))]


def test_a_stack_plan_is_logged_once_per_key(caplog, fresh_plan_log):
    caplog.set_level(logging.INFO, logger="rnn_fused")
    report = launch_plan.stack_plan(64, 8, 1, 4)
    key = ("cuda:0", torch.float32, 64, 8, 4)
    assert launch_plan.log_stack_plan_once(report, 1, 4, key)
    assert not launch_plan.log_stack_plan_once(report, 1, 4, key)
    message = caplog.records[-1].getMessage()
    assert "runs the 4 layers in one launch each way" in message and report.reason in message
    assert f"{report.predicted_stack_us / 2:.2f} us per step of the stack" in message
