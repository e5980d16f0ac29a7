// Deterministic multistep samplers: dpm++2m, lms, ipndm, deis, unipc (bh1/bh2), plms, pndm.
#include <cmath>
#include <deque>

#include "core/error.h"
#include "diffusion/sampler_util.h"

namespace diffuse {

using namespace detail;

namespace {

// 16-point Gauss-Legendre nodes/weights on [-1, 1] (exact for polynomials of degree <= 31).
const double kGLx[8] = {0.0950125098376374, 0.2816035507792589, 0.4580167776572274, 0.6178762444026438,
                        0.7554044083550030, 0.8656312023878318, 0.9445750230732326, 0.9894009349916499};
const double kGLw[8] = {0.1894506104550685, 0.1826034150449236, 0.1691565193950025, 0.1495959888165767,
                        0.1246289712555339, 0.0951585116824928, 0.0622535239386479, 0.0271524594117541};

template <class F>
double integrate(F f, double a, double b) {
  const double c = 0.5 * (a + b), r = 0.5 * (b - a);
  double acc = 0;
  for (int k = 0; k < 8; ++k) acc += kGLw[k] * (f(c + r * kGLx[k]) + f(c - r * kGLx[k]));
  return acc * r;
}

// Lagrange basis polynomial j over nodes `ts` evaluated at tau.
double lagrange(const std::vector<double>& ts, size_t j, double tau) {
  double p = 1;
  for (size_t k = 0; k < ts.size(); ++k)
    if (k != j) p *= (tau - ts[k]) / (ts[j] - ts[k]);
  return p;
}

// Weighted sum of tensors with double coefficients.
torch::Tensor combine(const std::vector<double>& c, const std::vector<torch::Tensor>& v) {
  torch::Tensor acc = v[0] * c[0];
  for (size_t k = 1; k < v.size(); ++k) acc = acc + v[k] * c[k];
  return acc;
}

// Adams-Bashforth coefficients for constant steps (newest first), orders 1..4.
const std::vector<std::vector<double>> kAB = {
    {1.0}, {3.0 / 2, -1.0 / 2}, {23.0 / 12, -16.0 / 12, 5.0 / 12}, {55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24}};

}  // namespace

torch::Tensor sample_dpmpp_2m(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                              const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "dpm++2m");
  const int n = static_cast<int>(s.size()) - 1;
  torch::Tensor old_denoised;
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    if (s[i + 1] == 0) {
      x = denoised;
    } else {
      const double t = -std::log(s[i]), tn = -std::log(s[i + 1]), h = tn - t;
      if (!old_denoised.defined()) {
        x = (s[i + 1] / s[i]) * x - std::expm1(-h) * denoised;
      } else {
        const double h_last = t + std::log(s[i - 1]), r = h_last / h;
        auto dd = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised;
        x = (s[i + 1] / s[i]) * x - std::expm1(-h) * dd;
      }
    }
    old_denoised = denoised;
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_lms(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "lms");
  const int n = static_cast<int>(s.size()) - 1;
  const int order = opt.max_order > 0 ? opt.max_order : 4;
  std::deque<torch::Tensor> ds;  // newest first
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    ds.push_front(to_d(x, s[i], denoised));
    if (static_cast<int>(ds.size()) > order) ds.pop_back();
    const int cur = std::min(i + 1, order);
    std::vector<double> nodes(cur);
    for (int k = 0; k < cur; ++k) nodes[k] = s[i - k];
    std::vector<double> c(cur);
    for (int j = 0; j < cur; ++j) c[j] = integrate([&](double tau) { return lagrange(nodes, j, tau); }, s[i], s[i + 1]);
    x = x + combine(c, std::vector<torch::Tensor>(ds.begin(), ds.begin() + cur));
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_ipndm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  auto s = sigma_values(sigmas, "ipndm");
  const int n = static_cast<int>(s.size()) - 1;
  const int max_order = std::clamp(opt.max_order > 0 ? opt.max_order : 4, 1, 4);
  std::deque<torch::Tensor> ds;  // newest first
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    ds.push_front(to_d(x, s[i], denoised));
    if (static_cast<int>(ds.size()) > max_order) ds.pop_back();
    const int order = std::min<int>(max_order, i + 1);
    x = x + combine(kAB[order - 1], std::vector<torch::Tensor>(ds.begin(), ds.begin() + order)) * (s[i + 1] - s[i]);
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_deis(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  // DEIS with the exponential integrator in log-sigma time (t-AB): the noise prediction is
  // extrapolated by a Lagrange polynomial in lambda = -log(sigma) through the last `order`
  // steps and integrated exactly against d sigma = -exp(-lambda) d lambda. Final step to 0: Euler.
  auto s = sigma_values(sigmas, "deis");
  const int n = static_cast<int>(s.size()) - 1;
  const int max_order = std::clamp(opt.max_order > 0 ? opt.max_order : 3, 1, 4);
  std::deque<torch::Tensor> ds;  // newest first
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    ds.push_front(to_d(x, s[i], denoised));
    if (static_cast<int>(ds.size()) > max_order) ds.pop_back();
    int order = std::min(max_order, i + 1);
    if (s[i + 1] == 0) order = 1;
    if (order == 1) {
      x = x + ds[0] * (s[i + 1] - s[i]);
    } else {
      std::vector<double> nodes(order);
      for (int k = 0; k < order; ++k) nodes[k] = -std::log(s[i - k]);
      std::vector<double> c(order);
      for (int j = 0; j < order; ++j)
        c[j] = integrate([&](double l) { return -std::exp(-l) * lagrange(nodes, j, l); }, -std::log(s[i]),
                         -std::log(s[i + 1]));
      x = x + combine(c, std::vector<torch::Tensor>(ds.begin(), ds.begin() + order));
    }
    report(opt, i, s, x, denoised);
  }
  return x;
}

