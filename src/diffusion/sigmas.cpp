#include "diffusion/sigmas.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace diffuse {

namespace {

constexpr double kRho = 7.0;

void check_steps(int steps) {
  if (steps < 1) throw Error("steps must be >= 1, got " + std::to_string(steps));
}

// numpy.linspace(start, stop, num) in float64 (endpoint included).
std::vector<double> np_linspace(double start, double stop, int num) {
  std::vector<double> y(num);
  if (num == 1) {
    y[0] = start;
    return y;
  }
  const double step = (stop - start) / (num - 1);
  for (int i = 0; i < num; ++i) y[i] = i * step + start;
  y[num - 1] = stop;
  return y;
}

// numpy.arange(start, stop, step) for float step: length ceil((stop - start) / step),
// values start + i * delta with delta = (start + step) - start.
std::vector<double> np_arange(double start, double stop, double step) {
  const auto len = static_cast<int64_t>(std::ceil((stop - start) / step));
  std::vector<double> y(std::max<int64_t>(len, 0));
  const double delta = (start + step) - start;
  for (size_t i = 0; i < y.size(); ++i) y[i] = start + static_cast<double>(i) * delta;
  return y;
}

double np_round(double v) { return std::nearbyint(v); }  // half to even (default rounding mode)

torch::Tensor append_zero(std::vector<double> s) {
  s.push_back(0.0);
  return torch::tensor(s, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor append_zero(const torch::Tensor& s) {
  return torch::cat({s.to(torch::kFloat32), torch::zeros({1}, torch::kFloat32)});
}

std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

const double kAysSd1[] = {14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
                          0.9642583904,  0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582};
const double kAysSdxl[] = {14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
                           0.5550693289,  0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582};

// ComfyUI's AlignYourStepsScheduler: log-linear interpolation of the 11 published levels to
// steps + 1 points, last one replaced by 0.
torch::Tensor ays_sigmas(const double* levels, int steps) {
  const int n = 11;
  std::vector<double> s(levels, levels + n);
  if (steps + 1 != n) {
    std::vector<double> xs = np_linspace(0, 1, n), ys(n);
    for (int i = 0; i < n; ++i) ys[i] = std::log(levels[n - 1 - i]);
    std::vector<double> nx = np_linspace(0, 1, steps + 1);
    s.assign(steps + 1, 0.0);
    for (int i = 0; i <= steps; ++i) {
      double x = nx[i];
      int j = std::min<int>(static_cast<int>(std::upper_bound(xs.begin(), xs.end(), x) - xs.begin()) - 1, n - 1);
      double y;
      if (j >= n - 1) {
        y = ys[n - 1];
      } else if (xs[j] == x) {
        y = ys[j];
      } else {
        y = (ys[j + 1] - ys[j]) / (xs[j + 1] - xs[j]) * (x - xs[j]) + ys[j];
      }
      s[steps - i] = std::exp(y);
    }
  }
  s.back() = 0.0;
  return torch::tensor(s, torch::kFloat64).to(torch::kFloat32);
}

double betacf(double a, double b, double x) {
  const double tiny = 1e-300, eps = 1e-16;
  double qab = a + b, qap = a + 1, qam = a - 1;
  double c = 1, d = 1 - qab * x / qap;
  if (std::fabs(d) < tiny) d = tiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 10000; ++m) {
    int m2 = 2 * m;
    double aa = m * (b - m) * x / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (std::fabs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < eps) break;
  }
  return h;
}

}  // namespace

double incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  double lfront = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  double front = std::exp(lfront);
  if (x < (a + 1) / (a + b + 2)) return front * betacf(a, b, x) / a;
  return 1 - front * betacf(b, a, 1 - x) / b;
}

double beta_quantile(double a, double b, double p) {
  if (p <= 0) return 0;
  if (p >= 1) return 1;
  double lo = 0, hi = 1;
  for (int i = 0; i < 200 && hi - lo > 1e-17; ++i) {
    double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    if (incomplete_beta(a, b, mid) < p)
      lo = mid;
    else
      hi = mid;
  }
  return 0.5 * (lo + hi);
}

