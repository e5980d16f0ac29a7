// Compiled with OpenMP, outside the unity build (src/nn/CMakeLists.txt), as group_norm.cpp.
#include "nn/gelu.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstdint>

#include "core/error.h"
#include "nn/bf16_tensor.h"
#include "nn/vector_math.h"

namespace diffuse::nn {

namespace {

constexpr float kSqrt2OverPi = 0.797884560802865f;  // sqrt(2 / pi)
constexpr float kTanhCubic = 0.044715f;
constexpr float kInvSqrt2 = 0.707106781186548f;
constexpr float kInvSqrt2Pi = 0.398942280401433f;  // 1 / sqrt(2 pi)

// erfc(a) for a >= 0 with a relative error below 1.2e-7 everywhere (the Chebyshev fit of
// Numerical Recipes' erfcc), so that the normal CDF keeps its precision far into the left tail.
inline float erfc_nonnegative(float a) {
  const float t = 1.f / (1.f + 0.5f * a);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * exp_nonpositive(p - a * a);
}

// The standard normal CDF, 0.5 erfc(-x / sqrt 2).
inline float normal_cdf(float x) {
  const float half_tail = 0.5f * erfc_nonnegative((x < 0.f ? -x : x) * kInvSqrt2);
  return x < 0.f ? half_tail : 1.f - half_tail;
}

// 0.5 (1 + tanh(u)) = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
inline float tanh_gate(float x) { return sigmoid(2.f * kSqrt2OverPi * (x + kTanhCubic * x * x * x)); }

DIFFUSE_VECTOR_CLONES
void gelu_forward(const uint16_t* x, uint16_t* out, int64_t n, bool tanh_approximation) {
  if (tanh_approximation) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v = bf16_to_float(x[i]);
      out[i] = float_to_bf16(v * tanh_gate(v));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v = bf16_to_float(x[i]);
      out[i] = float_to_bf16(v * normal_cdf(v));
    }
  }
}

DIFFUSE_VECTOR_CLONES
void gelu_backward(const uint16_t* x, const uint16_t* g, uint16_t* dx, int64_t n, bool tanh_approximation) {
  if (tanh_approximation) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v = bf16_to_float(x[i]);
      const float s = tanh_gate(v);
      // d/dx [x s(2u)] = s + 2 x s (1 - s) u'
      const float d = s + 2.f * v * s * (1.f - s) * kSqrt2OverPi * (1.f + 3.f * kTanhCubic * v * v);
      dx[i] = float_to_bf16(bf16_to_float(g[i]) * d);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v = bf16_to_float(x[i]);
      const float cdf = normal_cdf(v);
      const float d = cdf + v * kInvSqrt2Pi * exp_nonpositive(-0.5f * v * v);
      dx[i] = float_to_bf16(bf16_to_float(g[i]) * d);
    }
  }
}

constexpr int64_t kGrain = 32768;

struct GeluBf16 : torch::autograd::Function<GeluBf16> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, bool tanh) {
    auto x = input.contiguous();
    auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    const uint16_t* xp = bf16_bits(x);
    uint16_t* op = bf16_bits_mutable(out);
    at::parallel_for(0, x.numel(), kGrain,
                     [&](int64_t begin, int64_t end) { gelu_forward(xp + begin, op + begin, end - begin, tanh); });
    ctx->save_for_backward({x});
    ctx->saved_data["tanh"] = tanh;
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    const bool tanh = ctx->saved_data["tanh"].toBool();
    auto g = bf16_contiguous(grads[0]);
    auto dx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
    const uint16_t* xp = bf16_bits(x);
    const uint16_t* gp = bf16_bits(g);
    uint16_t* dp = bf16_bits_mutable(dx);
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
      gelu_backward(xp + begin, gp + begin, dp + begin, end - begin, tanh);
    });
    return {dx, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor gelu_bf16(const torch::Tensor& x, bool tanh_approximation) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu())
    throw Error("gelu_bf16: expected a bf16 CPU tensor, got " + std::string(c10::toString(x.scalar_type())) + " on " +
                x.device().str());
  if (x.numel() == 0) return x.clone();
  return GeluBf16::apply(x, tanh_approximation);
}

torch::Tensor gelu(const torch::Tensor& x, bool tanh_approximation) {
  if (x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() && x.numel() > 0)
    return gelu_bf16(x, tanh_approximation);
  return tanh_approximation ? torch::gelu(x, "tanh") : torch::gelu(x);
}

}  // namespace diffuse::nn
