#include "nn/unet_2d_condition_blocks.h"

#include "core/error.h"
#include "nn/checkpoint.h"

namespace diffuse::nn {

namespace {

ResnetBlock2D make_resnet(int64_t in, int64_t out, const CrossAttnBlockOptions& o) {
  ResnetBlock2DOptions r(in, out, o.temb_channels);
  r.eps = o.resnet_eps;
  r.groups = o.resnet_groups;
  r.dropout = o.dropout;
  r.time_embedding_norm = o.resnet_time_scale_shift;
  r.non_linearity = o.resnet_act_fn;
  r.output_scale_factor = o.output_scale_factor;
  return ResnetBlock2D(r);
}

Transformer2DModel make_transformer(int64_t channels, const CrossAttnBlockOptions& o) {
  if (o.num_attention_heads <= 0 || channels % o.num_attention_heads != 0)
    throw Error("cross-attention block: " + std::to_string(channels) + " channels are not divisible by " +
                std::to_string(o.num_attention_heads) + " attention heads");
  Transformer2DModelOptions t;
  t.num_attention_heads = o.num_attention_heads;
  t.attention_head_dim = channels / o.num_attention_heads;
  t.in_channels = channels;
  t.num_layers = o.transformer_layers_per_block;
  t.dropout = o.dropout;
  t.norm_num_groups = o.resnet_groups;
  t.cross_attention_dim = o.cross_attention_dim;
  t.use_linear_projection = o.use_linear_projection;
  t.only_cross_attention = o.only_cross_attention;
  t.upcast_attention = o.upcast_attention;
  return Transformer2DModel(t);
}

}  // namespace

CrossAttnDownBlock2DImpl::CrossAttnDownBlock2DImpl(int64_t in_channels, int64_t out_channels,
                                                   const CrossAttnBlockOptions& o, bool add_downsample,
                                                   int64_t downsample_padding) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    resnet_blocks.push_back(make_resnet(i == 0 ? in_channels : out_channels, out_channels, o));
    resnets->push_back(resnet_blocks.back());
    attention_blocks.push_back(make_transformer(out_channels, o));
    attentions->push_back(attention_blocks.back());
  }
  if (add_downsample) {
    downsamplers = register_module("downsamplers", torch::nn::ModuleList());
    downsample = Downsample2D(out_channels, true, out_channels, downsample_padding);
    downsamplers->push_back(downsample);
  }
}

DownBlockOutput CrossAttnDownBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                                  const torch::Tensor& encoder_hidden_states,
                                                  const torch::Tensor& encoder_attention_mask) {
  DownBlockOutput out;
  auto h = x;
  for (size_t i = 0; i < resnet_blocks.size(); ++i) {
    h = checkpointed(resnet_blocks[i], h, temb);
    h = checkpointed(attention_blocks[i], h, encoder_hidden_states, encoder_attention_mask);
    out.res_samples.push_back(h);
  }
  if (downsample) {
    h = checkpointed(downsample, h);
    out.res_samples.push_back(h);
  }
  out.hidden_states = h;
  return out;
}

CrossAttnUpBlock2DImpl::CrossAttnUpBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t prev_output_channel,
                                               const CrossAttnBlockOptions& o, bool add_upsample) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    const int64_t skip = i == o.num_layers - 1 ? in_channels : out_channels;
    const int64_t rin = i == 0 ? prev_output_channel : out_channels;
    resnet_blocks.push_back(make_resnet(rin + skip, out_channels, o));
    resnets->push_back(resnet_blocks.back());
    attention_blocks.push_back(make_transformer(out_channels, o));
    attentions->push_back(attention_blocks.back());
  }
  if (add_upsample) {
    upsamplers = register_module("upsamplers", torch::nn::ModuleList());
    upsample = Upsample2D(out_channels, true, out_channels);
    upsamplers->push_back(upsample);
  }
}

torch::Tensor CrossAttnUpBlock2DImpl::forward(const torch::Tensor& x, std::vector<torch::Tensor> res_samples,
                                              const torch::Tensor& temb, const torch::Tensor& encoder_hidden_states,
                                              const std::vector<int64_t>& upsample_size,
                                              const torch::Tensor& encoder_attention_mask) {
  if (res_samples.size() < resnet_blocks.size())
    throw Error("CrossAttnUpBlock2D: needs " + std::to_string(resnet_blocks.size()) + " skip tensors, got " +
                std::to_string(res_samples.size()));
  auto h = x;
  for (size_t i = 0; i < resnet_blocks.size(); ++i) {
    auto skip = res_samples.back();
    res_samples.pop_back();
    h = checkpointed(resnet_blocks[i], torch::cat({h, skip}, 1), temb);
    h = checkpointed(attention_blocks[i], h, encoder_hidden_states, encoder_attention_mask);
  }
  if (upsample) h = checkpointed_upsample(upsample, h, upsample_size);
  return h;
}

UNetMidBlock2DCrossAttnImpl::UNetMidBlock2DCrossAttnImpl(int64_t in_channels, const CrossAttnBlockOptions& o) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnet_blocks.push_back(make_resnet(in_channels, in_channels, o));
  resnets->push_back(resnet_blocks.back());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    attention_blocks.push_back(make_transformer(in_channels, o));
    attentions->push_back(attention_blocks.back());
    resnet_blocks.push_back(make_resnet(in_channels, in_channels, o));
    resnets->push_back(resnet_blocks.back());
  }
}

torch::Tensor UNetMidBlock2DCrossAttnImpl::forward(const torch::Tensor& x, const torch::Tensor& temb,
                                                   const torch::Tensor& encoder_hidden_states,
                                                   const torch::Tensor& encoder_attention_mask) {
  auto h = checkpointed(resnet_blocks[0], x, temb);
  for (size_t i = 0; i < attention_blocks.size(); ++i) {
    h = checkpointed(attention_blocks[i], h, encoder_hidden_states, encoder_attention_mask);
    h = checkpointed(resnet_blocks[i + 1], h, temb);
  }
  return h;
}

}  // namespace diffuse::nn
