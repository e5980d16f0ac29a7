#pragma once
// Classical denoising baselines and the measurement of denoisers on images with known added
// Gaussian noise (docs/benchmarks.md, "Denoising"; bench/denoise_bench).
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace diffuse {

// Gaussian blur of [N, C, H, W] images with standard deviation `sigma` pixels (separable kernel of
// radius ceil(3 sigma), reflected borders); sigma 0 returns the input.
torch::Tensor gaussian_blur(const torch::Tensor& images, double sigma);
// Median of each k x k window (k odd, reflected borders) of [N, C, H, W] images.
torch::Tensor median_filter(const torch::Tensor& images, int k);

// A baseline's setting with the best mean PSNR on a set (images, clean references).
struct BestSetting {
  double setting = 0;  // blur sigma or median window
  double psnr = 0;     // mean per-image PSNR (dB; [-1, 1] images, peak-to-peak 2)
  torch::Tensor output;
};
// Mean per-image PSNR of `out` clamped to [-1, 1] against `clean`.
double mean_psnr(const torch::Tensor& out, const torch::Tensor& clean);
// Searches the blur sigma over 0.3, 0.4, .. 3.0 px and the median window over 3, 5, 7, 9.
BestSetting best_gaussian_blur(const torch::Tensor& noisy, const torch::Tensor& clean);
BestSetting best_median_filter(const torch::Tensor& noisy, const torch::Tensor& clean);

}  // namespace diffuse
