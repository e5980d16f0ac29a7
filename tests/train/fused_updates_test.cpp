#include "train/fused_updates.h"

#include <gtest/gtest.h>

#include <cmath>

namespace diffuse {
namespace {

// The same update written with tensor operations (train/adamw.cpp's path for other tensors).
void adamw_with_tensor_ops(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v,
                           const AdamWStep& s) {
  p.mul_(s.decay);
  m.mul_(s.beta1).add_(g, s.one_minus_beta1);
  v.mul_(s.beta2).addcmul_(g, g, s.one_minus_beta2);
  p.addcdiv_(m, (v.sqrt() / s.bc2_sqrt).add_(s.eps), -s.step_size);
}

TEST(FusedUpdates, AdamWStepEqualsTheTensorOperations) {
  torch::manual_seed(1);
  auto p = torch::randn({1000, 37}), m = torch::zeros_like(p), v = torch::zeros_like(p);
  auto p2 = p.clone(), m2 = m.clone(), v2 = v.clone();
  for (int t = 1; t <= 20; ++t) {
    auto g = torch::randn(p.sizes()) * (t % 3 + 0.1);
    const double lr = 1e-3;
    const AdamWStep s{0.9f,
                      0.999f,
                      1e-8f,
                      float(1.0 - 0.9),
                      float(1.0 - 0.999),
                      float(1.0 - lr * 0.01),
                      float(lr / (1.0 - std::pow(0.9, t))),
                      float(std::sqrt(1.0 - std::pow(0.999, t)))};
    ASSERT_TRUE(adamw_step_fused(p, g, m, v, s));
    adamw_with_tensor_ops(p2, g, m2, v2, s);
  }
  // Not bit for bit: the vector loops may fuse a multiply and an add into one rounding.
  EXPECT_TRUE(torch::allclose(p, p2, 1e-5, 1e-6)) << (p - p2).abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(m, m2, 1e-5, 1e-7)) << (m - m2).abs().max().item<double>();
  EXPECT_TRUE(torch::allclose(v, v2, 1e-5, 1e-9)) << (v - v2).abs().max().item<double>();
}

TEST(FusedUpdates, EmaEqualsTheTensorOperations) {
  torch::manual_seed(2);
  auto e = torch::randn({513}), p = torch::randn({513});
  auto e2 = e.clone();
  ASSERT_TRUE(ema_update_fused(e, p, 0.999f));
  e2.mul_(0.999f).add_(p, 1.0 - 0.999f);
  EXPECT_TRUE(torch::allclose(e, e2, 1e-6, 1e-7)) << (e - e2).abs().max().item<double>();
}

TEST(FusedUpdates, OtherTensorsAreLeftToTheCaller) {
  const AdamWStep s{0.9f, 0.999f, 1e-8f, 0.1f, 0.001f, 1.f, 1e-3f, 0.1f};
  auto p = torch::randn({8, 6}), g = torch::randn({8, 6}), m = torch::zeros({8, 6}), v = torch::zeros({8, 6});
  auto before = p.clone();
  auto pt = p.t();  // not contiguous
  EXPECT_FALSE(adamw_step_fused(pt, g.t(), m, v, s));
  auto pb = p.to(torch::kBFloat16);
  EXPECT_FALSE(adamw_step_fused(pb, g, m, v, s));
  auto short_g = g.slice(0, 0, 4).contiguous();
  EXPECT_FALSE(adamw_step_fused(p, short_g, m, v, s));
  EXPECT_TRUE(torch::equal(p, before));
  EXPECT_TRUE(torch::equal(m, torch::zeros({8, 6})));
  auto e = torch::randn({8, 6}).to(torch::kDouble);
  EXPECT_FALSE(ema_update_fused(e, p, 0.5f));
}

}  // namespace
}  // namespace diffuse
