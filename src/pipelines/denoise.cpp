#include "pipelines/denoise.h"

#include <algorithm>

#include "core/error.h"
#include "diffusion/sigmas.h"
#include "pipelines/image_noise.h"

namespace diffuse {

double estimate_noise_sigma(const torch::Tensor& image) {
  if (image.dim() != 3 && image.dim() != 4) throw Error("estimate_noise_sigma: expected [C, H, W] or [N, C, H, W]");
  auto x = image.to(torch::kCPU, torch::kFloat64);
  if (x.dim() == 3) x = x.unsqueeze(0);
  const int64_t h = x.size(-2), w = x.size(-1);
  if (h < 2 || w < 2) throw Error("estimate_noise_sigma: the image must be at least 2x2 pixels");
  using torch::indexing::Slice;
  auto a = x.index({"...", Slice(0, h - 1), Slice(0, w - 1)}), b = x.index({"...", Slice(0, h - 1), Slice(1, w)});
  auto c = x.index({"...", Slice(1, h), Slice(0, w - 1)}), d = x.index({"...", Slice(1, h), Slice(1, w)});
  auto hh = ((a - b - c + d) / 2).abs();
  // Noise clipped at the ends of the value range (an 8-bit file of a dark or bright image) is
  // smaller there: when many pixels sit at -1 or 1, only 2x2 blocks with no such pixel within
  // 2 px count.
  auto saturated = (((x + 1).abs() < 1e-6) | ((x - 1).abs() < 1e-6)).to(torch::kFloat64);
  if (saturated.mean().item<double>() > 0.02) {
    auto near = torch::max_pool2d(saturated.flatten(0, 1).unsqueeze(1), {6, 6}, {1, 1}, {2, 2});
    near = near.index({"...", Slice(0, h - 1), Slice(0, w - 1)}).reshape(hh.sizes());
    auto kept = hh.masked_select(near == 0);
    if (kept.numel() >= 16) hh = kept;
  }
  hh = hh.flatten();
  // The median of |N(0, sigma^2)| is 0.6745 sigma.
  return std::get<0>(hh.sort()).index({hh.size(0) / 2}).item<double>() / 0.6744897501960817;
}

torch::Tensor sigmas_from(const PixelPipeline& pipe, const std::string& schedule, int steps, double sigma) {
  if (steps < 1) throw Error("steps " + std::to_string(steps) + ": must be at least 1");
  const DiscreteSchedule ds(pipe.scheduler);
  const int limit = std::max(pipe.scheduler.num_train_timesteps, 100 * steps);
  torch::Tensor best;
  for (int total = steps; total <= limit; total += std::max(1, total / 16)) {
    torch::Tensor s;
    try {
      s = make_sigmas(schedule, total, ds, pipe.scheduler);
    } catch (const Error&) {
      if (best.defined()) break;  // more steps than the schedule has timesteps
      throw;
    }
    auto below = s.masked_select(s < sigma);  // ends in the schedule's 0
    best = torch::cat({torch::tensor({static_cast<float>(sigma)}), below});
    if (below.size(0) >= steps) break;
  }
  return best;
}

torch::Tensor denoise(const PixelPipeline& pipe, const torch::Tensor& noisy, const DenoiseOptions& o) {
  if (pipe.latent())
    throw Error(
        "this model samples the latent space of a VAE: pixel noise is not the Gaussian latent noise its "
        "denoiser removes, so denoising needs a pixel-space model");
  const int c = pipe.channels(), s = pipe.image_size();
  if (noisy.dim() != 4 || noisy.size(1) != c || noisy.size(2) != s || noisy.size(3) != s)
    throw Error("image: the model denoises " + std::to_string(s) + "x" + std::to_string(s) + " images with " +
                std::to_string(c) + (c == 1 ? " channel (grey)" : " channels") + ", got shape " +
                c10::str(noisy.sizes()));
  const DiscreteSchedule ds(pipe.scheduler);
  if (!(o.sigma > 0) || !std::isfinite(o.sigma))
    throw Error("sigma " + std::to_string(o.sigma) + ": must be a positive noise level");
  if (o.sigma > ds.sigma_max())
    throw Error("sigma " + std::to_string(o.sigma) + ": beyond the model's largest noise level " +
                std::to_string(ds.sigma_max()));
  int64_t label = o.class_label;
  if (pipe.class_conditional() && label < 0) {
    if (pipe.null_class < 0) throw Error("class: this model has no null class, so denoising needs a class");
    label = pipe.null_class;
  } else if (!pipe.class_conditional() && label >= 0) {
    throw Error("class: this model is unconditional: it has no classes");
  }
  std::string schedule_hint;
  const SamplerDesc& sampler = find_sampler(o.sampler, &schedule_hint);
  const std::string schedule = !o.schedule.empty() ? o.schedule : !schedule_hint.empty() ? schedule_hint : "discrete";
  const torch::Tensor sigmas = o.sample ? sigmas_from(pipe, schedule, o.steps, o.sigma) : torch::Tensor();
  CondDenoiser d = pipe.denoiser();
  torch::NoGradGuard no_grad;
  const int64_t n = noisy.size(0);
  auto out = torch::empty({n, c, s, s});
  const int64_t bs = std::max(1, o.batch_size);
  for (int64_t start = 0; start < n; start += bs) {
    const int64_t end = std::min(n, start + bs);
    Cond cond;
    if (label >= 0) cond.tensors["class_labels"] = torch::full({end - start}, label, torch::kInt64).to(pipe.device);
    Denoiser den = bind(d, cond);
    auto x = noisy.slice(0, start, end).to(pipe.device, torch::kFloat32);
    torch::Tensor y;
    if (!o.sample) {
      y = den(x, torch::full({end - start}, o.sigma, x.options()));
    } else {
      PerImageNoise noise(o.rng, o.seed + static_cast<uint64_t>(start), static_cast<int>(end - start));
      SamplerOptions so;
      if (!std::isnan(o.eta)) so.eta = o.eta;
      so.s_noise = o.s_noise;
      so.noise = &noise;
      so.callback = o.callback;
      y = sampler.fn(den, x, sigmas.to(pipe.device), so);
    }
    out.slice(0, start, end).copy_(y.to(torch::kCPU, torch::kFloat32));
  }
  return out;
}

}  // namespace diffuse
