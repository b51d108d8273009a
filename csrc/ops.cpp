// The product's operators (namespace rnn_fused): the single-layer, single-direction op pair
// that every backend implements (layers and directions are composed above it, in Python or in
// rnn_layers_forward), the directions' pair for both directions of a layer, the stack ops,
// edge_scales (the truncation draws the backward applies), recurrence_plan (what a
// GPU-kernel backend would launch), cost_model (its predicted time of a layer), backends
// (the registered backends' names) and the layer's whole-sequence GEMMs on their own
// (layer_input_projection, layer_gradients_from_dz: what gpu-check times beside a layer).
// The op entry points build the call descriptor (layer_call.h) and hand it to the host layer
// (host_layer.h), which picks the backend.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <Python.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/step_team.h"
#include "cuda/recurrence_cost_model.h"
#include "host_layer.h"

// Importing rnn_fused._C from Python only has to load this shared library: the
// ops are registered by the static initialisers of TORCH_LIBRARY below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace rnn_fused {
namespace {

std::string optional_name(const std::optional<c10::string_view>& name) {
  return name.has_value() ? std::string(*name) : std::string();
}

// The seed travels as a tensor so that a seed drawn inside a compiled graph (torch.randint)
// reaches the op without becoming a Python int; it is read on the host, so it must live
// there (reading a CUDA tensor would synchronize). None: no randomized truncation (seed 0).
int64_t seed_value(const std::optional<at::Tensor>& seed) {
  if (!seed.has_value()) return 0;
  TORCH_CHECK_VALUE(seed->device().is_cpu() && seed->scalar_type() == at::kLong && seed->numel() == 1,
                    "rnn_fused: seed must be None or a one-element int64 CPU tensor, got a ", seed->scalar_type(),
                    " tensor of shape ", seed->sizes(), " on ", seed->device());
  return seed->item<int64_t>();
}

// The forward's part of a call, shared by both op entry points.
LayerForwardCall forward_call(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                              const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                              const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
                              const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity, bool reverse,
                              int64_t truncate_every, double keep_prob, const std::optional<at::Tensor>& seed,
                              int64_t layer, const std::optional<c10::string_view>& backend,
                              const std::optional<c10::string_view>& path, int64_t side_by_side) {
  return LayerForwardCall{.input = input,
                          .hx = hx,
                          .weight_ih = weight_ih,
                          .weight_hh = weight_hh,
                          .bias_ih = bias_ih,
                          .bias_hh = bias_hh,
                          .lengths = lengths,
                          .options = parse_options(std::string(nonlinearity), reverse, truncate_every, keep_prob,
                                                   seed_value(seed), layer, optional_name(backend),
                                                   optional_name(path), side_by_side)};
}

std::tuple<at::Tensor, at::Tensor> rnn_layer_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity, bool reverse, int64_t truncate_every,
    double keep_prob, const std::optional<at::Tensor>& seed, int64_t layer, std::optional<c10::string_view> backend,
    std::optional<c10::string_view> path, int64_t side_by_side) {
  LayerForwardCall call = forward_call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                                       reverse, truncate_every, keep_prob, seed, layer, backend, path, side_by_side);
  check_forward_call(call);
  return run_layer_forward(call);
}

LayerBackwardResult rnn_layer_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_h_n, const at::Tensor& output,
    std::array<bool, 5> output_mask, bool record_norms, const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, const std::optional<at::Tensor>& lengths,
    c10::string_view nonlinearity, bool reverse, int64_t truncate_every, double keep_prob,
    const std::optional<at::Tensor>& seed, int64_t layer, std::optional<c10::string_view> backend,
    std::optional<c10::string_view> path, int64_t side_by_side) {
  LayerBackwardCall call{.forward = forward_call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                                 nonlinearity, reverse, truncate_every, keep_prob, seed, layer,
                                                 backend, path, side_by_side),
                         .grad_output = grad_output,
                         .grad_h_n = grad_h_n.value_or(at::Tensor()),
                         .output = output,
                         .output_mask = output_mask,
                         .record_norms = record_norms};
  check_backward_call(call);
  return run_layer_backward(call);
}

// The two directions' calls of a bidirectional layer from the rnn_directions_* ops' arguments:
// hx [2,B,H] or None; weights the directions' (weight_ih, weight_hh[, bias_ih, bias_hh]), the
// forward direction's first.
std::array<LayerForwardCall, 2> direction_calls(const char* what, const at::Tensor& input,
                                                const std::optional<at::Tensor>& hx,
                                                const std::vector<at::Tensor>& weights, bool has_biases,
                                                const std::optional<at::Tensor>& lengths,
                                                c10::string_view nonlinearity, int64_t truncate_every, double keep_prob,
                                                const std::optional<at::Tensor>& seed, int64_t layer,
                                                std::optional<c10::string_view> backend,
                                                std::optional<c10::string_view> path, int64_t side_by_side) {
  const size_t per_direction = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(weights.size() == 2 * per_direction, "rnn_fused.", what, ": expected ", 2 * per_direction,
                    " weights (per direction weight_ih, weight_hh", has_biases ? ", bias_ih, bias_hh" : "",
                    "), got ", weights.size());
  TORCH_CHECK_VALUE(!hx.has_value() || (hx->dim() == 3 && hx->size(0) == 2), "rnn_fused.", what,
                    ": hx must be None or [2, B, H] (one initial state per direction), got shape ",
                    hx.has_value() ? hx->sizes() : at::IntArrayRef{});
  // One check of the lengths (and, from the CPU, one copy to the device) for both directions.
  std::array<LayerForwardCall, 2> calls;
  for (size_t d = 0; d < 2; ++d) {
    const at::Tensor* w = weights.data() + d * per_direction;
    const std::optional<at::Tensor> none;
    calls[d] = forward_call(input, hx.has_value() ? std::optional<at::Tensor>((*hx)[int64_t(d)]) : none, w[0], w[1],
                            has_biases ? std::optional<at::Tensor>(w[2]) : none,
                            has_biases ? std::optional<at::Tensor>(w[3]) : none, lengths, nonlinearity,
                            /*reverse=*/d == 1, truncate_every, keep_prob, seed, layer, backend, path, side_by_side);
    check_forward_call(calls[d], d == 1 ? &calls[0].valid_lengths : nullptr);
  }
  return calls;
}

std::tuple<at::Tensor, at::Tensor> rnn_directions_forward(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, const std::vector<at::Tensor>& weights,
    bool has_biases, const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity, int64_t truncate_every,
    double keep_prob, const std::optional<at::Tensor>& seed, int64_t layer, std::optional<c10::string_view> backend,
    std::optional<c10::string_view> path, int64_t side_by_side) {
  return run_directions_forward(direction_calls("rnn_directions_forward", input, hx, weights, has_biases, lengths,
                                                nonlinearity, truncate_every, keep_prob, seed, layer, backend, path,
                                                side_by_side));
}