std::vector<double> spaced_timesteps(const NoiseScheduleConfig& cfg, int steps, TimestepStyle style) {
  check_steps(steps);
  const int T = cfg.num_train_timesteps;
  const std::string& sp = cfg.timestep_spacing;
  std::vector<double> t;
  if (sp == "linspace") {
    if (style == TimestepStyle::Euler) {
      for (double v : np_linspace(0, T - 1, steps)) t.push_back(static_cast<float>(v));
    } else if (style == TimestepStyle::Ddim) {
      for (double v : np_linspace(0, T - 1, steps)) t.push_back(np_round(v));
    } else {
      auto v = np_linspace(0, T - 1, steps + 1);
      for (int i = 1; i <= steps; ++i) t.push_back(np_round(v[i]));
    }
    std::reverse(t.begin(), t.end());
  } else if (sp == "leading") {
    const int n = style == TimestepStyle::DpmSolver ? steps + 1 : steps;
    const int ratio = T / n;
    for (int i = n - 1; i >= (style == TimestepStyle::DpmSolver ? 1 : 0); --i)
      t.push_back(np_round(static_cast<double>(i) * ratio) + cfg.steps_offset);
  } else if (sp == "trailing") {
    for (double v : np_arange(T, 0, -static_cast<double>(T) / steps)) t.push_back(np_round(v) - 1);
  } else {
    throw Error("timestep_spacing: unknown value '" + sp + "' (expected leading, trailing or linspace)");
  }
  for (double v : t)
    if (v < 0 || v > T - 1)
      throw Error("timestep_spacing " + sp + " with steps_offset " + std::to_string(cfg.steps_offset) +
                  " gives timestep " + std::to_string(v) + " outside [0, " + std::to_string(T - 1) + "]");
  return t;
}

