// Denoising with models/fashion-mnist on held-out test images with known Gaussian noise: the
// model beats the noisy input and the best Gaussian blur by recorded margins (docs/benchmarks.md,
// "Denoising", has the full measurement), and the noise estimator is within a recorded error.
#include "eval/denoise_eval.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>

#include "core/error.h"
#include "fixtures.h"
#include "pipelines/denoise.h"
#include "train/dataset.h"

namespace diffuse {
namespace {

// The first n test images in [-1, 1] and a noisy copy (sigma, seeded, float: not clipped).
std::pair<torch::Tensor, torch::Tensor> noisy_test_images(int n, double sigma, uint64_t seed) {
  auto clean = load_dataset("fashion-mnist", "test").images.slice(0, 0, n).to(torch::kFloat32) / 127.5 - 1;
  auto gen = at::detail::createCPUGenerator(seed);
  return {clean, clean + sigma * torch::randn(clean.sizes(), gen)};
}

TEST(Denoise, BeatsTheNoisyInputAndTheBestBlurAtSigma02) {
  torch::NoGradGuard ng;
  auto pipe = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  auto [clean, noisy] = noisy_test_images(8, 0.2, 0);
  const double noisy_psnr = mean_psnr(noisy, clean);
  const auto blur = best_gaussian_blur(noisy, clean);
  const auto median = best_median_filter(noisy, clean);
  DenoiseOptions o;
  o.sigma = 0.2;
  const double mmse = mean_psnr(denoise(pipe, noisy, o), clean);
  o.sample = true;
  o.steps = 10;
  const double sample = mean_psnr(denoise(pipe, noisy, o), clean);
  std::printf(
      "PSNR (dB) at sigma 0.2, 8 images: noisy %.2f, blur %.2f (%.1f px), median %.2f (%gx%g), mmse %.2f, "
      "sample %.2f\n",
      noisy_psnr, blur.psnr, blur.setting, median.psnr, median.setting, median.setting, mmse, sample);
  // Measured on these 8 images: noisy 21.89, best blur 22.83 (0.5 px), mmse 28.71, sample 27.74 dB.
  EXPECT_GT(mmse - noisy_psnr, 6.0);
  EXPECT_GT(mmse - blur.psnr, 5.0);
  EXPECT_GT(sample - blur.psnr, 3.5);
  EXPECT_GT(blur.psnr, noisy_psnr);  // the baseline's search did its job
}

TEST(Denoise, NoiseEstimateIsWithinItsRecordedError) {
  // Fashion-MNIST's fabric texture reads as noise, which matters most at low noise levels.
  // Measured mean relative errors on these 32 images: 26.5 %, 13.1 % and 5.6 % (200 images:
  // docs/benchmarks.md, "Denoising").
  const std::vector<std::pair<double, double>> bounds = {{0.1, 0.32}, {0.2, 0.17}, {0.4, 0.08}};
  for (const auto& [sigma, bound] : bounds) {
    auto [clean, noisy] = noisy_test_images(32, sigma, 1);
    double mean_rel = 0;
    for (int i = 0; i < 32; ++i) mean_rel += std::abs(estimate_noise_sigma(noisy[i]) - sigma) / sigma / 32;
    std::printf("sigma %.1f: mean relative error %.1f %%\n", sigma, 100 * mean_rel);
    EXPECT_LT(mean_rel, bound) << sigma;
  }
  // Pure noise, no image content: within 5 %.
  auto gen = at::detail::createCPUGenerator(2);
  EXPECT_NEAR(estimate_noise_sigma(0.3 * torch::randn({3, 64, 64}, gen)), 0.3, 0.015);
}

TEST(Denoise, SigmasFromStartAtSigmaWithTheStepsAsked) {
  auto pipe = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  for (const char* schedule : {"discrete", "karras"}) {
    auto s = sigmas_from(pipe, schedule, 10, 0.2);
    EXPECT_EQ(s.size(0), 11) << schedule;
    EXPECT_FLOAT_EQ(s[0].item<float>(), 0.2f);
    EXPECT_EQ(s[-1].item<float>(), 0.0f);
    EXPECT_TRUE((s.slice(0, 1) < s.slice(0, 0, -1)).all().item<bool>()) << schedule;
  }
}

TEST(Denoise, ClassicalBaselines) {
  auto x = torch::rand({2, 1, 9, 9}, at::detail::createCPUGenerator(3)) * 2 - 1;
  EXPECT_TRUE(torch::equal(gaussian_blur(x, 0), x));
  auto c = torch::full({1, 1, 9, 9}, 0.25);
  EXPECT_TRUE(torch::allclose(gaussian_blur(c, 1.5), c, 1e-6, 1e-6));  // the kernel sums to 1
  auto spike = torch::zeros({1, 1, 9, 9});
  spike[0][0][4][4] = 1;
  EXPECT_EQ(median_filter(spike, 3).abs().max().item<float>(), 0.0f);  // an outlier is removed
  EXPECT_THROW(median_filter(x, 4), Error);
}

}  // namespace
}  // namespace diffuse
