// Single-step deterministic samplers: euler, heun, dpm2 (with optional Karras churn),
// plus the shared sampler helpers.
#include <cmath>

#include "core/error.h"
#include "diffusion/sampler_util.h"

namespace diffuse {

namespace detail {

std::vector<double> sigma_values(const torch::Tensor& sigmas, const char* sampler) {
  const std::string name = sampler;
  if (!sigmas.defined() || sigmas.dim() != 1 || sigmas.size(0) < 1)
    throw Error(name + ": sigmas must be a non-empty 1-D tensor");
  auto c = sigmas.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  std::vector<double> s(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  for (size_t i = 0; i < s.size(); ++i) {
    if (!std::isfinite(s[i]) || s[i] < 0) throw Error(name + ": sigma " + std::to_string(i) + " is not finite >= 0");
    if (i + 1 < s.size() && s[i] <= 0) throw Error(name + ": only the last sigma may be 0");
    if (i > 0 && s[i] > s[i - 1]) throw Error(name + ": sigmas must be non-increasing");
  }
  return s;
}

NoiseSource& need_noise(const SamplerOptions& opt, const char* sampler) {
  if (!opt.noise) throw Error(std::string(sampler) + ": a noise source is required (SamplerOptions::noise)");
  return *opt.noise;
}

double churn_gamma(const SamplerOptions& opt, double s, int steps) {
  if (!(opt.s_churn > 0) || steps <= 0) return 0.0;
  if (!(opt.s_tmin <= s && s <= opt.s_tmax)) return 0.0;
  return std::min(opt.s_churn / steps, std::sqrt(2.0) - 1);
}

void report(const SamplerOptions& opt, int i, const std::vector<double>& s, const torch::Tensor& x,
            const torch::Tensor& denoised) {
  notify(opt.callback, i, static_cast<int>(s.size()) - 1, s[i], s[i + 1], x, denoised);
}

void notify(const StepCallback& callback, int step, int total, double sigma, double sigma_next, const torch::Tensor& x,
            const torch::Tensor& denoised) {
  if (!callback) return;
  StepInfo info;
  info.step = step;
  info.total = total;
  info.sigma = sigma;
  info.sigma_next = sigma_next;
  info.x = x;
  info.denoised = denoised;
  callback(info);
}

}  // namespace detail

using namespace detail;

std::pair<double, double> ancestral_step(double sigma_from, double sigma_to, double eta) {
  if (!(eta > 0) || sigma_to <= 0) return {sigma_to, 0.0};
  double up = eta * std::sqrt(std::max(0.0, sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) /
                                                (sigma_from * sigma_from)));
  up = std::min(sigma_to, up);
  double down = std::sqrt(std::max(0.0, sigma_to * sigma_to - up * up));
  return {down, up};
}

namespace {

// Churn (Karras et al. 2022, Alg. 2): raises the noise level of x to sigma_hat = sigma (1 + gamma).
double apply_churn(torch::Tensor& x, double s, int steps, const SamplerOptions& opt, const char* name) {
  double gamma = churn_gamma(opt, s, steps);
  if (gamma <= 0) return s;
  double s_hat = s * (gamma + 1);
  x = x + need_noise(opt, name).randn_like(x) * (opt.s_noise * std::sqrt(s_hat * s_hat - s * s));
  return s_hat;
}

}  // namespace

torch::Tensor sample_euler(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "euler");
  const int n = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < n; ++i) {
    double sh = apply_churn(x, s[i], n, opt, "euler");
    auto denoised = denoise(D, x, sh);
    auto d = to_d(x, sh, denoised);
    x = x + d * (s[i + 1] - sh);
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_heun(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "heun");
  const int n = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < n; ++i) {
    double sh = apply_churn(x, s[i], n, opt, "heun");
    auto denoised = denoise(D, x, sh);
    auto d = to_d(x, sh, denoised);
    const double dt = s[i + 1] - sh;
    if (s[i + 1] == 0) {
      x = x + d * dt;
    } else {
      auto x2 = x + d * dt;
      auto d2 = to_d(x2, s[i + 1], denoise(D, x2, s[i + 1]));
      x = x + (d + d2) / 2 * dt;
    }
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_dpm2(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "dpm2");
  const int n = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < n; ++i) {
    double sh = apply_churn(x, s[i], n, opt, "dpm2");
    auto denoised = denoise(D, x, sh);
    auto d = to_d(x, sh, denoised);
    if (s[i + 1] == 0) {
      x = x + d * (s[i + 1] - sh);
    } else {
      double s_mid = std::exp(0.5 * (std::log(sh) + std::log(s[i + 1])));
      auto x2 = x + d * (s_mid - sh);
      auto d2 = to_d(x2, s_mid, denoise(D, x2, s_mid));
      x = x + d2 * (s[i + 1] - sh);
    }
    report(opt, i, s, x, denoised);
  }
  return x;
}

}  // namespace diffuse
