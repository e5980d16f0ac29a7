#include "nn/unet_2d_blocks.h"

#include "core/error.h"
#include "nn/checkpoint.h"

namespace diffuse::nn {

namespace {

std::string strip_unetres(const std::string& name) { return name.rfind("UNetRes", 0) == 0 ? name.substr(7) : name; }

ResnetBlock2DOptions resnet_options(int64_t in, int64_t out, int64_t temb, double eps, int64_t groups, double dropout,
                                    const std::string& shift, const std::string& act, double scale,
                                    bool skip_time_act) {
  ResnetBlock2DOptions r(in, out, temb);
  r.eps = eps;
  r.groups = groups;
  r.dropout = dropout;
  r.time_embedding_norm = shift;
  r.non_linearity = act;
  r.output_scale_factor = scale;
  r.skip_time_act = skip_time_act;
  return r;
}

// The spatial self-attention of the attention blocks (diffusers' `_from_deprecated_attn_block`).
AttentionOptions block_attention(const std::string& block, int64_t channels, std::optional<int64_t> head_dim,
                                 double scale, double eps, std::optional<int64_t> groups) {
  const int64_t dh = head_dim ? *head_dim : channels;
  if (dh <= 0 || channels % dh != 0)
    throw Error(block + ": channels " + std::to_string(channels) + " are not divisible by attention_head_dim " +
                std::to_string(dh));
  AttentionOptions a(channels, channels / dh, dh);
  a.rescale_output_factor = scale;
  a.eps = eps;
  a.norm_num_groups = groups;
  a.residual_connection = true;
  a.bias = true;
  a.upcast_softmax = true;
  return a;
}

}  // namespace

DownBlockType parse_down_block_type(const std::string& name) {
  const auto n = strip_unetres(name);
  if (n == "DownBlock2D") return DownBlockType::DownBlock2D;
  if (n == "AttnDownBlock2D") return DownBlockType::AttnDownBlock2D;
  if (n == "ResnetDownsampleBlock2D") return DownBlockType::ResnetDownsampleBlock2D;
  throw Error("unsupported down block type '" + name +
              "' (supported: DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D)");
}

UpBlockType parse_up_block_type(const std::string& name) {
  const auto n = strip_unetres(name);
  if (n == "UpBlock2D") return UpBlockType::UpBlock2D;
  if (n == "AttnUpBlock2D") return UpBlockType::AttnUpBlock2D;
  if (n == "ResnetUpsampleBlock2D") return UpBlockType::ResnetUpsampleBlock2D;
  throw Error("unsupported up block type '" + name + "' (supported: UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D)");
}

std::string block_type_name(DownBlockType t) {
  switch (t) {
    case DownBlockType::DownBlock2D:
      return "DownBlock2D";
    case DownBlockType::AttnDownBlock2D:
      return "AttnDownBlock2D";
    case DownBlockType::ResnetDownsampleBlock2D:
      return "ResnetDownsampleBlock2D";
  }
  return "";
}

std::string block_type_name(UpBlockType t) {
  switch (t) {
    case UpBlockType::UpBlock2D:
      return "UpBlock2D";
    case UpBlockType::AttnUpBlock2D:
      return "AttnUpBlock2D";
    case UpBlockType::ResnetUpsampleBlock2D:
      return "ResnetUpsampleBlock2D";
  }
  return "";
}

// ---------------------------------------------------------------- down

UNetDownBlock2DImpl::UNetDownBlock2DImpl(const DownBlock2DOptions& o) : opt_(o) {
  const bool attn = o.type == DownBlockType::AttnDownBlock2D;
  const bool skip_act = o.type == DownBlockType::ResnetDownsampleBlock2D && o.skip_time_act;
  resnets = register_module("resnets", torch::nn::ModuleList());
  if (attn) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    const int64_t in = i == 0 ? o.in_channels : o.out_channels;
    resnet_blocks.emplace_back(resnet_options(in, o.out_channels, o.temb_channels, o.resnet_eps, o.resnet_groups,
                                              o.dropout, o.resnet_time_scale_shift, o.resnet_act_fn,
                                              o.output_scale_factor, skip_act));
    resnets->push_back(resnet_blocks.back());
    if (attn) {
      attention_blocks.emplace_back(block_attention(block_type_name(o.type), o.out_channels, o.attention_head_dim,
                                                    o.output_scale_factor, o.resnet_eps, o.resnet_groups));
      attentions->push_back(attention_blocks.back());
    }
  }
  if (!o.add_downsample) return;
  bool resnet_down = o.type == DownBlockType::ResnetDownsampleBlock2D;
  if (attn) {
    if (o.downsample_type == "resnet")
      resnet_down = true;
    else if (o.downsample_type != "conv")
      throw Error("AttnDownBlock2D: unknown downsample_type '" + o.downsample_type + "' (expected conv or resnet)");
  }
  downsamplers = register_module("downsamplers", torch::nn::ModuleList());
  if (resnet_down) {
    auto r = resnet_options(o.out_channels, o.out_channels, o.temb_channels, o.resnet_eps, o.resnet_groups, o.dropout,
                            o.resnet_time_scale_shift, o.resnet_act_fn, o.output_scale_factor, skip_act);
    r.down = true;
    downsample_resnet = ResnetBlock2D(r);
    downsamplers->push_back(downsample_resnet);
  } else {
    downsample = Downsample2D(o.out_channels, /*use_conv=*/true, o.out_channels, o.downsample_padding);
    downsamplers->push_back(downsample);
  }
}

