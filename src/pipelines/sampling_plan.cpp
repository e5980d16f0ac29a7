#include "pipelines/sampling_plan.h"

#include "core/error.h"
#include "diffusion/sigmas.h"

namespace diffuse {

SamplingPlan make_sampling_plan(const NoiseScheduleConfig& cfg, const std::string& sampler_name,
                                const std::string& schedule, const std::string& sigmas_csv, int steps,
                                PlanStyle style) {
  SamplingPlan p;
  std::string hint;
  p.sampler = &find_sampler(sampler_name, &hint);
  const std::string& name = p.sampler->name;
  const bool ddim_family = name == "ddim" || name == "ddpm";
  if (ddim_family && cfg.clip_sample) p.x0_clamp = cfg.clip_sample_range;
  DiscreteSchedule ds(cfg);
  TimestepStyle fam = p.sampler->timesteps;
  if (style == PlanStyle::KDiffusion && !ddim_family) fam = TimestepStyle::Euler;
  if (!sigmas_csv.empty()) {
    p.schedule = "custom";
    p.sigmas = parse_sigmas(sigmas_csv);
    return p;
  }
  if (steps < 1) throw Error("steps " + std::to_string(steps) + ": must be at least 1");
  p.schedule = !schedule.empty() ? schedule : hint;
  if (p.schedule.empty() && fam != TimestepStyle::Euler) {
    // diffusers' own integer timesteps; DDIM/PLMS end on alphas_cumprod[0] unless set_alpha_to_one
    auto t = spaced_timesteps(cfg, steps, fam);
    auto s = sigmas_at_timesteps(ds, t);
    const bool final_min = fam == TimestepStyle::Ddim && name != "ddpm" && !cfg.set_alpha_to_one;
    p.sigmas = torch::cat({s, torch::full({1}, final_min ? ds.sigma_min() : 0.0, torch::kFloat32)});
    p.quantize = true;
    p.vp_init = true;
    return p;
  }
  if (p.schedule.empty()) p.schedule = "discrete";
  p.sigmas = make_sigmas(p.schedule, steps, ds, cfg);
  if (style == PlanStyle::KDiffusion) return p;  // x = noise * s0, log-sigma timesteps
  // diffusers: Euler-type schedulers' init_noise_sigma is sigma_max for linspace / trailing
  // spacing, else sqrt(sigma_max^2 + 1); the VP schedulers start at 1 in VP coordinates and feed
  // the UNet integer timesteps whatever their sigmas.
  p.vp_init = fam != TimestepStyle::Euler || cfg.timestep_spacing == "leading";
  p.quantize = fam != TimestepStyle::Euler;
  return p;
}

}  // namespace diffuse
