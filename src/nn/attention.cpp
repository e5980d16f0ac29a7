#include "nn/attention.h"

#include <atomic>
#include <cmath>

#include "core/error.h"
#include "nn/attention_fp32.h"
#include "nn/attention_softmax.h"
#include "nn/autocast.h"
#include "nn/group_norm.h"

namespace diffuse::nn {

namespace {

torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale,
                     const torch::Tensor& mask, bool upcast_attention, bool upcast_softmax) {
  const auto dtype = q.scalar_type();
  auto qq = upcast_attention ? q.to(torch::kFloat32) : q;
  auto kk = upcast_attention ? k.to(torch::kFloat32) : k;
  // fp32 on the CPU without a mask: scores, softmax and values per (image, head), in one pass.
  if (!mask.defined() && !autocast_enabled(q.device())) {
    auto o = fused_attention_fp32(qq, kk, v, scale);
    if (o.defined()) return o;
  }
  auto scores = torch::matmul(qq, kk.transpose(-1, -2));
  // A softmax in fp32 of bf16 scores on the CPU (upcast, or under autocast): the fused kernel.
  if (scores.scalar_type() == torch::kBFloat16 && scores.device().is_cpu() && !mask.defined() &&
      (upcast_softmax || autocast_enabled(scores.device())))
    return torch::matmul(scaled_softmax_bf16(scores, scale), v);
  if (scale != 1.0) scores = scores * scale;
  if (mask.defined()) scores = scores + mask;
  if (upcast_softmax) scores = scores.to(torch::kFloat32);
  auto probs = scores.softmax(-1);
  if (probs.scalar_type() != dtype) probs = probs.to(dtype);
  return torch::matmul(probs, v);
}

std::atomic<int64_t>& budget() {
  static std::atomic<int64_t> b{int64_t{128} << 20};
  return b;
}

}  // namespace

int64_t attention_memory_budget() { return budget(); }
void set_attention_memory_budget(int64_t bytes) { budget() = bytes; }

int64_t resolve_query_chunk(int64_t query_chunk, const torch::Tensor& q, int64_t nk) {
  const int64_t nq = q.size(-2);
  if (query_chunk > 0) return query_chunk < nq ? query_chunk : 0;
  if (query_chunk < 0 || nq == 0 || nk == 0) return 0;
  const int64_t rows = q.numel() / std::max<int64_t>(1, q.size(-1)) / nq;  // batch x heads
  const int64_t bytes_per_query = rows * nk * static_cast<int64_t>(std::max<size_t>(4, q.element_size()));
  const int64_t fit = std::max<int64_t>(1, budget() / std::max<int64_t>(1, bytes_per_query));
  return fit >= nq ? 0 : fit;
}

torch::Tensor dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                    double scale, const torch::Tensor& mask, int64_t query_chunk, bool upcast_attention,
                                    bool upcast_softmax) {
  const int64_t nq = q.size(-2);
  query_chunk = resolve_query_chunk(query_chunk, q, k.size(-2));
  if (query_chunk <= 0) return attend(q, k, v, scale, mask, upcast_attention, upcast_softmax);
  const bool mask_per_query = mask.defined() && mask.dim() >= 2 && mask.size(-2) == nq && nq > 1;
  std::vector<torch::Tensor> parts;
  for (int64_t s = 0; s < nq; s += query_chunk) {
    const int64_t e = std::min(nq, s + query_chunk);
    auto m = mask_per_query ? mask.slice(-2, s, e) : mask;
    parts.push_back(attend(q.slice(-2, s, e), k, v, scale, m, upcast_attention, upcast_softmax));
  }
  return torch::cat(parts, -2);
}

