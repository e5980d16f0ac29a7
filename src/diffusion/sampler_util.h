#pragma once
// Internal helpers shared by the sampler implementations (not part of the public API).
#include <torch/torch.h>

#include <string>
#include <vector>

#include "diffusion/sampler.h"

namespace diffuse::detail {

// Validated sigma values as doubles: 1-D, finite, non-increasing, all > 0 except possibly the last.
std::vector<double> sigma_values(const torch::Tensor& sigmas, const char* sampler);

// sigma as a [B] tensor on x's device: float64 for float64 x, else float32 (so that half
// precision samples do not round the noise level).
inline torch::Tensor sigma_batch(const torch::Tensor& x, double s) {
  const auto dt = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  return torch::full({x.size(0)}, s, x.options().dtype(dt));
}

inline torch::Tensor denoise(const Denoiser& D, const torch::Tensor& x, double s) { return D(x, sigma_batch(x, s)); }

// (x - denoised) / sigma
inline torch::Tensor to_d(const torch::Tensor& x, double s, const torch::Tensor& denoised) {
  return (x - denoised) / s;
}

NoiseSource& need_noise(const SamplerOptions& opt, const char* sampler);

inline double eta_or(const SamplerOptions& opt, double def) { return opt.eta < 0 ? def : opt.eta; }

// Karras churn: gamma for step i of `steps` at sigma s.
double churn_gamma(const SamplerOptions& opt, double s, int steps);

// Calls opt.callback (if set) after step i.
void report(const SamplerOptions& opt, int i, const std::vector<double>& s, const torch::Tensor& x,
            const torch::Tensor& denoised);
// Calls `callback` (if set) with one step's StepInfo.
void notify(const StepCallback& callback, int step, int total, double sigma, double sigma_next, const torch::Tensor& x,
            const torch::Tensor& denoised);

}  // namespace diffuse::detail
