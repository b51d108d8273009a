"""The planner's cost model explains the measured times of GPU_FACTS.md (an H200, 2026-11-30).

A model that cannot explain today's numbers cannot be trusted to choose tomorrow's path: its
model of the first grid kernel (commit 54a1037) reproduces that kernel's measured forward and
forward+backward times within 30% at every row of GPU_FACTS.md, and its model of cuDNN's
per-step GEMM regime (H >= 512, where torch.profiler showed cuDNN launching one SGEMM per
step) reproduces cuDNN's. The constants live in csrc/cuda/recurrence_cost_model.h.
"""

from __future__ import annotations

import pytest
import torch

from rnn_fused.launch_plan import predicted_layer_us

# (T, B, I, H, layers, bidirectional): cuDNN forward ms, forward+backward ms; ours (the first
# grid kernel) forward ms, forward+backward ms. float32, TF32 off, CUDA-event medians.
MEASURED = [
    ((1000, 1, 64, 64, 1, False), 0.31, 1.25, 2.18, 4.92),
    ((1000, 1, 256, 256, 1, False), 1.75, 3.61, 3.41, 6.10),
    ((1000, 1, 1024, 1024, 1, False), 16.65, 31.29, 8.22, 13.25),
    ((1000, 8, 64, 64, 1, False), 0.39, 1.25, 3.40, 7.94),
    ((1000, 8, 128, 128, 1, False), 0.46, 1.39, 3.91, 8.54),
    ((1000, 8, 256, 256, 1, False), 1.78, 3.96, 4.70, 10.27),
    ((1000, 8, 512, 512, 1, False), 11.46, 29.56, 6.06, 12.80),
    ((1000, 8, 1024, 1024, 1, False), 15.42, 37.30, 10.81, 19.90),
    ((1000, 32, 128, 128, 1, False), 0.48, 1.55, 11.63, 28.74),
    ((1000, 32, 256, 256, 1, False), 1.85, 4.40, 16.67, 36.47),
    ((1000, 32, 512, 512, 1, False), 15.84, 36.56, 23.51, 46.74),
    ((1000, 32, 1024, 1024, 1, False), 19.18, 40.56, 38.46, 69.64),
    ((1000, 128, 256, 256, 1, False), 2.14, 5.92, 64.53, 139.59),
    ((1000, 128, 1024, 1024, 1, False), 35.69, 81.40, 150.70, 268.37),
    ((1024, 16, 768, 768, 1, False), 17.48, 36.82, 16.48, 31.32),
    ((100, 64, 512, 1024, 1, False), 2.29, 5.05, 7.19, 13.09),
    ((100, 64, 2048, 2048, 1, False), 5.17, 12.57, 14.54, 28.03),
    ((500, 32, 256, 256, 2, True), 3.89, 9.23, 29.15, 68.78),
]
TOLERANCE = 0.30


def model_ms(kernel: str, shape) -> tuple[float, float]:
    """(forward ms, forward+backward ms) of a whole model: every layer and direction."""
    steps, batch, input_size, hidden, layers, bidirectional = shape
    forward = backward = 0.0
    for layer in range(layers):
        layer_input = input_size if layer == 0 else hidden * (2 if bidirectional else 1)
        for _ in range(2 if bidirectional else 1):
            forward += predicted_layer_us(kernel, steps, batch, layer_input, hidden)
            backward += predicted_layer_us(kernel, steps, batch, layer_input, hidden, backward=True)
    return forward / 1e3, (forward + backward) / 1e3


def _id(row):
    return "T{}-B{}-I{}-H{}-L{}{}".format(*row[0][:5], "-bi" if row[0][5] else "")


@pytest.mark.parametrize("row", MEASURED, ids=_id)
def test_model_of_the_first_grid_kernel_reproduces_its_measured_times(row):
    shape, _, _, forward_ms, total_ms = row
    predicted_forward, predicted_total = model_ms("legacy-grid", shape)
    assert abs(predicted_forward / forward_ms - 1) <= TOLERANCE, (predicted_forward, forward_ms)
    assert abs(predicted_total / total_ms - 1) <= TOLERANCE, (predicted_total, total_ms)


@pytest.mark.parametrize("row", [r for r in MEASURED if r[0][3] >= 512], ids=_id)
def test_model_of_cudnn_reproduces_its_per_step_gemm_regime(row):
    shape, forward_ms, total_ms, _, _ = row
    predicted_forward, predicted_total = model_ms("cudnn", shape)
    assert abs(predicted_forward / forward_ms - 1) <= TOLERANCE, (predicted_forward, forward_ms)
    assert abs(predicted_total / total_ms - 1) <= TOLERANCE, (predicted_total, total_ms)


def test_planned_prediction_is_the_chosen_paths_steps_plus_the_layers_gemms():
    import rnn_fused

    plan = rnn_fused.plan(256, 8, device="emulated")
    gemms = predicted_layer_us("planned", 1000, 8, 256, 256) - 1000 * plan.predicted_us_per_step
    assert 0 < gemms < 1000 * plan.predicted_us_per_step