AttentionImpl::AttentionImpl(const AttentionOptions& o) : opt_(o) {
  inner_dim_ = o.out_dim ? *o.out_dim : o.dim_head * o.heads;
  heads_ = o.out_dim ? *o.out_dim / o.dim_head : o.heads;
  if (heads_ <= 0 || o.dim_head <= 0)
    throw Error("Attention: heads (" + std::to_string(heads_) + ") and dim_head (" + std::to_string(o.dim_head) +
                ") must be positive");
  scale_ = o.scale_qk ? 1.0 / std::sqrt(static_cast<double>(o.dim_head)) : 1.0;
  const int64_t kv_dim = o.cross_attention_dim ? *o.cross_attention_dim : o.query_dim;
  const int64_t out_dim = o.out_dim ? *o.out_dim : o.query_dim;
  if (o.norm_num_groups) {
    if (*o.norm_num_groups <= 0 || o.query_dim % *o.norm_num_groups != 0)
      throw Error("Attention: query_dim " + std::to_string(o.query_dim) + " is not divisible by norm_num_groups " +
                  std::to_string(*o.norm_num_groups));
    group_norm = register_module(
        "group_norm", torch::nn::GroupNorm(torch::nn::GroupNormOptions(*o.norm_num_groups, o.query_dim).eps(o.eps)));
  }
  to_q = register_module("to_q", nn::Linear(torch::nn::LinearOptions(o.query_dim, inner_dim_).bias(o.bias)));
  to_k = register_module("to_k", nn::Linear(torch::nn::LinearOptions(kv_dim, inner_dim_).bias(o.bias)));
  to_v = register_module("to_v", nn::Linear(torch::nn::LinearOptions(kv_dim, inner_dim_).bias(o.bias)));
  to_out_linear = nn::Linear(torch::nn::LinearOptions(inner_dim_, out_dim).bias(o.out_bias));
  to_out_dropout = torch::nn::Dropout(o.dropout);
  to_out = register_module("to_out", torch::nn::ModuleList(to_out_linear, to_out_dropout));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& hidden_states, const torch::Tensor& encoder_hidden_states,
                                     const torch::Tensor& attention_mask) {
  const auto residual = hidden_states;
  const bool spatial = hidden_states.dim() == 4;
  int64_t B = hidden_states.size(0), C = 0, H = 0, W = 0;
  torch::Tensor x = hidden_states;
  if (spatial) {
    C = x.size(1), H = x.size(2), W = x.size(3);
    x = x.reshape({B, C, H * W}).transpose(1, 2);
  } else if (x.dim() != 3) {
    throw Error("Attention: expected [B, N, C] or [B, C, H, W] input, got " + std::to_string(x.dim()) + " dims");
  }
  if (group_norm) x = group_norm_act(*group_norm, x.transpose(1, 2), std::nullopt).transpose(1, 2);

  const auto& ctx = encoder_hidden_states.defined() ? encoder_hidden_states : x;
  const int64_t n = x.size(1), m = ctx.size(1);
  const int64_t d = inner_dim_ / heads_;
  auto q = to_q(x).view({B, n, heads_, d}).transpose(1, 2);
  auto k = to_k(ctx).view({B, m, heads_, d}).transpose(1, 2);
  auto v = to_v(ctx).view({B, m, heads_, d}).transpose(1, 2);

  torch::Tensor mask = attention_mask;
  if (mask.defined() && mask.dim() == 2) mask = mask.view({mask.size(0), 1, 1, mask.size(1)});  // [B, M]
  if (mask.defined() && mask.dim() == 3) mask = mask.unsqueeze(1);  // [B, N|1, M] -> [B, 1, N|1, M]

  auto o = dot_product_attention(q, k, v, scale_, mask, query_chunk_, opt_.upcast_attention, opt_.upcast_softmax);
  o = o.transpose(1, 2).reshape({B, n, inner_dim_});
  o = to_out_dropout(to_out_linear(o));

  // [B, n, C] -> [B, C, H, W] is a view with channels-last strides. The residual goes first in
  // the sum so that the result takes the residual's layout (the network's): an NCHW network would
  // otherwise continue in channels-last, and every later convolution and norm copy its input.
  if (spatial) o = o.transpose(-1, -2).reshape({B, C, H, W});
  if (opt_.residual_connection)
    o = residual + o;
  else if (spatial)
    o = o.contiguous();
  if (opt_.rescale_output_factor != 1.0) o = o / opt_.rescale_output_factor;
  return o;
}

void set_attention_query_chunk_size(torch::nn::Module& m, int64_t n) {
  for (auto& sub : m.modules(/*include_self=*/true))
    if (auto* a = dynamic_cast<AttentionImpl*>(sub.get())) a->set_query_chunk_size(n);
}

}  // namespace diffuse::nn
