// Compiled with OpenMP, outside the unity build (src/train/CMakeLists.txt), so that
// at::parallel_for runs on libtorch's OpenMP team.
#include "train/fused_updates.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#include "nn/bf16_tensor.h"
#include "nn/vector_math.h"

namespace diffuse {

namespace {

constexpr int64_t kGrain = 65536;

bool plain(const torch::Tensor& t, torch::ScalarType dtype, const torch::Tensor& like) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() &&
         t.numel() == like.numel();
}
bool plain_fp32(const torch::Tensor& t, const torch::Tensor& like) { return plain(t, torch::kFloat, like); }

inline float load(const float* g, int64_t i) { return g[i]; }
inline float load(const uint16_t* g, int64_t i) { return nn::bf16_to_float(g[i]); }

// G is float (an fp32 gradient) or uint16_t (bf16 bits); with kMirror, bf16(p) goes to mirror.
template <typename G, bool kMirror>
DIFFUSE_VECTOR_CLONES void adamw_chunk(float* p, const G* g, float* m, float* v, uint16_t* mirror, int64_t n,
                                       AdamWStep s) {
  const float a1 = s.one_minus_beta1, a2 = s.one_minus_beta2;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = load(g, i) * s.grad_scale;
    // In the order of the tensor operations: m.mul_(beta1).add_(g, a1), v.mul_(beta2)
    // .addcmul_(g, g, a2), p.mul_(decay).addcdiv_(m, sqrt(v) / bc2_sqrt + eps, -step_size).
    const float mi = m[i] * s.beta1 + a1 * gi;
    const float vi = v[i] * s.beta2 + a2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / s.bc2_sqrt + s.eps;
    const float pi = p[i] * s.decay + -s.step_size * mi / denom;
    p[i] = pi;
    if constexpr (kMirror) mirror[i] = nn::float_to_bf16(pi);
  }
}

template <typename G>
void adamw_range(float* p, const G* g, float* m, float* v, uint16_t* mirror, int64_t n, const AdamWStep& s) {
  if (mirror)
    adamw_chunk<G, true>(p, g, m, v, mirror, n, s);
  else
    adamw_chunk<G, false>(p, g, m, v, nullptr, n, s);
}

DIFFUSE_VECTOR_CLONES
void ema_chunk(float* e, const float* p, int64_t n, float d) {
  const float w = 1.f - d;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) e[i] = e[i] * d + p[i] * w;
}

}  // namespace

bool adamw_step_fused(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v, const AdamWStep& s,
                      const torch::Tensor& mirror) {
  const bool bf16_grad = plain(g, torch::kBFloat16, p);
  if (!plain_fp32(p, p) || !(bf16_grad || plain_fp32(g, p)) || !plain_fp32(m, p) || !plain_fp32(v, p)) return false;
  if (mirror.defined() && !plain(mirror, torch::kBFloat16, p)) return false;
  float* pp = p.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  torch::Tensor mirror_out = mirror;
  uint16_t* out = mirror_out.defined() ? nn::bf16_bits_mutable(mirror_out) : nullptr;
  at::parallel_for(0, p.numel(), kGrain, [&](int64_t begin, int64_t end) {
    uint16_t* o = out ? out + begin : nullptr;
    if (bf16_grad)
      adamw_range(pp + begin, nn::bf16_bits(g) + begin, mp + begin, vp + begin, o, end - begin, s);
    else
      adamw_range(pp + begin, g.data_ptr<float>() + begin, mp + begin, vp + begin, o, end - begin, s);
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
