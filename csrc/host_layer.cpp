// The host layer's frame (host_layer.h): backend registry, casts, whole-sequence GEMMs.
#include "host_layer.h"

#include <ATen/ops/add.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <functional>
#include <mutex>
#include <sstream>

#include "cuda/recurrence_cost_model.h"

namespace rnn_fused {
namespace {

std::vector<RecurrenceBackend>& registry() {
  static std::vector<RecurrenceBackend> backends;
  return backends;
}

// Sorted: registration order follows the static initialisation of translation units.
std::string quoted_names() {
  std::vector<std::string> sorted = recurrence_backend_names();
  std::sort(sorted.begin(), sorted.end());
  std::ostringstream names;
  const char* separator = "";
  for (const std::string& name : sorted) {
    names << separator << "'" << name << "'";
    separator = ", ";
  }
  return names.str();
}

}  // namespace

namespace {

// A process-wide setting that plans read: a value behind a mutex.
template <class T>
class ProcessSetting {
 public:
  T get() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return value_;
  }
  // Sets it; returns the previous value.
  T exchange(const T& value) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const T previous = value_;
    value_ = value;
    return previous;
  }

 private:
  std::mutex mutex_;
  T value_{};
};

ProcessSetting<ForcedTiling> forced_tiling_setting;
ProcessSetting<Autotune> autotune_setting;

}  // namespace

ForcedTiling forced_tiling() { return forced_tiling_setting.get(); }

ForcedTiling set_forced_tiling(const ForcedTiling& tiling) {
  const int64_t s = tiling.samples, u = tiling.units_per_pass, sync = tiling.step_sync;
  TORCH_CHECK_VALUE(s == 0 || s == 1 || s == 2 || s == 4 || s == 8,
                    "rnn_fused.launch_plan.forced_tiling: samples must be 1, 2, 4 or 8 (or None: each plan's own "
                    "choice), got ", s);
  TORCH_CHECK_VALUE(u == 0 || u == 16 || u == 32,
                    "rnn_fused.launch_plan.forced_tiling: units_per_pass must be 16 or 32 (or None: each plan's own "
                    "choice), got ", u);
  TORCH_CHECK_VALUE(sync >= -1 && sync <= 3,
                    "rnn_fused.launch_plan.forced_tiling: step_sync must be 'grid_barrier', 'flag_barrier', "
                    "'tagged_exchange' or 'async_exchange' (or None: each plan's own choice), got code ", sync);
  TORCH_CHECK_VALUE(!(tiling.operand_ring && tiling.lane_rows_step),
                    "rnn_fused.launch_plan.forced_tiling: operand_ring=True is the block path's general kernels' "
                    "and lane_rows_step=True runs the lane-row step instead: force one of them, not both");
  return forced_tiling_setting.exchange(tiling);
}

bool projects_input_in_kernel(bool block_general_kernels, int64_t steps, int64_t samples, int64_t input_size,
                              int64_t hidden) {
  return block_general_kernels && cost::kernel_projects_input(cost::kH200, steps, samples, input_size, hidden) &&
         !forced_tiling().input_projection_on_host;
}

bool gradients_in_kernel(at::ScalarType compute, const LayerShape& shape, const std::array<bool, 5>& asked) {
  return compute == at::kFloat && !forced_tiling().gradients_on_host &&
         cost::kernel_makes_gradients(cost::kH200, shape, asked[0], asked[1], asked[2], asked[3], asked[4]);
}

Autotune autotune() { return autotune_setting.get(); }

Autotune set_autotune(const Autotune& setting) {
  TORCH_CHECK_VALUE(!setting.enabled || setting.steps >= 1,
                    "rnn_fused.launch_plan.autotune: steps must be at least 1, got ", setting.steps);
  return autotune_setting.exchange(setting);
}

bool register_recurrence_backend(const RecurrenceBackend& backend) {
  registry().push_back(backend);
  return true;
}

std::vector<std::string> recurrence_backend_names() {
  std::vector<std::string> names;
  for (const RecurrenceBackend& b : registry()) names.push_back(b.name);
  return names;
}

