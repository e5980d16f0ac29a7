#include "eval/denoise_eval.h"

#include <cmath>

#include "core/error.h"
#include "train/vae_trainer.h"

namespace diffuse {

torch::Tensor gaussian_blur(const torch::Tensor& images, double sigma) {
  if (!(sigma >= 0)) throw Error("gaussian_blur: sigma must be >= 0");
  if (sigma == 0) return images;
  const int64_t r = static_cast<int64_t>(std::ceil(3 * sigma));
  auto t = torch::arange(-r, r + 1, torch::kFloat64);
  auto k = torch::exp(-t * t / (2 * sigma * sigma));
  k = (k / k.sum()).to(images.scalar_type());
  const int64_t c = images.size(1);
  // Reflection needs the padding to be smaller than the side; larger kernels replicate instead.
  const bool reflect = r < images.size(2) && r < images.size(3);
  auto pad = [&](const torch::Tensor& x, std::vector<int64_t> p) {
    return reflect ? torch::reflection_pad2d(x, p) : torch::replication_pad2d(x, p);
  };
  const auto groups = torch::nn::functional::Conv2dFuncOptions().groups(c);
  auto x = pad(images, {r, r, 0, 0});
  x = torch::nn::functional::conv2d(x, k.view({1, 1, 1, -1}).repeat({c, 1, 1, 1}), groups);
  x = pad(x, {0, 0, r, r});
  return torch::nn::functional::conv2d(x, k.view({1, 1, -1, 1}).repeat({c, 1, 1, 1}), groups);
}

torch::Tensor median_filter(const torch::Tensor& images, int k) {
  if (k < 1 || k % 2 == 0) throw Error("median_filter: the window must be odd");
  const int64_t r = k / 2;
  auto x = torch::reflection_pad2d(images, {r, r, r, r});
  // [N, C, H, W, k, k] windows -> their median
  auto w = x.unfold(2, k, 1).unfold(3, k, 1);
  return std::get<0>(w.flatten(4).median(-1));
}

double mean_psnr(const torch::Tensor& out, const torch::Tensor& clean) {
  return psnr_per_image(out.clamp(-1, 1), clean).mean().item<double>();
}

namespace {
BestSetting best_of(const std::vector<double>& settings, const std::function<torch::Tensor(double)>& run,
                    const torch::Tensor& clean) {
  BestSetting best;
  best.psnr = -INFINITY;
  for (double s : settings) {
    auto out = run(s);
    const double p = mean_psnr(out, clean);
    if (p > best.psnr) best = {s, p, out};
  }
  return best;
}
}  // namespace

BestSetting best_gaussian_blur(const torch::Tensor& noisy, const torch::Tensor& clean) {
  std::vector<double> sigmas;
  for (int i = 3; i <= 30; ++i) sigmas.push_back(i / 10.0);
  return best_of(
      sigmas, [&](double s) { return gaussian_blur(noisy, s); }, clean);
}

BestSetting best_median_filter(const torch::Tensor& noisy, const torch::Tensor& clean) {
  return best_of(
      {3, 5, 7, 9}, [&](double k) { return median_filter(noisy, static_cast<int>(k)); }, clean);
}

}  // namespace diffuse
