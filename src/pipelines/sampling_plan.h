#pragma once
// How a pipeline turns (sampler, schedule, steps) into sigmas and start conditions. With
// diffusers' conventions, a sampler whose diffusers scheduler spaces its own timesteps gets those
// timesteps, feeds the network integer timesteps, scales the initial noise as the scheduler's
// init_noise_sigma does, and (DDIM, DDPM) clamps x0 as clip_sample does, keeping the noise
// direction of the unclamped prediction.
#include <torch/torch.h>

#include <string>

#include "diffusion/sampler.h"
#include "diffusion/schedule.h"

namespace diffuse {

enum class PlanStyle {
  Diffusers,   // every sampler follows its diffusers scheduler when no schedule is named (SD)
  KDiffusion,  // k-diffusion's conventions, except ddim / ddpm, which follow diffusers
};

struct SamplingPlan {
  const SamplerDesc* sampler = nullptr;
  std::string schedule;   // as reported in the parameters ("custom" for explicit sigmas)
  torch::Tensor sigmas;   // full schedule (before img2img truncation), descending
  bool quantize = false;  // integer timesteps into the network
  bool vp_init = false;   // txt2img x = noise * sqrt(1 + s0^2) (VP schedulers), else noise * s0
  // > 0: the sampler clamps x0 to [-x0_clamp, x0_clamp] (diffusers' clip_sample for DDIM / DDPM);
  // the denoiser then must not clamp.
  double x0_clamp = 0.0;

  double init_scale(double s0) const { return vp_init ? std::sqrt(1 + s0 * s0) : s0; }
  // Whether the denoiser should clamp x0 itself (clip_sample, for samplers that do not).
  bool denoiser_clamps(const NoiseScheduleConfig& cfg) const { return cfg.clip_sample && x0_clamp <= 0; }
};

// `sigmas_csv` (comma-separated, may be empty) overrides schedule and steps. Throws diffuse::Error
// naming the sampler, schedule or steps.
SamplingPlan make_sampling_plan(const NoiseScheduleConfig& cfg, const std::string& sampler, const std::string& schedule,
                                const std::string& sigmas_csv, int steps, PlanStyle style);

}  // namespace diffuse