const RecurrenceBackend& find_recurrence_backend(c10::DeviceType device, const std::string& requested) {
  for (const RecurrenceBackend& b : registry()) {
    const bool match = requested.empty() ? (b.device == device && b.device_default) : b.name == requested;
    if (!match) continue;
    TORCH_CHECK_VALUE(b.device == device, "rnn_fused: backend '", b.name, "' runs on ",
                      c10::DeviceTypeName(b.device, /*lower_case=*/true), " tensors, but input is on ",
                      c10::DeviceTypeName(device, /*lower_case=*/true));
    return b;
  }
  TORCH_CHECK(!requested.empty(), "rnn_fused: no backend for ", c10::DeviceTypeName(device, true),
              " tensors in this build (it has ", quoted_names(),
              "); a CUDA backend needs a build with the CUDA toolkit (see the README's install section)");
  TORCH_CHECK_VALUE(false, "rnn_fused: backend must be one of ", quoted_names(),
                    " or None (the input device's own), got '", requested, "'");
}

void project_input_on_host(at::Tensor& out2d, const InputProjection& projection) {
  RECORD_USER_SCOPE("rnn_fused::input_projection");
  input_projection(out2d, projection.x2d, projection.w_ih, projection.bias_ih, projection.bias_hh, projection.rows);
}

namespace {

// The backend of a call; a requested GPU path needs a backend that runs GPU kernels.
const RecurrenceBackend& backend_for(const LayerForwardCall& call) {
  const RecurrenceBackend& backend = find_recurrence_backend(call.input.device().type(), call.options.backend);
  TORCH_CHECK_VALUE(call.options.path.empty() || backend.plan != nullptr, "rnn_fused: path='", call.options.path,
                    "' chooses among the GPU kernels' paths (backends 'cuda' and 'emulated'); backend '", backend.name,
                    "' runs its own loops: pass path=None");
  return backend;
}

// The host lengths whose valid rows alone the whole-sequence GEMMs multiply (valid_rows.h:
// the CPU backend, with lengths), or null: every row.
const std::vector<int64_t>* valid_rows_only(const LayerForwardCall& call, const RecurrenceBackend& backend) {
  const LayerShape& s = call.shape;
  const bool valid_only = !forced_tiling().every_row &&
                          multiplies_valid_rows_only(s.steps, s.batch, s.input_size, s.hidden,
                                                     call.valid_lengths.host, /*launch_bound=*/backend.plan != nullptr);
  return valid_only ? &call.valid_lengths.host : nullptr;
}

}  // namespace

void run_at_once(const std::array<std::function<void()>, 2>& tasks) {
  const at::ThreadLocalState state;
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard guard(state);
    for (int64_t i = begin; i < end; ++i) tasks[static_cast<size_t>(i)]();
  });
}

namespace {

// A forward call between the host layer's stages: the compute-dtype operands and the output
// buffer, which holds XW_t + b_ih + b_hh once the input projection has run (here, or in the
// backend where it projects the input itself: then `projection` holds the operands).
struct PreparedForward {
  const LayerForwardCall& call;
  const RecurrenceBackend& backend;
  at::Tensor w_hh, h0, out;
  std::optional<InputProjection> projection;
  at::Tensor h_n;  // set by run_recurrence; where it goes if set before (ForwardRecurrence::h_n)
};

// Casts, and the input projection unless the backend makes it.
PreparedForward prepare_forward(const LayerForwardCall& call, const RecurrenceBackend& backend) {
  const LayerShape& s = call.shape;
  const at::ScalarType ct = compute_dtype(call.input.scalar_type());
  const at::Tensor x = call.input.to(ct).contiguous();
  PreparedForward p{.call = call,
                    .backend = backend,
                    .w_hh = call.weight_hh.to(ct).contiguous(),
                    // No hx: no tensor of zeros either (on a GPU, a launch per call); the recurrences start from zero.
                    .h0 = call.hx.has_value() ? call.hx->to(ct).contiguous() : at::Tensor(),
                    .out = at::empty({s.steps, s.batch, s.hidden}, x.options())};
  if (s.empty()) {
    p.out.zero_();
    // Never the caller's hx itself: an op's outputs do not alias its inputs.
    p.h_n = p.h0.defined() ? p.h0.clone() : at::zeros({s.batch, s.hidden}, x.options());
    return p;
  }
  auto in_compute_dtype = [ct](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t.has_value()) return std::nullopt;
    return t->to(ct).contiguous();
  };
  InputProjection projection{.x2d = x.view({s.steps * s.batch, s.input_size}),
                             .w_ih = call.weight_ih.to(ct).contiguous(),
                             .bias_ih = in_compute_dtype(call.bias_ih),
                             .bias_hh = in_compute_dtype(call.bias_hh)};
  if (const std::vector<int64_t>* lengths = valid_rows_only(call, backend)) {
    // Rows past the lengths are left unprojected: the time loop reads none and zeroes them.
    projection.rows = valid_row_index(s.steps, *lengths);
  }
  if (backend.projects_input) {
    p.projection = std::move(projection);
  } else {
    at::Tensor out2d = p.out.view({s.steps * s.batch, s.hidden});
    project_input_on_host(out2d, projection);
  }
  return p;
}