namespace {

// UniPC (Zhao et al. 2023) in data-prediction form, as diffusers' UniPCMultistepScheduler
// (predict_x0, lower_order_final), written in VE coordinates: lambda = -log(sigma).
struct UniCoeffs {
  double h_phi_1, B_h;
  std::vector<double> b;               // b[0..order-1]
  std::vector<std::vector<double>> R;  // R[i][k] = rks[k]^i
};

UniCoeffs uni_coeffs(double h, const std::vector<double>& rks, int order, bool bh2) {
  UniCoeffs c;
  const double hh = -h;
  c.h_phi_1 = std::expm1(hh);
  double h_phi_k = c.h_phi_1 / hh - 1;
  double factorial = 1;
  c.B_h = bh2 ? std::expm1(hh) : hh;
  for (int i = 1; i <= order; ++i) {
    std::vector<double> row;
    for (double r : rks) row.push_back(std::pow(r, i - 1));
    c.R.push_back(row);
    c.b.push_back(h_phi_k * factorial / c.B_h);
    factorial *= i + 1;
    h_phi_k = h_phi_k / hh - 1 / factorial;
  }
  return c;
}

// Solves the m x m system A x = y (Gaussian elimination with partial pivoting).
std::vector<double> solve(std::vector<std::vector<double>> A, std::vector<double> y) {
  const size_t m = y.size();
  for (size_t col = 0; col < m; ++col) {
    size_t piv = col;
    for (size_t r = col + 1; r < m; ++r)
      if (std::fabs(A[r][col]) > std::fabs(A[piv][col])) piv = r;
    std::swap(A[col], A[piv]);
    std::swap(y[col], y[piv]);
    for (size_t r = col + 1; r < m; ++r) {
      double f = A[r][col] / A[col][col];
      for (size_t k = col; k < m; ++k) A[r][k] -= f * A[col][k];
      y[r] -= f * y[col];
    }
  }
  std::vector<double> out(m);
  for (size_t r = m; r-- > 0;) {
    double acc = y[r];
    for (size_t k = r + 1; k < m; ++k) acc -= A[r][k] * out[k];
    out[r] = acc / A[r][r];
  }
  return out;
}

torch::Tensor unipc(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt,
                    bool bh2, const char* name) {
  auto s = sigma_values(sigmas, name);
  const int n = static_cast<int>(s.size()) - 1;
  const int solver_order = std::clamp(opt.max_order > 0 ? opt.max_order : 2, 1, 3);
  auto lam = [&](int i) { return -std::log(s[i]); };
  std::deque<torch::Tensor> ms;  // x0 predictions, newest first; ms[k] belongs to step idx[k]
  std::deque<int> idx;
  torch::Tensor last_sample;
  int this_order = 0, lower_order_nums = 0;
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    if (i > 0 && last_sample.defined()) {
      // UniC: corrects x_i using the prediction at the uncorrected x_i.
      const int order = this_order;
      const auto& m0 = ms[0];  // prediction at step i-1
      const double h = lam(i) - lam(i - 1);
      std::vector<double> rks;
      std::vector<torch::Tensor> D1s;
      for (int k = 1; k < order; ++k) {
        double rk = (lam(idx[k]) - lam(i - 1)) / h;
        rks.push_back(rk);
        D1s.push_back((ms[k] - m0) / rk);
      }
      rks.push_back(1.0);
      auto c = uni_coeffs(h, rks, order, bh2);
      std::vector<double> rhos_c = order == 1 ? std::vector<double>{0.5} : solve(c.R, c.b);
      auto xt = (s[i] / s[i - 1]) * last_sample - c.h_phi_1 * m0;
      torch::Tensor corr = (denoised - m0) * rhos_c.back();
      for (size_t k = 0; k < D1s.size(); ++k) corr = corr + D1s[k] * rhos_c[k];
      x = xt - c.B_h * corr;
    }
    ms.push_front(denoised);
    idx.push_front(i);
    if (static_cast<int>(ms.size()) > solver_order) {
      ms.pop_back();
      idx.pop_back();
    }
    this_order = std::min(solver_order, n - i);  // lower_order_final
    this_order = std::min(this_order, lower_order_nums + 1);
    last_sample = x;
    // UniP
    if (s[i + 1] == 0) {
      x = denoised;
    } else {
      const int order = this_order;
      const auto& m0 = ms[0];
      const double h = lam(i + 1) - lam(i);
      std::vector<double> rks;
      std::vector<torch::Tensor> D1s;
      for (int k = 1; k < order; ++k) {
        double rk = (lam(idx[k]) - lam(i)) / h;
        rks.push_back(rk);
        D1s.push_back((ms[k] - m0) / rk);
      }
      rks.push_back(1.0);
      auto c = uni_coeffs(h, rks, order, bh2);
      auto xt = (s[i + 1] / s[i]) * x - c.h_phi_1 * m0;
      if (!D1s.empty()) {
        std::vector<double> rhos_p;
        if (order == 2) {
          rhos_p = {0.5};
        } else {
          std::vector<std::vector<double>> Rm(order - 1, std::vector<double>(order - 1));
          for (int a = 0; a < order - 1; ++a)
            for (int b = 0; b < order - 1; ++b) Rm[a][b] = c.R[a][b];
          rhos_p = solve(Rm, std::vector<double>(c.b.begin(), c.b.end() - 1));
        }
        torch::Tensor pred = D1s[0] * rhos_p[0];
        for (size_t k = 1; k < D1s.size(); ++k) pred = pred + D1s[k] * rhos_p[k];
        xt = xt - c.B_h * pred;
      }
      x = xt;
    }
    if (lower_order_nums < solver_order) ++lower_order_nums;
    report(opt, i, s, x, denoised);
  }
  return x;
}

}  // namespace

