// Part 1 of the emulated backend's kernels (csrc/cuda/elman_kernel_list.h says which), compiled by
// g++ against the SIMT emulator beside the other parts.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // (as in elman_emulated.cpp)
#define RNN_FUSED_KERNEL_PART 1
#include "cuda/elman_kernel_list.h"
