#include "pipelines/mask.h"

#include "core/error.h"

namespace diffuse {

torch::Tensor blur_mask(const torch::Tensor& mask, double sigma) {
  if (sigma <= 0) return mask;
  namespace F = torch::nn::functional;
  const int64_t r = static_cast<int64_t>(2.5 * sigma + 0.5);
  auto x = torch::arange(-r, r + 1, torch::kFloat64);
  auto k = torch::exp(-x * x / (2 * sigma * sigma));
  k = (k / k.sum()).to(torch::kFloat32);
  auto m = mask.to(torch::kFloat32);
  m = F::pad(m, F::PadFuncOptions({r, r, 0, 0}).mode(torch::kReplicate));
  m = F::conv2d(m, k.view({1, 1, 1, -1}));
  m = F::pad(m, F::PadFuncOptions({0, 0, r, r}).mode(torch::kReplicate));
  return F::conv2d(m, k.view({1, 1, -1, 1}));
}

std::pair<torch::Tensor, torch::Tensor> outpaint_pad(const torch::Tensor& image, int left, int top, int right,
                                                     int bottom) {
  if (image.dim() != 4) throw Error("outpaint: expected an image batch [B, C, H, W]");
  if (left < 0 || top < 0 || right < 0 || bottom < 0) throw Error("outpaint: padding must be >= 0");
  namespace F = torch::nn::functional;
  auto img = F::pad(image.to(torch::kFloat32), F::PadFuncOptions({left, right, top, bottom}).mode(torch::kReplicate));
  auto mask = torch::ones({image.size(0), 1, img.size(2), img.size(3)});
  mask.slice(2, top, top + image.size(2)).slice(3, left, left + image.size(3)).zero_();
  return {img, mask};
}

}  // namespace diffuse
