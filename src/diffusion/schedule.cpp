#include "diffusion/schedule.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace diffuse {

namespace {

// diffusers' betas_for_alpha_bar(alpha_transform_type="cosine", max_beta=0.999):
// computed with Python floats (double), then stored as float32.
torch::Tensor cosine_betas(int n) {
  auto alpha_bar = [](double t) {
    double c = std::cos((t + 0.008) / 1.008 * M_PI / 2.0);
    return c * c;
  };
  std::vector<double> betas(n);
  for (int i = 0; i < n; ++i) {
    double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    betas[i] = std::min(1.0 - alpha_bar(t2) / alpha_bar(t1), 0.999);
  }
  return torch::tensor(betas, torch::kFloat64).to(torch::kFloat32);
}

// diffusers' rescale_zero_terminal_snr (float32).
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
  auto alphas_cumprod = torch::cumprod(1.0 - betas, 0);
  auto s = alphas_cumprod.sqrt();
  auto s0 = s[0].clone(), sT = s[-1].clone();
  s = s - sT;
  s = s * (s0 / (s0 - sT));
  auto bar = s * s;
  auto alphas = torch::cat({bar.slice(0, 0, 1), bar.slice(0, 1) / bar.slice(0, 0, -1)});
  return 1 - alphas;
}

torch::Tensor base_betas(const NoiseScheduleConfig& cfg);

}  // namespace

torch::Tensor make_betas(const NoiseScheduleConfig& cfg) {
  auto betas = base_betas(cfg);
  return cfg.rescale_betas_zero_snr ? rescale_zero_terminal_snr(betas) : betas;
}

namespace {

torch::Tensor base_betas(const NoiseScheduleConfig& cfg) {
  const int n = cfg.num_train_timesteps;
  if (n < 2) throw Error("num_train_timesteps must be >= 2, got " + std::to_string(n));
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  if (cfg.beta_schedule == "linear") return torch::linspace(cfg.beta_start, cfg.beta_end, n, f32);
  if (cfg.beta_schedule == "scaled_linear")
    return torch::linspace(std::sqrt(cfg.beta_start), std::sqrt(cfg.beta_end), n, f32).pow(2);
  if (cfg.beta_schedule == "squaredcos_cap_v2") return cosine_betas(n);
  throw Error("beta_schedule: unknown value '" + cfg.beta_schedule +
              "' (expected linear, scaled_linear or squaredcos_cap_v2)");
}

}  // namespace

torch::Tensor make_alphas_cumprod(const NoiseScheduleConfig& cfg) {
  torch::Tensor alphas = 1.0 - make_betas(cfg);
  return torch::cumprod(alphas, 0);
}

DiscreteSchedule::DiscreteSchedule(torch::Tensor alphas_cumprod) {
  if (!alphas_cumprod.defined() || alphas_cumprod.dim() != 1 || alphas_cumprod.size(0) < 2)
    throw Error("DiscreteSchedule: alphas_cumprod must be a 1-D tensor with at least 2 entries");
  alphas_cumprod_ = alphas_cumprod.detach().to(torch::kCPU, torch::kFloat32).clone().contiguous();
  // zero terminal SNR: diffusers' Euler-type schedulers use 2^-24 for an alpha_bar of 0
  alphas_cumprod_.masked_fill_(alphas_cumprod_ == 0, std::ldexp(1.0, -24));
  sigmas_ = ((1 - alphas_cumprod_) / alphas_cumprod_).sqrt();
  if (!torch::isfinite(sigmas_).all().item<bool>() || (sigmas_ <= 0).any().item<bool>())
    throw Error("DiscreteSchedule: alphas_cumprod must lie in (0, 1)");
  log_sigmas_ = sigmas_.to(torch::kFloat64).log();
}

DiscreteSchedule::DiscreteSchedule(const NoiseScheduleConfig& cfg) : DiscreteSchedule(make_alphas_cumprod(cfg)) {}

double DiscreteSchedule::sigma_min() const { return sigmas_[0].item<double>(); }
double DiscreteSchedule::sigma_max() const { return sigmas_[-1].item<double>(); }