// The time loop (none for an empty shape: prepare_forward set h_n).
void run_recurrence(PreparedForward& p) {
  if (p.call.shape.empty()) return;
  const at::Tensor h_n = p.backend.forward(ForwardRecurrence{.call = p.call,
                                                             .w_hh = p.w_hh,
                                                             .out = p.out,
                                                             .h0 = p.h0,
                                                             .h_n = p.h_n,
                                                             .projection = p.projection.has_value() ? &*p.projection
                                                                                                    : nullptr});
  if (!p.h_n.defined()) {
    p.h_n = h_n;
  } else if (!h_n.is_same(p.h_n)) {
    p.h_n.copy_(h_n);
  }
}

// (output, h_n) in the input's dtype.
std::tuple<at::Tensor, at::Tensor> finish_forward(const PreparedForward& p) {
  const at::ScalarType dtype = p.call.input.scalar_type();
  return {p.out.to(dtype), p.h_n.to(dtype).contiguous()};
}

// The two directions' calls of rnn_directions_forward / backward: one backend, which runs its
// own time loops (on two CPU threads) or GPU kernels (on two streams where both calls were
// planned for half the SMs).
const RecurrenceBackend& directions_backend_for(const char* what, const LayerForwardCall& call) {
  const RecurrenceBackend& backend = backend_for(call);
  TORCH_CHECK_VALUE(backend.plan == nullptr || backend.side_by_side != nullptr, "rnn_fused.", what, ": backend '",
                    backend.name, "' cannot run two recurrences at once");
  return backend;
}

