#pragma once
// diffusers UNet2DModel (unconditional / class-conditional image UNet, as in DDPM), with
// diffusers' config keys, state-dict names and folder layout
// (config.json + diffusion_pytorch_model.safetensors).
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/conv2d.h"
#include "nn/embeddings.h"
#include "nn/unet_2d_blocks.h"

namespace diffuse {

// Every UNet2DModel config key, with diffusers 0.28.2 defaults. Optional fields are JSON null.
struct UNet2DConfig {
  std::vector<int64_t> sample_size;  // {} = null, {s} = int, {h, w} = [h, w]
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  bool center_input_sample = false;
  std::string time_embedding_type = "positional";  // positional | fourier | learned
  double freq_shift = 0;
  bool flip_sin_to_cos = true;
  std::vector<std::string> down_block_types = {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"};
  std::vector<std::string> up_block_types = {"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  std::vector<int64_t> block_out_channels = {224, 448, 672, 896};
  int64_t layers_per_block = 2;
  double mid_block_scale_factor = 1;
  int64_t downsample_padding = 1;
  std::string downsample_type = "conv";  // conv | resnet
  std::string upsample_type = "conv";    // conv | resnet
  double dropout = 0.0;
  std::string act_fn = "silu";
  std::optional<int64_t> attention_head_dim = 8;  // null: one head per block (head dim = channels)
  int64_t norm_num_groups = 32;
  std::optional<int64_t> attn_norm_num_groups;
  double norm_eps = 1e-5;
  std::string resnet_time_scale_shift = "default";  // default | scale_shift
  bool add_attention = true;
  std::optional<std::string> class_embed_type;  // null | "timestep" | "identity"
  std::optional<int64_t> num_class_embeds;
  std::optional<int64_t> num_train_timesteps;  // required by time_embedding_type "learned"

  // Reads a diffusers config. Missing keys keep their defaults, unknown keys are ignored,
  // a key with the wrong JSON type throws diffuse::Error naming the key; a "_class_name"
  // other than UNet2DModel is rejected.
  static UNet2DConfig from_json(const nlohmann::json& j);
  // diffusers-compatible config.json content (sorted keys, "_class_name": "UNet2DModel",
  // "_diffusers_version": "0.28.2").
  nlohmann::json to_json() const;
  // Throws diffuse::Error on inconsistent settings (list lengths, unknown names, groups...).
  void validate() const;

  int64_t time_embed_dim() const { return block_out_channels.empty() ? 0 : block_out_channels[0] * 4; }
  bool operator==(const UNet2DConfig& o) const { return to_json() == o.to_json(); }
  bool operator!=(const UNet2DConfig& o) const { return !(*this == o); }
};

class UNet2DModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DModelImpl(const UNet2DConfig& config);

  // sample [B, in_channels, H, W]; timestep: a scalar or [1] or [B] tensor (float or integer);
  // class_labels [B] (int64 ids, or features for class_embed_type "identity"/"timestep"),
  // required iff the model has a class embedding. With a class embedding table (num_class_embeds),
  // float class_labels [B, num_class_embeds] are weights over its rows (weights @ table): one-hot
  // rows give the integer labels' embeddings, mixes interpolate between classes. Returns [B, out_channels, H, W] in the
  // model's dtype. H and W must be divisible by 2^(number of blocks - 1).
  torch::Tensor forward(torch::Tensor sample, torch::Tensor timestep, torch::Tensor class_labels = {});

  // The conditioning vector the resnets receive: time_embedding(time_proj(t)) (+ class embedding),
  // with `timestep` broadcast to `batch`.
  torch::Tensor embed(const torch::Tensor& timestep, int64_t batch, const torch::Tensor& class_labels = {});
  // time_proj features of `timestep` broadcast to `batch` (float32, before time_embedding).
  torch::Tensor time_features(const torch::Tensor& timestep, int64_t batch);

  const UNet2DConfig& config() const { return config_; }
  torch::Dtype dtype() const;
  torch::Device device() const;
  // Query tokens per attention chunk in every attention layer (0 = unchunked).
  void set_attention_chunk_size(int64_t n);

  // Submodules under diffusers' names (null where the config has none).
  nn::Conv2d conv_in{nullptr};
  nn::Timesteps time_proj_positional{nullptr};               // "time_proj" (positional)
  nn::GaussianFourierProjection time_proj_fourier{nullptr};  // "time_proj" (fourier)
  torch::nn::Embedding time_proj_learned{nullptr};           // "time_proj" (learned)
  nn::TimestepEmbedding time_embedding{nullptr};
  torch::nn::Embedding class_embedding_table{nullptr};      // "class_embedding" (num_class_embeds)
  nn::TimestepEmbedding class_embedding_timestep{nullptr};  // "class_embedding" (class_embed_type timestep)
  torch::nn::ModuleList down_blocks{nullptr}, up_blocks{nullptr};
  std::vector<nn::UNetDownBlock2D> down;
  nn::UNetMidBlock2D mid_block{nullptr};
  std::vector<nn::UNetUpBlock2D> up;
  torch::nn::GroupNorm conv_norm_out{nullptr};
  nn::Conv2d conv_out{nullptr};

 private:
  torch::Tensor broadcast_timesteps(const torch::Tensor& timestep, int64_t batch) const;
  UNet2DConfig config_;
};
TORCH_MODULE(UNet2DModel);

// Loads a diffusers UNet2DModel folder: config.json + diffusion_pytorch_model.safetensors
// (or a sharded diffusion_pytorch_model.safetensors.index.json). Weights are checked
// strictly (missing / unexpected / shape-mismatched keys are all listed in one
// diffuse::Error); legacy attention names (query/key/value/proj_attn) are converted.
// The model is float32 on the CPU, in eval mode; use ->to(device, dtype) afterwards.
UNet2DModel load_unet2d(const std::string& dir);

// Writes config.json and diffusion_pytorch_model.safetensors (metadata {"format": "pt"},
// the model's dtype) into `dir` (created if needed), each file atomically.
void save_unet2d(const UNet2DModel& model, const std::string& dir);

}  // namespace diffuse
