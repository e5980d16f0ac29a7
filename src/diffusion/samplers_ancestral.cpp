// Stochastic samplers: ancestral (euler_a, dpm2_a, dpm++2s_a), DDIM/DDPM, LCM and the
// DPM-Solver++ SDE family. All noise is drawn through opt.noise.
#include <cmath>

#include "core/error.h"
#include "diffusion/sampler_util.h"

namespace diffuse {

using namespace detail;

torch::Tensor sample_euler_ancestral(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                     const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "euler_a");
  const int n = static_cast<int>(s.size()) - 1;
  const double eta = eta_or(opt, 1.0);
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    auto [down, up] = ancestral_step(s[i], s[i + 1], eta);
    x = x + to_d(x, s[i], denoised) * (down - s[i]);
    if (s[i + 1] > 0 && eta > 0) x = x + need_noise(opt, "euler_a").randn_like(x) * (opt.s_noise * up);
    report(opt, i, s, x, denoised);
  }
  return x;
}

namespace {

// DDIM step in sigma space: x0 + sigma_down * eps + sigma_up * noise (Song et al. 2021 with
// eta; in VE coordinates this is the ancestral Euler step). `clamp_d`: derive the noise
// direction from the clamped x0 (DDPM's posterior) instead of the raw prediction (DDIM).
torch::Tensor ddim_loop(const Denoiser& D, torch::Tensor x, const std::vector<double>& s, const SamplerOptions& opt,
                        double eta, bool clamp_d, const char* name) {
  const int n = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    auto x0 = opt.x0_clamp > 0 ? denoised.clamp(-opt.x0_clamp, opt.x0_clamp) : denoised;
    auto eps = to_d(x, s[i], clamp_d ? x0 : denoised);
    auto [down, up] = ancestral_step(s[i], s[i + 1], eta);
    x = x0 + eps * down;
    if (s[i + 1] > 0 && eta > 0) x = x + need_noise(opt, name).randn_like(x) * (opt.s_noise * up);
    report(opt, i, s, x, x0);
  }
  return x;
}

}  // namespace

torch::Tensor sample_ddim(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  return ddim_loop(D, std::move(x), sigma_values(sigmas, "ddim"), opt, eta_or(opt, 0.0), false, "ddim");
}

torch::Tensor sample_ddpm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  return ddim_loop(D, std::move(x), sigma_values(sigmas, "ddpm"), opt, 1.0, true, "ddpm");
}

torch::Tensor sample_lcm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "lcm");
  const int n = static_cast<int>(s.size()) - 1;
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    x = denoised;
    if (s[i + 1] > 0) x = x + need_noise(opt, "lcm").randn_like(x) * s[i + 1];
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_dpm2_ancestral(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                    const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "dpm2_a");
  const int n = static_cast<int>(s.size()) - 1;
  const double eta = eta_or(opt, 1.0);
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    auto [down, up] = ancestral_step(s[i], s[i + 1], eta);
    auto d = to_d(x, s[i], denoised);
    if (down == 0) {
      x = x + d * (down - s[i]);
    } else {
      double s_mid = std::exp(0.5 * (std::log(s[i]) + std::log(down)));
      auto x2 = x + d * (s_mid - s[i]);
      auto d2 = to_d(x2, s_mid, denoise(D, x2, s_mid));
      x = x + d2 * (down - s[i]);
    }
    if (s[i + 1] > 0 && eta > 0) x = x + need_noise(opt, "dpm2_a").randn_like(x) * (opt.s_noise * up);
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_dpmpp_2s_ancestral(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                        const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "dpm++2s_a");
  const int n = static_cast<int>(s.size()) - 1;
  const double eta = eta_or(opt, 1.0);
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    auto [down, up] = ancestral_step(s[i], s[i + 1], eta);
    if (down == 0) {
      x = x + to_d(x, s[i], denoised) * (down - s[i]);
    } else {
      // DPM-Solver++(2S), t = -log(sigma), midpoint r = 1/2
      const double t = -std::log(s[i]), t_next = -std::log(down), h = t_next - t, sm = std::exp(-(t + 0.5 * h));
      auto x2 = (sm / s[i]) * x - std::expm1(-0.5 * h) * denoised;
      auto denoised2 = denoise(D, x2, sm);
      x = (down / s[i]) * x - std::expm1(-h) * denoised2;
    }
    if (s[i + 1] > 0 && eta > 0) x = x + need_noise(opt, "dpm++2s_a").randn_like(x) * (opt.s_noise * up);
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_dpmpp_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                               const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "dpm++sde");
  const int n = static_cast<int>(s.size()) - 1;
  const double eta = eta_or(opt, 1.0), r = 0.5, fac = 1 / (2 * r);
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    if (s[i + 1] == 0) {
      x = x + to_d(x, s[i], denoised) * (s[i + 1] - s[i]);
    } else {
      const double t = -std::log(s[i]), t_next = -std::log(s[i + 1]), h = t_next - t;
      const double ss = std::exp(-(t + h * r));
      // Brownian increments over [s_i, s_s] and [s_s, s_next]: the two noise draws k-diffusion
      // takes from its Brownian tree (over overlapping intervals) are correlated exactly so.
      torch::Tensor za, zb;
      if (eta > 0) {
        za = need_noise(opt, "dpm++sde").randn_like(x);
        zb = need_noise(opt, "dpm++sde").randn_like(x);
      }
      // step 1: to the intermediate sigma
      auto [sd, su] = ancestral_step(s[i], ss, eta);
      auto x2 = (sd / s[i]) * x - std::expm1(-(-std::log(sd) - t)) * denoised;
      if (eta > 0) x2 = x2 + za * (opt.s_noise * su);
      auto denoised2 = denoise(D, x2, ss);
      // step 2
      auto [sd2, su2] = ancestral_step(s[i], s[i + 1], eta);
      auto dd = (1 - fac) * denoised + fac * denoised2;
      x = (sd2 / s[i]) * x - std::expm1(-(-std::log(sd2) - t)) * dd;
      if (eta > 0) {
        const double wa = std::sqrt(s[i] - ss), wb = std::sqrt(ss - s[i + 1]), w = std::sqrt(s[i] - s[i + 1]);
        x = x + (za * wa + zb * wb) * (opt.s_noise * su2 / w);
      }
    }
    report(opt, i, s, x, denoised);
  }
  return x;
}

