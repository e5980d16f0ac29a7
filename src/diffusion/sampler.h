#pragma once
// Samplers: free functions over a Denoiser and a descending sigma schedule that
// ends in 0 (k-diffusion's shape). x enters scaled to sigmas[0] (x = noise * sigmas[0]
// for txt2img). They never see models or guidance.
#include <torch/torch.h>

#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "diffusion/denoiser.h"
#include "diffusion/noise.h"
#include "diffusion/sigmas.h"

namespace diffuse {

struct StepInfo {
  int step = 0;      // 0-based step index
  int total = 0;     // number of steps (sigmas.size(0) - 1)
  double sigma = 0;  // sigma at the start of the step
  double sigma_next = 0;
  torch::Tensor x;         // current sample
  torch::Tensor denoised;  // current x0 estimate
};
// Called after each step; throw to cancel.
using StepCallback = std::function<void(const StepInfo&)>;

struct SamplerOptions {
  // Ancestral / DDIM noise amount; < 0 means the sampler's default (1 for ancestral and SDE
  // samplers, 0 for ddim). Set explicitly to override.
  double eta = -1.0;
  double s_noise = 1.0;                                                                  // noise multiplier
  double s_churn = 0.0, s_tmin = 0.0, s_tmax = std::numeric_limits<double>::infinity();  // Karras churn
  NoiseSource* noise = nullptr;  // required by stochastic samplers
  StepCallback callback;
  int max_order = 0;      // multistep samplers (lms, ipndm, deis, unipc): 0 = the sampler's default
  double x0_clamp = 0.0;  // ddim/ddpm: > 0 clamps x0 to [-x0_clamp, x0_clamp] (diffusers clip_sample;
                          // ddim keeps the unclamped noise direction, as diffusers does)
};

using SamplerFn =
    std::function<torch::Tensor(const Denoiser&, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions&)>;

struct SamplerDesc {
  std::string name;     // canonical name, e.g. "dpm++2m"
  std::string summary;  // one line
  int order = 1;
  bool stochastic = false;
  SamplerFn fn;
  std::string a1111;  // A1111's display name ("DPM++ 2M"; "" = none); its Karras / Exponential
                      // variants ("DPM++ 2M Karras") name the schedule too
  // The timestep convention of the diffusers scheduler it stands for (Stable Diffusion pipelines
  // reproduce diffusers' timesteps with it when no schedule is named).
  TimestepStyle timesteps = TimestepStyle::Euler;
};

// ---- individual samplers (SamplerFn signature) -----------------------------------------
// Deterministic (unless s_churn > 0 for euler/heun/dpm2).
torch::Tensor sample_euler(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_heun(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_dpm2(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_lms(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_ipndm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_deis(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_dpmpp_2m(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                              const SamplerOptions& opt);
torch::Tensor sample_unipc(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_unipc_bh1(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                               const SamplerOptions& opt);
torch::Tensor sample_plms(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_pndm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
// pndm with an explicit midpoint rule for its three Runge-Kutta warm-up steps (the default is
// the geometric mean; diffusers uses the sigma of the midpoint training timestep).
using MidpointFn = std::function<double(double sigma, double sigma_next)>;
torch::Tensor sample_pndm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt,
                          const MidpointFn& midpoint);
// DDIM (eta, default 0; eta = 1 is DDPM's posterior) and DDPM (eta fixed at 1).
torch::Tensor sample_ddim(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
torch::Tensor sample_ddpm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);
// Ancestral / SDE samplers (need opt.noise).
torch::Tensor sample_euler_ancestral(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                     const SamplerOptions& opt);
torch::Tensor sample_dpm2_ancestral(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                    const SamplerOptions& opt);
torch::Tensor sample_dpmpp_2s_ancestral(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                        const SamplerOptions& opt);
torch::Tensor sample_dpmpp_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                               const SamplerOptions& opt);
torch::Tensor sample_dpmpp_2m_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                  const SamplerOptions& opt);
torch::Tensor sample_dpmpp_2m_sde_heun(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                       const SamplerOptions& opt);
torch::Tensor sample_dpmpp_3m_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                  const SamplerOptions& opt);
torch::Tensor sample_lcm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt);

// k-diffusion's get_ancestral_step: (sigma_down, sigma_up) for a step sigma_from -> sigma_to.
std::pair<double, double> ancestral_step(double sigma_from, double sigma_to, double eta);

// All samplers, in listing order.
const std::vector<SamplerDesc>& samplers();
// Looks up a sampler by canonical name or alias (A1111 names such as "DPM++ 2M Karras",
// diffusers class names such as "EulerDiscreteScheduler"). `schedule_hint` receives the
// schedule an alias implies ("karras" for "... Karras"), or is left unchanged.
// Throws diffuse::Error listing the valid names.
const SamplerDesc& find_sampler(const std::string& name, std::string* schedule_hint = nullptr);

}  // namespace diffuse