torch::Tensor DiscreteSchedule::sigma_to_t(const torch::Tensor& sigma) const {
  // k-diffusion's DiscreteSchedule.sigma_to_t: linear interpolation in log-sigma
  // between the two neighbouring training timesteps (clamped to the table).
  auto s = sigma.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  auto out = torch::empty_like(s);
  const double* ls = log_sigmas_.data_ptr<double>();
  const int64_t n = log_sigmas_.size(0);
  const double* sp = s.data_ptr<double>();
  double* op = out.data_ptr<double>();
  for (int64_t k = 0; k < s.numel(); ++k) {
    double l = std::log(std::max(sp[k], 1e-10));
    // low = last index with log_sigmas[low] <= l (log_sigmas ascending), clamped to [0, n-2]
    int64_t low = static_cast<int64_t>(std::upper_bound(ls, ls + n, l) - ls) - 1;
    low = std::clamp<int64_t>(low, 0, n - 2);
    double w = (ls[low] - l) / (ls[low] - ls[low + 1]);
    w = std::clamp(w, 0.0, 1.0);
    op[k] = (1 - w) * low + w * (low + 1);
  }
  return out.to(torch::kFloat32).to(sigma.device());
}

torch::Tensor DiscreteSchedule::t_to_sigma(const torch::Tensor& t) const {
  auto tt = t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  auto out = torch::empty_like(tt);
  const double* ls = log_sigmas_.data_ptr<double>();
  const int64_t n = log_sigmas_.size(0);
  const double* tp = tt.data_ptr<double>();
  double* op = out.data_ptr<double>();
  for (int64_t k = 0; k < tt.numel(); ++k) {
    double v = std::clamp(tp[k], 0.0, static_cast<double>(n - 1));
    int64_t lo = static_cast<int64_t>(std::floor(v)), hi = static_cast<int64_t>(std::ceil(v));
    double w = v - lo;
    op[k] = std::exp((1 - w) * ls[lo] + w * ls[hi]);
  }
  return out.to(torch::kFloat32).to(t.device());
}

namespace {

torch::Tensor gather_bcast(const torch::Tensor& table, const torch::Tensor& t, const torch::Tensor& like) {
  auto idx = t.to(torch::kCPU, torch::kLong);
  auto v = table.to(torch::kCPU).index_select(0, idx.reshape({-1}));
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = v.size(0);
  return v.reshape(shape).to(like.device(), like.scalar_type());
}

void check_t(const torch::Tensor& alphas_cumprod, const torch::Tensor& x0, const torch::Tensor& t) {
  if (t.dim() != 1 || t.size(0) != x0.size(0)) throw Error("timesteps must have shape [B] matching the batch of x0");
  auto tc = t.to(torch::kCPU, torch::kLong);
  if (tc.numel() && (tc.min().item<int64_t>() < 0 || tc.max().item<int64_t>() >= alphas_cumprod.size(0)))
    throw Error("timesteps out of range [0, " + std::to_string(alphas_cumprod.size(0)) + ")");
}

}  // namespace

torch::Tensor add_noise(const torch::Tensor& alphas_cumprod, const torch::Tensor& x0, const torch::Tensor& noise,
                        const torch::Tensor& t) {
  check_t(alphas_cumprod, x0, t);
  auto a = gather_bcast(alphas_cumprod, t, x0);
  return a.sqrt() * x0 + (1 - a).sqrt() * noise;
}

torch::Tensor prediction_target(const std::string& prediction_type, const torch::Tensor& alphas_cumprod,
                                const torch::Tensor& x0, const torch::Tensor& noise, const torch::Tensor& t) {
  if (prediction_type == "epsilon") return noise;
  if (prediction_type == "sample") return x0;
  if (prediction_type == "v_prediction" || prediction_type == "v") {
    check_t(alphas_cumprod, x0, t);
    auto a = gather_bcast(alphas_cumprod, t, x0);
    return a.sqrt() * noise - (1 - a).sqrt() * x0;
  }
  throw Error("prediction_type: unknown value '" + prediction_type + "' (expected epsilon, v_prediction or sample)");
}

}  // namespace diffuse