DownBlockOutput UNetDownBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  DownBlockOutput out;
  torch::Tensor h = x;
  for (size_t i = 0; i < resnet_blocks.size(); ++i) {
    h = checkpointed(resnet_blocks[i], h, temb);
    if (!attention_blocks.empty()) h = checkpointed(attention_blocks[i], h);
    out.res_samples.push_back(h);
  }
  if (downsample) {
    h = checkpointed(downsample, h);
    out.res_samples.push_back(h);
  } else if (downsample_resnet) {
    h = downsample_resnet->forward(h, temb);
    out.res_samples.push_back(h);
  }
  out.hidden_states = h;
  return out;
}

// ---------------------------------------------------------------- up

UNetUpBlock2DImpl::UNetUpBlock2DImpl(const UpBlock2DOptions& o) : opt_(o) {
  const bool attn = o.type == UpBlockType::AttnUpBlock2D;
  const bool skip_act = o.type == UpBlockType::ResnetUpsampleBlock2D && o.skip_time_act;
  resnets = register_module("resnets", torch::nn::ModuleList());
  if (attn) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    const int64_t res_skip = i == o.num_layers - 1 ? o.in_channels : o.out_channels;
    const int64_t in = i == 0 ? o.prev_output_channel : o.out_channels;
    resnet_blocks.emplace_back(resnet_options(in + res_skip, o.out_channels, o.temb_channels, o.resnet_eps,
                                              o.resnet_groups, o.dropout, o.resnet_time_scale_shift, o.resnet_act_fn,
                                              o.output_scale_factor, skip_act));
    resnets->push_back(resnet_blocks.back());
    if (attn) {
      attention_blocks.emplace_back(block_attention(block_type_name(o.type), o.out_channels, o.attention_head_dim,
                                                    o.output_scale_factor, o.resnet_eps, o.resnet_groups));
      attentions->push_back(attention_blocks.back());
    }
  }
  if (!o.add_upsample) return;
  bool resnet_up = o.type == UpBlockType::ResnetUpsampleBlock2D;
  if (attn) {
    if (o.upsample_type == "resnet")
      resnet_up = true;
    else if (o.upsample_type != "conv")
      throw Error("AttnUpBlock2D: unknown upsample_type '" + o.upsample_type + "' (expected conv or resnet)");
  }
  upsamplers = register_module("upsamplers", torch::nn::ModuleList());
  if (resnet_up) {
    auto r = resnet_options(o.out_channels, o.out_channels, o.temb_channels, o.resnet_eps, o.resnet_groups, o.dropout,
                            o.resnet_time_scale_shift, o.resnet_act_fn, o.output_scale_factor, skip_act);
    r.up = true;
    upsample_resnet = ResnetBlock2D(r);
    upsamplers->push_back(upsample_resnet);
  } else {
    upsample = Upsample2D(o.out_channels, /*use_conv=*/true, o.out_channels);
    upsamplers->push_back(upsample);
  }
}

torch::Tensor UNetUpBlock2DImpl::forward(const torch::Tensor& x, std::vector<torch::Tensor> res_samples,
                                         const torch::Tensor& temb, const std::vector<int64_t>& upsample_size) {
  if (res_samples.size() < resnet_blocks.size())
    throw Error(block_type_name(opt_.type) + ": needs " + std::to_string(resnet_blocks.size()) + " skip tensors, got " +
                std::to_string(res_samples.size()));
  torch::Tensor h = x;
  for (size_t i = 0; i < resnet_blocks.size(); ++i) {
    auto skip = res_samples.back();
    res_samples.pop_back();
    h = checkpointed(resnet_blocks[i], torch::cat({h, skip}, 1), temb);
    if (!attention_blocks.empty()) h = checkpointed(attention_blocks[i], h);
  }
  if (upsample) h = checkpointed_upsample(upsample, h, upsample_size);
  if (upsample_resnet) h = upsample_resnet->forward(h, temb);
  return h;
}

// ---------------------------------------------------------------- mid

UNetMidBlock2DImpl::UNetMidBlock2DImpl(const MidBlock2DOptions& o) : opt_(o) {
  if (o.resnet_time_scale_shift == "spatial")
    throw Error("UNetMidBlock2D: resnet_time_scale_shift 'spatial' is not supported");
  std::optional<int64_t> attn_groups = o.attn_groups;
  if (!attn_groups && o.resnet_time_scale_shift == "default") attn_groups = o.resnet_groups;
  auto res = [&] {
    return ResnetBlock2D(resnet_options(o.in_channels, o.in_channels, o.temb_channels, o.resnet_eps, o.resnet_groups,
                                        o.dropout, o.resnet_time_scale_shift, o.resnet_act_fn, o.output_scale_factor,
                                        false));
  };
  resnets = register_module("resnets", torch::nn::ModuleList());
  if (o.add_attention) attentions = register_module("attentions", torch::nn::ModuleList());
  resnet_blocks.push_back(res());
  resnets->push_back(resnet_blocks.back());
  for (int64_t i = 0; i < o.num_layers; ++i) {
    if (o.add_attention) {
      attention_blocks.emplace_back(block_attention("UNetMidBlock2D", o.in_channels, o.attention_head_dim,
                                                    o.output_scale_factor, o.resnet_eps, attn_groups));
      attentions->push_back(attention_blocks.back());
    }
    resnet_blocks.push_back(res());
    resnets->push_back(resnet_blocks.back());
  }
}

torch::Tensor UNetMidBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  torch::Tensor h = resnet_blocks[0]->forward(x, temb);
  for (size_t i = 1; i < resnet_blocks.size(); ++i) {
    if (!attention_blocks.empty()) h = attention_blocks[i - 1]->forward(h);
    h = resnet_blocks[i]->forward(h, temb);
  }
  return h;
}

}  // namespace diffuse::nn
