// Compiled with OpenMP, outside the unity build (src/nn/CMakeLists.txt), as group_norm.cpp.
#include "nn/layer_norm.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "nn/bf16_tensor.h"
#include "nn/vector_math.h"

namespace diffuse::nn {

namespace {

// Normalises one row; its mean and 1/sqrt(var + eps) go to *mean and *rstd.
DIFFUSE_VECTOR_CLONES
void row_forward(const uint16_t* x, uint16_t* out, int64_t n, double eps, float* mean_out, float* rstd_out) {
  float mean, rstd;
  bf16_moments(x, n, eps, &mean, &rstd);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16((bf16_to_float(x[i]) - mean) * rstd);
  *mean_out = mean;
  *rstd_out = rstd;
}

// dx = rstd (g - mean(g) - xhat mean(g xhat)).
DIFFUSE_VECTOR_CLONES
void row_backward(const uint16_t* x, const uint16_t* g, uint16_t* dx, int64_t n, float mean, float rstd) {
  float a = 0.f, b = 0.f;
#pragma omp simd reduction(+ : a, b)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = bf16_to_float(g[i]);
    a += gi;
    b += gi * (bf16_to_float(x[i]) - mean) * rstd;
  }
  const float m1 = a / float(n), m2 = b / float(n);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xhat = (bf16_to_float(x[i]) - mean) * rstd;
    dx[i] = float_to_bf16(rstd * (bf16_to_float(g[i]) - m1 - xhat * m2));
  }
}

int64_t row_grain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n)); }

struct LayerNormBf16 : torch::autograd::Function<LayerNormBf16> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, double eps) {
    auto x = input.contiguous();
    const int64_t n = x.size(-1), rows = x.numel() / n;
    auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    auto stats = torch::empty({2, rows}, x.options().dtype(torch::kFloat));
    const uint16_t* xp = bf16_bits(x);
    uint16_t* op = bf16_bits_mutable(out);
    float* mp = stats.data_ptr<float>();
    float* rp = mp + rows;
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_forward(xp + r * n, op + r * n, n, eps, mp + r, rp + r);
    });
    ctx->save_for_backward({x, stats});
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &stats = saved[1];
    const int64_t n = x.size(-1), rows = x.numel() / n;
    auto g = bf16_contiguous(grads[0]);
    auto dx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    const uint16_t* xp = bf16_bits(x);
    const uint16_t* gp = bf16_bits(g);
    uint16_t* dp = bf16_bits_mutable(dx);
    const float* mp = stats.data_ptr<float>();
    const float* rp = mp + rows;
    at::parallel_for(0, rows, row_grain(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) row_backward(xp + r * n, gp + r * n, dp + r * n, n, mp[r], rp[r]);
    });
    return {dx, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor layer_norm_bf16(const torch::Tensor& x, double eps) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu())
    throw Error("layer_norm_bf16: expected a bf16 CPU tensor, got " + std::string(c10::toString(x.scalar_type())) +
                " on " + x.device().str());
  if (x.dim() == 0 || x.numel() == 0) return torch::layer_norm(x, {x.dim() ? x.size(-1) : 1}, {}, {}, eps);
  return LayerNormBf16::apply(x, eps);
}

torch::Tensor layer_norm(const torch::Tensor& x, double eps) {
  if (x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() && x.dim() > 0 && x.numel() > 0)
    return layer_norm_bf16(x, eps);
  return torch::layer_norm(x, {x.size(-1)}, {}, {}, eps);
}

}  // namespace diffuse::nn
