// Operator schemas of rnn_fused. One single-layer, single-direction op pair
// (forward, backward); layers and directions are composed in Python above it.
// Shapes: T steps, B batch, I input features, H hidden units. Time-major.
#include <torch/library.h>
#include <Python.h>

// Importing rnn_fused._C from Python only has to load this shared library: the
// ops are registered by the static initialisers of TORCH_LIBRARY below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(rnn_fused, m) {
  // input [T,B,I]; hx [B,H] or None (zeros); weight_ih [H,I]; weight_hh [H,H];
  // bias_ih, bias_hh [H] or None; lengths int64 [B] on input's device or None (all T).
  // Returns output [T,B,H] (zero at steps t >= lengths[b]) and h_n [B,H].
  m.def(
      "rnn_layer_forward(Tensor input, Tensor? hx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, Tensor? lengths, str nonlinearity, bool reverse) "
      "-> (Tensor output, Tensor h_n)");
  // grad_output [T,B,H]; grad_h_n [B,H]; the forward's inputs and its output [T,B,H].
  // Returns grad_input [T,B,I], grad_hx [B,H], grad_weight_ih [H,I], grad_weight_hh [H,H],
  // grad_bias [H] (the gradient of bias_ih and of bias_hh alike). output_mask says which
  // of the five are wanted, in that order; the others come back as empty [0] tensors.
  m.def(
      "rnn_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? hx, "
      "Tensor weight_ih, Tensor weight_hh, Tensor output, Tensor? lengths, str nonlinearity, "
      "bool reverse, bool[5] output_mask) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_weight_ih, Tensor grad_weight_hh, "
      "Tensor grad_bias)");
}
