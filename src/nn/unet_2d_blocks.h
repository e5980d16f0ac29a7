#pragma once
// The UNet2DModel building blocks of diffusers.models.unets.unet_2d_blocks, with the same
// state-dict names (resnets.N, attentions.N, downsamplers.0[.conv], upsamplers.0[.conv]):
//   down: DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D     -> UNetDownBlock2D
//   up:   UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D           -> UNetUpBlock2D
//   mid:  UNetMidBlock2D (resnet, [attention, resnet] x num_layers) -> UNetMidBlock2D
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nn/attention.h"
#include "nn/resnet.h"
#include "nn/sampling.h"

namespace diffuse::nn {

enum class DownBlockType { DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D };
enum class UpBlockType { UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D };

// diffusers block names (a "UNetRes" prefix is accepted, as get_down_block does);
// unknown names throw diffuse::Error listing the supported ones.
DownBlockType parse_down_block_type(const std::string& name);
UpBlockType parse_up_block_type(const std::string& name);
std::string block_type_name(DownBlockType t);
std::string block_type_name(UpBlockType t);

struct DownBlock2DOptions {
  DownBlockType type = DownBlockType::DownBlock2D;
  int64_t num_layers = 1;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;
  bool add_downsample = true;
  double resnet_eps = 1e-6;
  std::string resnet_act_fn = "swish";
  int64_t resnet_groups = 32;
  std::string resnet_time_scale_shift = "default";
  double dropout = 0.0;
  double output_scale_factor = 1.0;
  std::optional<int64_t> attention_head_dim;  // attention blocks; default out_channels (one head)
  int64_t downsample_padding = 1;
  std::string downsample_type = "conv";  // AttnDownBlock2D only: "conv" or "resnet"
  bool skip_time_act = false;            // ResnetDownsampleBlock2D only
};

struct DownBlockOutput {
  torch::Tensor hidden_states;
  std::vector<torch::Tensor> res_samples;  // skip connections, in order
};

class UNetDownBlock2DImpl : public torch::nn::Module {
 public:
  explicit UNetDownBlock2DImpl(const DownBlock2DOptions& o);
  DownBlockOutput forward(const torch::Tensor& x, const torch::Tensor& temb);
  const DownBlock2DOptions& options() const { return opt_; }

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, downsamplers{nullptr};  // null when absent
  std::vector<ResnetBlock2D> resnet_blocks;
  std::vector<Attention> attention_blocks;
  Downsample2D downsample{nullptr};          // downsamplers.0 as Downsample2D
  ResnetBlock2D downsample_resnet{nullptr};  // downsamplers.0 as ResnetBlock2D(down)

 private:
  DownBlock2DOptions opt_;
};
TORCH_MODULE(UNetDownBlock2D);

struct UpBlock2DOptions {
  UpBlockType type = UpBlockType::UpBlock2D;
  int64_t num_layers = 1;
  int64_t in_channels = 0;          // channels of the deepest skip this block consumes
  int64_t prev_output_channel = 0;  // channels coming from the block below
  int64_t out_channels = 0;
  int64_t temb_channels = 0;
  bool add_upsample = true;
  double resnet_eps = 1e-6;
  std::string resnet_act_fn = "swish";
  int64_t resnet_groups = 32;
  std::string resnet_time_scale_shift = "default";
  double dropout = 0.0;
  double output_scale_factor = 1.0;
  std::optional<int64_t> attention_head_dim;
  std::string upsample_type = "conv";  // AttnUpBlock2D only: "conv" or "resnet"
  bool skip_time_act = false;          // ResnetUpsampleBlock2D only
};

class UNetUpBlock2DImpl : public torch::nn::Module {
 public:
  explicit UNetUpBlock2DImpl(const UpBlock2DOptions& o);
  // Pops skip tensors from the back of `res_samples` (one per resnet).
  torch::Tensor forward(const torch::Tensor& x, std::vector<torch::Tensor> res_samples, const torch::Tensor& temb,
                        const std::vector<int64_t>& upsample_size = {});
  int64_t num_resnets() const { return static_cast<int64_t>(resnet_blocks.size()); }
  const UpBlock2DOptions& options() const { return opt_; }

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, upsamplers{nullptr};
  std::vector<ResnetBlock2D> resnet_blocks;
  std::vector<Attention> attention_blocks;
  Upsample2D upsample{nullptr};
  ResnetBlock2D upsample_resnet{nullptr};

 private:
  UpBlock2DOptions opt_;
};
TORCH_MODULE(UNetUpBlock2D);

struct MidBlock2DOptions {
  int64_t in_channels = 0;
  int64_t temb_channels = 0;
  int64_t num_layers = 1;
  double dropout = 0.0;
  double resnet_eps = 1e-6;
  std::string resnet_time_scale_shift = "default";
  std::string resnet_act_fn = "swish";
  int64_t resnet_groups = 32;
  std::optional<int64_t> attn_groups;  // default: resnet_groups if time shift is "default", else no norm
  bool add_attention = true;
  std::optional<int64_t> attention_head_dim;  // default in_channels
  double output_scale_factor = 1.0;
};

class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock2DImpl(const MidBlock2DOptions& o);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};
  std::vector<ResnetBlock2D> resnet_blocks;
  std::vector<Attention> attention_blocks;

 private:
  MidBlock2DOptions opt_;
};
TORCH_MODULE(UNetMidBlock2D);

}  // namespace diffuse::nn