std::vector<at::Tensor> rnn_directions_backward(
    const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_h_n, const at::Tensor& output,
    std::array<bool, 9> output_mask, const at::Tensor& input, const std::optional<at::Tensor>& hx,
    const std::vector<at::Tensor>& weights, bool has_biases, const std::optional<at::Tensor>& lengths,
    c10::string_view nonlinearity, int64_t truncate_every, double keep_prob, const std::optional<at::Tensor>& seed,
    int64_t layer, std::optional<c10::string_view> backend, bool record_norms, std::optional<c10::string_view> path,
    int64_t side_by_side) {
  const char* what = "rnn_directions_backward";
  std::array<LayerForwardCall, 2> calls = direction_calls(what, input, hx, weights, has_biases, lengths, nonlinearity,
                                                          truncate_every, keep_prob, seed, layer, backend, path,
                                                          side_by_side);
  const LayerShape& s = calls[0].shape;
  const auto check = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.device() == input.device() && t.scalar_type() == input.scalar_type() && t.sizes() == shape,
                "rnn_fused.", what, ": ", name, " must be a ", input.scalar_type(), " tensor of shape ", shape, " on ",
                input.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  check(grad_output, {s.steps, s.batch, 2 * s.hidden}, "grad_output");
  check(output, {s.steps, s.batch, 2 * s.hidden}, "output");
  if (grad_h_n.has_value()) check(*grad_h_n, {2, s.batch, s.hidden}, "grad_h_n");
  std::array<LayerBackwardCall, 2> backward_calls;
  for (int64_t d = 0; d < 2; ++d) {
    const auto m = output_mask.begin() + 1 + 4 * d;
    backward_calls[d] = LayerBackwardCall{.forward = std::move(calls[d]),
                                          .grad_output = grad_output.narrow(2, d * s.hidden, s.hidden),
                                          .grad_h_n = grad_h_n.has_value() ? (*grad_h_n)[d] : at::Tensor(),
                                          .output = output.narrow(2, d * s.hidden, s.hidden),
                                          .output_mask = {output_mask[0], m[0], m[1], m[2], m[3]},
                                          .record_norms = record_norms};
    check_backward_call(backward_calls[d], /*forward_checked=*/true);
  }
  return run_directions_backward(backward_calls);
}

// Step-phase timing of one recurrence on a GPU-kernel backend (a persistent path): the
// forward recurrence of a layer whose input projection XW_t is `xw` itself, from a zero
// state; with `backward`, after an untimed forward, the backward recurrence with dy = xw and
// dh_n = 0. xw [T,B,H] and weight_hh [H,H] in float32 or float64. Returns (phase_cycles [CTAs, 3]
// int64: per CTA, the cycles thread 0 spent staging state rows, computing and in the step
// barrier, summed over the T steps; result [T,B,H]: the forward's h_t, or the backward's dz_t).
std::tuple<at::Tensor, at::Tensor> recurrence_step_phases(const at::Tensor& xw, const at::Tensor& weight_hh,
                                                          bool backward, c10::string_view nonlinearity,
                                                          std::optional<c10::string_view> path,
                                                          std::optional<c10::string_view> backend) {
  TORCH_CHECK_VALUE(xw.dim() == 3, "rnn_fused.recurrence_step_phases: xw must be 3-D [T, B, H], got ", xw.dim(), "-D");
  TORCH_CHECK_VALUE(xw.scalar_type() == at::kFloat || xw.scalar_type() == at::kDouble,
                    "rnn_fused.recurrence_step_phases: xw must be float32 or float64, got ", xw.scalar_type());
  LayerForwardCall call{.input = xw,
                        .weight_ih = at::eye(xw.size(2), xw.options()),  // checked only: the projection is xw
                        .weight_hh = weight_hh,
                        .options = parse_options(std::string(nonlinearity), false, 0, 1.0, 0, 0, optional_name(backend),
                                                 optional_name(path))};
  check_forward_call(call);
  const RecurrenceBackend& b = find_recurrence_backend(xw.device().type(), call.options.backend);
  TORCH_CHECK_VALUE(b.plan != nullptr, "rnn_fused.recurrence_step_phases: backend '", b.name,
                    "' runs no GPU kernels to time (use a CUDA device or backend 'emulated')");
  TORCH_CHECK_VALUE(!call.shape.empty(), "rnn_fused.recurrence_step_phases: needs T, B, H > 0, got xw of shape ",
                    xw.sizes());
  const c10::OptionalDeviceGuard guard(xw.device());
  // Refused before anything runs: the stepwise path has no persistent kernel to time.
  const RecurrencePlanReport report = b.plan(RecurrencePlanQuery{.compute = xw.scalar_type(),
                                                                 .hidden = call.shape.hidden,
                                                                 .batch = call.shape.batch,
                                                                 .backward = backward,
                                                                 .path = call.options.path});
  TORCH_CHECK_VALUE(report.chosen.path != "stepwise",
                    "rnn_fused: step phases are timed inside a persistent kernel; path 'stepwise' launches two "
                    "kernels per step and has none (force 'block', 'cluster' or 'grid')");
  const at::Tensor w_hh = weight_hh.contiguous();
  at::Tensor cycles;
  at::Tensor out = xw.contiguous().clone();  // the forward overwrites XW_t with h_t
  b.forward(ForwardRecurrence{
      .call = call, .w_hh = w_hh, .out = out, .h0 = {}, .phase_cycles = backward ? nullptr : &cycles});
  if (!backward) return {cycles, out};
  const at::Tensor grad_h_n = at::zeros({call.shape.batch, call.shape.hidden}, xw.options());
  LayerBackwardCall backward_call{.forward = call, .grad_output = xw, .grad_h_n = grad_h_n, .output = out};
  check_backward_call(backward_call);
  const BackwardOperands operands = backward_operands(xw.scalar_type(), xw, call.weight_ih, weight_hh, out, xw, grad_h_n);
  at::Tensor dz = at::empty_like(out);
  b.backward(BackwardRecurrence{.call = backward_call,
                                .operands = operands,
                                .dz = dz,
                                .step_norms = at::empty({0}, xw.options()),
                                .phase_cycles = &cycles});
  return {cycles, dz};
}

// c [T,B] float64: the edge scale of processing step s of sample b that the backward
// kernels of every backend apply (recurrence_math.h edge_scale), for checking and recording.
at::Tensor edge_scales(int64_t steps, int64_t batch, int64_t truncate_every, double keep_prob, int64_t seed,
                       int64_t layer, bool reverse) {
  TORCH_CHECK_VALUE(steps >= 0 && batch >= 0, "rnn_fused: edge_scales needs steps, batch >= 0, got ", steps, ", ",
                    batch);
  const TruncationParams tp = parse_truncation(truncate_every, keep_prob, seed, layer, reverse);
  at::Tensor scales = at::empty({steps, batch}, at::kDouble);
  double* c = scales.data_ptr<double>();
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t b = 0; b < batch; ++b) c[s * batch + b] = edge_scale(tp, s, b);
  }
  return scales;
}

// The whole-sequence GEMMs the host layer runs around one layer's recurrence, on their own
// (gpu-check times them to estimate a recurrence's time by subtraction), through the same
// code as the layer ops (elman_gemms.h). input [T,B,I], weight_ih [H,I], weight_hh [H,H],
// output and dz [T,B,H], biases [H] or None.
void check_gemm_operands(const char* what, const at::Tensor& input, const at::Tensor& weight_ih,
                         const std::vector<std::pair<const char*, const at::Tensor*>>& others) {
  TORCH_CHECK_VALUE(input.dim() == 3, "rnn_fused.", what, ": input must be [T, B, input_size], got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(weight_ih.dim() == 2 && weight_ih.size(1) == input.size(2), "rnn_fused.", what,
                    ": weight_ih must be [hidden_size, ", input.size(2), "], got shape ", weight_ih.sizes());
  for (const auto& [name, t] : others) {
    TORCH_CHECK_VALUE(t->scalar_type() == input.scalar_type() && t->device() == input.device(), "rnn_fused.", what,
                      ": ", name, " must be a ", input.scalar_type(), " tensor on ", input.device(), " like input, got ",
                      t->scalar_type(), " on ", t->device());
  }
}

