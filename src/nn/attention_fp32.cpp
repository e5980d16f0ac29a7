#include "nn/attention_fp32.h"

#if DIFFUSE_HAVE_DNNL
#include <ATen/Parallel.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <vector>

#include "nn/attention.h"
#include "nn/vector_math.h"
#endif

namespace diffuse::nn {

#if !DIFFUSE_HAVE_DNNL

torch::Tensor fused_attention_fp32(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, double) {
  return {};
}

#else

namespace {

// Row-major C = alpha * op(A) op(B) + beta * C on the calling thread (oneDNN runs its sgemm on one
// thread inside a parallel region).
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
          int64_t ldb, float beta, float* c, int64_t ldc) {
  dnnl_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// p = softmax(s) of one row, in place.
DIFFUSE_VECTOR_CLONES
void softmax_row(float* p, int64_t n) {
  float max = -3.4e38f;
#pragma omp simd reduction(max : max)
  for (int64_t i = 0; i < n; ++i) max = p[i] > max ? p[i] : max;
  softmax_from_max(p, n, max);
}

// dp <- p * (dp - sum(dp * p)): the softmax's gradient of one row, in place.
DIFFUSE_VECTOR_CLONES
void softmax_gradient_row(const float* p, float* dp, int64_t n) {
  float dot = 0.f;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += dp[i] * p[i];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dp[i] = p[i] * (dp[i] - dot);
}

// One (image, head) matrix of a [B, H, rows, D] tensor: its first element and row stride.
struct Heads {
  const float* base;
  int64_t sb, sh, ld, heads;
  explicit Heads(const torch::Tensor& t)
      : base(t.data_ptr<float>()), sb(t.stride(0)), sh(t.stride(1)), ld(t.stride(2)), heads(t.size(1)) {}
  const float* at(int64_t i) const { return base + (i / heads) * sb + (i % heads) * sh; }
  float* at(int64_t i) { return const_cast<float*>(base) + (i / heads) * sb + (i % heads) * sh; }
};

// [B, H, N, D] with each row of D contiguous, as the kernels read it.
torch::Tensor rows_contiguous(const torch::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// A [B, H, N, D] tensor lying in memory as [B, N, H, D].
torch::Tensor heads_interleaved(int64_t b, int64_t h, int64_t n, int64_t d) {
  return torch::empty({b, n, h, d}, torch::kFloat32).transpose(1, 2);
}

// Query rows are taken in blocks whose scores stay within about 256 KiB (a core's L2 share).
int64_t row_block(int64_t n, int64_t m) { return std::min<int64_t>(n, std::max<int64_t>(16, (int64_t{1} << 16) / m)); }

// probs (rows x M) = softmax(q_i[r0 : r0 + rows] k_i^T * scale).
void probabilities(const Heads& q, const Heads& k, float* probs, int64_t i, int64_t r0, int64_t rows, int64_t m,
                   int64_t d, float scale) {
  gemm('N', 'T', rows, m, d, scale, q.at(i) + r0 * q.ld, q.ld, k.at(i), k.ld, 0.f, probs, m);
  for (int64_t r = 0; r < rows; ++r) softmax_row(probs + r * m, m);
}

// The attention's result, and its probabilities [B*H, N, M] if `keep`.
std::pair<torch::Tensor, torch::Tensor> attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                               double scale, bool keep) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3), M = k.size(2), Dv = v.size(3);
  auto out = heads_interleaved(B, H, N, Dv);
  torch::Tensor probs = keep ? torch::empty({B * H, N, M}, torch::kFloat32) : torch::Tensor();
  const Heads hq(q), hk(k), hv(v);
  Heads ho(out);
  float* kept = keep ? probs.data_ptr<float>() : nullptr;
  const int64_t rb = row_block(N, M);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(keep ? 0 : rb * M);
    for (int64_t i = begin; i < end; ++i)
      for (int64_t r0 = 0; r0 < N; r0 += rb) {
        const int64_t rows = std::min(rb, N - r0);
        float* p = keep ? kept + (i * N + r0) * M : scratch.data();
        probabilities(hq, hk, p, i, r0, rows, M, D, static_cast<float>(scale));
        gemm('N', 'N', rows, Dv, M, 1.f, p, M, hv.at(i), hv.ld, 0.f, ho.at(i) + r0 * ho.ld, ho.ld);
      }
  });
  return {out, probs};
}

