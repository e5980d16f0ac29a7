#pragma once
// Inpainting masks (1 = repaint) shared by the pipelines.
#include <torch/torch.h>

#include <utility>

namespace diffuse {

// Outpainting: pads `image` [B, C, H, W] by (left, top, right, bottom) pixels (edge colours
// stretched outwards) and returns it with a mask [B, 1, H', W'] that is 1 on the new area.
std::pair<torch::Tensor, torch::Tensor> outpaint_pad(const torch::Tensor& image, int left, int top, int right,
                                                     int bottom);
// Separable Gaussian blur of a mask [B, 1, H, W] with standard deviation `sigma` pixels
// (kernel 2 * int(2.5 sigma + 0.5) + 1, reflected edges); sigma <= 0 returns it unchanged.
torch::Tensor blur_mask(const torch::Tensor& mask, double sigma);

}  // namespace diffuse
