#include "train/adamw.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace diffuse
