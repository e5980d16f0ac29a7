#pragma once
// Super-resolution by conditional diffusion (SR3, Saharia et al. 2021): a UNet2DModel whose input
// is the noisy high-resolution sample concatenated with the low-resolution image upsampled
// bicubically to the high resolution (in_channels = 2 x image channels, out_channels = image
// channels). The low-resolution training images are made by area downsampling (the mean of each
// scale x scale block, i.e. antialiased), so the model learns to invert exactly that operator.
//
// A super-resolution model is a DDPMPipeline folder plus superres.json:
//   {"task": "superres", "scale": 2, "low_resolution_size": 14, "high_resolution_size": 28,
//    "channels": 1, "downsample": "area", "upsample": "bicubic"}
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "diffusion/sampler.h"
#include "pipelines/pixel_pipeline.h"

namespace diffuse {

struct SuperResConfig {
  int scale = 2;
  int low_resolution_size = 14;   // side of the training inputs
  int high_resolution_size = 28;  // side of the training targets (the network's sample_size)
  int channels = 1;               // image channels
  std::string downsample = "area";
  std::string upsample = "bicubic";
};

// Area downsampling of [B, C, H, W] by an integer factor (H and W divisible by it).
torch::Tensor sr_downsample(const torch::Tensor& hr, int scale);
// Bicubic upsampling (align_corners false, as torch and PIL) by an integer factor.
torch::Tensor sr_upsample(const torch::Tensor& lr, int scale);
// The conditioning image the network sees for high-resolution images `hr` in [-1, 1]:
// sr_upsample(sr_downsample(hr)).
torch::Tensor sr_condition(const torch::Tensor& hr, int scale);

// The network input: the (noisy, input-scaled) high-resolution sample `x` and the conditioning
// image `condition` (sr_condition / sr_upsample, as it is) concatenated along channels: [B, 2C, H, W].
// Training and sampling both build it here.
torch::Tensor superres_input(const torch::Tensor& x, const torch::Tensor& condition);

// Whether `dir` holds a super-resolution model (a superres.json).
bool is_superres_folder(const std::string& dir);
SuperResConfig read_superres_config(const std::string& path);  // throws diffuse::Error naming the file
void write_superres_config(const std::string& path, const SuperResConfig& c);

struct SuperResPipeline {
  PixelPipeline pipe;  // the network (2C in, C out) and its noise schedule
  SuperResConfig config;

  int channels() const { return config.channels; }
  // Loads a folder written by `diffuse train --task superres`. Throws diffuse::Error when the
  // folder has no superres.json or the network does not match it.
  static SuperResPipeline load(const std::string& dir, torch::Device device = torch::kCPU);
  void save(const std::string& dir) const;
  // The network as a denoiser of the high-resolution sample given the conditioning image
  // (Cond key "low_res": the upsampled low-resolution image, [B, C, H, W] in [-1, 1]).
  CondDenoiser denoiser() const;
};

struct UpscaleOptions {
  std::string sampler = "dpm++2m";
  std::string schedule = "";  // "" = the sampler's natural default
  std::string sigmas = "";    // custom comma-separated sigmas, overrides schedule/steps
  int steps = 20;
  uint64_t seed = 0;  // image i uses seed + i for its initial and sampler noise
  std::string rng = "cpu";
  double eta = NAN;  // NaN = the sampler's default
  double s_noise = 1.0;
  // Images larger than the model's size are sampled as one canvas whose denoiser runs the
  // network on overlapping tiles (of the model's size) and blends their x0 estimates with
  // linear ramps over the overlap, so every step shares one noise field and seams do not show.
  int tile_overlap = 8;  // pixels of the high-resolution image, in [0, model size / 2]
  int tile_batch = 16;   // tiles per forward pass
  int batch_size = 64;   // images sampled together (image i's noise comes from seed + i alone)
  StepCallback callback;
};

// One tile origin per row or column: tiles of `tile` pixels covering `size` with at least
// `overlap` pixels shared by neighbours (a single origin 0 when size <= tile).
std::vector<int64_t> tile_origins(int64_t size, int64_t tile, int64_t overlap);

// Wraps a denoiser of tile x tile samples as a denoiser of any [B, C, H, W] canvas with H, W >= tile:
// x0 estimates of overlapping tiles blended with linear ramps over the overlap.
CondDenoiser tiled_denoiser(CondDenoiser d, int64_t tile, int64_t overlap, int tile_batch);

// Upscales low-resolution images [N, C, h, w] in [-1, 1] to [N, C, scale h, scale w] (float,
// [-1, 1] nominal). Only the model's scale is accepted. Sides of the result smaller than the
// model's size are padded (edge replication) for sampling and cropped back.
torch::Tensor upscale(const SuperResPipeline& sr, const torch::Tensor& low_res, int scale, const UpscaleOptions& opt);

// Rows for a comparison picture of N images: the low-resolution inputs `lr` enlarged by pixel
// repetition, their bicubic upsampling, the model's outputs `upscaled` and, when `hr` is defined,
// the originals: [3N or 4N, C, H, W] in row order (lay out with make_grid(rows, N)).
torch::Tensor superres_comparison(const torch::Tensor& lr, int scale, const torch::Tensor& upscaled,
                                  const torch::Tensor& hr = {});

// A1111-style "parameters" text for image i of an upscale.
std::string upscale_parameters(const SuperResPipeline& sr, const UpscaleOptions& opt, int scale, int64_t width,
                               int64_t height, int index);

}  // namespace diffuse
