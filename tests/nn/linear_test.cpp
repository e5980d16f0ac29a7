#include "nn/linear.h"

#include <gtest/gtest.h>

#include "nn/autocast.h"

namespace diffuse::nn {
namespace {

// The C++ frontend's Linear: what nn::Linear replaces.
torch::Tensor frontend_linear(const Linear& l, const torch::Tensor& x) {
  return torch::nn::functional::linear(x, l->weight, l->bias);
}

TEST(Linear, EqualsTheFrontendsLinearInFloat32) {
  torch::manual_seed(0);
  Linear l(24, 40);
  const auto x3 = torch::randn({3, 7, 24});
  for (const auto& x :
       {torch::randn({5, 24}), x3, x3.transpose(0, 1), torch::randn({2, 3, 4, 24}), torch::randn({24})}) {
    SCOPED_TRACE(c10::str(x.sizes(), x.strides()));
    const auto ours = l(x), theirs = frontend_linear(l, x);
    ASSERT_EQ(ours.sizes(), theirs.sizes());
    EXPECT_TRUE(torch::allclose(ours, theirs, 1e-5, 1e-6)) << (ours - theirs).abs().max().item<double>();
  }
  Linear no_bias(torch::nn::LinearOptions(24, 8).bias(false));
  EXPECT_TRUE(torch::allclose(no_bias(x3), frontend_linear(no_bias, x3), 1e-5, 1e-6));
}

// Under autocast the bias is cast with the weight: the result is ATen's linear of bf16 operands,
// with no float32 pass over the output.
TEST(Linear, UnderAutocastComputesInBf16WithItsBias) {
  torch::manual_seed(1);
  Linear l(32, 16);
  const auto x = torch::randn({4, 9, 32});
  torch::Tensor y;
  {
    AutocastGuard autocast(torch::kCPU, true);
    y = l(x);
  }
  ASSERT_EQ(y.scalar_type(), torch::kBFloat16);
  const auto bf = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
  EXPECT_TRUE(torch::equal(y, torch::linear(bf(x), bf(l->weight), bf(l->bias))));
}

TEST(Linear, UsesItsComputeCopiesOnlyUnderAutocast) {
  torch::manual_seed(2);
  Linear l(8, 6);
  const auto x = torch::randn({3, 8});
  const auto fp32 = l(x);
  l->compute_weight = (l->weight * 2).to(torch::kBFloat16);
  l->compute_bias = torch::zeros({6}, torch::kBFloat16);
  EXPECT_TRUE(torch::equal(l(x), fp32));  // autocast off: the float32 parameters
  AutocastGuard autocast(torch::kCPU, true);
  const auto bf = x.to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(l(x), torch::linear(bf, l->compute_weight, l->compute_bias)));
}

}  // namespace
}  // namespace diffuse::nn
