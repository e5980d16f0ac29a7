#include "nn/group_norm.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "nn/autocast.h"
#include "nn/bf16_rounding.h"

using namespace diffuse;
using diffuse::test::expect_within_a_rounding;

namespace {

struct Case {
  std::vector<int64_t> shape;
  int64_t groups;
  bool silu;
};

const std::vector<Case> kCases = {
    {{3, 8, 5, 7}, 4, true},     // odd spatial size: vector loops with remainders
    {{2, 32, 14, 14}, 8, true},  // a UNet block's shape
    {{2, 6, 33}, 3, false},      // [B, C, tokens]: the attention's norm
    {{1, 64, 1, 1}, 32, true},   // two values per group
    {{4, 16, 2, 3}, 16, false},  // one channel per group
};

// The fp32 computation autocast runs for the same call, rounded where the next bf16 layer rounds it.
torch::Tensor unfused_group_norm(const torch::Tensor& x, int64_t groups, const torch::Tensor& w, const torch::Tensor& b,
                                 bool silu) {
  auto h = torch::group_norm(x, groups, w, b, 1e-5);
  return silu ? torch::silu(h) : h;
}

torch::Tensor inputs(const Case& c, int64_t seed) {
  torch::manual_seed(seed);
  // An offset and a scale per channel, so that the statistics are not those of N(0, 1).
  auto x = torch::randn(c.shape) * 3 + 0.5;
  return x.to(torch::kBFloat16);
}

}  // namespace

TEST(GroupNormAct, ForwardEqualsTheFp32PathRoundedToBf16) {
  for (const auto& c : kCases) {
    auto x = inputs(c, 1);
    const int64_t C = c.shape[1];
    auto w = torch::randn({C}), b = torch::randn({C});
    auto got = nn::group_norm_silu_bf16(x, c.groups, w, b, 1e-5, c.silu);
    ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
    ASSERT_EQ(got.sizes(), x.sizes());
    auto want = unfused_group_norm(x.to(torch::kFloat), c.groups, w, b, c.silu);
    expect_within_a_rounding(got, want, 1e-6, "forward");
    // Most values round to the very same bf16 number as the fp32 result.
    auto same = (got == want.to(torch::kBFloat16)).to(torch::kFloat).mean().item<double>();
    EXPECT_GT(same, 0.97) << "shape " << c.shape[0] << "x" << c.shape[1];
  }
}

TEST(GroupNormAct, GradientsEqualTheFp32Path) {
  for (const auto& c : kCases) {
    auto x = inputs(c, 2).requires_grad_();
    const int64_t C = c.shape[1];
    auto w = torch::randn({C}).requires_grad_(), b = torch::randn({C}).requires_grad_();
    torch::manual_seed(3);
    auto upstream = torch::randn(c.shape).to(torch::kBFloat16);
    nn::group_norm_silu_bf16(x, c.groups, w, b, 1e-5, c.silu).backward(upstream);

    auto xr = x.detach().to(torch::kFloat).requires_grad_();
    auto wr = w.detach().clone().requires_grad_(), br = b.detach().clone().requires_grad_();
    unfused_group_norm(xr, c.groups, wr, br, c.silu).backward(upstream.to(torch::kFloat));

    ASSERT_EQ(x.grad().scalar_type(), torch::kBFloat16);
    const double scale = xr.grad().abs().max().item<double>();
    expect_within_a_rounding(x.grad(), xr.grad(), 1e-4 * scale, "input gradient");
    EXPECT_TRUE(torch::allclose(w.grad(), wr.grad(), 1e-4, 1e-4 * wr.grad().abs().max().item<double>()))
        << "weight gradient: max diff " << (w.grad() - wr.grad()).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(b.grad(), br.grad(), 1e-4, 1e-4 * br.grad().abs().max().item<double>()))
        << "bias gradient: max diff " << (b.grad() - br.grad()).abs().max().item<double>();
  }
}

TEST(GroupNormAct, WithoutAffineParameters) {
  const Case c{{2, 12, 9, 4}, 3, true};
  auto x = inputs(c, 4).requires_grad_();
  auto got = nn::group_norm_silu_bf16(x, c.groups, torch::Tensor(), torch::Tensor(), 1e-5, true);
  auto xr = x.detach().to(torch::kFloat).requires_grad_();
  auto want = unfused_group_norm(xr, c.groups, torch::Tensor(), torch::Tensor(), true);
  expect_within_a_rounding(got, want, 1e-6, "forward");
  auto upstream = torch::ones(c.shape);
  got.backward(upstream.to(torch::kBFloat16));
  want.backward(upstream);
  expect_within_a_rounding(x.grad(), xr.grad(), 1e-4 * xr.grad().abs().max().item<double>(), "input gradient");
}

TEST(GroupNormAct, ThreadsDoNotChangeTheResult) {
  const Case c{{8, 32, 12, 12}, 8, true};
  diffuse::test::expect_same_on_one_and_two_threads([&] {
    auto x = inputs(c, 5).requires_grad_();
    torch::manual_seed(6);
    auto w = torch::randn({32}).requires_grad_(), b = torch::randn({32}).requires_grad_();
    auto out = nn::group_norm_silu_bf16(x, c.groups, w, b, 1e-5, true);
    out.backward(torch::randn(c.shape).to(torch::kBFloat16));
    return std::vector<torch::Tensor>{out.detach(), x.grad(), w.grad(), b.grad()};
  });
}

