#include "diffusion/repaint.h"

#include <cmath>
#include <map>

#include "core/error.h"
#include "diffusion/sampler_util.h"

namespace diffuse {

std::vector<int> repaint_timesteps(int num_train_timesteps, int steps, int jump_length, int jump_n_sample) {
  if (steps < 1) throw Error("steps " + std::to_string(steps) + ": must be at least 1");
  if (jump_length < 1) throw Error("jump_length " + std::to_string(jump_length) + ": must be at least 1");
  if (jump_n_sample < 1) throw Error("jump_n_sample " + std::to_string(jump_n_sample) + ": must be at least 1");
  steps = std::min(steps, num_train_timesteps);
  std::map<int, int> jumps;
  for (int j = 0; j < steps - jump_length; j += jump_length) jumps[j] = jump_n_sample - 1;
  std::vector<int> t_idx;
  int t = steps;
  while (t >= 1) {
    t -= 1;
    t_idx.push_back(t);
    auto it = jumps.find(t);
    if (it != jumps.end() && it->second > 0) {
      it->second -= 1;
      for (int k = 0; k < jump_length; ++k) t_idx.push_back(++t);
    }
  }
  const int stride = num_train_timesteps / steps;
  for (int& v : t_idx) v *= stride;
  return t_idx;
}

torch::Tensor sample_repaint(const Denoiser& D, const torch::Tensor& noise, const torch::Tensor& known,
                             const torch::Tensor& mask, const torch::Tensor& betas, const torch::Tensor& alphas_cumprod,
                             const RePaintOptions& opt) {
  if (!opt.noise) throw Error("RePaint needs a noise source");
  if (known.sizes() != noise.sizes())
    throw Error("RePaint: the known image " + c10::str(known.sizes()) + " and the sample " + c10::str(noise.sizes()) +
                " differ in shape");
  const int T = static_cast<int>(alphas_cumprod.size(0));
  if (betas.size(0) != T) throw Error("RePaint: betas and alphas_cumprod differ in length");
  const auto ts = repaint_timesteps(T, opt.steps, opt.jump_length, opt.jump_n_sample);
  const int steps = std::min(opt.steps, T), stride = T / steps;
  auto ac = alphas_cumprod.to(torch::kCPU, torch::kFloat64);
  auto bt = betas.to(torch::kCPU, torch::kFloat64);
  auto alpha = [&](int t) { return t >= 0 ? ac[t].item<double>() : 1.0; };
  auto keep = (1 - mask.to(noise.device(), noise.scalar_type()));
  auto x0_known = known.to(noise.device(), noise.scalar_type());
  int total = 0;
  for (size_t i = 0; i < ts.size(); ++i)
    if (i == 0 || ts[i] < ts[i - 1]) ++total;
  torch::Tensor x = noise;  // VP coordinates
  int t_last = ts[0] + 1, done = 0;
  for (int t : ts) {
    if (t < t_last) {
      const double a = alpha(t), a_prev = alpha(t - stride);
      const double sigma = std::sqrt((1 - a) / a), sigma_prev = std::sqrt((1 - a_prev) / a_prev);
      auto x_ve = x / std::sqrt(a);
      auto s = torch::full({x.size(0)}, sigma, x.options());
      auto x0 = D(x_ve, s);
      auto eps = (x_ve - x0) / sigma;
      if (opt.x0_clamp > 0) x0 = x0.clamp(-opt.x0_clamp, opt.x0_clamp);
      auto n = opt.noise->randn_like(x);
      const double var = (1 - a_prev) / (1 - a) * (1 - a / a_prev);
      const double std_dev = opt.eta * std::sqrt(var);
      auto unknown = std::sqrt(a_prev) * x0 + std::sqrt(std::max(0.0, 1 - a_prev - std_dev * std_dev)) * eps;
      if (t > 0 && opt.eta > 0) unknown = unknown + std_dev * n;
      auto known_part = std::sqrt(a_prev) * x0_known + std::sqrt(1 - a_prev) * n;
      x = keep * known_part + (1 - keep) * unknown;
      detail::notify(opt.callback, done++, total, sigma, sigma_prev, x, x0);
      if (opt.trace) opt.trace(t, false, x);
    } else {
      for (int k = 0; k < stride; ++k) {
        const double beta = bt[t_last + k].item<double>();
        x = std::sqrt(1 - beta) * x + std::sqrt(beta) * opt.noise->randn_like(x);
      }
      if (opt.trace) opt.trace(t, true, x);
    }
    t_last = t;
  }
  return x;
}

}  // namespace diffuse
