// Compiled with OpenMP, outside the unity build (src/train/CMakeLists.txt), so that
// at::parallel_for runs on libtorch's OpenMP team.
#include "train/fused_updates.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#include "nn/vector_math.h"

namespace diffuse {

namespace {

constexpr int64_t kGrain = 65536;

bool plain_fp32(const torch::Tensor& t, const torch::Tensor& like) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous() &&
         t.numel() == like.numel();
}

DIFFUSE_VECTOR_CLONES
void adamw_chunk(float* p, const float* g, float* m, float* v, int64_t n, AdamWStep s) {
  const float a1 = s.one_minus_beta1, a2 = s.one_minus_beta2;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    // In the order of the tensor operations: m.mul_(beta1).add_(g, a1), v.mul_(beta2)
    // .addcmul_(g, g, a2), p.mul_(decay).addcdiv_(m, sqrt(v) / bc2_sqrt + eps, -step_size).
    const float mi = m[i] * s.beta1 + a1 * gi;
    const float vi = v[i] * s.beta2 + a2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    p[i] = p[i] * s.decay + -s.step_size * mi / denom;
  }
}

DIFFUSE_VECTOR_CLONES
void ema_chunk(float* e, const float* p, int64_t n, float d) {
  const float w = 1.f - d;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) e[i] = e[i] * d + p[i] * w;
}

}  // namespace

bool adamw_step_fused(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v,
                      const AdamWStep& s) {
  if (!plain_fp32(p, p) || !plain_fp32(g, p) || !plain_fp32(m, p) || !plain_fp32(v, p)) return false;
  float* pp = p.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  at::parallel_for(0, p.numel(), kGrain, [&](int64_t begin, int64_t end) {
    adamw_chunk(pp + begin, gp + begin, mp + begin, vp + begin, end - begin, s);
  });
  return true;
}

bool ema_update_fused(torch::Tensor& ema, const torch::Tensor& p, float d) {
  if (!plain_fp32(ema, ema) || !plain_fp32(p, ema)) return false;
  float* ep = ema.data_ptr<float>();
  const float* pp = p.data_ptr<float>();
  at::parallel_for(0, ema.numel(), kGrain,
                   [&](int64_t begin, int64_t end) { ema_chunk(ep + begin, pp + begin, end - begin, d); });
  return true;
}

}  // namespace diffuse
