// DDIM inversion against the exact probability-flow ODE of Gaussian data, whose solution is known:
// for data N(0, s^2) the ideal denoiser is D(x, sigma) = x s^2 / (s^2 + sigma^2) and the ODE maps
// x(sigma_a) to x(sigma_a) sqrt(s^2 + sigma_b^2) / sqrt(s^2 + sigma_a^2).
#include "diffusion/inversion.h"

#include <gtest/gtest.h>

#include <iostream>

#include "core/error.h"
#include "diffusion/sampler.h"

namespace diffuse {
namespace {

Denoiser ode_gaussian(double s) {
  return [s](const torch::Tensor& x, const torch::Tensor& sigma) {
    auto sg = sigma.to(x.scalar_type()).reshape({-1, 1, 1, 1});
    return x * (s * s) / (s * s + sg * sg);
  };
}

torch::Tensor ascending_karras(int n, double lo, double hi) {
  auto r = torch::linspace(0, 1, n + 1, torch::kFloat64);
  const double rho = 7;
  auto s = torch::pow(std::pow(lo, 1 / rho) + r * (std::pow(hi, 1 / rho) - std::pow(lo, 1 / rho)), rho);
  return s.to(torch::kFloat32);
}

TEST(Inversion, FollowsTheExactOde) {
  const double s = 0.5, lo = 0.02, hi = 80;
  auto x0 = torch::randn({2, 1, 4, 4}, torch::TensorOptions().dtype(torch::kFloat64)) * s;
  // Euler steps: first order, so 4x the steps gives about a quarter of the error
  double prev = 1e30;
  for (int n : {10, 40, 160}) {
    auto up = ascending_karras(n, lo, hi).to(torch::kFloat64);
    auto x = invert_ddim(ode_gaussian(s), x0, up);
    auto exact = x0 * std::sqrt(s * s + hi * hi) / std::sqrt(s * s + lo * lo);
    const double err = ((x - exact).abs().max() / exact.abs().max()).item<double>();
    std::cout << "[inversion] " << n << " steps: max rel err " << err << "\n";
    EXPECT_LT(err, prev / 3) << n;
    prev = err;
  }
  EXPECT_LT(prev, 0.02);  // measured 0.0156
}

TEST(Inversion, DdimRetracesIt) {
  const double s = 0.5;
  auto x0 = torch::randn({2, 1, 4, 4}, torch::TensorOptions().dtype(torch::kFloat64)) * s;
  auto up = ascending_karras(100, 0.02, 80).to(torch::kFloat64);
  int calls = 0;
  auto noise = invert_ddim(ode_gaussian(s), x0, up, [&](const StepInfo& i) {
    EXPECT_EQ(i.step, calls++);
    EXPECT_EQ(i.total, 100);
  });
  EXPECT_EQ(calls, 100);
  SamplerOptions o;
  auto back = sample_ddim(ode_gaussian(s), noise, up.flip(0), o);  // ends at sigma 0.02, like x0 entered
  const double err = (back - x0).abs().max().item<double>() / x0.abs().max().item<double>();
  std::cout << "[inversion] round trip, 100 steps: max rel err " << err << "\n";
  EXPECT_LT(err, 0.06);  // measured 0.049 (the two first-order errors add up)
}

TEST(Inversion, FixedPointRefinementMakesTheRoundTripExact) {
  const double s = 0.5;
  auto x0 = torch::randn({2, 1, 4, 4}, torch::TensorOptions().dtype(torch::kFloat64)) * s;
  auto up = ascending_karras(20, 0.02, 80).to(torch::kFloat64);
  double prev = 1e30;
  for (int refine : {0, 2, 8}) {
    auto noise = invert_ddim(ode_gaussian(s), x0, up, {}, refine);
    SamplerOptions o;
    auto back = sample_ddim(ode_gaussian(s), noise, up.flip(0), o);
    const double err = (back - x0).abs().max().item<double>() / x0.abs().max().item<double>();
    std::cout << "[inversion] round trip, 20 steps, " << refine << " refinements: max rel err " << err << "\n";
    EXPECT_LT(err, prev / 10) << refine;
    prev = err;
  }
  EXPECT_LT(prev, 2e-5);  // measured 8.2e-6
}

TEST(Inversion, RejectsBadSigmas) {
  auto x = torch::zeros({1, 1, 2, 2});
  EXPECT_THROW(invert_ddim(ode_gaussian(0.5), x, torch::tensor({0.0, 1.0})), Error);
  EXPECT_THROW(invert_ddim(ode_gaussian(0.5), x, torch::tensor({2.0, 1.0})), Error);
  EXPECT_THROW(invert_ddim(ode_gaussian(0.5), x, torch::zeros({0})), Error);
}

}  // namespace
}  // namespace diffuse