// The directions' time loops at once: on two threads of the caller's team (a backend running
// its own loops), side by side on the device (GPU kernels planned for half the SMs each), or one
// after the other (GPU kernels planned for the whole device). tasks[1] returns the tensors it
// made that outlive it.
void run_directions(const RecurrenceBackend& backend, const LayerForwardCall& first,
                    const std::array<std::function<std::vector<at::Tensor>()>, 2>& tasks) {
  if (backend.plan == nullptr) {
    run_at_once({[&] { tasks[0](); }, [&] { tasks[1](); }});
  } else if (first.options.side_by_side >= 2) {
    backend.side_by_side([&] { tasks[0](); }, tasks[1]);
  } else {
    tasks[0]();
    tasks[1]();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> run_layer_forward(const LayerForwardCall& call) {
  const RecurrenceBackend& backend = backend_for(call);
  const c10::OptionalDeviceGuard guard(call.input.device());
  PreparedForward p = prepare_forward(call, backend);
  run_recurrence(p);
  return finish_forward(p);
}

std::tuple<at::Tensor, at::Tensor> run_directions_forward(const std::array<LayerForwardCall, 2>& calls) {
  const RecurrenceBackend& backend = directions_backend_for("rnn_directions_forward", calls[0]);
  const c10::OptionalDeviceGuard guard(calls[0].input.device());
  std::array<PreparedForward, 2> p{prepare_forward(calls[0], backend), prepare_forward(calls[1], backend)};
  const LayerShape& s = calls[0].shape;
  // Both final states in one tensor, each direction's written into its row (no stack after).
  at::Tensor states;
  if (!s.empty()) {
    states = at::empty({2, s.batch, s.hidden}, p[0].out.options());
    p[0].h_n = states[0];
    p[1].h_n = states[1];
  }
  const auto run = [&](PreparedForward& direction) {
    run_recurrence(direction);
    return std::vector<at::Tensor>{direction.h_n};
  };
  run_directions(backend, calls[0], {[&] { return run(p[0]); }, [&] { return run(p[1]); }});
  // (as finish_forward's: joined in the compute dtype, then cast once)
  const at::ScalarType dtype = calls[0].input.scalar_type();
  if (!states.defined()) states = at::stack({p[0].h_n, p[1].h_n});  // (an empty shape: prepare_forward's)
  return {at::cat({p[0].out, p[1].out}, 2).to(dtype), states.to(dtype)};
}

namespace {

// The backend of a stack's calls: one with a stack kernel, the same for every layer.
const RecurrenceBackend& stack_backend_for(const std::vector<LayerForwardCall>& calls) {
  TORCH_CHECK_VALUE(calls.size() >= 2, "rnn_fused.rnn_stack_forward: a stack needs at least 2 layers, got ",
                    calls.size());
  const RecurrenceBackend& backend = backend_for(calls[0]);
  TORCH_CHECK_VALUE(backend.forward_stack != nullptr, "rnn_fused.rnn_stack_forward: backend '", backend.name,
                    "' runs no layer stack in one launch (backends 'cuda' and 'emulated' do)");
  return backend;
}

}  // namespace

// The dropout masks of a stack of L layers of the calls' shape: [L-1,T,B,H] float32 on the
// input's device, or undefined.
static void check_dropout_masks(const char* what, const std::vector<LayerForwardCall>& calls, const at::Tensor& masks) {
  if (!masks.defined()) return;
  const LayerForwardCall& first = calls[0];
  const LayerShape& s = first.shape;
  const int64_t L = static_cast<int64_t>(calls.size());
  TORCH_CHECK_VALUE(masks.scalar_type() == at::kFloat && masks.device() == first.input.device() &&
                        masks.sizes() == at::IntArrayRef({L - 1, s.steps, s.batch, s.hidden}),
                    "rnn_fused.", what, ": dropout_masks must be a float32 tensor of shape [", L - 1, ", ", s.steps,
                    ", ", s.batch, ", ", s.hidden, "] (one mask per layer but the last) on ", first.input.device(),
                    ", got ", masks.scalar_type(), " ", masks.sizes(), " on ", masks.device());
}

std::tuple<at::Tensor, at::Tensor> run_stack_forward(const std::vector<LayerForwardCall>& calls,
                                                     const at::Tensor& dropout_masks) {
  const RecurrenceBackend& backend = stack_backend_for(calls);
  const LayerForwardCall& first = calls[0];
  const LayerShape& s = first.shape;
  const int64_t L = static_cast<int64_t>(calls.size()), T = s.steps, B = s.batch, H = s.hidden;
  TORCH_CHECK_VALUE(first.input.scalar_type() == at::kFloat, "rnn_fused.rnn_stack_forward: runs float32, got input of ",
                    "dtype ", first.input.scalar_type());
  for (int64_t l = 1; l < L; ++l) {
    const LayerForwardCall& c = calls[static_cast<size_t>(l)];
    TORCH_CHECK_VALUE(c.shape.hidden == H && c.shape.input_size == H && c.shape.steps == T && c.shape.batch == B,
                      "rnn_fused.rnn_stack_forward: layer ", l, " must take [", T, ", ", B, ", ", H,
                      "] inputs to H = ", H, " units like layer 0's output, got input [", c.shape.steps, ", ",
                      c.shape.batch, ", ", c.shape.input_size, "] and H = ", c.shape.hidden);
  }
  check_dropout_masks("rnn_stack_forward", calls, dropout_masks);
  const c10::OptionalDeviceGuard guard(first.input.device());
  const at::TensorOptions options = first.input.options();
  at::Tensor out = at::empty({L, T, B, H}, options);
  at::Tensor h_n;
  if (s.empty()) {
    out.zero_();
    std::vector<at::Tensor> states;
    for (const LayerForwardCall& c : calls) {
      states.push_back(c.hx.has_value() ? c.hx->contiguous() : at::zeros({B, H}, options));
    }
    return {out, at::stack(states)};
  }
  // One copy each (a launch apiece on a GPU): per layer its W_hh and the next layer's W_ih, and
  // the next layer's b_ih + b_hh; the top layer's second half repeats its own (dotted, dropped).
  std::vector<at::Tensor> rows, biases_ih, biases_hh, initial;
  const bool biases = first.bias_ih.has_value();
  for (int64_t l = 0; l < L; ++l) {
    const LayerForwardCall& c = calls[static_cast<size_t>(l)];
    const LayerForwardCall& next = calls[static_cast<size_t>(l + 1 < L ? l + 1 : l)];
    rows.insert(rows.end(), {c.weight_hh, l + 1 < L ? next.weight_ih : c.weight_hh});
    if (biases) {
      biases_ih.push_back(*next.bias_ih);
      biases_hh.push_back(*next.bias_hh);
    }
    if (c.hx.has_value()) initial.push_back(*c.hx);
  }
  at::Tensor first_xw = out[0].view({T * B, H});
  input_projection(first_xw, first.input.contiguous().view({T * B, s.input_size}), first.weight_ih.contiguous(),
                   first.bias_ih, first.bias_hh);
  h_n = backend.forward_stack(ForwardStack{.first = first,
                                           .layers = L,
                                           .w_stacked = at::cat(rows).view({L, 2 * H, H}),
                                           .bias_next = biases ? at::cat(biases_ih).add_(at::cat(biases_hh)).view({L, H})
                                                               : at::Tensor(),
                                           .out = out,
                                           .h0 = initial.empty() ? at::Tensor() : at::stack(initial),
                                           .dropout_masks = dropout_masks.defined() ? dropout_masks.contiguous()
                                                                                    : at::Tensor()});
  return {out, h_n};  // (zero past each sample's length: the kernels write every entry)
}

std::vector<at::Tensor> run_stack_backward(const std::vector<LayerForwardCall>& calls, const at::Tensor& grad_output,
                                           const at::Tensor& grad_h_n, const at::Tensor& outputs,
                                           const std::vector<std::array<bool, 5>>& output_masks,
                                           const at::Tensor& dropout_masks, bool record_norms) {
  const RecurrenceBackend& backend = stack_backend_for(calls);
  TORCH_CHECK_VALUE(backend.backward_stack != nullptr, "rnn_fused.rnn_stack_backward: backend '", backend.name,
                    "' runs no layer stack in one launch (backends 'cuda' and 'emulated' do)");
  const LayerForwardCall& first = calls[0];
  const LayerShape& s = first.shape;
  const int64_t L = static_cast<int64_t>(calls.size()), T = s.steps, B = s.batch, H = s.hidden;
  TORCH_CHECK_VALUE(first.input.scalar_type() == at::kFloat, "rnn_fused.rnn_stack_backward: runs float32, got input ",
                    "of dtype ", first.input.scalar_type());
  TORCH_CHECK_VALUE(static_cast<int64_t>(output_masks.size()) == L, "rnn_fused.rnn_stack_backward: expected ",
                    L, " output masks (one per layer), got ", output_masks.size());
  const auto check = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.device() == first.input.device() && t.scalar_type() == at::kFloat && t.sizes() == shape,
                "rnn_fused.rnn_stack_backward: ", name, " must be a float32 tensor of shape ", shape, " on ",
                first.input.device(), ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  check(grad_output, {T, B, H}, "grad_output");
  if (grad_h_n.defined()) check(grad_h_n, {L, B, H}, "grad_h_n");
  check(outputs, {L, T, B, H}, "outputs");
  check_dropout_masks("rnn_stack_backward", calls, dropout_masks);
  const at::Tensor masks = dropout_masks.defined() ? dropout_masks.contiguous() : at::Tensor();
  const c10::OptionalDeviceGuard guard(first.input.device());
  const at::TensorOptions options = first.input.options();
  // The recurrences write every entry of dz and of the norms (zero past a sample's length): no
  // clearing (on a GPU, a memset per call), but where no kernel runs.
  at::Tensor dz = at::empty({L, T, B, H}, options);
  at::Tensor dz_first = at::empty({L, B, H}, options);
  // ||g_t||^2 per layer.
  at::Tensor step_sq;
  if (record_norms) {
    const at::TensorOptions f64 = options.dtype(at::kDouble);
    step_sq = s.empty() ? at::zeros({L, T, B}, f64) : at::empty({L, T, B}, f64);
  }
  const at::Tensor out = outputs.contiguous();
  // The stack kernels read dh_n unconditionally (a null test there cost their block kernels up
  // to 18 registers in the nvcc report): an absent one is a zero fill, one per call.
  const at::Tensor dh_n = grad_h_n.defined() ? grad_h_n.contiguous() : at::zeros({L, B, H}, options);
  if (!s.empty()) {
    // One copy (a launch on a GPU): per layer W_hh^T and W_ih^T (layer 0's second half repeats
    // its W_hh^T: dotted, dropped).
    std::vector<at::Tensor> rows;
    for (const LayerForwardCall& c : calls) {
      rows.insert(rows.end(), {c.weight_hh.t(), &c == &first ? c.weight_hh.t() : c.weight_ih.t()});
    }
    backend.backward_stack(BackwardStack{.first = first,
                                         .layers = L,
                                         .w_stacked = at::cat(rows).view({L, 2 * H, H}),
                                         .dy = grad_output.contiguous(),
                                         .dh_n = dh_n,
                                         .out = out,
                                         .dz = dz,
                                         .dz_first = dz_first,
                                         .dropout_masks = masks,
                                         .step_sq = step_sq});
  } else {
    dz_first.zero_();
  }
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < L; ++l) {
    const LayerForwardCall& c = calls[static_cast<size_t>(l)];
    // Layer l's input: layer l - 1's output as the next layer read it (its mask applied).
    const at::Tensor input = l == 0 ? first.input : masks.defined() ? out[l - 1].mul(masks[l - 1]) : out[l - 1];
    const LayerBackwardResult r = gradients_from_dz(
        input, c.weight_ih.contiguous(), c.weight_hh.contiguous(), out[l], dz[l], dz_first[l], dh_n[l], c.hx,
        first.valid_lengths.on_device, /*reverse=*/false, output_masks[static_cast<size_t>(l)], at::kFloat,
        record_norms, record_norms ? step_sq[l].sqrt().to(at::kFloat) : at::empty({0}, options),
        /*launch_bound=*/true);
    grads.insert(grads.end(), {std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)});
    if (record_norms) grads.insert(grads.end(), {std::get<5>(r), std::get<6>(r), std::get<7>(r)});
  }
  return grads;
}