// The forward's input projection: [T,B,H] = input @ weight_ih^T (+ bias_ih + bias_hh).
at::Tensor layer_input_projection(const at::Tensor& input, const at::Tensor& weight_ih,
                                  const std::optional<at::Tensor>& bias_ih, const std::optional<at::Tensor>& bias_hh) {
  check_gemm_operands("layer_input_projection", input, weight_ih, {{"weight_ih", &weight_ih}});
  TORCH_CHECK_VALUE(bias_ih.has_value() == bias_hh.has_value(), "rnn_fused.layer_input_projection: bias_ih and "
                    "bias_hh must both be tensors or both None");
  const int64_t T = input.size(0), B = input.size(1), H = weight_ih.size(0);
  if (bias_ih.has_value()) {
    check_gemm_operands("layer_input_projection", input, weight_ih, {{"bias_ih", &*bias_ih}, {"bias_hh", &*bias_hh}});
    for (const auto& [name, bias] : {std::pair{"bias_ih", &*bias_ih}, std::pair{"bias_hh", &*bias_hh}}) {
      TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == H, "rnn_fused.layer_input_projection: ", name,
                        " must be [", H, "], got shape ", bias->sizes());
    }
  }
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  const at::Tensor x = input.to(ct).contiguous();
  at::Tensor out = at::empty({T, B, H}, x.options());
  at::Tensor out2d = out.view({T * B, H});
  input_projection(out2d, x.view({T * B, input.size(2)}), weight_ih.to(ct).contiguous(), bias_ih, bias_hh);
  return out;
}

// The backward's gradients from dz (gradients_from_dz, no hx, no lengths, forward in time):
// grad_input, grad_weight_ih, grad_weight_hh, grad_bias (empty [0] where output_mask, in that
// order, says not wanted). launch_bound: the GPU kernels' products (sum_of_outer_products).
std::vector<at::Tensor> layer_gradients_from_dz(const at::Tensor& input, const at::Tensor& weight_ih,
                                                const at::Tensor& weight_hh, const at::Tensor& output,
                                                const at::Tensor& dz, std::array<bool, 4> output_mask,
                                                bool launch_bound) {
  check_gemm_operands("layer_gradients_from_dz", input, weight_ih,
                      {{"weight_ih", &weight_ih}, {"weight_hh", &weight_hh}, {"output", &output}, {"dz", &dz}});
  const int64_t T = input.size(0), B = input.size(1), H = weight_ih.size(0);
  TORCH_CHECK_VALUE(weight_hh.sizes() == at::IntArrayRef({H, H}), "rnn_fused.layer_gradients_from_dz: weight_hh ",
                    "must be [", H, ", ", H, "], got shape ", weight_hh.sizes());
  for (const auto& [name, t] : {std::pair{"output", &output}, std::pair{"dz", &dz}}) {
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef({T, B, H}), "rnn_fused.layer_gradients_from_dz: ", name,
                      " must be [", T, ", ", B, ", ", H, "], got shape ", t->sizes());
  }
  TORCH_CHECK_VALUE(T > 0, "rnn_fused.layer_gradients_from_dz: needs T > 0 steps");
  const at::ScalarType ct = compute_dtype(input.scalar_type());
  const at::Tensor dz_c = dz.to(ct).contiguous();
  // (dz_first is dz at step 0; dh_n is read only with lengths, which this op has none of)
  const LayerBackwardResult r = gradients_from_dz(
      input, weight_ih.to(ct).contiguous(), weight_hh.to(ct).contiguous(), output.to(ct).contiguous(), dz_c, dz_c[0],
      dz_c[T - 1], std::nullopt, std::nullopt, /*reverse=*/false,
      {output_mask[0], false, output_mask[1], output_mask[2], output_mask[3]}, input.scalar_type(),
      /*record_norms=*/false, at::empty({0}, dz_c.options()), launch_bound);
  return {std::get<0>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
}

// What backend `backend` (None: like's device's own) would launch for a recurrence of
// hidden_size units and batch_size samples in like's dtype, on like's (real or emulated)
// device: entry 0 is the chosen (or forced) plan, then every path's best shape (block, cluster,
// grid, stepwise), then every launch shape autotuning timed (none unless it did). Per entry:
// path, feasible (0 or 1), 15 integers (samples_per_group, samples, chunks, groups, ctas_per_group,
// units_per_cta, units_per_pass, step_sync, grid, block_threads, cluster, shared_mem_bytes,
// blocks_per_sm, waves, compiled_passes) and 4 more (lane_rows, ctas_per_sm, tiled_dots, operand_ring),
// us_per_step, reason, and the time per step measured on the device (NaN unless autotuning
// measured it: host_layer.h Autotune).
std::tuple<std::vector<std::string>, std::vector<int64_t>, std::vector<int64_t>, std::vector<double>,
           std::vector<std::string>, std::vector<double>>
recurrence_plan(const at::Tensor& like, int64_t hidden_size, int64_t batch_size, bool backward,
                std::optional<c10::string_view> path, std::optional<c10::string_view> backend, int64_t side_by_side) {
  const RecurrenceBackend& b = find_recurrence_backend(like.device().type(), optional_name(backend));
  TORCH_CHECK_VALUE(b.plan != nullptr, "rnn_fused.plan: backend '", b.name,
                    "' runs no GPU kernels and has no launch plan (ask for a CUDA device or 'emulated')");
  const c10::OptionalDeviceGuard guard(like.device());
  const RecurrencePlanReport report = b.plan(RecurrencePlanQuery{.compute = compute_dtype(like.scalar_type()),
                                                                 .hidden = hidden_size,
                                                                 .batch = batch_size,
                                                                 .backward = backward,
                                                                 .path = optional_name(path),
                                                                 .side_by_side = parse_side_by_side(side_by_side)});
  std::vector<std::string> paths, reasons;
  std::vector<int64_t> feasible;
  std::vector<int64_t> shapes;
  std::vector<double> us, measured;
  std::vector<RecurrencePlanReport::Entry> entries = {report.chosen};
  entries.insert(entries.end(), report.candidates.begin(), report.candidates.end());
  entries.insert(entries.end(), report.timed.begin(), report.timed.end());
  for (const RecurrencePlanReport::Entry& e : entries) {
    paths.push_back(e.path);
    feasible.push_back(e.feasible);
    shapes.insert(shapes.end(), {e.samples_per_group, e.samples, e.chunks, e.groups, e.ctas_per_group,
                                 e.units_per_cta, e.units_per_pass, e.step_sync, e.grid, e.block_threads,
                                 e.cluster,
                                 e.shared_mem_bytes, e.blocks_per_sm, e.waves, e.compiled_passes, int64_t(e.lane_rows),
                                 e.ctas_per_sm, int64_t(e.tiled_dots), int64_t(e.operand_ring)});
    us.push_back(e.us_per_step);
    reasons.push_back(e.reason);
    measured.push_back(e.measured_us_per_step);
  }
  return {paths, feasible, shapes, us, reasons, measured};
}

