#pragma once
// The central abstraction (k-diffusion's shape): a denoiser D(x, sigma) -> x0
// in variance-exploding coordinates, x = x0 + sigma * noise. Samplers see only
// a Denoiser. Models, parameterisations and guidance are wrappers that build one.
#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>

#include "diffusion/schedule.h"

namespace diffuse {

// Conditioning passed through to a model, opaque to samplers: named tensors
// batched along dim 0 (e.g. "class_labels" [B], "encoder_hidden_states" [B, L, C]).
struct Cond {
  std::map<std::string, torch::Tensor> tensors;

  bool empty() const { return tensors.empty(); }
  bool has(const std::string& k) const { return tensors.count(k) && tensors.at(k).defined(); }
  torch::Tensor get(const std::string& k) const { return has(k) ? tensors.at(k) : torch::Tensor(); }
  // Concatenates along dim 0, key by key (both must have the same keys).
  static Cond cat(const Cond& a, const Cond& b);
  // Repeats every tensor along dim 0 `n` times in blocks (for sample batches): the n copies
  // of each element are contiguous ([a, b] -> [a, a, b, b]), diffusers' num_images_per_prompt layout.
  Cond repeat(int64_t n) const;
};

// x: [B, ...], sigma: [B] (float) -> x0 estimate, same shape as x.
using Denoiser = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& sigma)>;
using CondDenoiser = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& sigma, const Cond& cond)>;

// A discrete-time network: model(x_in, timestep [B] float, cond) -> raw output (eps / v / x0).
using ModelFn = std::function<torch::Tensor(const torch::Tensor& x_in, const torch::Tensor& t, const Cond& cond)>;

enum class Prediction { Epsilon, V, Sample };
Prediction parse_prediction(const std::string& name);  // throws diffuse::Error naming the value
std::string to_string(Prediction p);

// Converts a raw model output at (x, sigma) in VE coordinates to x0:
// epsilon: x - sigma out; v: x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) out; sample: out.
torch::Tensor output_to_x0(Prediction prediction, const torch::Tensor& x, const torch::Tensor& sigma,
                           const torch::Tensor& out);

struct DiscreteDenoiserOptions {
  // Feed the nearest integer training timestep instead of the log-sigma interpolated one
  // (k-diffusion's `quantize`; what diffusers' integer-timestep schedulers feed the model).
  bool quantize = false;
  // > 0: clamp x0 to [-clip_sample_range, clip_sample_range] (diffusers' clip_sample).
  double clip_sample_range = 0.0;
};

// Wraps a discrete-time VP model: x_in = x / sqrt(sigma^2 + 1), t = sigma_to_t(sigma),
// then converts the output to x0 for the parameterisation.
CondDenoiser discrete_denoiser(ModelFn model, DiscreteSchedule schedule, Prediction prediction);
CondDenoiser discrete_denoiser(ModelFn model, DiscreteSchedule schedule, Prediction prediction,
                               DiscreteDenoiserOptions options);

// EDM preconditioning (Karras et al. 2022): D = c_skip x + c_out F(c_in x, c_noise(sigma)),
// with c_noise = log(sigma) / 4; `model` receives c_noise as its timestep.
CondDenoiser edm_denoiser(ModelFn model, double sigma_data);

// Binds conditioning: the plain denoiser samplers take.
Denoiser bind(CondDenoiser d, Cond cond);

// Classifier-free guidance: one batched pass over [uncond; cond],
// x0 = u + scale (c - u), then optional CFG-rescale (Lin et al. 2023) with factor `rescale`
// in [0, 1], applied as diffusers does: to the model's own output, i.e. to the implied noise
// (`space` Epsilon), velocity (V: v of the variance-preserving process with alpha = 1/sqrt(1 + sigma^2))
// or x0 (Sample) prediction. Conditioning tensors of batch 1 are repeated to the batch of x.
Denoiser cfg_denoiser(CondDenoiser d, Cond cond, Cond uncond, double scale, double rescale = 0.0,
                      Prediction space = Prediction::Epsilon);

// Guidance in a limited interval (Kynkaanniemi et al. 2024): `guided` where
// sigma_lo < sigma <= sigma_hi, `unguided` (the conditional denoiser) elsewhere, per sample.
// Outside the interval the unconditional pass is skipped. Throws diffuse::Error unless
// 0 <= sigma_lo < sigma_hi.
Denoiser guidance_interval(Denoiser guided, Denoiser unguided, double sigma_lo, double sigma_hi);

// Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"):
// x0 = g + scale (m - g), where `guide` is a weaker version of the main model (smaller, or
// trained for less time) conditioned like it. Unlike CFG it also guides unconditional models.
// scale 1 returns `main` without calling `guide`. Throws diffuse::Error for empty denoisers
// or a non-finite scale.
Denoiser autoguidance(Denoiser main, Denoiser guide, double scale);

}  // namespace diffuse