class FusedAttention : public torch::autograd::Function<FusedAttention> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q_in,
                               const torch::Tensor& k_in, const torch::Tensor& v_in, double scale) {
    const auto q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
    const bool keep = q.size(0) * q.size(1) * q.size(2) * k.size(2) * 4 <= attention_memory_budget() / 4;
    auto [out, probs] = attend(q, k, v, scale, keep);
    ctx->save_for_backward({q, k, v, probs});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &q = saved[0], &k = saved[1], &v = saved[2], &probs = saved[3];
    const float scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const auto g = rows_contiguous(grads[0]);
    const int64_t B = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3), M = k.size(2), Dv = v.size(3);
    auto dq = heads_interleaved(B, H, N, D), dk = heads_interleaved(B, H, M, D), dv = heads_interleaved(B, H, M, Dv);
    const Heads hq(q), hk(k), hv(v), hg(g);
    Heads hdq(dq), hdk(dk), hdv(dv);
    const float* kept = probs.defined() ? probs.data_ptr<float>() : nullptr;
    // Per block of query rows: dv += p^T g, ds = softmax'(g v^T), dq = ds k * scale, dk += ds^T q * scale.
    const int64_t rb = row_block(N, M);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> recomputed(kept ? 0 : rb * M), dp(rb * M);
      for (int64_t i = begin; i < end; ++i)
        for (int64_t r0 = 0; r0 < N; r0 += rb) {
          const int64_t rows = std::min(rb, N - r0);
          const float beta = r0 == 0 ? 0.f : 1.f;
          const float* p = kept ? kept + (i * N + r0) * M : recomputed.data();
          if (!kept) probabilities(hq, hk, recomputed.data(), i, r0, rows, M, D, scale);
          const float* gi = hg.at(i) + r0 * hg.ld;
          gemm('T', 'N', M, Dv, rows, 1.f, p, M, gi, hg.ld, beta, hdv.at(i), hdv.ld);
          gemm('N', 'T', rows, M, Dv, 1.f, gi, hg.ld, hv.at(i), hv.ld, 0.f, dp.data(), M);
          for (int64_t r = 0; r < rows; ++r) softmax_gradient_row(p + r * M, dp.data() + r * M, M);
          gemm('N', 'N', rows, D, M, scale, dp.data(), M, hk.at(i), hk.ld, 0.f, hdq.at(i) + r0 * hdq.ld, hdq.ld);
          gemm('T', 'N', M, D, rows, scale, dp.data(), M, hq.at(i) + r0 * hq.ld, hq.ld, beta, hdk.at(i), hdk.ld);
        }
    });
    return {dq, dk, dv, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor fused_attention_fp32(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   double scale) {
  for (const auto* t : {&q, &k, &v})
    if (t->dim() != 4 || t->scalar_type() != torch::kFloat32 || !t->device().is_cpu()) return {};
  if (k.size(0) != q.size(0) || v.size(0) != q.size(0) || k.size(1) != q.size(1) || v.size(1) != q.size(1) ||
      k.size(3) != q.size(3) || v.size(2) != k.size(2) || q.numel() == 0 || k.numel() == 0 || v.numel() == 0)
    return {};
  if (torch::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad()))
    return FusedAttention::apply(q, k, v, scale);
  return attend(rows_contiguous(q), rows_contiguous(k), rows_contiguous(v), scale, false).first;
}

#endif

}  // namespace diffuse::nn
