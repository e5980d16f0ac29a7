#pragma once
// Super-resolution with a model trained by `diffuse train --task superres` (SR3, Saharia et al.
// 2021): the low-resolution image, upsampled bicubically, conditions a diffusion model that samples
// the high-resolution image with any of the samplers and schedules.
//
//   auto up = diffuse::Upscaler::load("models/fashion-mnist-sr");
//   diffuse::UpscaleRequest req;
//   req.image = diffuse::decode_image(png_bytes, up.info().channels, "input");
//   auto result = up.upscale(req);
//   std::string png = diffuse::encode_image(result.image, "png", result.infotext);
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/model.h"

namespace diffuse {

struct UpscaleRequest {
  // The low-resolution image: [C, H, W] float in [-1, 1] (decode_image), C the model's channels
  // unless convert_channels is set.
  torch::Tensor image;
  // Convert a grey image to RGB (replicated) or an RGB(A) image to grey (ITU-R 601 luma, alpha over
  // white) when its channels differ from the model's; otherwise such an image is refused.
  bool convert_channels = false;
  int scale = 0;  // 0 = the model's scale; any other value must equal it
  std::string sampler = "dpm++2m";
  std::string schedule;  // "" = the sampler's natural default
  int steps = 20;
  int64_t seed = 0;
  std::string rng = "cpu";    // cpu or philox
  std::optional<double> eta;  // ancestral / DDIM noise (default: the sampler's)
  double s_noise = 1.0;
  // Images larger than the model's size are sampled as one canvas whose denoiser blends the
  // network's estimates on overlapping tiles of the model's size: this many shared pixels (at
  // the output resolution), in [0, model size / 2].
  int tile_overlap = 8;

  // Model-independent checks: one FieldError per bad field ("steps", "sampler", ...).
  std::vector<FieldError> check() const;
};

struct UpscalerInfo {
  std::string name, path;
  int scale = 2;
  int low_resolution_size = 0, high_resolution_size = 0;  // the training sizes (side, pixels)
  int channels = 1;
  std::string downsample, upsample;  // how the training inputs were made ("area", "bicubic")
};

struct UpscaleResult {
  torch::Tensor image;     // [C, scale H, scale W] float in [-1, 1] nominal, not clamped
  std::string infotext;    // A1111-style parameters text
  UpscaleRequest request;  // the request as run (scale resolved)
  double seconds = 0;
};

// Whether `path` is a super-resolution model folder (it holds a superres.json).
bool is_upscaler(const std::string& path);

class Upscaler {
 public:
  // Loads a super-resolution model folder; throws diffuse::Error for any other model.
  static Upscaler load(const std::string& path, const LoadOptions& options = {});

  const UpscalerInfo& info() const;
  // check() plus what depends on the model: the scale, the image's channels and size.
  std::vector<FieldError> validate(const UpscaleRequest& request) const;
  // Runs one request (throws RequestError when validate() finds problems, Cancelled when the
  // hooks' token is cancelled). Uses hooks.progress and hooks.cancel. Calls are serialised.
  UpscaleResult upscale(const UpscaleRequest& request, const GenerateHooks& hooks = {}) const;

  struct Impl;  // internal

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace diffuse
