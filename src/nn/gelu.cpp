// Compiled with OpenMP, outside the unity build (src/nn/CMakeLists.txt), as group_norm.cpp.
#include "nn/gelu.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstdint>
#include <type_traits>

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

// GELU and its derivative at one point.
inline float gelu_erf(float v) { return v * normal_cdf(v); }
inline float gelu_tanh(float v) { return v * tanh_gate(v); }
inline float gelu_erf_derivative(float v) { return normal_cdf(v) + v * kInvSqrt2Pi * exp_nonpositive(-0.5f * v * v); }
inline float gelu_tanh_derivative(float v) {
  const float s = tanh_gate(v);  // d/dx [x s(2u)] = s + 2 x s (1 - s) u'
  return s + 2.f * v * s * (1.f - s) * kSqrt2OverPi * (1.f + 3.f * kTanhCubic * v * v);
}

// Elements as the loops read and write them: bf16 bits, rounded once, or fp32.
inline float load(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
inline float load(const float* p, int64_t i) { return p[i]; }
inline void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bf16(v); }
inline void store(float* p, int64_t i, float v) { p[i] = v; }

template <typename T>
inline void gelu_forward_loop(const T* x, T* out, int64_t n, bool tanh_approximation) {
  if (tanh_approximation) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store(out, i, gelu_tanh(load(x, i)));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store(out, i, gelu_erf(load(x, i)));
  }
}

template <typename T>
inline void gelu_backward_loop(const T* x, const T* g, T* dx, int64_t n, bool tanh_approximation) {
  if (tanh_approximation) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store(dx, i, load(g, i) * gelu_tanh_derivative(load(x, i)));
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store(dx, i, load(g, i) * gelu_erf_derivative(load(x, i)));
  }
}

// The loops for each element type, each compiled for several instruction sets.
DIFFUSE_VECTOR_CLONES
void gelu_forward(const uint16_t* x, uint16_t* out, int64_t n, bool tanh) { gelu_forward_loop(x, out, n, tanh); }
DIFFUSE_VECTOR_CLONES
void gelu_forward(const float* x, float* out, int64_t n, bool tanh) { gelu_forward_loop(x, out, n, tanh); }
DIFFUSE_VECTOR_CLONES
void gelu_backward(const uint16_t* x, const uint16_t* g, uint16_t* dx, int64_t n, bool tanh) {
  gelu_backward_loop(x, g, dx, n, tanh);
}
DIFFUSE_VECTOR_CLONES
void gelu_backward(const float* x, const float* g, float* dx, int64_t n, bool tanh) {
  gelu_backward_loop(x, g, dx, n, tanh);
}

// A bf16 tensor's elements as bits, an fp32 tensor's as floats.
template <typename T>
const T* elements(const torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>)
    return t.data_ptr<float>();
  else
    return bf16_bits(t);
}
template <typename T>
T* elements_mutable(torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>)
    return t.data_ptr<float>();
  else
    return bf16_bits_mutable(t);
}

constexpr int64_t kGrain = 32768;

template <typename T>
torch::Tensor gelu_forward_tensor(const torch::Tensor& x, bool tanh) {
  auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  const T* xp = elements<T>(x);
  T* op = elements_mutable<T>(out);
  at::parallel_for(0, x.numel(), kGrain,
                   [&](int64_t begin, int64_t end) { gelu_forward(xp + begin, op + begin, end - begin, tanh); });
  return out;
}

template <typename T>
torch::Tensor gelu_backward_tensor(const torch::Tensor& x, const torch::Tensor& g, bool tanh) {
  auto dx = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  const T* xp = elements<T>(x);
  const T* gp = elements<T>(g);
  T* dp = elements_mutable<T>(dx);
  at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
    gelu_backward(xp + begin, gp + begin, dp + begin, end - begin, tanh);
  });
  return dx;
}

// GELU of a contiguous bf16 or fp32 tensor, with autograd.
struct FusedGelu : torch::autograd::Function<FusedGelu> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, bool tanh) {
    auto x = input.contiguous();
    ctx->save_for_backward({x});
    ctx->saved_data["tanh"] = tanh;
    return x.scalar_type() == torch::kFloat32 ? gelu_forward_tensor<float>(x, tanh)
                                              : gelu_forward_tensor<uint16_t>(x, tanh);
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto x = ctx->get_saved_variables()[0];
    const bool tanh = ctx->saved_data["tanh"].toBool();
    if (x.scalar_type() == torch::kFloat32)
      return {gelu_backward_tensor<float>(x, grads[0].to(torch::kFloat32).contiguous(), tanh), torch::Tensor()};
    return {gelu_backward_tensor<uint16_t>(x, bf16_contiguous(grads[0]), tanh), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor gelu_bf16(const torch::Tensor& x, bool tanh_approximation) {
  if (x.scalar_type() != torch::kBFloat16 || !x.device().is_cpu())
    throw Error("gelu_bf16: expected a bf16 CPU tensor, got " + std::string(c10::toString(x.scalar_type())) + " on " +
                x.device().str());
  if (x.numel() == 0) return x.clone();
  return FusedGelu::apply(x, tanh_approximation);
}

torch::Tensor gelu(const torch::Tensor& x, bool tanh_approximation) {
  if (x.scalar_type() == torch::kBFloat16 && x.device().is_cpu() && x.numel() > 0)
    return gelu_bf16(x, tanh_approximation);
  if (x.scalar_type() == torch::kFloat32 && x.device().is_cpu() && x.numel() > 0)
    return FusedGelu::apply(x, tanh_approximation);
  return tanh_approximation ? torch::gelu(x, "tanh") : torch::gelu(x);
}

}  // namespace diffuse::nn
