// The host layer: what every backend of the single-layer op pair shares.
//
// run_layer_forward / run_layer_backward take a checked call (layer_call.h), cast to the
// compute dtype, run the whole-sequence GEMMs of the Elman layer (elman_gemms.h), hand the
// time loop to the backend's recurrence, and cast back. A backend (CPU loops, CUDA kernels,
// the CUDA kernels emulated on the CPU) supplies only its two recurrences and registers
// them by name (register_recurrence_backend); the op picks one per call from the input's
// device and the requested backend name (find_recurrence_backend).
//
// Cell boundary: ForwardRecurrence/BackwardRecurrence are the Elman recurrence
// (z_t = XW_t + W_hh h_{t-1}, h_t = act(z_t); one [H,H] weight, one state). A GRU or LSTM
// would bring its own GEMMs file and recurrence structs (3H/4H gate projections, a cell
// state for LSTM) and reuse the rest: the call descriptor, the lengths and truncation
// handling, the registry and the cast/dispatch frame below.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/DeviceType.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <array>
#include <type_traits>
#include <vector>

#include "elman_gemms.h"
#include "layer_call.h"

namespace rnn_fused {

// A forward's input projection, XW_t + b_ih + b_hh at every step, still to be made: its
// operands in the compute dtype, contiguous.
struct InputProjection {
  at::Tensor x2d;   // [T*B,I] read: the layer's input
  at::Tensor w_ih;  // [H,I] read
  std::optional<at::Tensor> bias_ih, bias_hh;  // [H] read, or none (no biases)
  at::Tensor rows;  // int64 [N]: the only rows projected (valid_rows.h), or undefined: every row
};

// out2d [T*B,H] = the projection (elman_gemms.h input_projection: the bias sum and one GEMM;
// only projection.rows where given), named rnn_fused::input_projection to the profiler.
void project_input_on_host(at::Tensor& out2d, const InputProjection& projection);

// tasks[0]() and tasks[1]() at once, each on a thread of the caller's OpenMP team; returns when
// both have, rethrowing a task's exception. One after the other where torch runs one thread.
// Inside the region each time loop runs on its one thread (cpu/step_team.h), as the layer op's
// loop does on one thread: each direction's values are those of its layer op on one thread, bit
// for bit. The team's second thread, not a thread of its own: libgomp's idle
// team threads spin for milliseconds after each parallel region (such as the input
// projection's GEMM just before), so on a 2-core host a separate thread found its core taken
// (measured on the development CPU: no gain), and a thread that keeps a team of its own makes
// libgomp throttle every team's spinning (nn.RNN's CPU forward 2x slower after one matrix
// product on a second Python thread). The tasks run with the caller's thread-local state (grad
// mode, dispatch exclusions).
void run_at_once(const std::array<std::function<void()>, 2>& tasks);

// The forward time loop's problem, in the compute dtype, contiguous (but packed_step_rows' out).
struct ForwardRecurrence {
  const LayerForwardCall& call;
  at::Tensor w_hh;  // [H,H] read
  at::Tensor out;   // [T,B,H] in: XW_t + b_ih + b_hh at every step (unless projection is set);
                    // out: h_t, zero at t >= lengths[b]
  at::Tensor h0;    // [B,H] read only (may be the caller's hx): the initial state; undefined: zeros
  // [B,H] contiguous, or undefined: where a backend that allocates h_n itself writes it instead
  // (the GPU kernels; a backend may also return a tensor of its own, which the host layer then
  // copies here). The directions' op pair hands each direction a row of one [2,B,H] tensor.
  at::Tensor h_n;
  // Set for a backend that projects the input itself (RecurrenceBackend::projects_input): out
  // holds nothing on entry, and the backend makes the projection, in its kernel or by
  // project_input_on_host, before its time loop.
  const InputProjection* projection = nullptr;
  // Set (backends that run the packed layout: RecurrenceBackend::runs_packed_layout): out is a
  // PackedSequence's data [N,H], the lengths non-increasing, and step t's rows (its batch_sizes[t]
  // samples) start at row (*packed_step_rows)[t] [T]; out's rows may lie further apart than H (a
  // direction's columns of a bidirectional layer's [N,2H], unit stride within a row); h0 and h_n
  // stay [B,H]. Null: out is [T,B,H].
  const std::vector<int64_t>* packed_step_rows = nullptr;
  // Step-phase timing (GPU-kernel backends, persistent paths): when set, receives [CTAs, 3]
  // int64 cycles per CTA staging, computing and in the step barrier (recurrence_step_phases).
  at::Tensor* phase_cycles = nullptr;
};

// The backward time loop's problem, in the compute dtype, contiguous.
struct BackwardRecurrence {
  const LayerBackwardCall& call;
  const BackwardOperands& operands;  // input, w_ih, w_hh, saved out, dy, dh_n
  at::Tensor dz;                     // [T,B,H] out (uninitialised on entry): dL/dz_t at valid
                                     // steps, zero past each sample's length: every entry written
  at::Tensor step_norms;             // [T,B] out, written like dz: ||g_t|| at valid steps, zero
                                     // past the end; empty [0] unless the call records norms
  // Set (backends that run the packed layout), as in ForwardRecurrence: operands.dy, operands.out
  // and dz are a PackedSequence's rows [N,H] (dz written at every row: a packed batch has no
  // steps past a sample's length), step t's from row (*packed_step_rows)[t]; dy's and out's rows
  // may lie further apart than H (a direction's columns of a bidirectional layer's [N,2H], unit
  // stride within a row); dh_n, step_norms and the returned dz at each sample's first step keep
  // their [B,H] / [T,B] shapes.
  const std::vector<int64_t>* packed_step_rows = nullptr;
  at::Tensor* phase_cycles = nullptr;  // as in ForwardRecurrence
};

// A layer backward's whole-sequence gradients after its recurrence (what gradients_from_dz
// makes with the host's GEMMs), for a backend that can make them in a launch of its own.
struct WholeSequenceGradients {
  const LayerBackwardCall& call;
  const BackwardOperands& operands;  // input, w_ih, w_hh, saved out, dh_n (dy no longer held)
  const at::Tensor& dz;              // [T,B,H]: dL/dz_t, zero past each sample's length
  const at::Tensor& dz_first;        // [B,H]: dz at each sample's first processing step
};

// The forward of a stack of L >= 2 unidirectional layers of one hidden size in one launch
// (GPU-kernel backends: elman_forward_kernel.cuh forward_stack_kernel), float32.
struct ForwardStack {
  const LayerForwardCall& first;  // layer 0's call, checked: the shape, lengths and activation
  int64_t layers = 0;
  at::Tensor w_stacked;  // [L,2H,H] read: per layer its W_hh, then the next layer's W_ih (the top: unused rows)
  at::Tensor bias_next;  // [L,H] read: the next layer's b_ih + b_hh (row L-1 unused); undefined: no biases
  at::Tensor out;        // [L,T,B,H] in: out[0] = layer 0's XW_t + b_ih + b_hh; out: every layer's h_t at
                         // valid steps, zero past each sample's length (every entry written)
  at::Tensor h0;         // [L,B,H] read: the initial states; undefined: zeros
  at::Tensor dropout_masks;  // [L-1,T,B,H] read: each element's scale in the next layer's input
                             // (0 or 1 / (1 - p)); undefined: no dropout between layers
};

// Its backward recurrences in one launch (backward_stack_kernel), float32.
struct BackwardStack {
  const LayerForwardCall& first;  // layer 0's call: the shape, lengths, activation and truncation
  int64_t layers = 0;
  at::Tensor w_stacked;  // [L,2H,H] read: per layer W_hh^T, then W_ih^T (layer 0: unused rows)
  at::Tensor dy;         // [T,B,H] read: the gradient of the top layer's output
  at::Tensor dh_n;       // [L,B,H] read
  at::Tensor out;        // [L,T,B,H] read: every layer's saved h_t
  at::Tensor dz;         // [L,T,B,H] written: dz_t at valid steps, zero past each sample's length
  at::Tensor dz_first;   // [L,B,H] written: dz at each sample's step 0 (zero for an empty sample)
  at::Tensor dropout_masks;  // [L-1,T,B,H] read, as ForwardStack's; undefined: none
  at::Tensor step_sq;        // [L,T,B] float64 written: ||g_t||^2 at valid steps, zero past the end; undefined: no norms
};

// Whether a backend runs such a stack for a shape, and what the cost model predicts for it and
// for the same layers one launch after another (T steps each, their forward plans).
struct StackPlanQuery {
  int64_t hidden = 0, batch = 0, steps = 0, layers = 0;
  bool backward = false;  // the backward's launch (only the Block path's stack has one)
};
struct StackPlanReport {
  bool feasible = false;       // the stack's kernel can run the shape on the device
  bool faster = false;         // feasible and predicted faster than the layers one after another
  double stack_us = 0.0;       // predicted: T + lead_steps steps of the stack's kernel
  double layers_us = 0.0;      // predicted: L layers of T steps on their own plans
  double measured_stack_us = -1.0;   // under launch_plan.autotune, the same measured; else -1
  double measured_layers_us = -1.0;  // (faster then compares these)
  int64_t grid = 0;            // CTAs: L x sample groups (x P on the Cluster path)
  int64_t samples = 0;         // samples per group
  int64_t units_per_pass = 0;  // 32, or 16 (the dot products on half the warps)
  int64_t shared_mem_bytes = 0;
  int64_t compiled_passes = 0;
  // The Block path's stack (one CTA per layer and group: cluster 1) or the Cluster path's (a
  // cluster of L x P CTAs per group, P per layer, of units_per_cta units each).
  int64_t cluster = 1;
  int64_t units_per_cta = 0;
  int64_t lead_steps = 1;      // steps beyond T: 1 (Block: the projection of h_{T-1}), L - 1 (Cluster: the wavefront)
  std::string reason;          // the launch shape, or the limit it exceeds
};

// rnn_fused.plan()'s question to a GPU-kernel backend's planner.
struct RecurrencePlanQuery {
  at::ScalarType compute = at::kFloat;
  int64_t hidden = 0;
  int64_t batch = 0;
  bool backward = false;
  std::string path;          // "" = the planner's choice
  int64_t side_by_side = 1;  // LayerOptions::side_by_side
};

// Its answer: the chosen (or forced) launch shape and every path's best one.
struct RecurrencePlanReport {
  struct Entry {
    std::string path;
    bool feasible = false;
    int64_t samples_per_group = 0, samples = 0, chunks = 0, groups = 0, ctas_per_group = 0, units_per_cta = 0;
    int64_t units_per_pass = 0;
    int64_t step_sync = 0;  // RecurrenceTiling::step_sync (0 the barrier, Grid: 1 flag barrier, 2 tagged exchange; Cluster: 3 asynchronous exchange)
    int64_t grid = 0, block_threads = 0, cluster = 0, shared_mem_bytes = 0, blocks_per_sm = 0, waves = 0;
    int64_t compiled_passes = 0;  // the passes its kernels are compiled for (0: read at run time)
    double us_per_step = 0.0;           // the cost model's prediction
    double measured_us_per_step = NAN;  // timed on the device (Autotune), else NaN
    std::string reason;
    bool lane_rows = false;  // the Block path's lane-row kernels (a thread per hidden unit)
    int64_t ctas_per_sm = 1;  // (lane rows) the CTAs sharing an SM, as priced
    bool tiled_dots = false;  // the Grid or Cluster path's tiled dot products (RecurrenceTiling::tiled_dots)
    bool operand_ring = false;  // the Block path's operand ring (RecurrenceTiling::operand_ring)
  };
  Entry chosen;
  std::vector<Entry> candidates;  // per path: its best shape (the fastest timed, where autotuning timed them)
  std::vector<Entry> timed;       // every launch shape autotuning timed (none when it did not)
};

// The cost model's time per step of one given launch shape (not a search: the shape a GPU
// ran, for refitting the model to its measurements), with some constants replaced by name.
struct StepCostQuery {
  std::string path;  // "block", "cluster", "grid" or "stepwise"
  at::ScalarType compute = at::kFloat;
  int64_t hidden = 0, batch = 0;
  int64_t samples = 1, chunks = 1, ctas_per_group = 1, units_per_cta = 0, waves = 1;  // the launch shape
  int64_t units_per_pass = 32;
  int64_t step_sync = 0;  // RecurrenceTiling::step_sync (0 the barrier, Grid: 1 flag barrier, 2 tagged exchange; Cluster: 3 asynchronous exchange)
  std::vector<std::string> constant_names;
  std::vector<double> constant_values;
  std::string term = "total";  // or a part that step-phase timing measures: "stage", "compute", "barrier"
  bool block_stack = false;     // a CTA of the Block path's layer stack (its rows 2H: stack_plan)
  bool lane_rows = false;       // the Block path's lane-row step (elman_lane_rows_kernel.cuh)
  int64_t ctas_per_sm = 1;      // (lane rows) the CTAs sharing an SM's schedulers
  bool tiled_dots = false;      // the Grid or Cluster path's tiled dot products (RecurrenceTiling::tiled_dots)
};

struct RecurrenceBackend {
  std::string name;            // what callers pass as `backend`
  c10::DeviceType device;      // the tensors it runs on
  bool device_default = false; // chosen for `device` when no backend is named
  // Runs the forward loop; returns h_n [B,H] in the compute dtype.
  at::Tensor (*forward)(const ForwardRecurrence&) = nullptr;
  // Whether forward and backward run a PackedSequence's layout (ForwardRecurrence and
  // BackwardRecurrence::packed_step_rows): the CPU loops, for the packed ops (packed_inference.cpp,
  // packed_layer.cpp).
  bool runs_packed_layout = false;
  // Whether forward takes the input projection (ForwardRecurrence::projection) and makes it
  // itself: the GPU-kernel backends, whose Block path can make it inside its kernel (two
  // launches fewer); else the host layer makes it before the loop.
  bool projects_input = false;
  // Runs the backward loop; returns dz at each sample's processing step 0 [B,H] (zero for an
  // empty sample), the gradient that reaches h_0 through W_hh.
  at::Tensor (*backward)(const BackwardRecurrence&) = nullptr;
  // Makes the five gradients of gradients_from_dz (those the call's output_mask asks for; the
  // others empty) in the compute dtype in one launch where it prices that faster than the host's
  // GEMMs (GPU-kernel backends: short layers), else returns nullopt and the host makes them; or null.
  std::optional<std::array<at::Tensor, 5>> (*whole_sequence_gradients)(const WholeSequenceGradients&) = nullptr;
  // The planner's report (GPU-kernel backends), or null.
  RecurrencePlanReport (*plan)(const RecurrencePlanQuery& query) = nullptr;
  // The cost model's microseconds per step of a given launch shape (GPU-kernel backends), or null.
  double (*step_cost)(const StepCostQuery& query) = nullptr;
  // Runs a stack's forward in one launch (GPU-kernel backends), returns h_n [L,B,H]; or null.
  at::Tensor (*forward_stack)(const ForwardStack&) = nullptr;
  // Runs a stack's backward recurrences in one launch (GPU-kernel backends), or null.
  void (*backward_stack)(const BackwardStack&) = nullptr;
  // Whether and how it would (GPU-kernel backends), or null.
  StackPlanReport (*stack_plan)(const StackPlanQuery& query) = nullptr;
  // Runs first() and second() at once (GPU-kernel backends: second() on a side stream,
  // simt::run_side_by_side, which second() tells the tensors it made that outlive it), or null.
  void (*side_by_side)(const std::function<void()>& first,
                       const std::function<std::vector<at::Tensor>()>& second) = nullptr;
};

// Calls f(std::integral_constant<Activation, A>{}, scalar_t{}) for a compute dtype (float or
// double) and activation: the one switch from runtime options to every backend's templates.
template <class F>
void dispatch_elman(at::ScalarType compute, Activation activation, F&& f) {
  auto with_activation = [&](auto zero) {
    if (activation == Activation::Tanh) {
      f(std::integral_constant<Activation, Activation::Tanh>{}, zero);
    } else {
      f(std::integral_constant<Activation, Activation::Relu>{}, zero);
    }
  };
  if (compute == at::kFloat) {
    with_activation(float{});
  } else if (compute == at::kDouble) {
    with_activation(double{});
  } else {
    TORCH_CHECK(false, "rnn_fused: no recurrence for compute dtype ", compute);
  }
}

// Parts of the launch shape every GPU-kernel planner must use: samples per chunk (1, 2, 4 or 8:
// the kernels' register tiles), units per pass (16 or 32: RecurrenceTiling::units_per_pass),
// each 0 for each plan's own choice, and the step synchronisation (RecurrenceTiling::step_sync:
// 0 the Grid and Cluster paths' barriers, Grid: 1 flag barrier, 2 tagged exchange, Cluster: 3
// asynchronous exchange; a code binds only the paths that have it; -1 for each plan's own), and
// whether the kernels must read their passes at run time even where a kernel compiled for the
// launch shape's passes exists (compiled_passes in recurrence_paths.cuh): to time the one
// against the other. To run or time other launch shapes at one size than the cost model picks
// (rnn_fused.launch_plan.forced_tiling: gpu-check, tests). Process-wide.
struct ForcedTiling {
  int64_t samples = 0;
  int64_t units_per_pass = 0;
  int64_t step_sync = -1;
  bool run_time_passes = false;
  // The Block path runs the lane-row kernels (elman_lane_rows_kernel.cuh: a thread per hidden
  // unit) where they apply instead of its general ones (8 lanes per weight row).
  bool lane_rows_step = false;
  // No kernel projects the input itself (kernel_projects_input): every path's z_t starts from
  // the host's GEMM, so that paths can be compared bit for bit and the one timed against the other.
  bool input_projection_on_host = false;
  // No backend makes a layer's whole-sequence gradients in a launch of its own
  // (RecurrenceBackend::whole_sequence_gradients): every backward takes the host's GEMMs, as the
  // CPU backend's does, to compare the two bit for bit or time the one against the other.
  bool gradients_on_host = false;
  // A backward that records norms sums them in its steps (the general kernels) even where its
  // kernel's plain copy would store g_t for step_norms_kernel to sum after the launch
  // (elman_launch.h defers_step_norms): to compare or time the one against the other.
  bool norms_in_steps = false;
  // The Grid and Cluster paths compute their dot products in warp-wide tiles
  // (RecurrenceTiling::tiled_dots: float32, the Grid path at 4 or 8 samples per chunk, the
  // Cluster path at 4 with every weight row in shared memory; their other shapes, and float64,
  // are then ruled out there) instead of 8 lanes per weight row: not the planner's own choice
  // until a GPU has timed them (docs/cuda_backend.md, the tiled dot products).
  bool tiled_dots = false;
  // The Block path's general kernels take each lane's step operands through a ring in shared
  // memory, copied kOperandRingSteps steps ahead (RecurrenceTiling::operand_ring, OperandRing)
  // instead of into registers one step ahead behind L1 prefetches: not the planner's own choice
  // until a GPU has timed it.
  bool operand_ring = false;
  // The host's whole-sequence GEMMs multiply every row of a batch with lengths (its T*B), even
  // where the CPU backend would multiply only the valid steps' rows (valid_rows.h): to compare
  // or time the one against the other.
  bool every_row = false;
};
ForcedTiling forced_tiling();
// Sets them (ValueError naming a value not allowed, and nothing set); returns the previous ones.
ForcedTiling set_forced_tiling(const ForcedTiling& tiling);

// Whether a GPU-kernel backend's forward makes a layer's input projection inside its kernel
// instead of by the host's GEMM: the Block path's general kernels (`block_general_kernels`, S
// samples per CTA) where the cost model prices it so (cost::kernel_projects_input), unless
// forced_tiling keeps every projection on the host. Asked by the planner's launch
// (elman_launch.h) and by the cost_model and kernel_projects_input ops.
bool projects_input_in_kernel(bool block_general_kernels, int64_t steps, int64_t samples, int64_t input_size,
                              int64_t hidden);
// Whether a GPU-kernel backend's backward makes a layer's whole-sequence gradients in one launch
// of its gradients kernel (elman_gradients_kernel.cuh) instead of the host's GEMMs: float32
// compute, where the cost model prices it so for the gradients asked (`asked` as a backward's
// output_mask: cost::kernel_makes_gradients), unless forced_tiling keeps them on the host. Asked
// by the backends' whole_sequence_gradients (elman_launch.h) and by the cost_model op.
bool gradients_in_kernel(at::ScalarType compute, const LayerShape& shape, const std::array<bool, 5>& asked);

// Autotuning (rnn_fused.launch_plan.autotune): where enabled, a GPU-kernel planner times
// every feasible path's launch shape on the device at the first unforced plan of each
// (device, H, B, direction, dtype) and takes the fastest it measured, instead of the cost
// model's pick; the measurements are kept for the process. `steps`: the steps a timed run
// adds to a short one (the time per step is their difference over `steps`). Process-wide.
struct Autotune {
  bool enabled = false;
  int64_t steps = 0;  // rnn_fused.launch_plan.autotune's default where enabled
};
Autotune autotune();
// Sets it (ValueError naming steps when it is enabled with fewer than 1, and nothing set);
// returns the previous one.
Autotune set_autotune(const Autotune& setting);

// Registers a backend (static initialisers of each backend's translation unit).
bool register_recurrence_backend(const RecurrenceBackend& backend);

// The backend named `requested` ("" = the default of `device`); ValueError naming what is
// allowed when it does not exist or does not run on `device`.
const RecurrenceBackend& find_recurrence_backend(c10::DeviceType device, const std::string& requested);

// Names of the registered backends, in registration order.
std::vector<std::string> recurrence_backend_names();

// rnn_fused::rnn_layer_forward: (output [T,B,H], h_n [B,H]) in the input's dtype.
std::tuple<at::Tensor, at::Tensor> run_layer_forward(const LayerForwardCall& call);

// rnn_fused::rnn_directions_forward: both directions of a bidirectional layer (calls[0] the
// forward one, calls[1] the reverse one, checked, one input and lengths), the two time loops at
// once: on a backend that runs its own loops (the CPU's) each on a thread of the caller's OpenMP
// team, on the GPU kernels the reverse one's launches on a side stream where the calls were
// planned for half the SMs each (side_by_side 2; else one after the other), the casts and GEMMs
// on the calling thread and stream: (output [T,B,2H], the directions' outputs side by side,
// h_n [2,B,H]) in the input's dtype, each direction's values those of run_layer_forward.
std::tuple<at::Tensor, at::Tensor> run_directions_forward(const std::array<LayerForwardCall, 2>& calls);

// rnn_fused::rnn_directions_backward: the directions' backward likewise: grad_input (the sum of
// the directions', empty [0] unless output_mask[0] of both), then per direction grad_hx,
// grad_weight_ih, grad_weight_hh and grad_bias (run_layer_backward's, empty [0] where not in its
// output_mask); where the calls record norms, then per direction its step_norms, grad_sq_norms
// and nonfinite flag (LayerBackwardResult's last three).
std::vector<at::Tensor> run_directions_backward(const std::array<LayerBackwardCall, 2>& calls);

// rnn_fused::rnn_stack_forward: (outputs [L,T,B,H], h_n [L,B,H]) of a stack of unidirectional
// layers, one checked call per layer (layer l >= 1's input a [T,B,H] placeholder: only its
// shape is read), in one launch of a backend with forward_stack. dropout_masks [L-1,T,B,H]
// (float32, on the input's device) or undefined: dropout between layers (ForwardStack).
std::tuple<at::Tensor, at::Tensor> run_stack_forward(const std::vector<LayerForwardCall>& calls,
                                                     const at::Tensor& dropout_masks);

// rnn_fused::rnn_stack_backward: the five gradients of each layer (LayerBackwardResult's first
// five, in layer order; output_masks[l] says which of layer l's are wanted, the others empty
// [0]) from grad_output [T,B,H] of the top layer, grad_h_n [L,B,H] (undefined: zeros) and the forward's outputs
// [L,T,B,H]; the recurrences in one launch of a backend with backward_stack, the GEMMs of each
// layer after it (elman_gemms.h gradients_from_dz). With record_norms each layer's five are
// followed by its step norms [T,B], grad_sq_norms [5] and nonfinite flag (LayerBackwardResult).
// With dropout_masks (the forward's), layer l >= 1's input is layer l - 1's output times its mask.
std::vector<at::Tensor> run_stack_backward(const std::vector<LayerForwardCall>& calls, const at::Tensor& grad_output,
                                           const at::Tensor& grad_h_n, const at::Tensor& outputs,
                                           const std::vector<std::array<bool, 5>>& output_masks,
                                           const at::Tensor& dropout_masks, bool record_norms);

// rnn_fused::stack_plan: the backend's StackPlanReport for a device type.
StackPlanReport plan_stack(c10::DeviceType device, const std::string& backend, const StackPlanQuery& query);

// rnn_fused::rnn_layer_backward (csrc/ops.cpp has the schema and the meaning of each result).
LayerBackwardResult run_layer_backward(const LayerBackwardCall& call);

}  // namespace rnn_fused
