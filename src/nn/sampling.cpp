#include "nn/sampling.h"

#include "core/error.h"
#include "nn/compute_dtype.h"

namespace diffuse::nn {

namespace F = torch::nn::functional;

Downsample2DImpl::Downsample2DImpl(int64_t channels, bool use_conv, int64_t out_channels, int64_t padding,
                                   int64_t kernel_size, bool bias)
    : channels_(channels), padding_(padding) {
  const int64_t out = out_channels > 0 ? out_channels : channels;
  if (use_conv) {
    conv = register_module(
        "conv", nn::Conv2d(torch::nn::Conv2dOptions(channels, out, kernel_size).stride(2).padding(padding).bias(bias)));
  } else if (out != channels) {
    throw Error("Downsample2D: average pooling cannot change the channel count");
  }
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  LayerUpcast wide({this});
  TORCH_CHECK(x.size(1) == channels_, "Downsample2D: expected ", channels_, " channels, got ", x.size(1));
  if (!conv) return F::avg_pool2d(x, F::AvgPool2dFuncOptions(2).stride(2));
  if (padding_ == 0) return conv(torch::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv(x);
}

torch::Tensor upsample_nearest_2x(const torch::Tensor& x, const std::vector<int64_t>& output_size) {
  auto h = x.scalar_type() == torch::kBFloat16 ? x.to(torch::kFloat32) : x;
  auto opts = F::InterpolateFuncOptions().mode(torch::kNearest);
  if (output_size.empty())
    opts.scale_factor(std::vector<double>{2.0, 2.0});
  else
    opts.size(output_size);
  h = F::interpolate(h, opts);
  return h.scalar_type() == x.scalar_type() ? h : h.to(x.scalar_type());
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, bool use_conv, int64_t out_channels, int64_t kernel_size,
                               int64_t padding, bool bias)
    : channels_(channels) {
  const int64_t out = out_channels > 0 ? out_channels : channels;
  if (use_conv) {
    conv = register_module(
        "conv", nn::Conv2d(torch::nn::Conv2dOptions(channels, out, kernel_size).padding(padding).bias(bias)));
  }
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, const std::vector<int64_t>& output_size) {
  LayerUpcast wide({this});
  TORCH_CHECK(x.size(1) == channels_, "Upsample2D: expected ", channels_, " channels, got ", x.size(1));
  auto h = upsample_nearest_2x(x, output_size);
  return conv ? conv(h) : h;
}

}  // namespace diffuse::nn