TEST(GroupNormAct, ModulesUnderAutocastTakeTheFusedKernel) {
  torch::nn::GroupNorm norm(torch::nn::GroupNormOptions(4, 16).eps(1e-6));
  torch::manual_seed(7);
  torch::nn::init::normal_(norm->weight);
  torch::nn::init::normal_(norm->bias);
  auto x = (torch::randn({2, 16, 6, 6}) * 2).to(torch::kBFloat16);
  nn::AutocastGuard autocast(torch::kCPU, true);
  ASSERT_TRUE(nn::group_norm_act_fuses(*norm, x, nn::Activation::SiLU));
  auto got = nn::group_norm_act(*norm, x, nn::Activation::SiLU);
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  // What autocast computed before: the norm in fp32, then SiLU in fp32.
  auto want = torch::silu(norm(x));
  EXPECT_EQ(want.scalar_type(), torch::kFloat);
  expect_within_a_rounding(got, want, 1e-6, "module");
}

TEST(GroupNormAct, OtherDtypesAndActivationsKeepTheUnfusedPath) {
  torch::nn::GroupNorm norm(torch::nn::GroupNormOptions(2, 8));
  torch::manual_seed(8);
  auto x = torch::randn({2, 8, 5, 5});
  EXPECT_FALSE(nn::group_norm_act_fuses(*norm, x, nn::Activation::SiLU));  // fp32 input
  EXPECT_TRUE(torch::equal(nn::group_norm_act(*norm, x, nn::Activation::SiLU), torch::silu(norm(x))));
  EXPECT_TRUE(torch::equal(nn::group_norm_act(*norm, x, std::nullopt), norm(x)));
  EXPECT_FALSE(nn::group_norm_act_fuses(*norm, x.to(torch::kBFloat16), nn::Activation::GELU));
  norm->to(torch::kBFloat16);  // bf16 weights: Stable Diffusion's bf16 compute
  EXPECT_FALSE(nn::group_norm_act_fuses(*norm, x.to(torch::kBFloat16), nn::Activation::SiLU));
}

TEST(GroupNormAct, BadInputNamesTheProblem) {
  auto w = torch::ones({6});
  try {
    nn::group_norm_silu_bf16(torch::randn({1, 6, 4}), 3, w, w, 1e-5, true);
    FAIL() << "fp32 input accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
  try {
    nn::group_norm_silu_bf16(torch::randn({1, 6, 4}).to(torch::kBFloat16), 4, w, w, 1e-5, true);
    FAIL() << "6 channels in 4 groups accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("6 channels"), std::string::npos) << e.what();
  }
  EXPECT_THROW(nn::group_norm_silu_bf16(torch::randn({1, 6, 4}).to(torch::kBFloat16), 3, torch::ones({5}),
                                        torch::Tensor(), 1e-5, true),
               Error);
}

TEST(GroupNormAct, NonFiniteInputsStayNonFinite) {
  auto x = torch::randn({1, 4, 3, 3});
  x.index_put_({0, 0, 1, 1}, std::numeric_limits<float>::quiet_NaN());
  auto got = nn::group_norm_silu_bf16(x.to(torch::kBFloat16), 2, torch::Tensor(), torch::Tensor(), 1e-5, true);
  // The NaN poisons its own group's statistics and no other group.
  EXPECT_TRUE(torch::isnan(got.slice(1, 0, 2)).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(got.slice(1, 2, 4)).all().item<bool>());
}

TEST(GroupNormAct, ChannelsLastInputsKeepTheirLayout) {
  // Channels-last images (one sample cut into several chunks, and a batch) and the attention's
  // tokens [B, N, C] seen as [B, C, N].
  for (const auto& c :
       std::vector<Case>{{{1, 32, 40, 40}, 8, true}, {{3, 24, 9, 7}, 6, false}, {{2, 16, 50}, 4, true}}) {
    auto dense = inputs(c, 9);
    auto x = (c.shape.size() == 4 ? dense.contiguous(torch::MemoryFormat::ChannelsLast)
                                  : dense.transpose(1, 2).contiguous().transpose(1, 2))
                 .requires_grad_();
    ASSERT_FALSE(x.is_contiguous());
    const int64_t C = c.shape[1];
    torch::manual_seed(10);
    auto w = torch::randn({C}).requires_grad_(), b = torch::randn({C}).requires_grad_();
    auto upstream = torch::randn(c.shape).to(torch::kBFloat16);
    auto got = nn::group_norm_silu_bf16(x, c.groups, w, b, 1e-5, c.silu);
    EXPECT_EQ(got.strides(), x.strides()) << "output layout";
    got.backward(upstream);
    EXPECT_EQ(x.grad().strides(), x.strides()) << "gradient layout";

    auto xr = x.detach().to(torch::kFloat).contiguous().requires_grad_();
    auto wr = w.detach().clone().requires_grad_(), br = b.detach().clone().requires_grad_();
    auto want = unfused_group_norm(xr, c.groups, wr, br, c.silu);
    want.backward(upstream.to(torch::kFloat));
    expect_within_a_rounding(got, want, 1e-6, "forward");
    expect_within_a_rounding(x.grad(), xr.grad(), 1e-4 * xr.grad().abs().max().item<double>(), "input gradient");
    EXPECT_TRUE(torch::allclose(w.grad(), wr.grad(), 1e-4, 1e-4 * wr.grad().abs().max().item<double>()));
    EXPECT_TRUE(torch::allclose(b.grad(), br.grad(), 1e-4, 1e-4 * br.grad().abs().max().item<double>()));
  }
}
