"""The library and its workshop are separate: `import rnn_fused` loads the core only, and
torch.ops.rnn_fused holds only the product's operators."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

import rnn_fused

CORE_MODULES = {"rnn_fused", "rnn_fused._C", "rnn_fused._build", "rnn_fused._ops", "rnn_fused._version",
                "rnn_fused.functional",
                "rnn_fused.launch_plan", "rnn_fused.modules", "rnn_fused.recording", "rnn_fused.reference",
                "rnn_fused.truncation"}
PRODUCT_OPS = {"rnn_layer_forward", "rnn_layer_backward", "rnn_layer_backward_with_graph", "rnn_directions_forward",
               "rnn_directions_backward", "rnn_directions_backward_with_graph", "rnn_layers_forward",
               "rnn_packed_inference", "rnn_packed_layer_backward", "packed_to_padded", "valid_positions",
               "dropout_between_layers", "rnn_stack_forward",
               "rnn_stack_backward", "stack_plan", "edge_scales", "recurrence_plan",
               "cost_model", "kernel_projects_input", "kernel_makes_gradients", "step_cost", "cost_constants", "set_forced_tiling",
               "set_autotune",
               "recurrence_step_phases", "backends", "cpu_loop_team", "cpu_row_shares",
               "set_cpu_loop_team", "layer_input_projection", "layer_gradients_from_dz"}


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_loads_the_core_only():
    with_torch = _modules_after("import torch")
    with_rnn_fused = _modules_after("import rnn_fused")
    added = with_rnn_fused - with_torch
    ours = {m for m in added if m.startswith("rnn_fused")}
    assert ours == CORE_MODULES
    # torch itself may import tqdm (torch.hub does when it is installed); rnn_fused adds no
    # tooling: no tqdm, matplotlib or emulator module beyond what `import torch` loaded.
    assert not {m for m in added if m.split(".")[0] in ("tqdm", "matplotlib")}


def test_emulator_module_loads_on_first_use():
    modules = _modules_after("import rnn_fused\nrnn_fused.simt.device_properties()")
    assert "rnn_fused.simt" in modules


def test_product_namespace_holds_only_product_ops():
    # The dispatcher's list, not dir(torch.ops.rnn_fused): that one lists only the ops
    # looked up so far in this process, so it depended on which tests ran before.
    registered = {name.split("::")[1].split(".")[0] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("rnn_fused::")}
    assert registered == PRODUCT_OPS
    assert set(torch.ops.rnn_fused.backends()) >= {"cpu", "emulated"}


def test_tools_are_not_imported_by_the_core():
    assert not any(name.startswith("rnn_fused.tools") for name in _modules_after("import rnn_fused"))
    assert rnn_fused.__all__ and all(hasattr(rnn_fused, name) for name in rnn_fused.__all__)
