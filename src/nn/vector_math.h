#pragma once
// Scalar helpers for the fused kernels (group_norm.cpp, attention_softmax.cpp, attention_fp32.cpp, gelu.cpp,
// layer_norm.cpp), written branch-free so that loops calling them vectorise; the kernels' loops are compiled for
// AVX-512, AVX2 and baseline x86-64 and chosen when the program loads (DIFFUSE_VECTOR_CLONES).
#include <cmath>
#include <cstdint>
#include <cstring>

namespace diffuse::nn {

// x86-64 builds get an AVX-512 and an AVX2 copy of each loop, chosen when the program loads.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DIFFUSE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DIFFUSE_VECTOR_CLONES
#endif

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as c10::BFloat16 does; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fc0) : uint16_t(rounded);
}

// e^t for t in [-87, 0], branch-free so that loops calling it vectorise: 2^n * e^r with
// |r| <= ln2/2 and e^r from its Taylor series to r^6 (relative error below 2e-7). Below -87 it
// gives e^-87; NaN stays NaN (the integer part is computed from a clamped copy).
inline float exp_nonpositive(float t) {
  const float c = t >= -87.f ? t : -87.f;                       // NaN compares false: -87
  const float n = (c * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest
  const float r = (c - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const uint32_t bits = uint32_t(int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return t != t ? t : p * scale;
}

// p <- softmax(p) in place, given the row's largest value: e^(p - max), normalised.
inline void softmax_from_max(float* p, int64_t n, float max) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_nonpositive(p[i] - max);
    p[i] = e;
    sum += e;
  }
  const float inv = 1.f / sum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) p[i] *= inv;
}

// 1 / (1 + e^-y), from e^-|y| so that nothing overflows.
inline float sigmoid(float y) {
  const float e = exp_nonpositive(y < 0.f ? y : -y);  // e^-|y|
  const float inv = 1.f / (1.f + e);
  return y < 0.f ? e * inv : inv;
}

// Mean and 1/sqrt(var + eps) of n contiguous bf16 values: two passes with fp32 sums (inline, so
// that each vector clone of a caller gets its own copy of the loops).
inline void bf16_moments(const uint16_t* x, int64_t n, double eps, float* mean_out, float* rstd_out) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += bf16_to_float(x[i]);
  const float mean = sum / float(n);
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) {
    const float d = bf16_to_float(x[i]) - mean;
    sq += d * d;
  }
  *mean_out = mean;
  *rstd_out = float(1.0 / std::sqrt(double(sq) / double(n) + eps));
}

}  // namespace diffuse::nn