torch::Tensor sigmas_at_timesteps(const DiscreteSchedule& ds, const std::vector<double>& t) {
  auto table = to_vec(ds.sigmas());
  const int64_t n = static_cast<int64_t>(table.size());
  std::vector<double> out;
  out.reserve(t.size());
  for (double x : t) {
    if (x <= 0) {
      out.push_back(table[0]);
    } else if (x >= n - 1) {
      out.push_back(table[n - 1]);
    } else {
      auto j = static_cast<int64_t>(std::floor(x));
      if (j == x)
        out.push_back(table[j]);
      else
        out.push_back((table[j + 1] - table[j]) * (x - j) + table[j]);
    }
  }
  return torch::tensor(out, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor karras_sigmas(int steps, double sigma_min, double sigma_max, double rho) {
  check_steps(steps);
  if (!(sigma_min > 0) || !(sigma_max >= sigma_min)) throw Error("karras: need 0 < sigma_min <= sigma_max");
  const double min_inv = std::pow(sigma_min, 1 / rho), max_inv = std::pow(sigma_max, 1 / rho);
  std::vector<double> s;
  for (double r : np_linspace(0, 1, steps)) s.push_back(std::pow(max_inv + r * (min_inv - max_inv), rho));
  return append_zero(s);
}

torch::Tensor exponential_sigmas(int steps, double sigma_min, double sigma_max) {
  check_steps(steps);
  if (!(sigma_min > 0) || !(sigma_max >= sigma_min)) throw Error("exponential: need 0 < sigma_min <= sigma_max");
  std::vector<double> s;
  for (double l : np_linspace(std::log(sigma_max), std::log(sigma_min), steps)) s.push_back(std::exp(l));
  return append_zero(s);
}

namespace {

std::vector<double> training_sigmas(const DiscreteSchedule& ds) { return to_vec(ds.sigmas()); }

// Uniform in (continuous) timestep from T-1 to 0; `endpoint` false drops the last point.
torch::Tensor uniform_timesteps(int steps, const DiscreteSchedule& ds, bool endpoint) {
  const int T = ds.num_timesteps();
  std::vector<double> t = endpoint ? np_linspace(T - 1, 0, steps) : np_linspace(T - 1, 0, steps + 1);
  if (!endpoint) t.pop_back();
  return append_zero(ds.t_to_sigma(torch::tensor(t, torch::kFloat64)));
}

}  // namespace

const std::vector<SigmaScheduleDesc>& sigma_schedules() {
  using DS = DiscreteSchedule;
  using Cfg = NoiseScheduleConfig;
  static const std::vector<SigmaScheduleDesc> list = {
      {"discrete", "the model's own timesteps (timestep_spacing leading|trailing|linspace), as diffusers' Euler",
       [](int steps, const DS& ds, const Cfg& cfg) {
         return append_zero(sigmas_at_timesteps(ds, spaced_timesteps(cfg, steps, TimestepStyle::Euler)));
       }},
      {"karras", "Karras et al. 2022, rho = 7, between the model's sigma_min and sigma_max",
       [](int steps, const DS& ds, const Cfg&) { return karras_sigmas(steps, ds.sigma_min(), ds.sigma_max(), kRho); }},
      {"exponential", "uniform in log-sigma between sigma_min and sigma_max",
       [](int steps, const DS& ds, const Cfg&) { return exponential_sigmas(steps, ds.sigma_min(), ds.sigma_max()); }},
      {"normal", "uniform in timestep from T-1 to 0 (ComfyUI normal)",
       [](int steps, const DS& ds, const Cfg&) { return uniform_timesteps(steps, ds, true); }},
      {"sgm_uniform", "uniform in timestep from T-1 towards 0, end point excluded (ComfyUI sgm_uniform)",
       [](int steps, const DS& ds, const Cfg&) { return uniform_timesteps(steps, ds, false); }},
      {"simple", "every T/steps-th training sigma (ComfyUI simple)",
       [](int steps, const DS& ds, const Cfg&) {
         auto table = training_sigmas(ds);
         const int T = ds.num_timesteps();
         std::vector<double> s;
         const double ss = static_cast<double>(T) / steps;
         for (int x = 0; x < steps; ++x) s.push_back(table[T - 1 - static_cast<int64_t>(x * ss)]);
         return append_zero(s);
       }},
      {"beta", "training sigmas at Beta(0.6, 0.6) quantiles (Lee et al. 2024; ComfyUI beta)",
       [](int steps, const DS& ds, const Cfg&) {
         auto table = training_sigmas(ds);
         std::vector<double> s;
         double last = -1;
         for (double p : np_linspace(0, 1, steps + 1)) {
           if (p >= 1) break;  // endpoint=False
           double t = np_round(beta_quantile(0.6, 0.6, 1 - p) * (ds.num_timesteps() - 1));
           if (t != last) s.push_back(table[static_cast<int64_t>(t)]);
           last = t;
         }
         return append_zero(s);
       }},
      {"kl_optimal", "tan of a linear ramp in arctan(sigma) (Sabour et al. 2024)",
       [](int steps, const DS& ds, const Cfg&) {
         std::vector<double> s;
         for (int i = 0; i < steps; ++i) {
           double a = steps > 1 ? static_cast<double>(i) / (steps - 1) : 0.0;
           s.push_back(std::tan(a * std::atan(ds.sigma_min()) + (1 - a) * std::atan(ds.sigma_max())));
         }
         return append_zero(s);
       }},
      {"align_your_steps", "published Align Your Steps sigmas for SD1.5 (Sabour et al. 2024)",
       [](int steps, const DS&, const Cfg&) { return ays_sigmas(kAysSd1, steps); }},
      {"align_your_steps_sdxl", "published Align Your Steps sigmas for SDXL",
       [](int steps, const DS&, const Cfg&) { return ays_sigmas(kAysSdxl, steps); }},
  };
  return list;
}

torch::Tensor make_sigmas(const std::string& schedule, int steps, const DiscreteSchedule& ds,
                          const NoiseScheduleConfig& cfg) {
  check_steps(steps);
  const std::string name = schedule == "ays" ? "align_your_steps" : schedule;
  for (const auto& d : sigma_schedules())
    if (d.name == name) return d.fn(steps, ds, cfg);
  std::string names;
  for (const auto& d : sigma_schedules()) names += (names.empty() ? "" : ", ") + d.name;
  throw Error("unknown sigma schedule '" + schedule + "' (expected one of: " + names + ")");
}

torch::Tensor parse_sigmas(const std::string& csv) {
  std::vector<double> s;
  std::stringstream ss(csv);
  std::string item;
  int idx = 0;
  while (std::getline(ss, item, ',')) {
    auto b = item.find_first_not_of(" \t\n\r"), e = item.find_last_not_of(" \t\n\r");
    std::string tok = b == std::string::npos ? "" : item.substr(b, e - b + 1);
    if (tok.empty()) throw Error("sigmas: entry " + std::to_string(idx) + " is empty");
    char* end = nullptr;
    errno = 0;
    double v = std::strtod(tok.c_str(), &end);
    if (end != tok.c_str() + tok.size() || errno == ERANGE || !std::isfinite(v))
      throw Error("sigmas: entry " + std::to_string(idx) + " ('" + tok + "') is not a finite number");
    if (v < 0) throw Error("sigmas: entry " + std::to_string(idx) + " (" + tok + ") is negative");
    if (!s.empty() && !(v < s.back()))
      throw Error("sigmas: entry " + std::to_string(idx) + " (" + tok + ") is not below the previous one");
    s.push_back(v);
    ++idx;
  }
  if (s.empty() || s.front() <= 0) throw Error("sigmas: need at least one sigma > 0");
  if (s.back() != 0) s.push_back(0);
  return torch::tensor(s, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor truncate_sigmas(const torch::Tensor& sigmas, double strength) {
  if (!(strength >= 0 && strength <= 1)) throw Error("strength must lie in [0, 1]");
  if (sigmas.dim() != 1 || sigmas.size(0) < 1) throw Error("truncate_sigmas: sigmas must be 1-D and non-empty");
  const int64_t steps = sigmas.size(0) - 1;
  const int64_t init = std::min<int64_t>(static_cast<int64_t>(steps * strength), steps);
  const int64_t start = std::max<int64_t>(steps - init, 0);
  return sigmas.slice(0, start).clone();
}

}  // namespace diffuse