StackPlanReport plan_stack(c10::DeviceType device, const std::string& backend_name, const StackPlanQuery& query) {
  const RecurrenceBackend& backend = find_recurrence_backend(device, backend_name);
  TORCH_CHECK_VALUE(backend.stack_plan != nullptr, "rnn_fused: backend '", backend.name,
                    "' runs no layer stack in one launch (backends 'cuda' and 'emulated' do)");
  TORCH_CHECK_VALUE(query.hidden > 0 && query.batch > 0 && query.steps > 0 && query.layers > 0,
                    "rnn_fused: a stack plan needs hidden_size, batch_size, steps and num_layers > 0, got ",
                    query.hidden, ", ", query.batch, ", ", query.steps, " and ", query.layers);
  return backend.stack_plan(query);
}

namespace {

// A backward call between the host layer's stages: the compute-dtype operands and the
// recurrence's outputs.
struct PreparedBackward {
  const LayerBackwardCall& call;
  const RecurrenceBackend& backend;
  BackwardOperands operands;
  at::Tensor dz, step_norms;
  at::Tensor dz_first;  // set by run_recurrence
};

PreparedBackward prepare_backward(const LayerBackwardCall& call, const RecurrenceBackend& backend) {
  const LayerForwardCall& f = call.forward;
  const LayerShape& s = f.shape;
  BackwardOperands operands = backward_operands(compute_dtype(f.input.scalar_type()), f.input, f.weight_ih,
                                                f.weight_hh, call.output, call.grad_output, call.grad_h_n);
  const at::TensorOptions options = operands.out.options();
  // The recurrences write every entry of dz and of the step norms (zero past a sample's
  // length): the buffers need no clearing (on a GPU, a [T,B,H] memset per call), but where no
  // recurrence runs (an empty shape).
  const auto buffer = [&](at::IntArrayRef sizes) {
    return s.empty() ? at::zeros(sizes, options) : at::empty(sizes, options);
  };
  return PreparedBackward{.call = call,
                          .backend = backend,
                          .operands = std::move(operands),
                          .dz = buffer({s.steps, s.batch, s.hidden}),
                          .step_norms = call.record_norms ? buffer({s.steps, s.batch}) : at::empty({0}, options)};
}

void run_recurrence(PreparedBackward& p) {
  const LayerShape& s = p.call.forward.shape;
  p.dz_first = s.empty() ? at::zeros({s.batch, s.hidden}, p.dz.options())
                         : p.backend.backward(BackwardRecurrence{
                               .call = p.call, .operands = p.operands, .dz = p.dz, .step_norms = p.step_norms});
}

// The whole-sequence gradients from dz: the backend's own launch where it makes them
// (RecurrenceBackend::whole_sequence_gradients), else the host's GEMMs (gradients_from_dz).
LayerBackwardResult finish_backward(PreparedBackward& p) {
  RECORD_USER_SCOPE("rnn_fused::gradients_from_dz");
  const LayerForwardCall& f = p.call.forward;
  p.operands.dy = at::Tensor();  // read by the time loop only: its compute-dtype copy goes before the GEMMs
  if (p.backend.whole_sequence_gradients != nullptr) {
    const std::optional<std::array<at::Tensor, 5>> made = p.backend.whole_sequence_gradients(
        WholeSequenceGradients{.call = p.call, .operands = p.operands, .dz = p.dz, .dz_first = p.dz_first});
    if (made.has_value()) {
      return finish_gradients(*made, p.call.output_mask, f.input.scalar_type(), p.call.record_norms,
                              std::move(p.step_norms));
    }
  }
  return gradients_from_dz(p.operands.input, p.operands.w_ih, p.operands.w_hh, p.operands.out, p.dz, p.dz_first,
                           p.operands.dh_n, f.hx, f.valid_lengths.on_device, f.options.reverse, p.call.output_mask,
                           f.input.scalar_type(), p.call.record_norms, std::move(p.step_norms),
                           /*launch_bound=*/p.backend.plan != nullptr, valid_rows_only(f, p.backend));
}

}  // namespace

