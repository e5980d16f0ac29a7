#pragma once
// Exact oracles for samplers: data distributions whose ideal denoiser (and, for a Gaussian,
// probability-flow ODE solution) is known in closed form, in float64. Shared by the oracle
// tests (tests/diffusion/oracle_test.cpp) and the convergence figure (bench/sampler_convergence.cpp).
//  * Gaussian N(mu, Sigma): D(x, s) = mu + Sigma (Sigma + s^2 I)^-1 (x - mu); in the eigenbasis
//    the PF-ODE solution is x_i(s) = mu_i + (x_i(s0) - mu_i) sqrt(l_i + s^2) / sqrt(l_i + s0^2).
//  * Mixture of isotropic Gaussians: posterior-weighted component denoisers; a reference PF-ODE
//    solution is a fine RK4 integration in log-sigma (rk4_flow).
//  * Finite point set: a mixture of zero-variance components.
#include <torch/torch.h>

#include <cmath>
#include <cstdint>

#include "diffusion/denoiser.h"

namespace diffuse::oracle {

inline const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);

inline torch::Tensor randn(at::IntArrayRef shape, uint64_t seed) {
  return torch::randn(shape, at::detail::createCPUGenerator(seed), f64);
}

struct Gaussian {
  torch::Tensor mu, Q, lam;  // Sigma = Q diag(lam) Q^T
  explicit Gaussian(int d, uint64_t seed) {
    auto g = at::detail::createCPUGenerator(seed);
    mu = torch::randn({d}, g, f64) * 0.5;
    Q = std::get<0>(torch::linalg_qr(torch::randn({d, d}, g, f64)));
    lam = torch::logspace(-1.3, 0.3, d, 10.0, f64);  // eigenvalues 0.05 .. 2
  }
  torch::Tensor sigma() const { return Q.matmul(torch::diag(lam)).matmul(Q.t()); }
  // The returned denoiser refers to *this: keep the Gaussian alive while using it.
  Denoiser denoiser() const {
    return [this](const torch::Tensor& x, const torch::Tensor& s) {
      auto y = (x - mu).matmul(Q);  // eigen-coordinates [B, d]
      auto s2 = (s * s).unsqueeze(1);
      return mu + (y * (lam / (lam + s2))).matmul(Q.t());
    };
  }
  // Exact PF-ODE solution from sigma s0 to s1.
  torch::Tensor flow(const torch::Tensor& x0, double s0, double s1) const {
    auto y = (x0 - mu).matmul(Q);
    return mu + (y * ((lam + s1 * s1) / (lam + s0 * s0)).sqrt()).matmul(Q.t());
  }
};

// Mixture of isotropic Gaussians sum_k w_k N(m_k, v_k I) (v_k = 0: a finite point set).
struct Mixture {
  torch::Tensor w, m, v;  // [K], [K, d], [K]
  // The returned denoiser refers to *this: keep the Mixture alive while using it.
  Denoiser denoiser() const {
    return [this](const torch::Tensor& x, const torch::Tensor& s) {
      const int64_t d = x.size(1);
      auto tot = (v.unsqueeze(0) + (s * s).unsqueeze(1));             // [B, K]
      auto dist2 = (x.unsqueeze(1) - m.unsqueeze(0)).pow(2).sum(-1);  // [B, K]
      auto logp = w.log().unsqueeze(0) - 0.5 * dist2 / tot - 0.5 * d * tot.log();
      auto p = torch::softmax(logp, 1);                                       // posterior over k
      auto shrink = (v.unsqueeze(0) / tot).unsqueeze(2);                      // [B, K, 1]
      auto ek = m.unsqueeze(0) + shrink * (x.unsqueeze(1) - m.unsqueeze(0));  // [B, K, d]
      return (p.unsqueeze(2) * ek).sum(1);
    };
  }
};

// The 2-D three-component mixture the oracle tests and the convergence figure use.
inline Mixture gmm() {
  Mixture m;
  m.w = torch::tensor({0.5, 0.3, 0.2}, f64);
  m.m = torch::tensor({{-1.0, 0.5}, {1.2, 0.8}, {0.2, -1.3}}, f64);
  m.v = torch::tensor({0.3, 0.15, 0.5}, f64);
  return m;
}

// Reference PF-ODE solution: classical RK4 in u = log(sigma), dx/du = x - D(x, sigma), n steps.
inline torch::Tensor rk4_flow(const Denoiser& D, torch::Tensor x, double s0, double s1, int n) {
  auto f = [&](const torch::Tensor& xx, double u) { return xx - D(xx, torch::full({xx.size(0)}, std::exp(u), f64)); };
  const double u0 = std::log(s0), h = (std::log(s1) - u0) / n;
  for (int i = 0; i < n; ++i) {
    double u = u0 + i * h;
    auto k1 = f(x, u), k2 = f(x + 0.5 * h * k1, u + 0.5 * h), k3 = f(x + 0.5 * h * k2, u + 0.5 * h),
         k4 = f(x + h * k3, u + h);
    x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4);
  }
  return x;
}

}  // namespace diffuse::oracle
