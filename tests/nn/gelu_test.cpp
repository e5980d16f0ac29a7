#include "nn/gelu.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "nn/bf16_rounding.h"

using namespace diffuse;
using diffuse::test::expect_within_a_rounding;

namespace {

// bf16 inputs over GELU's whole range: its curved middle and both tails.
torch::Tensor gelu_inputs(int64_t seed) {
  torch::manual_seed(seed);
  auto x =
      torch::cat({torch::randn({5000}) * 2, torch::linspace(-12, 12, 2001), torch::randn({3, 97}).reshape({-1}) * 6});
  return x.reshape({4, -1}).to(torch::kBFloat16);
}

}  // namespace

TEST(Gelu, EqualsGeluInFp32RoundedToBf16) {
  for (const bool tanh : {false, true}) {
    auto x = gelu_inputs(1);
    auto got = nn::gelu_bf16(x, tanh);
    ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
    // In fp64 (ATen's fp32 GELU loses the far left tail to cancellation: 1 + erf(x) and
    // 1 + tanh(x) round to 0 where the kernel's erfc and sigmoid keep a tiny value).
    auto exact =
        (tanh ? torch::gelu(x.to(torch::kDouble), "tanh") : torch::gelu(x.to(torch::kDouble))).to(torch::kFloat);
    expect_within_a_rounding(got, exact, 1e-6, tanh ? "tanh forward" : "erf forward");
    auto visible = exact.abs() > 1e-6;
    auto same = (got == exact.to(torch::kBFloat16)).masked_select(visible);
    EXPECT_GT(same.to(torch::kFloat).mean().item<double>(), 0.99);
    // ATen's own bf16 GELU: the erf form computes in fp32 as well; the tanh form rounds its
    // intermediate values to bf16, and lands no closer to the fp32 result than the kernel.
    auto aten = tanh ? torch::gelu(x, "tanh") : torch::gelu(x);
    auto error = [&](const torch::Tensor& t) { return (t.to(torch::kFloat) - exact).abs().sum().item<double>(); };
    EXPECT_LE(error(got), error(aten) * 1.001);
  }
}

TEST(Gelu, GradientEqualsTheFp32GradientRoundedToBf16) {
  for (const bool tanh : {false, true}) {
    auto x = gelu_inputs(2).requires_grad_();
    torch::manual_seed(3);
    auto upstream = torch::randn(x.sizes()).to(torch::kBFloat16);
    nn::gelu_bf16(x, tanh).backward(upstream);
    auto xr = x.detach().to(torch::kFloat).requires_grad_();
    (tanh ? torch::gelu(xr, "tanh") : torch::gelu(xr)).backward(upstream.to(torch::kFloat));
    ASSERT_EQ(x.grad().scalar_type(), torch::kBFloat16);
    expect_within_a_rounding(x.grad(), xr.grad(), 1e-5, tanh ? "tanh gradient" : "erf gradient");
  }
}

// fp32 takes the kernel without rounding to bf16: within a few fp32 roundings of GELU in fp64,
// gradient too, over the whole range (ATen's fp32 GELU is off by its own size in the far left tail).
TEST(Gelu, Fp32EqualsFp64WithinRoundings) {
  for (const bool tanh : {false, true}) {
    SCOPED_TRACE(tanh ? "tanh" : "erf");
    auto x = gelu_inputs(4).to(torch::kFloat).requires_grad_();
    auto y = nn::gelu(x, tanh);
    ASSERT_EQ(y.scalar_type(), torch::kFloat);
    torch::manual_seed(5);
    auto upstream = torch::randn(x.sizes());
    y.backward(upstream);
    auto x64 = x.detach().to(torch::kDouble).requires_grad_();
    auto y64 = tanh ? torch::gelu(x64, "tanh") : torch::gelu(x64);
    y64.backward(upstream.to(torch::kDouble));
    // Relative to the value where it is large, absolute near zero.
    auto bound = [](const torch::Tensor& want, double rel) { return want.abs().clamp_min(1e-3) * rel; };
    EXPECT_TRUE(((y.to(torch::kDouble) - y64).abs() <= bound(y64.detach(), 1e-6)).all().item<bool>());
    // The derivative crosses zero near x = -0.75 as the difference of two terms of about 0.23:
    // its error is relative to the upstream gradient there.
    const auto grad_bound = bound(x64.grad(), 2e-6) + upstream.abs().to(torch::kDouble) * 1e-6;
    EXPECT_TRUE(((x.grad().to(torch::kDouble) - x64.grad()).abs() <= grad_bound).all().item<bool>());
  }
}

TEST(Gelu, OtherDtypesTakeAten) {
  auto x = torch::randn({4, 9}, torch::kDouble);
  EXPECT_TRUE(torch::equal(nn::gelu(x), torch::gelu(x)));
  EXPECT_TRUE(torch::equal(nn::gelu(x, true), torch::gelu(x, "tanh")));
  // Non-contiguous bf16 input: the values of its contiguous copy.
  auto b = torch::randn({6, 8}).to(torch::kBFloat16).t();
  EXPECT_TRUE(torch::equal(nn::gelu(b), nn::gelu_bf16(b.contiguous(), false)));
  EXPECT_THROW(nn::gelu_bf16(x.to(torch::kFloat), false), Error);
}
