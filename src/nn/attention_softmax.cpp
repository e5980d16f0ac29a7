// Compiled with OpenMP, outside the unity build (src/nn/CMakeLists.txt), as group_norm.cpp.
#include "nn/attention_softmax.h"

#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "nn/attention.h"
#include "nn/bf16_tensor.h"
#include "nn/vector_math.h"

namespace diffuse::nn {

namespace {

// Probabilities of one row in fp32 (p), from the bf16 scores, as the forward pass computes them.
DIFFUSE_VECTOR_CLONES
void row_probabilities(const uint16_t* s, float* p, int64_t n, float scale) {
  float max = -3.4e38f;
#pragma omp simd reduction(max : max)
  for (int64_t i = 0; i < n; ++i) {
    const float v = bf16_to_float(float_to_bf16(bf16_to_float(s[i]) * scale));  // the scaled bf16 scores
    p[i] = v;
    max = v > max ? v : max;
  }
  softmax_from_max(p, n, max);
}

DIFFUSE_VECTOR_CLONES
void row_to_bf16(const float* p, uint16_t* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(p[i]);
}

// d scores = bf16(bf16(p * (g - sum(g * p))) * scale): softmax's gradient, cast to bf16, through
// the scaling.
DIFFUSE_VECTOR_CLONES
void row_gradient(const float* p, const uint16_t* g, uint16_t* ds, int64_t n, float scale) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += bf16_to_float(g[i]) * p[i];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float d = bf16_to_float(float_to_bf16(p[i] * (bf16_to_float(g[i]) - dot)));
    ds[i] = float_to_bf16(d * scale);
  }
}

// A bf16 tensor times a scalar multiplies by the scalar rounded to bf16 (ATen's CPU kernels).
float bf16_scale(double scale) { return bf16_to_float(float_to_bf16(float(scale))); }

// Rows of the last dimension, a few at a time per task.
template <typename F>
void for_rows(const torch::Tensor& t, const F& f) {
  const int64_t n = t.size(-1), rows = t.numel() / n;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, n));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> p(static_cast<size_t>(n));
    for (int64_t r = begin; r < end; ++r) f(r * n, n, p.data());
  });
}

struct ScaledSoftmax : torch::autograd::Function<ScaledSoftmax> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input, double scale) {
    auto s = input.contiguous();
    auto out = torch::empty_like(s, torch::MemoryFormat::Contiguous);
    const uint16_t* sp = bf16_bits(s);
    uint16_t* op = bf16_bits_mutable(out);
    const float sc = bf16_scale(scale);
    // The fp32 probabilities, kept for the backward pass when they are small enough.
    const bool keep = s.numel() * int64_t{4} <= attention_memory_budget() / 4;
    auto probs = keep ? torch::empty(s.sizes(), s.options().dtype(torch::kFloat32)) : torch::Tensor();
    float* pp = keep ? probs.data_ptr<float>() : nullptr;
    for_rows(s, [&](int64_t at, int64_t n, float* p) {
      float* row = pp ? pp + at : p;
      row_probabilities(sp + at, row, n, sc);
      row_to_bf16(row, op + at, n);
    });
    ctx->save_for_backward({keep ? probs : s});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables()[0];
    const float sc = bf16_scale(ctx->saved_data["scale"].toDouble());
    auto g = bf16_contiguous(grads[0]);
    auto ds = torch::empty(saved.sizes(), saved.options().dtype(torch::kBFloat16));
    const uint16_t* gp = bf16_bits(g);
    uint16_t* dp = bf16_bits_mutable(ds);
    if (saved.scalar_type() == torch::kFloat32) {
      const float* pp = saved.data_ptr<float>();
      for_rows(saved, [&](int64_t at, int64_t n, float*) { row_gradient(pp + at, gp + at, dp + at, n, sc); });
    } else {  // recomputed from the scores, as the forward pass computed them
      const uint16_t* sp = bf16_bits(saved);
      for_rows(saved, [&](int64_t at, int64_t n, float* p) {
        row_probabilities(sp + at, p, n, sc);
        row_gradient(p, gp + at, dp + at, n, sc);
      });
    }
    return {ds, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor scaled_softmax_bf16(const torch::Tensor& scores, double scale) {
  if (scores.scalar_type() != torch::kBFloat16 || !scores.device().is_cpu())
    throw Error("scaled_softmax_bf16: expected bf16 scores on the CPU, got " +
                std::string(c10::toString(scores.scalar_type())) + " on " + scores.device().str());
  if (scores.dim() == 0 || scores.numel() == 0) return scores.softmax(-1);
  return ScaledSoftmax::apply(scores, scale);
}

}  // namespace diffuse::nn
