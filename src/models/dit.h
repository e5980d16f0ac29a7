#pragma once
// diffusers DiTTransformer2DModel (Peebles & Xie, "Scalable Diffusion Models with Transformers"),
// also loadable from the legacy Transformer2DModel config DiT checkpoints ship with
// (facebook/DiT-XL-2-256): PatchEmbed (pos_embed.proj + fixed 2-D sin-cos positions),
// transformer_blocks.N (AdaLayerNormZero, self-attention, GELU-tanh feed-forward, gated
// residuals), norm_out / proj_out_1 / proj_out_2 and unpatchify.
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/attention.h"
#include "nn/embeddings.h"
#include "nn/linear.h"

namespace diffuse {

struct DiTConfig {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 72;
  int64_t in_channels = 4;
  std::optional<int64_t> out_channels;  // null: in_channels
  int64_t num_layers = 28;
  double dropout = 0.0;
  int64_t norm_num_groups = 32;
  bool attention_bias = true;
  int64_t sample_size = 32;
  int64_t patch_size = 2;
  std::string activation_fn = "gelu-approximate";
  int64_t num_embeds_ada_norm = 1000;
  bool upcast_attention = false;
  std::string norm_type = "ada_norm_zero";
  bool norm_elementwise_affine = false;
  double norm_eps = 1e-5;
  // Transformer2DModel's key (null: max(sample_size / 64, 1)); DiTTransformer2DModel uses 1.
  std::optional<double> interpolation_scale;

  // Accepts "_class_name" DiTTransformer2DModel or Transformer2DModel (the latter only in its
  // patched, ada_norm_zero, class-conditional form); other classes / variants throw diffuse::Error.
  static DiTConfig from_json(const nlohmann::json& j);
  // DiTTransformer2DModel config.json content.
  nlohmann::json to_json() const;
  void validate() const;

  int64_t inner_dim() const { return num_attention_heads * attention_head_dim; }
  int64_t output_channels() const { return out_channels ? *out_channels : in_channels; }
  double pos_interpolation_scale() const {
    return interpolation_scale ? *interpolation_scale : std::max<double>(static_cast<double>(sample_size / 64), 1.0);
  }
};

// diffusers get_2d_sincos_pos_embed for a grid of `grid_h` x `grid_w` patches:
// [grid_h * grid_w, embed_dim] float32, row-major token order.
torch::Tensor get_2d_sincos_pos_embed(int64_t embed_dim, int64_t grid_h, int64_t grid_w, double base_size,
                                      double interpolation_scale = 1.0);

namespace nn {

// diffusers PatchEmbed (layer_norm off, flatten on, sincos positions): `proj` conv with
// kernel = stride = patch_size; positions recomputed for the input's grid.
class PatchEmbedImpl : public torch::nn::Module {
 public:
  PatchEmbedImpl(int64_t sample_size, int64_t patch_size, int64_t in_channels, int64_t embed_dim,
                 double interpolation_scale);
  torch::Tensor forward(const torch::Tensor& x);  // [B, C, H, W] -> [B, H/p * W/p, D]

  torch::nn::Conv2d proj{nullptr};

 private:
  int64_t patch_size_, embed_dim_;
  double base_size_, interpolation_scale_;
};
TORCH_MODULE(PatchEmbed);

// CombinedTimestepLabelEmbeddings: timestep_embedder(Timesteps(256, flip, shift 1)) +
// class_embedder.embedding_table (num_classes + 1 rows; the last is the CFG null class).
class CombinedTimestepLabelEmbeddingsImpl : public torch::nn::Module {
 public:
  CombinedTimestepLabelEmbeddingsImpl(int64_t num_classes, int64_t embedding_dim);
  torch::Tensor forward(const torch::Tensor& timestep, const torch::Tensor& class_labels, torch::Dtype dtype);

  Timesteps time_proj{nullptr};
  TimestepEmbedding timestep_embedder{nullptr};
  std::shared_ptr<torch::nn::Module> class_embedder;  // holds embedding_table
  torch::nn::Embedding embedding_table{nullptr};
};
TORCH_MODULE(CombinedTimestepLabelEmbeddings);

// AdaLayerNormZero: emb, linear (dim -> 6 dim), LayerNorm without affine (eps 1e-6).
class AdaLayerNormZeroImpl : public torch::nn::Module {
 public:
  AdaLayerNormZeroImpl(int64_t dim, int64_t num_embeddings);
  // Returns {normed x, gate_msa, shift_mlp, scale_mlp, gate_mlp}.
  std::vector<torch::Tensor> forward(const torch::Tensor& x, const torch::Tensor& timestep,
                                     const torch::Tensor& class_labels);

  CombinedTimestepLabelEmbeddings emb{nullptr};
  nn::Linear linear{nullptr};
};
TORCH_MODULE(AdaLayerNormZero);

// BasicTransformerBlock with norm_type ada_norm_zero and no cross-attention.
class DiTBlockImpl : public torch::nn::Module {
 public:
  explicit DiTBlockImpl(const DiTConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& timestep, const torch::Tensor& class_labels);

  AdaLayerNormZero norm1{nullptr};
  Attention attn1{nullptr};
  torch::nn::LayerNorm norm3{nullptr};    // no parameters unless norm_elementwise_affine
  std::shared_ptr<torch::nn::Module> ff;  // ff.net.0.proj, ff.net.2
  nn::Linear ff_proj{nullptr}, ff_out{nullptr};

 private:
  bool gelu_tanh_;
};
TORCH_MODULE(DiTBlock);

}  // namespace nn

class DiTTransformer2DModelImpl : public torch::nn::Module {
 public:
  explicit DiTTransformer2DModelImpl(const DiTConfig& config);

  // sample [B, in_channels, H, W] (H, W divisible by patch_size); timestep scalar / [1] / [B];
  // class_labels [B] int64 in [0, num_embeds_ada_norm] (num_embeds_ada_norm = unconditional), or
  // float [B, num_embeds_ada_norm + 1]: weights over the label embeddings (soft classes).
  // Returns [B, out_channels, H, W] (learned sigma: first in_channels channels are the noise).
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep, const torch::Tensor& class_labels);

  const DiTConfig& config() const { return config_; }
  torch::Dtype dtype() const;
  torch::Device device() const;
  void set_attention_chunk_size(int64_t n);

  nn::PatchEmbed pos_embed{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};
  std::vector<nn::DiTBlock> blocks;
  torch::nn::LayerNorm norm_out{nullptr};
  nn::Linear proj_out_1{nullptr}, proj_out_2{nullptr};

 private:
  DiTConfig config_;
};
TORCH_MODULE(DiTTransformer2DModel);

// Loads a diffusers folder whose config is DiTTransformer2DModel or (DiT-style) Transformer2DModel;
// strict weights. float32, CPU, eval mode.
DiTTransformer2DModel load_dit(const std::string& dir);
void save_dit(const DiTTransformer2DModel& model, const std::string& dir);

}  // namespace diffuse
