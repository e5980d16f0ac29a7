#pragma once
// Scores a super-resolution model on held-out images: each high-resolution image is downsampled
// the way the model's training inputs were (area), then upscaled by the model and, as the
// baseline, bicubically. PSNR and SSIM against the originals, and FID of each set of outputs
// against the originals in a feature network's space.
#include <torch/torch.h>

#include <cmath>
#include <cstdint>

#include "eval/classifier.h"
#include "pipelines/superres.h"

namespace diffuse {

// Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2), [N, C, H, W].
torch::Tensor psnr_images(const torch::Tensor& x, const torch::Tensor& ref);
// Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, over the
// valid region, averaged over channels) of images in [-1, 1], [N, C, H, W] with sides >= 11.
torch::Tensor ssim_images(const torch::Tensor& x, const torch::Tensor& ref);

struct SuperResScores {
  int64_t n = 0;
  double psnr_model = NAN, psnr_bicubic = NAN;  // mean over images, dB
  double ssim_model = NAN, ssim_bicubic = NAN;  // mean over images
  double fid_model = NAN, fid_bicubic = NAN;    // against the originals (NaN without a feature network)
  double seconds = 0;                           // upscaling time
};

// `hr`: uint8 [N, C, H, W] (H, W divisible by the model's scale). Outputs are quantised to 8 bits
// (as saved PNGs) before scoring. `upscaled` (optional) receives the model's outputs in [-1, 1].
SuperResScores score_superres(const SuperResPipeline& sr, const torch::Tensor& hr, const UpscaleOptions& opt,
                              const FeatureNet* features = nullptr, torch::Tensor* upscaled = nullptr);

}  // namespace diffuse
