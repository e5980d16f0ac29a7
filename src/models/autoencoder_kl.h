#pragma once
// diffusers AutoencoderKL (the Stable Diffusion VAE): Encoder (conv_in, DownEncoderBlock2D x N,
// UNetMidBlock2D without time embedding, conv_norm_out, conv_out) -> quant_conv -> diagonal
// Gaussian (mean, logvar); post_quant_conv -> Decoder (conv_in, mid_block, UpDecoderBlock2D x N,
// conv_norm_out, conv_out). Same config keys, state-dict names and folder layout as diffusers.
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/conv2d.h"
#include "nn/resnet.h"
#include "nn/sampling.h"
#include "nn/unet_2d_blocks.h"

namespace diffuse {

// AutoencoderKL config keys with diffusers defaults. Optional fields are JSON null.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;
  std::optional<std::vector<double>> latents_mean, latents_std;
  bool force_upcast = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // Missing keys keep defaults; unknown keys are ignored; wrong types throw diffuse::Error;
  // a "_class_name" other than AutoencoderKL is rejected.
  static AutoencoderKLConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
  void validate() const;
  // Spatial downsampling factor 2^(len(block_out_channels) - 1).
  int64_t downsample_factor() const { return int64_t{1} << (block_out_channels.size() - 1); }
};

namespace nn {

// diffusers UpDecoderBlock2D: resnets.N (no time embedding), optional upsamplers.0.conv.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers, bool add_upsample, int64_t groups,
                       const std::string& act_fn, double eps = 1e-6);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::ModuleList resnets{nullptr}, upsamplers{nullptr};
  std::vector<ResnetBlock2D> resnet_blocks;
  Upsample2D upsample{nullptr};
};
TORCH_MODULE(UpDecoderBlock2D);

// diffusers `Encoder` (double_z: conv_out has 2 * latent_channels outputs).
class VAEEncoderImpl : public torch::nn::Module {
 public:
  explicit VAEEncoderImpl(const AutoencoderKLConfig& c);
  torch::Tensor forward(const torch::Tensor& x);

  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  std::vector<UNetDownBlock2D> down;
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VAEEncoder);

// diffusers `Decoder` (group-norm variant).
class VAEDecoderImpl : public torch::nn::Module {
 public:
  explicit VAEDecoderImpl(const AutoencoderKLConfig& c);
  torch::Tensor forward(const torch::Tensor& z);

  nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  std::vector<UpDecoderBlock2D> up;
  torch::nn::GroupNorm conv_norm_out{nullptr};
};
TORCH_MODULE(VAEDecoder);

}  // namespace nn

struct LatentDistribution {
  torch::Tensor mean;    // [B, latent_channels, H/f, W/f]
  torch::Tensor logvar;  // clamped to [-30, 20]
  torch::Tensor std() const { return torch::exp(0.5 * logvar); }
  // mean + std * noise with noise ~ N(0, 1) from `generator` (default generator when undefined).
  torch::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
};

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // x [B, in_channels, H, W] (H, W divisible by downsample_factor()) -> posterior.
  LatentDistribution encode(const torch::Tensor& x);
  // z [B, latent_channels, h, w] -> [B, out_channels, h*f, w*f]. Unscaled latents (divide by
  // scaling_factor first when coming from a diffusion model).
  torch::Tensor decode(const torch::Tensor& z);
  // decode(encode(x).mean) (diffusers forward with sample_posterior=False).
  torch::Tensor forward(const torch::Tensor& x);

  const AutoencoderKLConfig& config() const { return config_; }
  torch::Dtype dtype() const;
  torch::Device device() const;
  void set_attention_chunk_size(int64_t n);

  nn::VAEEncoder encoder{nullptr};
  nn::VAEDecoder decoder{nullptr};
  nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};  // null if disabled

 private:
  AutoencoderKLConfig config_;
};
TORCH_MODULE(AutoencoderKL);

// Loads a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors),
// strictly; legacy attention names (query/key/value/proj_attn) are converted. float32, CPU, eval.
AutoencoderKL load_autoencoder_kl(const std::string& dir);
// The folder's validated config.json alone.
AutoencoderKLConfig read_autoencoder_kl_config(const std::string& dir);
// Writes config.json and diffusion_pytorch_model.safetensors into `dir` (created), atomically.
void save_autoencoder_kl(const AutoencoderKL& model, const std::string& dir);

}  // namespace diffuse
