#pragma once
// Samplers: free functions over a Denoiser and a descending sigma schedule that
// ends in 0 (k-diffusion's shape). x enters scaled to sigmas[0] (x = noise * sigmas[0]
// for txt2img). They never see models or guidance.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "diffusion/denoiser.h"
#include "diffusion/noise.h"

namespace diffuse {

struct StepInfo {
  int step = 0;        // 0-based step index
  int total = 0;       // number of steps (sigmas.size(0) - 1)
  double sigma = 0;    // sigma at the start of the step
  double sigma_next = 0;
  torch::Tensor x;       // current sample
  torch::Tensor denoised;  // current x0 estimate
};
// Called after each step; throw to cancel.
using StepCallback = std::function<void(const StepInfo&)>;

struct SamplerOptions {
  double eta = 1.0;      // ancestral / DDIM noise amount
  double s_noise = 1.0;  // noise multiplier
  double s_churn = 0.0, s_tmin = 0.0, s_tmax = std::numeric_limits<double>::infinity();  // Karras churn
  NoiseSource* noise = nullptr;  // required by stochastic samplers
  StepCallback callback;
};

using SamplerFn = std::function<torch::Tensor(const Denoiser&, torch::Tensor x, const torch::Tensor& sigmas,
                                              const SamplerOptions&)>;

struct SamplerDesc {
  std::string name;       // canonical name, e.g. "dpm++2m"
  std::string summary;    // one line
  int order = 1;
  bool stochastic = false;
  SamplerFn fn;
};

// All samplers, in listing order.
const std::vector<SamplerDesc>& samplers();
// Looks up a sampler by canonical name or alias (A1111 names such as "DPM++ 2M Karras",
// diffusers class names such as "EulerDiscreteScheduler"). `schedule_hint` receives the
// schedule an alias implies ("karras" for "... Karras"), or is left unchanged.
// Throws diffuse::Error listing the valid names.
const SamplerDesc& find_sampler(const std::string& name, std::string* schedule_hint = nullptr);

}  // namespace diffuse
