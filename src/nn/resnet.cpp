#include "nn/resnet.h"

#include "core/error.h"
#include "nn/compute_dtype.h"
#include "nn/group_norm.h"

namespace diffuse::nn {

namespace F = torch::nn::functional;

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& o) : opt_(o), act_(parse_activation(o.non_linearity)) {
  if (o.time_embedding_norm != "default" && o.time_embedding_norm != "scale_shift")
    throw Error("ResnetBlock2D: unknown time_embedding_norm '" + o.time_embedding_norm +
                "' (expected default or scale_shift)");
  if (o.up && o.down) throw Error("ResnetBlock2D: up and down are exclusive");
  scale_shift_ = o.time_embedding_norm == "scale_shift";
  const int64_t in = o.in_channels;
  const int64_t out = o.out_channels > 0 ? o.out_channels : in;
  const int64_t conv2_out = o.conv_2d_out_channels > 0 ? o.conv_2d_out_channels : out;
  const int64_t groups_out = o.groups_out > 0 ? o.groups_out : o.groups;
  opt_.out_channels = out;
  opt_.conv_2d_out_channels = conv2_out;
  opt_.groups_out = groups_out;
  if (in % o.groups != 0 || out % groups_out != 0)
    throw Error("ResnetBlock2D: channels (" + std::to_string(in) + ", " + std::to_string(out) +
                ") must be divisible by the number of groups (" + std::to_string(o.groups) + ")");

  norm1 = register_module("norm1", torch::nn::GroupNorm(torch::nn::GroupNormOptions(o.groups, in).eps(o.eps)));
  conv1 = register_module("conv1", nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
  if (o.temb_channels > 0)
    time_emb_proj = register_module("time_emb_proj", nn::Linear(o.temb_channels, scale_shift_ ? 2 * out : out));
  norm2 = register_module("norm2", torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups_out, out).eps(o.eps)));
  dropout = register_module("dropout", torch::nn::Dropout(o.dropout));
  conv2 = register_module("conv2", nn::Conv2d(torch::nn::Conv2dOptions(out, conv2_out, 3).padding(1)));
  const bool shortcut = o.use_in_shortcut.has_value() ? *o.use_in_shortcut : in != conv2_out;
  opt_.use_in_shortcut = shortcut;
  if (shortcut)
    conv_shortcut = register_module("conv_shortcut",
                                    nn::Conv2d(torch::nn::Conv2dOptions(in, conv2_out, 1).bias(o.conv_shortcut_bias)));
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  LayerUpcast wide({this});
  torch::Tensor input = x;
  // The fused bf16 norm where the result goes straight to a convolution (avg_pool would average
  // bf16 values where the unfused path averages fp32 ones).
  torch::Tensor h = opt_.down ? activate_temporary(act_, norm1(x)) : group_norm_act(*norm1, x, act_);
  if (opt_.up) {
    input = upsample_nearest_2x(input);
    h = upsample_nearest_2x(h);
  } else if (opt_.down) {
    input = F::avg_pool2d(input, F::AvgPool2dFuncOptions(2).stride(2));
    h = F::avg_pool2d(h, F::AvgPool2dFuncOptions(2).stride(2));
  }
  h = conv1(h);

  torch::Tensor t;
  if (time_emb_proj && temb.defined()) {
    t = opt_.skip_time_act ? temb : activate(act_, temb);
    t = time_emb_proj(t).unsqueeze(-1).unsqueeze(-1);
  }
  if (scale_shift_) {
    if (!t.defined()) throw Error("ResnetBlock2D: temb is required when time_embedding_norm is scale_shift");
    auto chunks = t.chunk(2, 1);
    h = norm2(h) * (1 + chunks[0]) + chunks[1];
    h = activate_temporary(act_, std::move(h));
  } else {
    if (t.defined()) h = h + t;
    // Dropout would scale bf16 values where the unfused path scales fp32 ones.
    const bool dropping = is_training() && opt_.dropout > 0.0;
    h = dropping ? activate_temporary(act_, norm2(h)) : group_norm_act(*norm2, h, act_);
  }
  h = conv2(dropout(std::move(h)));
  if (conv_shortcut) input = conv_shortcut(input);
  auto out = input + h;
  return opt_.output_scale_factor == 1.0 ? out : out / opt_.output_scale_factor;
}

}  // namespace diffuse::nn
