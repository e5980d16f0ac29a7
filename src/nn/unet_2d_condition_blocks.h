#pragma once
// The cross-attention UNet blocks of diffusers.models.unets.unet_2d_blocks used by
// UNet2DConditionModel (Stable Diffusion), with diffusers' state-dict names:
//   CrossAttnDownBlock2D   resnets.N, attentions.N (Transformer2DModel), downsamplers.0.conv
//   CrossAttnUpBlock2D     resnets.N, attentions.N, upsamplers.0.conv
//   UNetMidBlock2DCrossAttn resnets.0, [attentions.i, resnets.i+1] x num_layers
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nn/resnet.h"
#include "nn/sampling.h"
#include "nn/transformer_2d.h"
#include "nn/unet_2d_blocks.h"

namespace diffuse::nn {

// Settings shared by the three cross-attention blocks.
struct CrossAttnBlockOptions {
  int64_t num_layers = 1;                    // resnets (down/mid: attention layers) per block
  int64_t transformer_layers_per_block = 1;  // BasicTransformerBlocks per Transformer2DModel
  int64_t temb_channels = 0;
  double dropout = 0.0;
  double resnet_eps = 1e-6;
  std::string resnet_time_scale_shift = "default";
  std::string resnet_act_fn = "swish";
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;
  int64_t num_attention_heads = 1;
  int64_t cross_attention_dim = 1280;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

class CrossAttnDownBlock2DImpl : public torch::nn::Module {
 public:
  CrossAttnDownBlock2DImpl(int64_t in_channels, int64_t out_channels, const CrossAttnBlockOptions& o,
                           bool add_downsample = true, int64_t downsample_padding = 1);
  DownBlockOutput forward(const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& encoder_hidden_states,
                          const torch::Tensor& encoder_attention_mask = {});

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, downsamplers{nullptr};
  std::vector<ResnetBlock2D> resnet_blocks;
  std::vector<Transformer2DModel> attention_blocks;
  Downsample2D downsample{nullptr};
};
TORCH_MODULE(CrossAttnDownBlock2D);

class CrossAttnUpBlock2DImpl : public torch::nn::Module {
 public:
  // in_channels: channels of the deepest skip; prev_output_channel: channels from below.
  CrossAttnUpBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t prev_output_channel,
                         const CrossAttnBlockOptions& o, bool add_upsample = true);
  // Pops one skip tensor per resnet from the back of `res_samples`.
  torch::Tensor forward(const torch::Tensor& x, std::vector<torch::Tensor> res_samples, const torch::Tensor& temb,
                        const torch::Tensor& encoder_hidden_states, const std::vector<int64_t>& upsample_size = {},
                        const torch::Tensor& encoder_attention_mask = {});
  int64_t num_resnets() const { return static_cast<int64_t>(resnet_blocks.size()); }

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, upsamplers{nullptr};
  std::vector<ResnetBlock2D> resnet_blocks;
  std::vector<Transformer2DModel> attention_blocks;
  Upsample2D upsample{nullptr};
};
TORCH_MODULE(CrossAttnUpBlock2D);

class UNetMidBlock2DCrossAttnImpl : public torch::nn::Module {
 public:
  UNetMidBlock2DCrossAttnImpl(int64_t in_channels, const CrossAttnBlockOptions& o);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb, const torch::Tensor& encoder_hidden_states,
                        const torch::Tensor& encoder_attention_mask = {});

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
  std::vector<ResnetBlock2D> resnet_blocks;
  std::vector<Transformer2DModel> attention_blocks;
};
TORCH_MODULE(UNetMidBlock2DCrossAttn);

}  // namespace diffuse::nn
