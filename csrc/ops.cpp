// Operator schemas of rnn_fused. One single-layer, single-direction op pair
// (forward, backward; csrc/op_schemas.h); layers and directions are composed in Python
// above it. Also edge_scales, the truncation draws the backward kernels apply.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <Python.h>

#include "layer_args.h"
#include "op_schemas.h"

// Importing rnn_fused._C from Python only has to load this shared library: the
// ops are registered by the static initialisers of TORCH_LIBRARY below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace {

// c [T,B] float64: the edge scale of processing step s of sample b that the backward
// kernels of every backend apply (rnn_params.h edge_scale), for checking and recording.
at::Tensor edge_scales(int64_t steps, int64_t batch, int64_t truncate_every, double keep_prob, int64_t seed,
                       int64_t layer, bool reverse) {
  TORCH_CHECK_VALUE(steps >= 0 && batch >= 0, "rnn_fused: edge_scales needs steps, batch >= 0, got ", steps, ", ",
                    batch);
  const rnn_fused::TruncationParams tp =
      rnn_fused::check_truncation_args(truncate_every, keep_prob, seed, layer, reverse);
  at::Tensor scales = at::empty({steps, batch}, at::kDouble);
  double* c = scales.data_ptr<double>();
  for (int64_t s = 0; s < steps; ++s) {
    for (int64_t b = 0; b < batch; ++b) c[s * batch + b] = rnn_fused::edge_scale(tp, s, b);
  }
  return scales;
}

}  // namespace

TORCH_LIBRARY(rnn_fused, m) {
  m.def(RNN_FUSED_LAYER_FORWARD_SCHEMA("rnn_layer_forward"));
  m.def(RNN_FUSED_LAYER_BACKWARD_SCHEMA("rnn_layer_backward"));
  m.def("edge_scales(int steps, int batch, int truncate_every, float keep_prob, int seed, int layer, bool reverse) "
        "-> Tensor",
        &edge_scales);
}
