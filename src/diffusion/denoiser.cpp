#include "diffusion/denoiser.h"

#include <cmath>

#include "core/error.h"

namespace diffuse {

namespace {

// sigma [B] -> [B, 1, ..., 1] in x's dtype/device for broadcasting.
torch::Tensor bcast(const torch::Tensor& sigma, const torch::Tensor& x) {
  auto s = sigma.to(x.device(), x.scalar_type());
  if (s.dim() == 0) s = s.expand({x.size(0)});
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = s.size(0);
  return s.reshape(shape);
}

void check_sigma(const torch::Tensor& x, const torch::Tensor& sigma) {
  if (!(sigma.dim() == 0 || (sigma.dim() == 1 && (sigma.size(0) == x.size(0) || sigma.size(0) == 1))))
    throw Error("denoiser: sigma must have shape [B] matching x");
}

}  // namespace

Cond Cond::cat(const Cond& a, const Cond& b) {
  if (a.tensors.size() != b.tensors.size()) throw Error("Cond::cat: conditionings have different keys");
  Cond out;
  for (const auto& [k, ta] : a.tensors) {
    auto it = b.tensors.find(k);
    if (it == b.tensors.end()) throw Error("Cond::cat: key '" + k + "' missing from the second conditioning");
    const auto& tb = it->second;
    if (ta.defined() != tb.defined()) throw Error("Cond::cat: key '" + k + "' defined in only one conditioning");
    out.tensors[k] = ta.defined() ? torch::cat({ta, tb.to(ta.device(), ta.scalar_type())}, 0) : torch::Tensor();
  }
  return out;
}

Cond Cond::repeat(int64_t n) const {
  if (n < 1) throw Error("Cond::repeat: n must be >= 1");
  Cond out;
  for (const auto& [k, t] : tensors) out.tensors[k] = (t.defined() && n > 1) ? t.repeat_interleave(n, 0) : t;
  return out;
}

Prediction parse_prediction(const std::string& name) {
  if (name == "epsilon" || name == "eps") return Prediction::Epsilon;
  if (name == "v_prediction" || name == "v") return Prediction::V;
  if (name == "sample" || name == "x0") return Prediction::Sample;
  throw Error("prediction_type: unknown value '" + name + "' (expected epsilon, v_prediction or sample)");
}

std::string to_string(Prediction p) {
  switch (p) {
    case Prediction::Epsilon:
      return "epsilon";
    case Prediction::V:
      return "v_prediction";
    case Prediction::Sample:
      return "sample";
  }
  return "epsilon";
}

torch::Tensor output_to_x0(Prediction prediction, const torch::Tensor& x, const torch::Tensor& sigma,
                           const torch::Tensor& out) {
  auto s = bcast(sigma, x);
  switch (prediction) {
    case Prediction::Epsilon:
      return x - s * out;
    case Prediction::V: {
      auto s2 = s * s + 1;
      return x / s2 - s / s2.sqrt() * out;
    }
    case Prediction::Sample:
      return out;
  }
  return out;
}

CondDenoiser discrete_denoiser(ModelFn model, DiscreteSchedule schedule, Prediction prediction) {
  return discrete_denoiser(std::move(model), std::move(schedule), prediction, DiscreteDenoiserOptions{});
}

CondDenoiser discrete_denoiser(ModelFn model, DiscreteSchedule schedule, Prediction prediction,
                               DiscreteDenoiserOptions opt) {
  if (!model) throw Error("discrete_denoiser: empty model");
  return [model = std::move(model), schedule = std::move(schedule), prediction, opt](
             const torch::Tensor& x, const torch::Tensor& sigma, const Cond& cond) {
    check_sigma(x, sigma);
    auto sig = sigma.dim() == 0 ? sigma.expand({x.size(0)}) : sigma;
    if (sig.size(0) != x.size(0)) sig = sig.expand({x.size(0)});
    auto s = bcast(sig, x);
    auto x_in = x / (s * s + 1).sqrt();
    torch::Tensor t;
    if (opt.quantize) {
      t = schedule.sigma_to_t(sig).round();
    } else {
      t = schedule.sigma_to_t(sig);
    }
    t = t.to(x.device(), torch::kFloat32);
    auto out = model(x_in, t, cond);
    if (out.sizes() != x.sizes()) throw Error("discrete_denoiser: model output shape differs from its input");
    auto x0 = output_to_x0(prediction, x, sig, out.to(x.scalar_type()));
    if (opt.clip_sample_range > 0) x0 = x0.clamp(-opt.clip_sample_range, opt.clip_sample_range);
    return x0;
  };
}

CondDenoiser edm_denoiser(ModelFn model, double sigma_data) {
  if (!model) throw Error("edm_denoiser: empty model");
  if (!(sigma_data > 0)) throw Error("edm_denoiser: sigma_data must be > 0");
  return [model = std::move(model), sigma_data](const torch::Tensor& x, const torch::Tensor& sigma, const Cond& cond) {
    check_sigma(x, sigma);
    auto sig = sigma.dim() == 0 ? sigma.expand({x.size(0)}) : sigma.expand({x.size(0)});
    auto s = bcast(sig, x);
    const double sd2 = sigma_data * sigma_data;
    auto denom = s * s + sd2;
    auto c_skip = sd2 / denom;
    auto c_out = s * sigma_data / denom.sqrt();
    auto c_in = 1 / denom.sqrt();
    auto c_noise = sig.to(x.device(), x.scalar_type()).log() / 4;
    auto out = model(x * c_in, c_noise, cond);
    if (out.sizes() != x.sizes()) throw Error("edm_denoiser: model output shape differs from its input");
    return c_skip * x + c_out * out.to(x.scalar_type());
  };
}

Denoiser bind(CondDenoiser d, Cond cond) {
  if (!d) throw Error("bind: empty denoiser");
  return [d = std::move(d), cond = std::move(cond)](const torch::Tensor& x, const torch::Tensor& sigma) {
    return d(x, sigma, cond);
  };
}

namespace {

// Brings every tensor of `c` to batch size b (a batch of 1 is repeated).
Cond fit_batch(const Cond& c, int64_t b) {
  Cond out;
  for (const auto& [k, t] : c.tensors) {
    if (!t.defined() || t.dim() == 0 || t.size(0) == b) {
      out.tensors[k] = t;
    } else if (t.size(0) == 1) {
      std::vector<int64_t> reps(t.dim(), 1);
      reps[0] = b;
      out.tensors[k] = t.repeat(reps);
    } else {
      throw Error("cfg_denoiser: conditioning '" + k + "' has batch " + std::to_string(t.size(0)) + ", expected 1 or " +
                  std::to_string(b));
    }
  }
  return out;
}

}  // namespace

Denoiser cfg_denoiser(CondDenoiser d, Cond cond, Cond uncond, double scale, double rescale, Prediction space) {
  if (!d) throw Error("cfg_denoiser: empty denoiser");
  if (rescale < 0 || rescale > 1) throw Error("cfg_denoiser: rescale must lie in [0, 1]");
  return [d = std::move(d), cond = std::move(cond), uncond = std::move(uncond), scale, rescale, space](
             const torch::Tensor& x, const torch::Tensor& sigma) {
    const int64_t b = x.size(0);
    auto sig = sigma.dim() == 0 ? sigma.expand({b}) : sigma.expand({b});
    auto both = Cond::cat(fit_batch(uncond, b), fit_batch(cond, b));
    auto out = d(torch::cat({x, x}, 0), torch::cat({sig, sig}, 0), both);
    auto u = out.narrow(0, 0, b), c = out.narrow(0, b, b);
    auto x0 = u + scale * (c - u);
    if (rescale <= 0) return x0;
    // CFG-rescale (Lin et al. 2023): p_cfg *= std(p_cond) / std(p_cfg), mixed with factor
    // `rescale`, where p is the model's prediction. Guidance is linear in x0 and so in p; p is
    // recovered from x0 (x = x0 + sigma eps in k-diffusion's scaling): eps = (x - x0) / sigma,
    // v ~ eps - sigma x0 (up to the per-sample factor 1/sqrt(1 + sigma^2), which the std
    // ratio cancels).
    std::vector<int64_t> dims;
    for (int64_t i = 1; i < x.dim(); ++i) dims.push_back(i);
    auto rescaled = [&](const torch::Tensor& p_cfg, const torch::Tensor& p_c) {
      auto r = p_cfg * (p_c.std(dims, /*unbiased=*/true, /*keepdim=*/true) / p_cfg.std(dims, true, true));
      return rescale * r + (1 - rescale) * p_cfg;
    };
    if (space == Prediction::Sample) return rescaled(x0, c);
    auto s = bcast(sig, x);
    auto safe = torch::where(s > 0, s, torch::ones_like(s));
    auto eps_cfg = (x - x0) / safe, eps_c = (x - c) / safe;
    if (space == Prediction::Epsilon) return torch::where(s > 0, x - s * rescaled(eps_cfg, eps_c), x0);
    auto v = rescaled(eps_cfg - s * x0, eps_c - s * c);
    return torch::where(s > 0, (x - s * v) / (1 + s * s), x0);
  };
}

Denoiser guidance_interval(Denoiser guided, Denoiser unguided, double sigma_lo, double sigma_hi) {
  if (!guided || !unguided) throw Error("guidance_interval: empty denoiser");
  if (!(sigma_lo >= 0 && sigma_lo < sigma_hi))
    throw Error("guidance interval: need 0 <= low < high, got " + std::to_string(sigma_lo) + ", " +
                std::to_string(sigma_hi));
  return [guided = std::move(guided), unguided = std::move(unguided), sigma_lo, sigma_hi](const torch::Tensor& x,
                                                                                          const torch::Tensor& sigma) {
    check_sigma(x, sigma);
    auto sig = sigma.to(torch::kCPU, torch::kDouble).reshape({-1}).expand({x.size(0)});
    auto inside = (sig > sigma_lo).logical_and(sig <= sigma_hi);
    const int64_t n_in = inside.sum().item<int64_t>();
    if (n_in == x.size(0)) return guided(x, sigma);
    if (n_in == 0) return unguided(x, sigma);
    // Mixed batch (per-sample sigmas): both denoisers see the whole batch, since their
    // conditioning is bound to it, and each sample takes its own result.
    auto mask = bcast(inside.to(x.device()), x).to(torch::kBool);
    return torch::where(mask, guided(x, sigma), unguided(x, sigma));
  };
}

Denoiser autoguidance(Denoiser main, Denoiser guide, double scale) {
  if (!main || !guide) throw Error("autoguidance: empty denoiser");
  if (!std::isfinite(scale)) throw Error("autoguidance: the guidance scale must be finite");
  if (scale == 1.0) return main;
  return [main = std::move(main), guide = std::move(guide), scale](const torch::Tensor& x, const torch::Tensor& sigma) {
    auto m = main(x, sigma);
    auto g = guide(x, sigma);
    return g + scale * (m - g);
  };
}

}  // namespace diffuse
