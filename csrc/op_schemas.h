// Schemas of the single-layer op pair, one home for the backends that register them under
// their own names (rnn_layer_* in csrc/ops.cpp, simt_rnn_layer_* in csrc/simt/rnn_simt.cpp).
// Shapes: T steps, B batch, I input features, H hidden units. Time-major.
#pragma once

// input [T,B,I]; hx [B,H] or None (zeros); weight_ih [H,I]; weight_hh [H,H];
// bias_ih, bias_hh [H] or None; lengths int64 [B] on input's device or None (all T).
// truncate_every, keep_prob, seed, layer: the backward's truncation (docs/bptt.md); the
// forward only checks them (so a bad value fails before anything runs) and autograd hands
// them to the backward.
// Returns output [T,B,H] (zero at steps t >= lengths[b]) and h_n [B,H].
#define RNN_FUSED_LAYER_FORWARD_SCHEMA(name)                                                  \
  name "(Tensor input, Tensor? hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "     \
       "Tensor? bias_hh, Tensor? lengths, str nonlinearity, bool reverse, "                   \
       "int truncate_every=0, float keep_prob=1.0, int seed=0, int layer=0) "                 \
       "-> (Tensor output, Tensor h_n)"

// grad_output [T,B,H]; grad_h_n [B,H]; the forward's inputs and its output [T,B,H].
// Returns grad_input [T,B,I], grad_hx [B,H], grad_weight_ih [H,I], grad_weight_hh [H,H],
// grad_bias [H] (the gradient of bias_ih and of bias_hh alike); output_mask says which of
// these five are wanted, in that order; the others come back as empty [0] tensors.
// With record_norms also step_norms [T,B] (||dL/dh_t||, compute dtype, zero at t >=
// lengths[b]), grad_sq_norms [5] float64 (squared norms of the five gradients, 0 for those
// not computed) and nonfinite (bool 0-d: some gradient or g_t is NaN/Inf); without, those
// three are empty [0].
#define RNN_FUSED_LAYER_BACKWARD_SCHEMA(name)                                                       \
  name "(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? hx, Tensor weight_ih, "         \
       "Tensor weight_hh, Tensor output, Tensor? lengths, str nonlinearity, bool reverse, "         \
       "bool[5] output_mask, int truncate_every=0, float keep_prob=1.0, int seed=0, int layer=0, "  \
       "bool record_norms=False) "                                                                  \
       "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_weight_ih, Tensor grad_weight_hh, "      \
       "Tensor grad_bias, Tensor step_norms, Tensor grad_sq_norms, Tensor nonfinite)"