LayerBackwardResult run_layer_backward(const LayerBackwardCall& call) {
  const RecurrenceBackend& backend = backend_for(call.forward);
  const c10::OptionalDeviceGuard guard(call.forward.input.device());
  PreparedBackward p = prepare_backward(call, backend);
  run_recurrence(p);
  return finish_backward(p);
}

std::vector<at::Tensor> run_directions_backward(const std::array<LayerBackwardCall, 2>& calls) {
  const RecurrenceBackend& backend = directions_backend_for("rnn_directions_backward", calls[0].forward);
  const c10::OptionalDeviceGuard guard(calls[0].forward.input.device());
  std::array<PreparedBackward, 2> p{prepare_backward(calls[0], backend), prepare_backward(calls[1], backend)};
  const auto run = [&](PreparedBackward& direction) {
    run_recurrence(direction);
    return std::vector<at::Tensor>{direction.dz_first};
  };
  run_directions(backend, calls[0].forward, {[&] { return run(p[0]); }, [&] { return run(p[1]); }});
  std::vector<at::Tensor> grads, norms;
  at::Tensor grad_input;
  for (PreparedBackward& direction : p) {
    const LayerBackwardResult r = finish_backward(direction);
    // The input's gradient is the sum of the directions' (as autograd adds them: a + b == b + a).
    if (direction.call.output_mask[0]) {
      grad_input = grad_input.defined() ? at::add(grad_input, std::get<0>(r)) : std::get<0>(r);
    }
    grads.insert(grads.end(), {std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)});
    if (direction.call.record_norms) norms.insert(norms.end(), {std::get<5>(r), std::get<6>(r), std::get<7>(r)});
  }
  grads.insert(grads.begin(), grad_input.defined() ? grad_input : at::empty({0}, calls[0].forward.input.options()));
  grads.insert(grads.end(), norms.begin(), norms.end());
  return grads;
}

}  // namespace rnn_fused