def test_a_short_forward_is_priced_with_the_kernels_projection_instead_of_the_gemm():
    """Where the block kernel projects the input itself (launch_plan.kernel_projects_input), the
    planned forward is priced with that projection (T S H I multiply-adds at a quarter of an
    SM's rate) instead of the bias sum and GEMM, a launch and the GEMM's own: below the same
    layer with its projection kept on the host (forced_tiling(input_projection_on_host=True)) by
    exactly the difference. A backward is priced alike either way."""
    import rnn_fused
    from rnn_fused import launch_plan

    steps, batch, inputs, hidden = 11, 3, 20, 48
    constants = launch_plan.cost_constants()
    samples = rnn_fused.plan(hidden, batch, device="emulated").samples
    assert launch_plan.kernel_projects_input(steps, batch, inputs, hidden)
    in_kernel = predicted_layer_us("planned", steps, batch, inputs, hidden)
    backward = predicted_layer_us("planned", steps, batch, inputs, hidden, backward=True)
    with launch_plan.forced_tiling(input_projection_on_host=True):
        assert not launch_plan.kernel_projects_input(steps, batch, inputs, hidden)
        on_host = predicted_layer_us("planned", steps, batch, inputs, hidden)
        assert predicted_layer_us("planned", steps, batch, inputs, hidden, backward=True) == backward
    gemm_us = 2.0 * steps * batch * inputs * hidden / (constants["gemm_tflops"] * 1e6) + constants["launch_us"]
    projection_us = steps * samples * inputs * hidden / (constants["fma_per_sm_per_us"] * 0.25)
    assert on_host - in_kernel == pytest.approx(gemm_us - projection_us, rel=1e-9)
    assert in_kernel < on_host


def test_a_short_backward_is_priced_with_the_gradients_kernel_instead_of_the_gemms():
    """Where the backward makes its whole-sequence gradients in the gradients kernel
    (cost::kernel_makes_gradients: T B <= 64 rows, under a quarter of a launch), the planned
    backward is priced with that kernel (its CTAs' float64 sums at a quarter of an SM's float64
    multiply-add rate, per wave over 132 SMs, and its launch) instead of the GEMMs and their launches: below
    the same layer with its gradients on the host (forced_tiling(gradients_on_host=True)). At
    65 rows the GEMMs either way."""
    import math

    import rnn_fused
    from rnn_fused import launch_plan

    steps, batch, inputs, hidden = 11, 3, 20, 48
    constants = launch_plan.cost_constants()
    step_us = rnn_fused.plan(hidden, batch, backward=True, device="emulated").predicted_us_per_step
    assert launch_plan.kernel_makes_gradients(steps, batch, inputs, hidden)
    assert not launch_plan.kernel_makes_gradients(steps, batch, inputs, hidden, torch.float64)
    in_kernel = predicted_layer_us("planned", steps, batch, inputs, hidden, backward=True)
    with launch_plan.forced_tiling(gradients_on_host=True):
        assert not launch_plan.kernel_makes_gradients(steps, batch, inputs, hidden)
        on_host = predicted_layer_us("planned", steps, batch, inputs, hidden, backward=True)
    rows = steps * batch
    outputs = rows * inputs + hidden * inputs + hidden * hidden + hidden  # dX, dW_ih, dW_hh, the biases'
    waves = math.ceil(math.ceil(outputs / 256) / 132)
    kernel_us = waves * 256 * max(rows, hidden) / (constants["fma_per_sm_per_us"] * constants["fp64_fma_fraction"] * 0.25)
    assert in_kernel - steps * step_us == pytest.approx(kernel_us + constants["launch_us"] + constants["op_fixed_us"],
                                                        rel=1e-9)
    assert in_kernel < on_host - 2 * constants["launch_us"]  # the GEMMs' launches, three at least
    long = (13, 5, inputs, hidden)  # 65 rows
    assert not launch_plan.kernel_makes_gradients(*long)
    with pytest.raises(ValueError, match="kernel_makes_gradients needs positive steps, batch, input_size and "
                                         "hidden_size, got 0, 3, 20, 48"):
        launch_plan.kernel_makes_gradients(0, batch, inputs, hidden)
    with launch_plan.forced_tiling(gradients_on_host=True):
        long_on_host = predicted_layer_us("planned", *long, backward=True)
    assert predicted_layer_us("planned", *long, backward=True) == long_on_host


def test_whether_a_kernel_projects_the_input_needs_a_positive_shape():
    from rnn_fused import launch_plan

    with pytest.raises(ValueError, match="kernel_projects_input needs positive steps, batch, input_size and "
                                         "hidden_size, got 0, 3, 20, 48"):
        launch_plan.kernel_projects_input(0, 3, 20, 48)


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel must be 'planned', 'legacy-grid' or 'cudnn', got 'magic'"):
        predicted_layer_us("magic", 10, 1, 1, 1)


# RecurrenceCta::kOperandL1Steps (csrc/cuda/recurrence_paths.cuh): on the block path, at up to
# 4 samples per chunk, the kernels prefetch a step's operands into L1 this many steps ahead;
# elsewhere (the cluster and grid barriers invalidate L1) they load them into registers one
# step ahead only, or, with several chunks per step, as each chunk's dot products start.
OPERAND_L1_STEPS = 4


def test_operands_read_ahead_arrive_before_the_planned_steps_need_them():
    """The model prices no wait for the operands the epilogues read from global memory (XW_t;
    dy_t and h_t): that holds where the read-ahead spans at least one dependent L2 load on
    every step the planner takes (float32, the default emulated device: H100/H200-like)."""
    from rnn_fused import plan
    from rnn_fused.launch_plan import cost_constants

    latency = cost_constants()["l2_dependent_load_us"]
    for hidden in (8, 16, 33, 64, 96, 128, 200, 256, 512, 1024, 2048):
        for batch in (1, 2, 8, 32, 128, 512):
            for backward in (False, True):
                p = plan(hidden, batch, backward=backward)
                if p.path == "stepwise":
                    continue
                step = p.predicted_us_per_step
                if p.chunks > 1:  # loaded as a chunk's dot products start, needed after them
                    span = step / p.chunks
                elif p.path == "block" and p.samples <= 4:
                    span = (OPERAND_L1_STEPS - 1) * step
                else:
                    span = step
                assert span >= latency, (hidden, batch, backward, p)
