// 64 values live at once: at 32 registers a thread some go to local memory.
__global__ void probe_spilling(const float* x, float* y) {
  float v[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) v[i] = x[threadIdx.x + i * 32];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i) s += v[i] * v[(i * 7) % 64];
#pragma unroll
  for (int i = 0; i < 64; ++i) y[threadIdx.x + i * 32] = v[i] * s;
}
// The same arithmetic on 4 values: no pressure.
__global__ void probe_clean(const float* x, float* y) {
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = x[threadIdx.x + i * 32];
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) s += v[i] * v[(i * 3) % 4];
#pragma unroll
  for (int i = 0; i < 4; ++i) y[threadIdx.x + i * 32] = v[i] * s;
}
