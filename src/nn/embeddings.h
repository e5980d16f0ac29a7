#pragma once
// Timestep embeddings as in diffusers.models.embeddings: the sinusoidal
// get_timestep_embedding, Timesteps, TimestepEmbedding and GaussianFourierProjection.
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "nn/activations.h"
#include "nn/linear.h"

namespace diffuse::nn {

// Sinusoidal embedding of 1-D `timesteps` [N] (may be fractional) -> float32 [N, dim]:
//   freq_i = exp(-ln(max_period) * i / (dim/2 - downscale_freq_shift)),  i < dim/2
//   emb = [sin(scale * t * freq), cos(scale * t * freq)]   ([cos, sin] if flip_sin_to_cos)
// zero-padded by one column when `dim` is odd. Always computed in float32.
torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos = false,
                                     double downscale_freq_shift = 1.0, double scale = 1.0,
                                     double max_period = 10000.0);

// Parameter-free sinusoidal projection (diffusers `Timesteps`).
class TimestepsImpl : public torch::nn::Module {
 public:
  TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos, double downscale_freq_shift);
  torch::Tensor forward(const torch::Tensor& timesteps);
  int64_t num_channels() const { return num_channels_; }

 private:
  int64_t num_channels_;
  bool flip_sin_to_cos_;
  double downscale_freq_shift_;
};
TORCH_MODULE(Timesteps);

// linear_1 -> act -> linear_2 (diffusers `TimestepEmbedding`, without cond_proj/post_act).
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, const std::string& act_fn = "silu",
                        int64_t out_dim = -1);
  torch::Tensor forward(const torch::Tensor& sample);

  nn::Linear linear_1{nullptr}, linear_2{nullptr};

 private:
  Activation act_;
};
TORCH_MODULE(TimestepEmbedding);

// Random Fourier features of (log) noise levels: out = [sin(2 pi x w), cos(2 pi x w)]
// ([cos, sin] if flip_sin_to_cos), x = log(t) if `log`. `weight` [embedding_size] is a
// frozen parameter (requires_grad false) initialised N(0, scale^2). Output [N, 2*embedding_size].
class GaussianFourierProjectionImpl : public torch::nn::Module {
 public:
  GaussianFourierProjectionImpl(int64_t embedding_size = 256, double scale = 1.0, bool log = true,
                                bool flip_sin_to_cos = false);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;

 private:
  bool log_;
  bool flip_sin_to_cos_;
};
TORCH_MODULE(GaussianFourierProjection);

// Rows of a class embedding table for `labels`: int64 ids [B] look rows up; float weights
// [B, rows] mix them (weights @ table), so one-hot weights give the ids' rows exactly and a 50/50
// mix gives the mean of two rows (soft / interpolated classes). Throws diffuse::Error naming
// `who` for float labels of another shape.
torch::Tensor label_embedding(const torch::nn::Embedding& table, const torch::Tensor& labels, const std::string& who);

}  // namespace diffuse::nn