// One checked call per layer of a stack: weights holds per layer (weight_ih, weight_hh) and,
// with has_biases, (bias_ih, bias_hh) after them, in nn.RNN's order; hx [L,B,H] or None. Layer
// l >= 1's input is layer l - 1's output: a placeholder of its shape (no memory) for the checks.
std::vector<LayerForwardCall> stack_calls(const char* what, const at::Tensor& input,
                                          const std::optional<at::Tensor>& hx, const std::vector<at::Tensor>& weights,
                                          bool has_biases, const std::optional<at::Tensor>& lengths,
                                          c10::string_view nonlinearity, int64_t truncate_every, double keep_prob,
                                          const std::optional<at::Tensor>& seed,
                                          const std::optional<c10::string_view>& backend) {
  const size_t per_layer = has_biases ? 4 : 2;
  TORCH_CHECK_VALUE(!weights.empty() && weights.size() % per_layer == 0, "rnn_fused.", what, ": weights must hold ",
                    per_layer, " tensors per layer, got ", weights.size());
  const int64_t layers = static_cast<int64_t>(weights.size() / per_layer);
  TORCH_CHECK(input.dim() == 3, "rnn_fused: input must be 3-D [T, B, I], got ", input.dim(), "-D");
  if (hx.has_value()) {
    TORCH_CHECK(hx->dim() == 3 && hx->size(0) == layers, "rnn_fused.", what, ": hx must have shape [", layers,
                ", B, H] (one state per layer), got ", hx->sizes());
  }
  std::vector<LayerForwardCall> calls;
  for (int64_t l = 0; l < layers; ++l) {
    const size_t at = static_cast<size_t>(l) * per_layer;
    const at::Tensor& weight_hh = weights[at + 1];
    const at::Tensor layer_input =
        l == 0 ? input : at::empty({1, 1, 1}, input.options()).expand({input.size(0), input.size(1), weight_hh.size(0)});
    calls.push_back(LayerForwardCall{
        .input = layer_input,
        .hx = hx.has_value() ? std::optional<at::Tensor>((*hx)[l]) : std::nullopt,
        .weight_ih = weights[at],
        .weight_hh = weight_hh,
        .bias_ih = has_biases ? std::optional<at::Tensor>(weights[at + 2]) : std::nullopt,
        .bias_hh = has_biases ? std::optional<at::Tensor>(weights[at + 3]) : std::nullopt,
        .lengths = lengths,
        .options = parse_options(std::string(nonlinearity), false, truncate_every, keep_prob, seed_value(seed), l,
                                 optional_name(backend), "")});
    check_forward_call(calls.back());
  }
  return calls;
}

// The forward of a stack of unidirectional layers in one launch (host_layer.h run_stack_forward),
// the arguments as for stack_calls; dropout_masks [L-1,T,B,H] or None: each element of layer l's
// output is scaled by mask[l] in layer l + 1's input (dropout between layers, drawn by the
// caller). Returns (outputs [L,T,B,H]: every layer's output, unmasked, zero at t >= lengths[b];
// h_n [L,B,H]). No autograd of its own: rnn_fused.functional wraps it.
std::tuple<at::Tensor, at::Tensor> rnn_stack_forward(const at::Tensor& input, const std::optional<at::Tensor>& hx,
                                                     const std::vector<at::Tensor>& weights, bool has_biases,
                                                     const std::optional<at::Tensor>& lengths,
                                                     c10::string_view nonlinearity,
                                                     std::optional<c10::string_view> backend,
                                                     const std::optional<at::Tensor>& dropout_masks) {
  return run_stack_forward(stack_calls("rnn_stack_forward", input, hx, weights, has_biases, lengths, nonlinearity, 0,
                                       1.0, std::nullopt, backend),
                           dropout_masks.value_or(at::Tensor()));
}

// Its backward (host_layer.h run_stack_backward): grad_output [T,B,H] of the top layer,
// grad_h_n [L,B,H] or None (zero), the forward's outputs [L,T,B,H]; output_mask: 5 per layer (grad_input,
// grad_hx, grad_weight_ih, grad_weight_hh, grad_bias, as for rnn_layer_backward); then the
// forward's arguments and the truncation (layer l's draws keyed as rnn_layer_backward's with
// layer = l), and the forward's dropout masks. Returns the 5 gradients of each layer in layer
// order, empty [0] where not wanted; with record_norms each layer's 5 are followed by its step
// norms [T,B], grad_sq_norms [5] (float64) and nonfinite flag, as rnn_layer_backward's.
std::vector<at::Tensor> rnn_stack_backward(const at::Tensor& grad_output, const std::optional<at::Tensor>& grad_h_n,
                                           const at::Tensor& outputs, c10::List<bool> output_mask,
                                           const at::Tensor& input, const std::optional<at::Tensor>& hx,
                                           const std::vector<at::Tensor>& weights, bool has_biases,
                                           const std::optional<at::Tensor>& lengths, c10::string_view nonlinearity,
                                           int64_t truncate_every, double keep_prob,
                                           const std::optional<at::Tensor>& seed,
                                           std::optional<c10::string_view> backend,
                                           const std::optional<at::Tensor>& dropout_masks, bool record_norms) {
  const std::vector<LayerForwardCall> calls = stack_calls("rnn_stack_backward", input, hx, weights, has_biases,
                                                          lengths, nonlinearity, truncate_every, keep_prob, seed,
                                                          backend);
  TORCH_CHECK_VALUE(output_mask.size() == 5 * calls.size(), "rnn_fused.rnn_stack_backward: output_mask must hold 5 ",
                    "entries per layer (", 5 * calls.size(), "), got ", output_mask.size());
  std::vector<std::array<bool, 5>> masks(calls.size());
  for (size_t i = 0; i < output_mask.size(); ++i) masks[i / 5][i % 5] = output_mask.get(i);
  return run_stack_backward(calls, grad_output, grad_h_n.value_or(at::Tensor()), outputs, masks,
                            dropout_masks.value_or(at::Tensor()),
                            record_norms);
}

// Whether a backend would run a stack of num_layers layers in one launch, from its cost model
// or, under autotuning, its measurements: (feasible, faster than the layers one after another,
// predicted us of the stack's launch, predicted us of the layers' recurrences, the same two
// measured (-1: not measured), [grid, samples per group, units per pass, shared memory bytes,
// compiled passes, CTAs per cluster (1: the Block path's stack), units per CTA, steps beyond T],
// reason). like: as for recurrence_plan.
std::tuple<bool, bool, double, double, double, double, std::vector<int64_t>, std::string> stack_plan(
    const at::Tensor& like, int64_t hidden_size, int64_t batch_size, int64_t steps, int64_t num_layers,
    std::optional<c10::string_view> backend) {
  const c10::OptionalDeviceGuard guard(like.device());
  const StackPlanReport r = plan_stack(like.device().type(), optional_name(backend),
                                       {.hidden = hidden_size, .batch = batch_size, .steps = steps, .layers = num_layers});
  return {r.feasible, r.faster, r.stack_us, r.layers_us, r.measured_stack_us, r.measured_layers_us,
          std::vector<int64_t>{r.grid, r.samples, r.units_per_pass, r.shared_mem_bytes, r.compiled_passes, r.cluster,
                               r.units_per_cta, r.lead_steps},
          r.reason};
}

