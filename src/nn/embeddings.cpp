#include "nn/embeddings.h"

#include <cmath>

#include "core/error.h"

namespace diffuse::nn {

torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                     double downscale_freq_shift, double scale, double max_period) {
  if (timesteps.dim() != 1) throw Error("get_timestep_embedding: timesteps must be a 1-D tensor");
  const int64_t half = dim / 2;
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(timesteps.device());
  auto exponent = torch::arange(0, half, opts) * static_cast<float>(-std::log(max_period));
  exponent = exponent / static_cast<float>(static_cast<double>(half) - downscale_freq_shift);
  auto freqs = torch::exp(exponent);
  auto emb = timesteps.unsqueeze(1).to(torch::kFloat32) * freqs.unsqueeze(0);
  emb = emb * static_cast<float>(scale);
  emb = torch::cat({torch::sin(emb), torch::cos(emb)}, -1);
  if (flip_sin_to_cos) emb = torch::cat({emb.slice(1, half), emb.slice(1, 0, half)}, -1);
  if (dim % 2 == 1) emb = torch::constant_pad_nd(emb, {0, 1, 0, 0}, 0);
  return emb;
}

TimestepsImpl::TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos, double downscale_freq_shift)
    : num_channels_(num_channels), flip_sin_to_cos_(flip_sin_to_cos), downscale_freq_shift_(downscale_freq_shift) {}

torch::Tensor TimestepsImpl::forward(const torch::Tensor& timesteps) {
  return get_timestep_embedding(timesteps, num_channels_, flip_sin_to_cos_, downscale_freq_shift_);
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, const std::string& act_fn,
                                             int64_t out_dim)
    : act_(parse_activation(act_fn)) {
  linear_1 = register_module("linear_1", nn::Linear(in_channels, time_embed_dim));
  linear_2 = register_module("linear_2", nn::Linear(time_embed_dim, out_dim > 0 ? out_dim : time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample) {
  return linear_2(activate(act_, linear_1(sample)));
}

GaussianFourierProjectionImpl::GaussianFourierProjectionImpl(int64_t embedding_size, double scale, bool log,
                                                             bool flip_sin_to_cos)
    : log_(log), flip_sin_to_cos_(flip_sin_to_cos) {
  weight = register_parameter("weight", torch::randn({embedding_size}) * scale, /*requires_grad=*/false);
}

torch::Tensor GaussianFourierProjectionImpl::forward(const torch::Tensor& x) {
  auto t = log_ ? torch::log(x) : x;
  auto proj = t.unsqueeze(1) * weight.unsqueeze(0) * 2 * M_PI;
  return flip_sin_to_cos_ ? torch::cat({torch::cos(proj), torch::sin(proj)}, -1)
                          : torch::cat({torch::sin(proj), torch::cos(proj)}, -1);
}

torch::Tensor label_embedding(const torch::nn::Embedding& table, const torch::Tensor& labels, const std::string& who) {
  const auto& w = table->weight;
  if (!labels.is_floating_point()) return torch::embedding(w, labels.to(w.device(), torch::kLong));
  if (labels.dim() != 2 || labels.size(1) != w.size(0))
    throw Error(who + ": float class_labels are weights over the " + std::to_string(w.size(0)) +
                " class embeddings and must be [B, " + std::to_string(w.size(0)) + "], got " +
                c10::str(labels.sizes()));
  // One-hot rows select exactly: 1 * row + 0 * others, in the table's dtype also under autocast
  // (bf16 sampling), so that a one-hot row is the integer label's embedding.
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return torch::matmul(labels.to(w.device(), w.scalar_type()), w);
}

}  // namespace diffuse::nn
