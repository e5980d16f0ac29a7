#pragma once
// Sigma schedules: pure functions from (schedule name, steps, model schedule) to a
// descending float32 sigma tensor ending in 0, as samplers take it.
#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "diffusion/schedule.h"

namespace diffuse {

// Descending sigmas (float32, [steps+1]) ending in 0 for schedule name:
//   discrete          the model's own timesteps with cfg.timestep_spacing leading|trailing|linspace
//                     (+ steps_offset), sigma interpolated linearly at fractional timesteps
//                     (exactly diffusers' EulerDiscreteScheduler)
//   karras            Karras et al. rho = 7 between the model's sigma_min and sigma_max
//   exponential       uniform in log-sigma between sigma_min and sigma_max
//   normal            uniform in (continuous) timestep from T-1 to 0 (ComfyUI "normal")
//   sgm_uniform       uniform in timestep from T-1 to 0 without the end point (ComfyUI)
//   simple            every (T/steps)-th training sigma (ComfyUI "simple")
//   beta              training sigmas at Beta(0.6, 0.6) quantiles (ComfyUI "beta"; repeated
//                     timesteps are dropped, so it may return fewer than steps+1 values)
//   kl_optimal        tan(linear in arctan(sigma)) (Sabour et al. 2024)
//   align_your_steps  the published SD1.5 AYS sigmas (log-linearly interpolated to `steps`)
//   align_your_steps_sdxl  the published SDXL AYS sigmas
// Throws diffuse::Error for an unknown name or steps < 1.
torch::Tensor make_sigmas(const std::string& schedule, int steps, const DiscreteSchedule& ds,
                          const NoiseScheduleConfig& cfg);
struct SigmaScheduleDesc {
  std::string name;
  std::string summary;  // one line
  std::function<torch::Tensor(int steps, const DiscreteSchedule& ds, const NoiseScheduleConfig& cfg)> fn;
};
// The schedule table, in listing order (adding a schedule is one entry).
const std::vector<SigmaScheduleDesc>& sigma_schedules();

// Custom "--sigmas a,b,c": finite, >= 0, strictly descending, at least one > 0; appends 0 if the
// last value is not 0. Throws diffuse::Error naming the offending entry.
torch::Tensor parse_sigmas(const std::string& csv);

// img2img strength: keeps the last int(steps * strength) steps, as diffusers' img2img pipelines
// do (t_start = steps - int(steps * strength)); strength in [0, 1]. The result starts at an
// intermediate sigma; strength 0 leaves only the final 0.
torch::Tensor truncate_sigmas(const torch::Tensor& sigmas, double strength);

// ---- building blocks -------------------------------------------------------------------

// diffusers' per-scheduler timestep conventions for set_timesteps(steps).
enum class TimestepStyle {
  Euler,      // Euler/EulerAncestral/Heun/LMS/DPM2: float32, fractional for linspace
  Ddim,       // DDIM/DDPM: integers (linspace rounded)
  DpmSolver,  // DPMSolverMultistep/UniPC: integers, linspace/leading over steps+1 points
};
// Descending timesteps for cfg.timestep_spacing and cfg.steps_offset.
std::vector<double> spaced_timesteps(const NoiseScheduleConfig& cfg, int steps,
                                     TimestepStyle style = TimestepStyle::Euler);
// Sigmas at (fractional) timesteps by linear interpolation in sigma (numpy.interp over the
// training sigmas, as diffusers does); float32 [t.size()], no trailing 0.
torch::Tensor sigmas_at_timesteps(const DiscreteSchedule& ds, const std::vector<double>& t);

// Karras et al. (2022) schedule (float32, [steps+1], ending in 0), computed in float64.
torch::Tensor karras_sigmas(int steps, double sigma_min, double sigma_max, double rho = 7.0);
// Uniform in log-sigma (float32, [steps+1], ending in 0).
torch::Tensor exponential_sigmas(int steps, double sigma_min, double sigma_max);

// Regularised incomplete beta function I_x(a, b) and its inverse (the Beta(a, b) quantile).
double incomplete_beta(double a, double b, double x);
double beta_quantile(double a, double b, double p);

}  // namespace diffuse