// The cost model's microseconds per step of one launch shape of `path` (the fields of a plan:
// samples, chunks, ctas_per_group, units_per_cta, waves, units_per_pass, step_sync) for hidden_size and
// batch_size in
// `dtype` (float32 or float64), with the constants named in constant_names replaced by
// constant_values: a shape a GPU ran, priced under other constants (refitting the model).
// term: "total", or the part step-phase timing measures apart: "stage", "compute", "barrier".
// block_stack: the shape is a CTA of the Block path's layer stack (units_per_cta its 2H rows).
// tiled_dots: the tiled dot products of the Grid or Cluster path (RecurrenceTiling::tiled_dots).
double step_cost_us(c10::string_view path, int64_t hidden_size, int64_t batch_size, at::ScalarType dtype,
                    int64_t samples, int64_t chunks, int64_t ctas_per_group, int64_t units_per_cta, int64_t waves,
                    std::vector<std::string> constant_names, std::vector<double> constant_values,
                    c10::string_view term, int64_t units_per_pass, int64_t step_sync, bool block_stack,
                    bool lane_rows, int64_t ctas_per_sm, bool tiled_dots) {
  const RecurrenceBackend& b = find_recurrence_backend(c10::DeviceType::CPU, "emulated");
  return b.step_cost(StepCostQuery{.path = std::string(path),
                                   .compute = dtype,
                                   .hidden = hidden_size,
                                   .batch = batch_size,
                                   .samples = samples,
                                   .chunks = chunks,
                                   .ctas_per_group = ctas_per_group,
                                   .units_per_cta = units_per_cta,
                                   .waves = waves,
                                   .units_per_pass = units_per_pass,
                                   .step_sync = step_sync,
                                   .constant_names = std::move(constant_names),
                                   .constant_values = std::move(constant_values),
                                   .term = std::string(term),
                                   .block_stack = block_stack,
                                   .lane_rows = lane_rows,
                                   .ctas_per_sm = ctas_per_sm,
                                   .tiled_dots = tiled_dots});
}

// The cost model's named constants (recurrence_cost_model.h kNamedConstants) and their values
// in this build: the planner's (kH200), or with first_kernels those the reference models were
// fitted with (kFirstKernels); then cluster_barrier_scale, the set's cluster barrier table
// relative to the planner's (the table step_cost scales).
std::tuple<std::vector<std::string>, std::vector<double>> cost_constants(bool first_kernels) {
  const cost::Constants& set = first_kernels ? cost::kFirstKernels : cost::kH200;
  std::vector<std::string> names;
  std::vector<double> values;
  for (const cost::NamedConstant& c : cost::kNamedConstants) {
    names.emplace_back(c.name);
    values.push_back(set.*c.member);
  }
  names.emplace_back(cost::kClusterBarrierScale);
  values.push_back(set.cluster_barrier_us[2] / cost::kH200.cluster_barrier_us[2]);
  return {names, values};
}

// The plan the GPU kernels of like's device (CPU: the emulated device) would run a layer's
// forward or backward recurrence with.
RecurrencePlanReport::Entry planned_entry(const at::Tensor& like, int64_t hidden_size, int64_t batch, bool backward) {
  const RecurrenceBackend& b = find_recurrence_backend(like.device().type(), like.is_cpu() ? "emulated" : "");
  const c10::OptionalDeviceGuard guard(like.device());
  return b.plan(RecurrencePlanQuery{
                    .compute = compute_dtype(like.scalar_type()), .hidden = hidden_size, .batch = batch,
                    .backward = backward})
      .chosen;
}

// host_layer.h projects_input_in_kernel for a plan as reported.
bool plan_projects_input(const RecurrencePlanReport::Entry& plan, int64_t steps, int64_t input_size,
                         int64_t hidden_size) {
  return projects_input_in_kernel(plan.path == "block" && !plan.lane_rows, steps, plan.samples, input_size,
                                  hidden_size);
}

// The cost model's prediction, in microseconds, for one layer and direction (forward, or
// backward after a forward) of `kernel`: a reference model ("legacy-grid": the first grid
// kernel; "cudnn": cuDNN's per-step GEMM regime) or "planned" (the path the planner of
// like's device would choose, with the layer's whole-sequence work: the GEMMs, or at short
// shapes the kernels that do it instead).
double cost_model_us(const at::Tensor& like, c10::string_view kernel, int64_t steps, int64_t batch,
                     int64_t input_size, int64_t hidden_size, bool backward) {
  TORCH_CHECK_VALUE(steps > 0 && batch > 0 && input_size > 0 && hidden_size > 0,
                    "rnn_fused: cost_model needs positive steps, batch, input_size and hidden_size, got ", steps, ", ",
                    batch, ", ", input_size, ", ", hidden_size);
  // The reference models were fitted with the first kernels' constants; the planner prices
  // with the refitted ones (recurrence_cost_model.h).
  const std::string name(kernel);
  const cost::Constants& c = name == "planned" ? cost::kH200 : cost::kFirstKernels;
  const double dw_hh_launches = name == "planned" ? cost::dw_hh_launches(steps, batch, hidden_size)
                                                  : cost::legacy_dw_hh_launches(steps);
  const double gemms = backward ? cost::backward_gemms_us(c, steps, batch, input_size, hidden_size, dw_hh_launches)
                                : cost::forward_gemms_us(c, steps, batch, input_size, hidden_size);
  if (name == "legacy-grid") return steps * cost::legacy_grid_step_us(c, batch, hidden_size, backward) + gemms;
  if (name == "cudnn") {
    return steps * cost::cudnn_gemm_step_us(c, batch, hidden_size, backward) + gemms - c.op_fixed_us +
           cost::kCudnnFit.fixed_us;
  }
  TORCH_CHECK_VALUE(name == "planned", "rnn_fused: cost_model kernel must be 'planned', 'legacy-grid' or 'cudnn', got '",
                    name, "'");
  const RecurrencePlanReport::Entry chosen = planned_entry(like, hidden_size, batch, backward);
  if (!backward && plan_projects_input(chosen, steps, input_size, hidden_size)) {
    return steps * chosen.us_per_step + cost::forward_without_gemm_us(c, steps, chosen.samples, input_size, hidden_size);
  }
  const LayerShape shape{.steps = steps, .batch = batch, .input_size = input_size, .hidden = hidden_size};
  // (the layer call gpu-check times: dX, dW_ih, dW_hh and the biases', no hx)
  if (backward && gradients_in_kernel(compute_dtype(like.scalar_type()), shape, {true, false, true, true, true})) {
    return steps * chosen.us_per_step + cost::backward_without_gemms_us(c, shape);
  }
  return steps * chosen.us_per_step + gemms;
}

// Whether a forward layer call of this shape on like's device (CPU: the emulated device) has
// its input projected inside the recurrence kernel rather than by the host's GEMM.
bool kernel_projects_input(const at::Tensor& like, int64_t steps, int64_t batch, int64_t input_size,
                           int64_t hidden_size) {
  TORCH_CHECK_VALUE(steps > 0 && batch > 0 && input_size > 0 && hidden_size > 0,
                    "rnn_fused: kernel_projects_input needs positive steps, batch, input_size and hidden_size, got ",
                    steps, ", ", batch, ", ", input_size, ", ", hidden_size);
  return plan_projects_input(planned_entry(like, hidden_size, batch, false), steps, input_size, hidden_size);
}

