#pragma once
// 2x spatial resampling layers (diffusers Downsample2D / Upsample2D).
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "nn/conv2d.h"

namespace diffuse::nn {

// Halves H and W: a stride-2 3x3 convolution `conv` (use_conv), or 2x2 average pooling.
// With use_conv and padding 0 the input is first zero-padded on the right and bottom.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, bool use_conv, int64_t out_channels = -1, int64_t padding = 1,
                   int64_t kernel_size = 3, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);

  nn::Conv2d conv{nullptr};  // null when !use_conv

 private:
  int64_t channels_;
  int64_t padding_;
};
TORCH_MODULE(Downsample2D);

// Doubles H and W (nearest neighbour, or to `output_size` when given), then an optional
// 3x3 convolution `conv`.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, bool use_conv, int64_t out_channels = -1, int64_t kernel_size = 3,
                 int64_t padding = 1, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x, const std::vector<int64_t>& output_size = {});

  nn::Conv2d conv{nullptr};  // null when !use_conv

 private:
  int64_t channels_;
};
TORCH_MODULE(Upsample2D);

// Nearest-neighbour 2x upsampling (bfloat16 goes through float32, as in diffusers).
torch::Tensor upsample_nearest_2x(const torch::Tensor& x, const std::vector<int64_t>& output_size = {});

}  // namespace diffuse::nn
