// simt_types.h — CUDA's vector types and function qualifiers for g++ (emulation only).
// Included by simt.cuh before anything that names dim3, so host launch-planning code and
// kernels spell them exactly as under nvcc. The types live in simt::emu and are brought
// into the global namespace with using-declarations: their mangled names then differ from
// CUDA's own dim3 in the .cu translation units linked into the same library.
#pragma once

#if defined(__CUDACC__)
#error "simt_types.h is the emulator's; nvcc uses the real CUDA types"
#endif

namespace simt::emu {

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

}  // namespace simt::emu

using simt::emu::dim3;
using simt::emu::uint3;

// Function qualifiers. A plain __global__ kernel gets internal linkage under g++: nvcc emits
// a host stub with the kernel's mangled name in the .cu objects of the same library, and the
// emulated body must never be merged with it. A SIMT_GLOBAL kernel is declared in a world
// namespace (SIMT_BEGIN_WORLD: `gpu` under nvcc, `emulated` here), so the two never share a
// name, and keeps external linkage: a template's instances can be compiled in one translation
// unit and launched from another (csrc/cuda/elman_kernel_list.h).
#define __global__ [[maybe_unused]] static
#define __device__ inline
#define __host__
#define __forceinline__ __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

#define SIMT_GLOBAL [[maybe_unused]]
#define SIMT_DEVICE __device__
#define SIMT_HOST_DEVICE __host__ __device__
#define SIMT_LAUNCH_BOUNDS(...)
// Loop unrolling hint spelled for both compilers (g++ ignores `#pragma unroll` with a warning).
#define SIMT_UNROLL _Pragma("GCC unroll 8")
#define SIMT_UNROLL_2 _Pragma("GCC unroll 2")
#define SIMT_NO_UNROLL _Pragma("GCC unroll 1")
#define SIMT_NOINLINE __attribute__((noinline))