torch::Tensor sample_unipc(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  return unipc(D, std::move(x), sigmas, opt, true, "unipc");
}

torch::Tensor sample_unipc_bh1(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas,
                               const SamplerOptions& opt) {
  return unipc(D, std::move(x), sigmas, opt, false, "unipc_bh1");
}

torch::Tensor sample_plms(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  // PLMS (Liu et al. 2022, as diffusers' PNDMScheduler with skip_prk_steps): a Heun
  // ("pseudo improved Euler") first step, then Adams-Bashforth 2/3/4 on the noise prediction
  // with the DDIM transfer (x + (sigma_next - sigma) eps in VE coordinates).
  auto s = sigma_values(sigmas, "plms");
  const int n = static_cast<int>(s.size()) - 1;
  std::deque<torch::Tensor> ets;  // newest first
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    auto e = to_d(x, s[i], denoised);
    ets.push_front(e);
    if (ets.size() > 4) ets.pop_back();
    const double dt = s[i + 1] - s[i];
    if (i == 0 && n > 1 && s[1] > 0) {
      auto x1 = x + e * dt;
      auto e1 = to_d(x1, s[1], denoise(D, x1, s[1]));
      x = x + (e + e1) / 2 * dt;
    } else {
      const int order = static_cast<int>(ets.size());
      x = x + combine(kAB[order - 1], std::vector<torch::Tensor>(ets.begin(), ets.end())) * dt;
    }
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_pndm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt,
                          const MidpointFn& midpoint) {
  // PNDM (Liu et al. 2022): three pseudo Runge-Kutta (RK4 with the DDIM transfer) warm-up
  // steps, then 4th-order pseudo linear multistep.
  auto s = sigma_values(sigmas, "pndm");
  const int n = static_cast<int>(s.size()) - 1;
  std::deque<torch::Tensor> ets;  // first noise prediction of each step, newest first
  for (int i = 0; i < n; ++i) {
    auto denoised = denoise(D, x, s[i]);
    auto e1 = to_d(x, s[i], denoised);
    ets.push_front(e1);
    if (ets.size() > 4) ets.pop_back();
    const double dt = s[i + 1] - s[i];
    if (i < 3 && s[i + 1] > 0) {
      double sm = midpoint ? midpoint(s[i], s[i + 1]) : std::sqrt(s[i] * s[i + 1]);
      auto x1 = x + e1 * (sm - s[i]);
      auto e2 = to_d(x1, sm, denoise(D, x1, sm));
      auto x2 = x + e2 * (sm - s[i]);
      auto e3 = to_d(x2, sm, denoise(D, x2, sm));
      auto x3 = x + e3 * dt;
      auto e4 = to_d(x3, s[i + 1], denoise(D, x3, s[i + 1]));
      x = x + (e1 / 6 + e2 / 3 + e3 / 3 + e4 / 6) * dt;
    } else if (i < 3) {
      x = x + e1 * dt;
    } else {
      x = x + combine(kAB[ets.size() - 1], std::vector<torch::Tensor>(ets.begin(), ets.end())) * dt;
    }
    report(opt, i, s, x, denoised);
  }
  return x;
}

torch::Tensor sample_pndm(const Denoiser& D, torch::Tensor x, const torch::Tensor& sigmas, const SamplerOptions& opt) {
  return sample_pndm(D, std::move(x), sigmas, opt, MidpointFn());
}

}  // namespace diffuse
