#include "train/adamw.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace diffuse {
namespace {

// Our AdamW must follow torch.optim.AdamW's update rule exactly (same formula).
TEST(AdamW, MatchesTorchAdamW) {
  torch::manual_seed(3);
  auto w0 = torch::randn({4, 3});
  auto a = w0.clone().set_requires_grad(true);
  auto b = w0.clone().set_requires_grad(true);
  AdamW ours({{"w", a}}, AdamW::Options{0.9, 0.999, 1e-8, 0.01});
  torch::optim::AdamW ref({b}, torch::optim::AdamWOptions(1e-2).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.01));
  auto target = torch::randn({4, 3});
  for (int i = 0; i < 5; ++i) {
    ours.zero_grad();
    ref.zero_grad();
    (a - target).pow(2).sum().backward();
    (b - target).pow(2).sum().backward();
    ours.step(1e-2);
    ref.step();
  }
  EXPECT_LT((a - b).abs().max().item<double>(), 1e-6);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  auto p1 = torch::ones({3}).set_requires_grad(true);
  AdamW o1({{"p", p1}}, {});
  for (int i = 0; i < 3; ++i) {
    o1.zero_grad();
    (p1 * p1 * torch::arange(3)).sum().backward();
    o1.step(0.1);
  }
  auto p2 = p1.detach().clone().set_requires_grad(true);
  AdamW o2({{"p", p2}}, {});
  std::map<std::string, torch::Tensor> st;
  for (auto& [k, v] : o1.state()) st[k] = v.clone();
  o2.load_state(st, o1.steps(), "test");
  for (auto* pair : {&p1, &p2}) (void)pair;
  for (int i = 0; i < 2; ++i) {
    for (auto [p, o] : {std::pair<torch::Tensor*, AdamW*>{&p1, &o1}, {&p2, &o2}}) {
      o->zero_grad();
      ((*p) * (*p) * torch::arange(3)).sum().backward();
      o->step(0.1);
    }
  }
  EXPECT_TRUE(torch::equal(p1, p2));
}

TEST(AdamW, ClipGradNorm) {
  auto p = torch::zeros({4}).set_requires_grad(true);
  (p * torch::tensor({3.0, 4.0, 0.0, 0.0})).sum().backward();
  double n = clip_grad_norm({p}, 1.0);
  EXPECT_NEAR(n, 5.0, 1e-6);
  EXPECT_NEAR(p.grad().norm().item<double>(), 1.0, 1e-5);
}

// Clipping inside the update (step's grad_scale) is clipping the gradients first.
TEST(AdamW, GradScaleIsClipping) {
  torch::manual_seed(4);
  const auto w0 = torch::randn({50, 30});
  auto a = w0.clone().set_requires_grad(true), b = w0.clone().set_requires_grad(true);
  AdamW oa({{"w", a}}, AdamW::Options{0.9, 0.999, 1e-8, 0.01}), ob({{"w", b}}, AdamW::Options{0.9, 0.999, 1e-8, 0.01});
  const auto target = torch::randn({50, 30});
  for (int i = 0; i < 4; ++i) {
    oa.zero_grad();
    ob.zero_grad();
    (a - target).pow(2).sum().backward();
    (b - target).pow(2).sum().backward();
    const GradNorm n = grad_norm({b}, 1.0);
    ASSERT_LT(n.scale, 1.0);
    EXPECT_DOUBLE_EQ(clip_grad_norm({a}, 1.0), n.norm);
    oa.step(1e-2);
    ob.step(1e-2, n.scale);
    ASSERT_TRUE(torch::equal(a, b)) << "step " << i;
  }
  EXPECT_EQ(grad_norm({b}, 0).scale, 1.0);  // max_norm 0: no clipping
}

// A bf16 gradient of a float32 parameter (train/compute_weights.h) gives the update of that
// gradient in float32, and a mirror follows the parameter in bf16; both on the fused path
// (contiguous float32) and on the tensor-operation path (here float64).
TEST(AdamW, Bf16GradientsAndMirrors) {
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    SCOPED_TRACE(c10::toString(dtype));
    torch::manual_seed(5);
    const auto w0 = torch::randn({64, 33}, dtype);
    auto a = w0.clone().set_requires_grad(true), b = w0.clone().set_requires_grad(true);
    AdamW oa({{"w", a}}, AdamW::Options{0.9, 0.999, 1e-8, 0.01}),
        ob({{"w", b}}, AdamW::Options{0.9, 0.999, 1e-8, 0.01});
    auto mirror = torch::zeros({64, 33}, torch::kBFloat16);
    oa.mirror(a, mirror);
    for (int i = 0; i < 3; ++i) {
      const auto g = torch::randn({64, 33}).to(torch::kBFloat16);
      a.mutable_grad() = g;
      b.mutable_grad() = g.to(dtype);
      oa.step(1e-2, 0.7);
      ob.step(1e-2, 0.7);
      ASSERT_TRUE(torch::equal(a, b)) << "step " << i;
      ASSERT_TRUE(torch::equal(mirror, a.detach().to(torch::kBFloat16))) << "step " << i;
    }
  }
  auto p = torch::zeros({3}).set_requires_grad(true);
  AdamW o({{"p", p}}, {});
  EXPECT_THROW(o.mirror(p, torch::zeros({3})), Error);                                    // not bf16
  EXPECT_THROW(o.mirror(p, torch::zeros({4}, torch::kBFloat16)), Error);                  // another shape
  EXPECT_THROW(o.mirror(torch::zeros({3}), torch::zeros({3}, torch::kBFloat16)), Error);  // not a parameter
}

// zero_grad drops the gradients; a parameter the loss does not reach is not updated (nor decayed).
TEST(AdamW, ParameterWithoutGradientIsLeftAsIs) {
  auto used = torch::ones({3}).set_requires_grad(true), unused = torch::ones({3}).set_requires_grad(true);
  AdamW o({{"used", used}, {"unused", unused}}, AdamW::Options{0.9, 0.999, 1e-8, 0.1});
  for (int i = 0; i < 2; ++i) {
    o.zero_grad();
    EXPECT_FALSE(used.grad().defined());
    (used * used).sum().backward();
    o.step(0.1);
  }
  EXPECT_FALSE(torch::equal(used, torch::ones({3})));
  EXPECT_TRUE(torch::equal(unused, torch::ones({3})));
}

TEST(AdamW, ClipGradNormScalesABf16GradientInFloat32) {
  auto p = torch::zeros({2}).set_requires_grad(true);
  p.mutable_grad() = torch::tensor({3.0, 4.0}).to(torch::kBFloat16);
  EXPECT_NEAR(clip_grad_norm({p}, 1.0), 5.0, 1e-6);
  EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(p.grad(), torch::tensor({3.0f, 4.0f}).mul_(1.0 / (5.0 + 1e-6))));
}

}  // namespace
}  // namespace diffuse
