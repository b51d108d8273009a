// Plain parameter structs shared by every backend (CPU, CUDA, SIMT emulation).
// No torch includes: kernels compiled by nvcc or by the emulator see only this.
#pragma once

#include <cstdint>

namespace rnn_fused {

enum class Activation : int32_t { Tanh = 0, Relu = 1 };

// One layer, one direction. Shapes use T = steps, B = batch, I = input size, H = hidden.
// Every tensor is contiguous, time-major, in the compute dtype of the backend.
struct LayerForwardParams {
  int64_t steps = 0;            // T
  int64_t batch = 0;            // B
  int64_t input_size = 0;       // I
  int64_t hidden_size = 0;      // H
  Activation activation = Activation::Tanh;
  bool reverse = false;         // process each sample's valid steps from last to first
  const int64_t* lengths = nullptr;  // [B] valid steps per sample, or null (all T)
  bool lengths_nonincreasing = true; // lets the time loop shrink the active batch
};

// Time index of processing step `s` for a sample with `len` valid steps. constexpr so
// that device code may call it too (nvcc --expt-relaxed-constexpr).
constexpr int64_t step_time(int64_t s, int64_t len, bool reverse) {
  return reverse ? len - 1 - s : s;
}

}  // namespace rnn_fused
