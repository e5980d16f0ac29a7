#pragma once
// Denoising an image with a pixel diffusion model. An image with additive white Gaussian noise of
// standard deviation sigma (in the image's [-1, 1] units), x = x0 + sigma * n, is exactly the
// variance-exploding state the model's denoiser takes at noise level sigma: one denoiser call
// gives the minimum mean squared error estimate E[x0 | x], and the sampler entered at sigma draws
// a clean image consistent with x.
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "diffusion/sampler.h"
#include "pipelines/pixel_pipeline.h"

namespace diffuse {

// Noise standard deviation of an image with additive white Gaussian noise ([C, H, W] or
// [N, C, H, W], one estimate over all of it), in the image's units: Donoho's robust estimator,
// median(|HH|) / 0.6745 over the finest diagonal detail coefficients HH of an undecimated Haar
// transform ((a - b - c + d) / 2 of every 2x2 neighbourhood, which has the noise's standard
// deviation and cancels smooth image content). Fine texture reads as noise, so low noise levels on
// textured images are overestimated (Fashion-MNIST: +25 % at sigma 0.1, docs/benchmarks.md). When
// more than 2 % of the pixels sit exactly at -1 or 1 (noise clipped by an 8-bit file), only blocks
// with no such pixel within 2 px count.
double estimate_noise_sigma(const torch::Tensor& image);

struct DenoiseOptions {
  double sigma = 0;          // the input's noise level (> 0), [-1, 1] units
  bool sample = false;       // false: D(x, sigma) in one call; true: sample from sigma down to 0
  int64_t class_label = -1;  // class-conditional models: -1 = the null class (unconditional)
  std::string sampler = "dpm++2m";
  std::string schedule;  // "" = the sampler's default (discrete)
  int steps = 20;        // sample: steps from sigma down to 0
  uint64_t seed = 0;     // sample: image i's sampler noise uses seed + i
  std::string rng = "cpu";
  double eta = NAN;  // NaN = the sampler's default
  double s_noise = 1.0;
  int batch_size = 64;
  StepCallback callback;
};

// The descending sigmas a `steps`-step run from `sigma` to 0 takes: the model's schedule for
// enough steps that `steps` - 1 of its values lie below sigma, those values, with sigma in front
// (as few as the schedule has where it runs out of distinct values). Ends in 0.
torch::Tensor sigmas_from(const PixelPipeline& pipe, const std::string& schedule, int steps, double sigma);

// Denoises noisy [N, C, H, W] images in [-1, 1] (the pipeline's channels and size). Throws
// diffuse::Error for latent pipelines (their noise lives in the VAE's latent space, not in pixels),
// images of another shape, sigma <= 0 or beyond the model's largest noise level, or a
// class-conditional model without a null class and no class_label.
torch::Tensor denoise(const PixelPipeline& pipe, const torch::Tensor& noisy, const DenoiseOptions& options);

}  // namespace diffuse
