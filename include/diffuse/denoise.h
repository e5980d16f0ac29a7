#pragma once
// Denoising an image with a pixel-space model: an image with additive Gaussian noise of standard
// deviation sigma ([-1, 1] units) is the model's own noisy state at noise level sigma.
//
//   auto model = diffuse::Model::load("models/fashion-mnist");
//   diffuse::DenoiseRequest req;
//   req.image = bytes_of("noisy.png");  // sigma estimated from the image
//   auto res = diffuse::denoise(model, req);
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/model.h"

namespace diffuse {

struct DenoiseRequest {
  std::string image;            // PNG or JPEG bytes, the model's size and channel count
  std::optional<double> sigma;  // the noise's standard deviation in [-1, 1] units; unset = estimated
  std::string mode = "mmse";    // mmse: E[x0 | x] in one denoiser call; sample: sample from sigma down to 0
  std::string class_label;      // "class" in errors: condition on this class ("" = the null class)
  // Sampling (mode sample): as in GenerationRequest.
  std::string sampler;       // "" = the model's recommended sampler
  std::string schedule;      // "" = the sampler's default
  std::optional<int> steps;  // steps from sigma down to 0 (default 20)
  int64_t seed = -1;         // -1 = random
  std::string rng = "cpu";
  std::optional<double> eta;
  double s_noise = 1.0;

  // Problems that need no model (ranges, names); empty when valid.
  std::vector<FieldError> validate() const;
};

struct DenoiseResult {
  torch::Tensor image;           // [C, H, W] float in [-1, 1] nominal
  double sigma = 0;              // the noise level used
  double estimated_sigma = 0;    // the estimate from the image (reported even when sigma was given)
  bool sigma_estimated = false;  // sigma is the estimate
  std::string infotext;          // parameters text for the PNG
  DenoiseRequest request;        // as run: defaults filled in, seed resolved
  double seconds = 0;
};

// Throws RequestError naming the field at fault: image (unreadable, or another size or channel count
// than the model's: the message says which), sigma, mode, class, sampler, schedule, steps, and
// "model" for models that cannot denoise pixels (Stable Diffusion and latent models, whose noise
// lives in a VAE's latent space). Calls on one Model are serialised with its generations.
DenoiseResult denoise(const Model& model, const DenoiseRequest& request, const GenerateHooks& hooks = {});

// The noise standard deviation of an image [C, H, W] (or [N, C, H, W]) with additive white Gaussian
// noise, in its units: Donoho's median absolute deviation of the finest diagonal Haar details.
double estimate_noise_sigma(const torch::Tensor& image);

}  // namespace diffuse
