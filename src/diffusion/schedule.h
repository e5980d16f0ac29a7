#pragma once
// Discrete-time noise schedules (betas -> alphas_cumprod -> sigmas), computed
// exactly as diffusers' schedulers compute them (float32).
#include <torch/torch.h>

#include <string>

namespace diffuse {

struct NoiseScheduleConfig {
  int num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";      // linear | scaled_linear | squaredcos_cap_v2
  std::string prediction_type = "epsilon";   // epsilon | v_prediction | sample
  std::string timestep_spacing = "leading";  // leading | trailing | linspace
  int steps_offset = 0;
  bool clip_sample = true;  // DDPM/DDIM: clamp x0 to [-clip_sample_range, clip_sample_range]
  double clip_sample_range = 1.0;
  bool set_alpha_to_one = true;  // DDIM: alpha of the step after the last one
  // Lin et al. 2023: rescale betas to zero terminal SNR (diffusers' rescale_zero_terminal_snr).
  bool rescale_betas_zero_snr = false;
};

// betas as diffusers computes them (float32, shape [num_train_timesteps]).
// Throws diffuse::Error for an unknown beta_schedule.
torch::Tensor make_betas(const NoiseScheduleConfig& cfg);
// cumprod(1 - betas), float32.
torch::Tensor make_alphas_cumprod(const NoiseScheduleConfig& cfg);

// A discrete-time (VP) model seen as a continuous sigma model:
// sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t). An alpha_bar of 0 (zero terminal SNR) is
// replaced by 2^-24, as diffusers' Euler-type schedulers do (sigma_max ~ 4096).
class DiscreteSchedule {
 public:
  explicit DiscreteSchedule(torch::Tensor alphas_cumprod);
  explicit DiscreteSchedule(const NoiseScheduleConfig& cfg);

  const torch::Tensor& alphas_cumprod() const { return alphas_cumprod_; }  // float32 [T]
  const torch::Tensor& sigmas() const { return sigmas_; }                  // float32 [T], ascending in t
  int num_timesteps() const { return static_cast<int>(sigmas_.size(0)); }
  double sigma_min() const;
  double sigma_max() const;

  // Continuous timestep for a sigma by interpolation in log-sigma (float, may be fractional).
  torch::Tensor sigma_to_t(const torch::Tensor& sigma) const;
  // Sigma for a (possibly fractional) timestep by interpolation in log-sigma.
  torch::Tensor t_to_sigma(const torch::Tensor& t) const;

 private:
  torch::Tensor alphas_cumprod_;
  torch::Tensor sigmas_;
  torch::Tensor log_sigmas_;
};

// Forward process for training: x_t = sqrt(a) x0 + sqrt(1 - a) noise at integer timesteps t [B].
torch::Tensor add_noise(const torch::Tensor& alphas_cumprod, const torch::Tensor& x0, const torch::Tensor& noise,
                        const torch::Tensor& t);
// Training target for the prediction type: noise (epsilon), sqrt(a) noise - sqrt(1-a) x0 (v), x0 (sample).
torch::Tensor prediction_target(const std::string& prediction_type, const torch::Tensor& alphas_cumprod,
                                const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t);

}  // namespace diffuse
