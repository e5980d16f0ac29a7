#include "nn/layer_norm.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "nn/bf16_rounding.h"

using namespace diffuse;
using diffuse::test::expect_within_a_rounding;

TEST(LayerNormBf16, EqualsTheFp32LayerNormRoundedToBf16) {
  for (auto shape : std::vector<std::vector<int64_t>>{{8, 16, 384}, {3, 5}, {2, 1, 1000}}) {
    torch::manual_seed(1);
    auto x = (torch::randn(shape) * 3 + 1.5).to(torch::kBFloat16).requires_grad_();
    auto got = nn::layer_norm_bf16(x, 1e-6);
    ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
    auto xr = x.detach().to(torch::kFloat).requires_grad_();
    auto want = torch::layer_norm(xr, {shape.back()}, {}, {}, 1e-6);
    expect_within_a_rounding(got, want, 1e-6, "forward");
    EXPECT_GT((got == want.to(torch::kBFloat16)).to(torch::kFloat).mean().item<double>(), 0.97);

    torch::manual_seed(2);
    auto upstream = torch::randn(shape).to(torch::kBFloat16);
    got.backward(upstream);
    want.backward(upstream.to(torch::kFloat));
    ASSERT_EQ(x.grad().scalar_type(), torch::kBFloat16);
    expect_within_a_rounding(x.grad(), xr.grad(), 1e-4 * xr.grad().abs().max().item<double>(), "gradient");
  }
}

TEST(LayerNormBf16, ThreadsDoNotChangeTheResult) {
  diffuse::test::expect_same_on_one_and_two_threads([] {
    torch::manual_seed(3);
    auto x = torch::randn({64, 96}).to(torch::kBFloat16).requires_grad_();
    auto y = nn::layer_norm_bf16(x, 1e-5);
    y.backward(torch::ones_like(y));
    return std::vector<torch::Tensor>{y.detach(), x.grad()};
  });
}

TEST(LayerNormBf16, OtherDtypesTakeAten) {
  auto x = torch::randn({4, 10});
  EXPECT_TRUE(torch::equal(nn::layer_norm(x, 1e-6), torch::layer_norm(x, {10}, {}, {}, 1e-6)));
  EXPECT_THROW(nn::layer_norm_bf16(x, 1e-6), Error);
}
