#pragma once
// The denoising network of a class-conditional (or unconditional) diffusion pipeline: a
// UNet2DModel or a DiTTransformer2DModel behind one interface, so the trainer and the
// pipelines handle both. Holds the model by shared handle (copies share weights).
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "models/dit.h"
#include "models/unet2d.h"

namespace diffuse {

class DiffusionNet {
 public:
  DiffusionNet() = default;
  explicit DiffusionNet(UNet2DModel unet);
  explicit DiffusionNet(DiTTransformer2DModel dit);
  // A fresh (randomly initialised) network from a diffusers config: "_class_name" UNet2DModel,
  // DiTTransformer2DModel or DiT-style Transformer2DModel. Throws diffuse::Error otherwise.
  static DiffusionNet from_config(const nlohmann::json& config, const std::string& source = "config");

  bool defined() const { return unet_ || dit_; }
  bool is_dit() const { return static_cast<bool>(dit_); }
  // "UNet2DModel" or "DiTTransformer2DModel".
  std::string class_name() const;
  // The pipeline component this network is stored under: "unet" or "transformer".
  std::string component() const { return is_dit() ? "transformer" : "unet"; }

  // The model's prediction for x at discrete timesteps t (float [B]); class_labels int64 [B] or
  // undefined for unconditional UNets. Learned-variance outputs are dropped (the first
  // in_channels channels are returned).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& class_labels) const;

  torch::nn::Module& module() const;
  int64_t in_channels() const;
  int64_t sample_size() const;  // square side
  // Side lengths must be multiples of this (the DiT's patch size; a UNet's 2^(levels - 1)).
  int64_t size_multiple() const;
  // Rows of the class embedding (0: unconditional). A DiT always has num_embeds_ada_norm + 1
  // rows, the last being the null class it was trained to use for classifier-free guidance.
  int64_t class_embeddings() const;
  // The null class a DiT defines (num_embeds_ada_norm), -1 for UNets (the pipeline records its own).
  int64_t builtin_null_class() const;
  nlohmann::json config_json() const;
  int64_t num_parameters() const;
  // Same architecture, fresh weights (for EMA copies and trainers).
  DiffusionNet clone_architecture() const;

  void save(const std::string& dir) const;

  UNet2DModel unet() const { return unet_; }
  DiTTransformer2DModel dit() const { return dit_; }

 private:
  UNet2DModel unet_{nullptr};
  DiTTransformer2DModel dit_{nullptr};
};

// Loads a model folder (config.json + weights) of either architecture.
DiffusionNet load_diffusion_net(const std::string& dir);

}  // namespace diffuse