namespace {

torch::Tensor dpmpp_2m_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt,
                           bool heun, const char* name) {
  auto s = sigma_values(sigmas, name);
  const int n = static_cast<int>(s.size()) - 1;
  const double eta = eta_or(opt, 1.0);
  torch::Tensor old_denoised;
  double h_last = 0;
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    double h = 0;
    if (s[i + 1] == 0) {
      x = denoised;
    } else {
      const double t = -std::log(s[i]), tn = -std::log(s[i + 1]);
      h = tn - t;
      const double eta_h = eta * h;
      x = (s[i + 1] / s[i] * std::exp(-eta_h)) * x + (-std::expm1(-h - eta_h)) * denoised;
      if (old_denoised.defined()) {
        const double r = h_last / h;
        const double phi = -std::expm1(-h - eta_h);
        if (heun)
          x = x + ((phi / (-h - eta_h) + 1) * (1 / r)) * (denoised - old_denoised);
        else
          x = x + (0.5 * phi * (1 / r)) * (denoised - old_denoised);
      }
      if (eta > 0)
        x = x + need_noise(opt, name).randn_like(x) * (s[i + 1] * std::sqrt(-std::expm1(-2 * eta_h)) * opt.s_noise);
    }
    old_denoised = denoised;
    h_last = h;
    report(opt, i, s, x, denoised);
  }
  return x;
}

}  // namespace

torch::Tensor sample_dpmpp_2m_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                  const SamplerOptions& opt) {
  return dpmpp_2m_sde(D, std::move(x), sigmas, opt, false, "dpm++2m_sde");
}

torch::Tensor sample_dpmpp_2m_sde_heun(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                       const SamplerOptions& opt) {
  return dpmpp_2m_sde(D, std::move(x), sigmas, opt, true, "dpm++2m_sde_heun");
}

torch::Tensor sample_dpmpp_3m_sde(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                                  const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "dpm++3m_sde");
  const int n = static_cast<int>(s.size()) - 1;
  const double eta = eta_or(opt, 1.0);
  torch::Tensor den1, den2;
  double h1 = 0, h2 = 0;
  bool have1 = false, have2 = false;
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    double h = 0;
    bool have = false;
    if (s[i + 1] == 0) {
      x = denoised;
    } else {
      const double t = -std::log(s[i]), tn = -std::log(s[i + 1]);
      h = tn - t;
      have = true;
      const double h_eta = h * (eta + 1);
      x = std::exp(-h_eta) * x + (-std::expm1(-h_eta)) * denoised;
      const double phi2 = std::expm1(-h_eta) / h_eta + 1;
      if (have2) {
        const double r0 = h1 / h, r1 = h2 / h;
        auto d1_0 = (denoised - den1) / r0;
        auto d1_1 = (den1 - den2) / r1;
        auto d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1));
        auto d2 = (d1_0 - d1_1) / (r0 + r1);
        const double phi3 = phi2 / h_eta - 0.5;
        x = x + phi2 * d1 - phi3 * d2;
      } else if (have1) {
        const double r = h1 / h;
        x = x + phi2 * ((denoised - den1) / r);
      }
      if (eta > 0)
        x = x + need_noise(opt, "dpm++3m_sde").randn_like(x) *
                    (s[i + 1] * std::sqrt(-std::expm1(-2 * h * eta)) * opt.s_noise);
    }
    den2 = den1;
    den1 = denoised;
    h2 = h1;
    h1 = h;
    have2 = have1;
    have1 = have;
    report(opt, i, s, x, denoised);
  }
  return x;
}

}  // namespace diffuse
