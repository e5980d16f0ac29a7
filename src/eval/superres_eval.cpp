#include "eval/superres_eval.h"

#include <chrono>

#include "core/error.h"
#include "eval/metrics.h"

namespace diffuse {

namespace {

torch::Tensor quantise(const torch::Tensor& x) { return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1; }

}  // namespace

torch::Tensor psnr_images(const torch::Tensor& x, const torch::Tensor& ref) {
  if (x.sizes() != ref.sizes() || x.dim() != 4) throw Error("psnr: images of different shapes");
  auto mse = (x.to(torch::kFloat64) - ref.to(torch::kFloat64)).pow(2).mean({1, 2, 3});
  return 10.0 * torch::log10(4.0 / mse.clamp_min(1e-12));
}

torch::Tensor ssim_images(const torch::Tensor& x, const torch::Tensor& ref) {
  if (x.sizes() != ref.sizes() || x.dim() != 4) throw Error("ssim: images of different shapes");
  if (x.size(2) < 11 || x.size(3) < 11) throw Error("ssim: images need sides of at least 11 pixels");
  const int64_t C = x.size(1);
  auto g = torch::exp(-(torch::arange(11, torch::kFloat64) - 5).pow(2) / (2 * 1.5 * 1.5));
  g = g / g.sum();
  auto w = (g.unsqueeze(1) * g.unsqueeze(0)).expand({C, 1, 11, 11}).contiguous();
  auto a = (x.to(torch::kFloat64) + 1) / 2, b = (ref.to(torch::kFloat64) + 1) / 2;  // [0, 1]
  auto blur = [&](const torch::Tensor& t) {
    return torch::nn::functional::conv2d(t, w, torch::nn::functional::Conv2dFuncOptions().groups(C));
  };
  auto mu_a = blur(a), mu_b = blur(b);
  auto var_a = blur(a * a) - mu_a * mu_a, var_b = blur(b * b) - mu_b * mu_b;
  auto cov = blur(a * b) - mu_a * mu_b;
  const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
  auto map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2));
  return map.mean({1, 2, 3});
}

SuperResScores score_superres(const SuperResPipeline& sr, const torch::Tensor& hr, const UpscaleOptions& opt,
                              const FeatureNet* features, torch::Tensor* upscaled) {
  if (hr.dim() != 4 || hr.scalar_type() != torch::kUInt8) throw Error("score_superres: expected uint8 [N, C, H, W]");
  const int s = sr.config.scale;
  auto ref = hr.to(torch::kFloat32) / 127.5 - 1;
  auto lr = sr_downsample(ref, s);
  const auto t0 = std::chrono::steady_clock::now();
  auto model = upscale(sr, lr, s, opt);
  SuperResScores r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (upscaled) *upscaled = model;
  model = quantise(model);
  auto bicubic = quantise(sr_upsample(lr, s));
  r.n = hr.size(0);
  r.psnr_model = psnr_images(model, ref).mean().item<double>();
  r.psnr_bicubic = psnr_images(bicubic, ref).mean().item<double>();
  r.ssim_model = ssim_images(model, ref).mean().item<double>();
  r.ssim_bicubic = ssim_images(bicubic, ref).mean().item<double>();
  if (features && r.n >= 2) {
    auto f_ref = features->features(ref);
    r.fid_model = fid(features->features(model), f_ref);
    r.fid_bicubic = fid(features->features(bicubic), f_ref);
  }
  return r;
}

}  // namespace diffuse