// Whether a layer backward of this shape on like's device (CPU: the emulated device) makes its
// whole-sequence gradients in the GPU kernels' gradients kernel rather than by the host's GEMMs
// (dW_ih, dW_hh and the biases' asked; dX with input_grad, h_0's with hx_grad).
bool kernel_makes_gradients(const at::Tensor& like, int64_t steps, int64_t batch, int64_t input_size,
                            int64_t hidden_size, bool input_grad, bool hx_grad) {
  TORCH_CHECK_VALUE(steps > 0 && batch > 0 && input_size > 0 && hidden_size > 0,
                    "rnn_fused: kernel_makes_gradients needs positive steps, batch, input_size and hidden_size, got ",
                    steps, ", ", batch, ", ", input_size, ", ", hidden_size);
  const LayerShape shape{.steps = steps, .batch = batch, .input_size = input_size, .hidden = hidden_size};
  return gradients_in_kernel(compute_dtype(like.scalar_type()), shape, {input_grad, hx_grad, true, true, true});
}

}  // namespace
}  // namespace rnn_fused

TORCH_LIBRARY(rnn_fused, m) {
  // input [T,B,I]; hx [B,H] or None (zeros); weight_ih [H,I]; weight_hh [H,H];
  // bias_ih, bias_hh [H] or None; lengths int64 [B] (on the CPU or on input's device) or
  // None (all T). truncate_every, keep_prob, seed (a one-element int64 CPU tensor; None = 0),
  // layer: the backward's truncation (docs/bptt.md); the forward only checks them (so a bad
  // value fails before anything runs) and autograd hands them to the backward. backend: 'cpu', 'cuda', 'emulated' (the
  // CUDA kernels run on CPU tensors by the SIMT emulator) or None (the input device's own).
  // path: the GPU recurrence path, or None (the planner's); side_by_side: how many recurrences
  // run side by side on the device (the planner gives this one 1/side_by_side of its SMs).
  // Returns output [T,B,H] (zero at steps t >= lengths[b]) and h_n [B,H].
  m.def(
      "rnn_layer_forward(Tensor input, Tensor? hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? lengths, str nonlinearity, bool reverse, int truncate_every=0, "
      "float keep_prob=1.0, Tensor? seed=None, int layer=0, str? backend=None, str? path=None, "
      "int side_by_side=1) -> (Tensor output, Tensor h_n)");
  // grad_output [T,B,H]; grad_h_n [B,H] or None (h_n not used: a zero gradient, read as such
  // by the time loops, never materialised); the forward's output [T,B,H]; then the forward's
  // arguments, exactly (the biases are checked, not read). Returns grad_input [T,B,I], grad_hx
  // [B,H], grad_weight_ih [H,I], grad_weight_hh [H,H], grad_bias [2,H] (the gradients of bias_ih
  // and of bias_hh, equal rows: each bias gets memory of its own without a copy); output_mask
  // says which of these five are wanted, in that order; the others come back as empty [0] tensors.
  // With record_norms also step_norms [T,B] (||dL/dh_t||, compute dtype, zero at t >=
  // lengths[b]), grad_sq_norms [5] float64 (squared norms of the five gradients, 0 for those
  // not computed) and nonfinite (bool 0-d: some gradient or g_t is NaN/Inf); without, those
  // three are empty [0].
  m.def(
      "rnn_layer_backward(Tensor grad_output, Tensor? grad_h_n, Tensor output, bool[5] output_mask, "
      "bool record_norms, Tensor input, Tensor? hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? lengths, str nonlinearity, bool reverse, int truncate_every=0, "
      "float keep_prob=1.0, Tensor? seed=None, int layer=0, str? backend=None, str? path=None, "
      "int side_by_side=1) -> (Tensor grad_input, "
      "Tensor grad_hx, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias, Tensor step_norms, Tensor grad_sq_norms, "
      "Tensor nonfinite)");
  // The backward with a graph of its own, for a double backward (create_graph=True): the
  // autograd kernel of rnn_layer_forward (layer_autograd.cpp) calls it instead of
  // rnn_layer_backward. Its kernel is Python (CompositeImplicitAutograd, rnn_fused/functional.py):
  // the plain step loop of differentiable ATen ops. needs: which of (input, hx, weight_ih,
  // weight_hh, bias_ih, bias_hh) to differentiate; returns those six gradients, an empty [0]
  // tensor for each one not needed.
  m.def(
      "rnn_layer_backward_with_graph(Tensor grad_output, Tensor grad_h_n, bool[6] needs, Tensor input, Tensor? hx, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? lengths, str nonlinearity, "
      "bool reverse, int truncate_every=0, float keep_prob=1.0, Tensor? seed=None, int layer=0, str? backend=None, "
      "str? path=None, int side_by_side=1) -> Tensor[]");
  m.def(
      "edge_scales(int steps, int batch, int truncate_every, float keep_prob, int seed, int layer, bool reverse) "
      "-> Tensor",
      &rnn_fused::edge_scales);
  // like: a tensor with the layer's dtype on the device to plan for (CPU with backend
  // 'emulated': the emulated device). The report's layout is at recurrence_plan above.
  m.def(
      "recurrence_plan(Tensor like, int hidden_size, int batch_size, bool backward, str? path=None, "
      "str? backend=None, int side_by_side=1) -> (str[], int[], int[], float[], str[], float[])");
  // like: as for recurrence_plan. The predicted microseconds of a layer's forward or backward.
  m.def(
      "cost_model(Tensor like, str kernel, int steps, int batch, int input_size, int hidden_size, bool backward) "
      "-> float",
      &rnn_fused::cost_model_us);
  // like: as for recurrence_plan. Whether a forward layer call's kernel projects the input itself.
  m.def("kernel_projects_input(Tensor like, int steps, int batch, int input_size, int hidden_size) -> bool",
        &rnn_fused::kernel_projects_input);
  m.def("kernel_makes_gradients(Tensor like, int steps, int batch, int input_size, int hidden_size, "
        "bool input_grad, bool hx_grad) -> bool",
        &rnn_fused::kernel_makes_gradients);
  // Microseconds per step of a given launch shape under replaced constants (step_cost_us above).
  m.def(
      "step_cost(str path, int hidden_size, int batch_size, ScalarType dtype, int samples, int chunks, "
      "int ctas_per_group, int units_per_cta, int waves, str[] constant_names, float[] constant_values, "
      "str term=\"total\", int units_per_pass=32, int step_sync=0, bool block_stack=False, bool lane_rows=False, "
      "int ctas_per_sm=1, bool tiled_dots=False) -> float",
      &rnn_fused::step_cost_us);
  // The samples per chunk, units per pass (0: each plan's own choice), grid-path step
  // synchronisation (-1: each plan's own) and whether kernels read their passes at run time
  // every planner must use (host_layer.h ForcedTiling); returns the previous setting.
  m.def("set_forced_tiling(int samples, int units_per_pass, int step_sync=-1, int run_time_passes=0, "
        "int lane_rows_step=0, int input_projection_on_host=0, int gradients_on_host=0, int norms_in_steps=0, "
        "int tiled_dots=0, int operand_ring=0, int every_row=0) -> int[]",
        [](int64_t samples, int64_t units_per_pass, int64_t step_sync, int64_t run_time_passes,
           int64_t lane_rows_step, int64_t input_projection_on_host, int64_t gradients_on_host,
           int64_t norms_in_steps, int64_t tiled_dots, int64_t operand_ring, int64_t every_row) {
          const rnn_fused::ForcedTiling previous = rnn_fused::set_forced_tiling(
              {samples, units_per_pass, step_sync, run_time_passes != 0, lane_rows_step != 0,
               input_projection_on_host != 0, gradients_on_host != 0, norms_in_steps != 0, tiled_dots != 0,
               operand_ring != 0, every_row != 0});
          return std::vector<int64_t>{previous.samples, previous.units_per_pass, previous.step_sync,
                                      int64_t(previous.run_time_passes), int64_t(previous.lane_rows_step),
                                      int64_t(previous.input_projection_on_host),
                                      int64_t(previous.gradients_on_host), int64_t(previous.norms_in_steps),
                                      int64_t(previous.tiled_dots), int64_t(previous.operand_ring),
                                      int64_t(previous.every_row)};
        });
  // Autotuning on or off, and the steps of its timed runs (host_layer.h Autotune); returns the
  // previous setting.
  m.def("set_autotune(bool enabled, int steps) -> (bool, int)", [](bool enabled, int64_t steps) {
    const rnn_fused::Autotune previous = rnn_fused::set_autotune({.enabled = enabled, .steps = steps});
    return std::make_tuple(previous.enabled, previous.steps);
  });
  // The host layer's whole-sequence GEMMs of one layer, on their own (layer_input_projection
  // and layer_gradients_from_dz above): what gpu-check subtracts from a timed layer pass.
  m.def("layer_input_projection(Tensor input, Tensor weight_ih, Tensor? bias_ih, Tensor? bias_hh) -> Tensor",
        &rnn_fused::layer_input_projection);
  m.def(
      "layer_gradients_from_dz(Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor output, Tensor dz, "
      "bool[4] output_mask, bool launch_bound) -> Tensor[]",
      &rnn_fused::layer_gradients_from_dz);
  m.def("cost_constants(bool first_kernels=False) -> (str[] names, float[] values)", &rnn_fused::cost_constants);
  // Step-phase timing of a recurrence kernel (see recurrence_step_phases above):
  // (phase_cycles [CTAs, 3] int64, result [T,B,H]).
  m.def(
      "recurrence_step_phases(Tensor xw, Tensor weight_hh, bool backward, str nonlinearity=\"tanh\", "
      "str? path=None, str? backend=None) -> (Tensor phase_cycles, Tensor result)");
  // A stack of unidirectional layers' forward in one launch (rnn_stack_forward above).
  m.def(
      "rnn_stack_forward(Tensor input, Tensor? hx, Tensor[] weights, bool has_biases, Tensor? lengths, "
      "str nonlinearity=\"tanh\", str? backend=None, Tensor? dropout_masks=None) -> (Tensor outputs, Tensor h_n)");
  m.def(
      "rnn_stack_backward(Tensor grad_output, Tensor? grad_h_n, Tensor outputs, bool[] output_mask, Tensor input, "
      "Tensor? hx, Tensor[] weights, bool has_biases, Tensor? lengths, str nonlinearity=\"tanh\", "
      "int truncate_every=0, float keep_prob=1.0, Tensor? seed=None, str? backend=None, "
      "Tensor? dropout_masks=None, bool record_norms=False) -> Tensor[]");
  m.def(
      "stack_plan(Tensor like, int hidden_size, int batch_size, int steps, int num_layers, str? backend=None) "
      "-> (bool feasible, bool faster, float stack_us, float layers_us, float measured_stack_us, "
      "float measured_layers_us, int[] shape, str reason)");
  // Both directions of a bidirectional layer at once: each time loop on a thread of the caller's
  // OpenMP team on the CPU backend; on the GPU kernels, with side_by_side 2, each direction planned
  // for half the SMs and the reverse one's launches on a side stream, else one after the other
  // (host_layer.h run_directions_forward): input [T,B,I]; hx [2,B,H] or None; weights per
  // direction, the forward one first: weight_ih [H,I], weight_hh [H,H] and, with has_biases,
  // bias_ih, bias_hh [H]; the other arguments as rnn_layer_forward's (layer keys each
  // direction's truncation draws as the layer op does). Returns output [T,B,2H] (the directions'
  // side by side) and h_n [2,B,H]: each direction's values those of rnn_layer_forward.
  m.def(
      "rnn_directions_forward(Tensor input, Tensor? hx, Tensor[] weights, bool has_biases, Tensor? lengths, "
      "str nonlinearity=\"tanh\", int truncate_every=0, float keep_prob=1.0, Tensor? seed=None, int layer=0, "
      "str? backend=None, str? path=None, int side_by_side=1) -> (Tensor output, Tensor h_n)");
  // A model's forward over its layers (model_forward.cpp; functional.rnn hands it its loop where
  // every layer takes the same route): input [T,B,I], hx [L*D,B,H] or None, weights per layer and
  // direction in nn.RNN's order (weight_ih, weight_hh[, bias_ih, bias_hh]), the layer options as
  // above; directions_op: 0, a bidirectional layer as two rnn_layer_forward calls, 1 or 2, as one
  // rnn_directions_forward call with that side_by_side; dropout: on every layer's output but the
  // last, as in training (at::dropout, nn.RNN's draws for a padded batch; 0: none). Returns
  // output [T,B,D*H] and h_n [L*D,B,H].
  m.def(
      "rnn_layers_forward(Tensor input, Tensor? hx, Tensor[] weights, bool has_biases, int num_layers, "
      "bool bidirectional, Tensor? lengths, str nonlinearity=\"tanh\", int truncate_every=0, float keep_prob=1.0, "
      "Tensor? seed=None, str? backend=None, str? path=None, int directions_op=0, float dropout=0.0) -> "
      "(Tensor output, Tensor h_n)");
  // A model's inference over a PackedSequence in its own layout (packed_inference.cpp): data
  // [N,I] and CPU batch_sizes [T]; hx [L*D,B,H] or None, in the packed (sorted) order; weights as
  // rnn_layers_forward's. No gradients; dropout between layers as at::dropout of the packed
  // data (0: none). Returns output [N,D*H] and h_n [L*D,B,H].
  m.def(
      "rnn_packed_inference(Tensor data, Tensor batch_sizes, Tensor? hx, Tensor[] weights, bool has_biases, "
      "int num_layers, bool bidirectional, str nonlinearity=\"tanh\", str? backend=None, "
      "bool directions_at_once=False, float dropout=0.0) -> (Tensor output, Tensor h_n)");
  // One layer's gradients over a PackedSequence in its own layout (packed_training.cpp), the
  // backward of rnn_packed_inference run for that layer alone (num_layers 1, functional._PackedLayer):
  // grad_output [N,D*H], grad_h_n [D,B,H] or None (zero), the forward's output [N,D*H], then the
  // forward's arguments and the truncation (as rnn_layer_backward's; seed an int). needs: data,
  // hx, then each weight (up to 8); returns a gradient for each of those (empty [0] where not
  // needed), the data's the directions' sum; with record_norms then per direction its step_norms
  // [T,B], grad_sq_norms [5] and nonfinite (as rnn_directions_backward's).
  m.def(
      "rnn_packed_layer_backward(Tensor grad_output, Tensor? grad_h_n, Tensor output, bool[10] needs, "
      "Tensor data, Tensor batch_sizes, Tensor? hx, Tensor[] weights, bool has_biases, bool bidirectional, "
      "str nonlinearity=\"tanh\", int truncate_every=0, float keep_prob=1.0, int seed=0, int layer=0, "
      "str? backend=None, bool directions_at_once=False, bool record_norms=False) -> Tensor[]");
  // A PackedSequence's data [N,F] and CPU batch_sizes [T] as the padded batch [T,B,F] (packed
  // order), its CPU lengths [B] and the padded rows [N] of the packed ones (model_forward.cpp).
  m.def("packed_to_padded(Tensor data, Tensor batch_sizes) -> (Tensor padded, Tensor lengths, Tensor positions)");
  // The rows [N] of a flattened time-major batch [T*B,F] at steps t < lengths[b], (step, sample)
  // order, on `device`; and dropout of a layer's output [T,B,F] as nn.RNN draws it (over those
  // rows with lengths), the rest zero (model_forward.cpp).
  m.def("valid_positions(Tensor lengths, int steps, Device device) -> Tensor");
  m.def("dropout_between_layers(Tensor output, float p, Tensor? lengths) -> Tensor");
  // Its backward: grad_output [T,B,2H], grad_h_n [2,B,H] or None (zero), the forward's output [T,B,2H], then
  // the forward's arguments. output_mask (9): grad_input, then per direction grad_hx,
  // grad_weight_ih, grad_weight_hh, grad_bias; returns those nine (empty [0] where not wanted),
  // grad_input the sum of the directions'; with record_norms then per direction step_norms,
  // grad_sq_norms and nonfinite (as rnn_layer_backward's, grad_input's squared norm the direction's own).
  m.def(
      "rnn_directions_backward(Tensor grad_output, Tensor? grad_h_n, Tensor output, bool[9] output_mask, "
      "Tensor input, Tensor? hx, Tensor[] weights, bool has_biases, Tensor? lengths, str nonlinearity=\"tanh\", "
      "int truncate_every=0, float keep_prob=1.0, Tensor? seed=None, int layer=0, str? backend=None, "
      "bool record_norms=False, str? path=None, int side_by_side=1) -> Tensor[]");
  // Its gradients with a graph of their own (create_graph=True), which the forward's C++ autograd
  // (csrc/layer_autograd.cpp) calls: CompositeImplicitAutograd in Python (rnn_fused/functional.py),
  // the directions' layer ops run again. needs: input, hx, then each of the weights (up to 8);
  // returns a gradient for each of those (an empty tensor for each one not needed).
  m.def(
      "rnn_directions_backward_with_graph(Tensor grad_output, Tensor grad_h_n, bool[10] needs, Tensor input, "
      "Tensor? hx, Tensor[] weights, bool has_biases, Tensor? lengths, str nonlinearity=\"tanh\", "
      "int truncate_every=0, float keep_prob=1.0, Tensor? seed=None, int layer=0, str? backend=None, str? path=None, "
      "int side_by_side=1) -> Tensor[]");
  // The team the CPU time loops of a layer of this many steps, samples and units run on from the
  // calling thread (cpu/step_team.h): its threads and how the loop is split among them
  // ("rows": by samples, "units": by hidden units; "none" on one thread).
  m.def("cpu_loop_team(int steps, int batch, int hidden) -> (int threads, str split)",
        [](int64_t steps, int64_t batch, int64_t hidden) {
          TORCH_CHECK_VALUE(steps >= 0 && batch >= 0 && hidden >= 0, "rnn_fused.cpu_loop_team: steps, batch and "
                            "hidden must be >= 0, got ", steps, ", ", batch, " and ", hidden);
          const rnn_fused::cpu::TeamPlan plan = rnn_fused::cpu::team_plan(steps, batch, hidden);
          const char* split = plan.threads <= 1 ? "none" : plan.split == rnn_fused::cpu::TeamSplit::Rows ? "rows" : "units";
          return std::make_tuple(plan.threads, std::string(split));
        });
  // The first row of each of `threads` shares of a time loop split by rows, and B last, for rows of
  // these step counts (a sample's length each; cpu/step_team.h row_share_starts).
  m.def("cpu_row_shares(int[] row_steps, int threads) -> int[]", [](std::vector<int64_t> row_steps, int64_t threads) {
    const int64_t batch = static_cast<int64_t>(row_steps.size());
    TORCH_CHECK_VALUE(threads >= 1 && threads <= batch, "rnn_fused.cpu_row_shares: threads must be in [1, ",
                      batch, "] (one row at least per share), got ", threads);
    for (int64_t steps : row_steps) {
      TORCH_CHECK_VALUE(steps >= 0, "rnn_fused.cpu_row_shares: row_steps must be >= 0, got ", steps);
    }
    return rnn_fused::cpu::row_share_starts(batch, threads, &row_steps);
  });
  // Forces the CPU time loops' team: threads (0: their own choice) and split ("rows", "units", or
  // "": their own choice); returns the previous setting.
  m.def("set_cpu_loop_team(int threads, str split=\"\") -> (int, str)", [](int64_t threads, const std::string& split) {
    TORCH_CHECK_VALUE(threads >= 0, "rnn_fused.set_cpu_loop_team: threads must be >= 0 (0: the loops' own choice), "
                      "got ", threads);
    TORCH_CHECK_VALUE(split.empty() || split == "rows" || split == "units", "rnn_fused.set_cpu_loop_team: split "
                      "must be 'rows', 'units' or '' (the loops' own choice), got '", split, "'");
    namespace cpu = rnn_fused::cpu;
    const int code = split.empty() ? 0 : split == "rows" ? int(cpu::TeamSplit::Rows) : int(cpu::TeamSplit::Units);
    const int64_t previous_threads = cpu::forced_loop_threads.exchange(threads);
    const int previous_code = cpu::forced_loop_split.exchange(code);
    const char* previous_split = previous_code == 0 ? "" : previous_code == int(cpu::TeamSplit::Rows) ? "rows" : "units";
    return std::make_tuple(previous_threads, std::string(previous_split));
  });
  // The registered backends' names.
  m.def("backends() -> str[]", [] { return rnn_fused::recurrence_backend_names(); });
}

// One entry point per op for both devices: the host layer picks the backend, and a CUDA
// input in a build without CUDA kernels gets a message saying so.
namespace {
void register_device_entry_points(torch::Library& m) {
  m.impl("rnn_layer_forward", &rnn_fused::rnn_layer_forward);
  m.impl("rnn_stack_forward", &rnn_fused::rnn_stack_forward);
  m.impl("rnn_stack_backward", &rnn_fused::rnn_stack_backward);
  m.impl("stack_plan", &rnn_fused::stack_plan);
  m.impl("rnn_layer_backward", &rnn_fused::rnn_layer_backward);
  m.impl("rnn_directions_forward", &rnn_fused::rnn_directions_forward);
  m.impl("rnn_directions_backward", &rnn_fused::rnn_directions_backward);
  m.impl("recurrence_plan", &rnn_fused::recurrence_plan);
  m.impl("recurrence_step_phases", &rnn_fused::recurrence_step_phases);
}
}  // namespace

TORCH_LIBRARY_IMPL(rnn_fused, CPU, m) { register_device_entry_points(m); }

TORCH_LIBRARY_IMPL(rnn_fused, CUDA, m) { register_device_entry_points(m); }
