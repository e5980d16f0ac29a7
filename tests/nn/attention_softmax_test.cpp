#include "nn/attention_softmax.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "nn/attention.h"
#include "nn/bf16_rounding.h"

using namespace diffuse;
using diffuse::test::expect_within_a_rounding;

namespace {

// The unfused computation: scores scaled in bf16, softmax in fp32, probabilities back in bf16.
torch::Tensor unfused_softmax(const torch::Tensor& scores, double scale) {
  return (scores * scale).to(torch::kFloat).softmax(-1).to(torch::kBFloat16);
}

torch::Tensor scores(std::vector<int64_t> shape, double spread, int64_t seed) {
  torch::manual_seed(seed);
  return (torch::randn(shape) * spread).to(torch::kBFloat16);
}

}  // namespace

TEST(AttentionSoftmax, ForwardEqualsTheUpcastPath) {
  for (auto shape : std::vector<std::vector<int64_t>>{{4, 49, 49}, {2, 3, 7, 33}, {5, 1}, {1, 2, 256}}) {
    const double scale = 1.0 / std::sqrt(32.0);
    auto s = scores(shape, 4.0, 1);
    auto got = nn::scaled_softmax_bf16(s, scale);
    ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
    ASSERT_EQ(got.sizes(), s.sizes());
    auto want = unfused_softmax(s, scale);
    expect_within_a_rounding(got, want, 1e-7, "probabilities");
    EXPECT_GT((got == want).to(torch::kFloat).mean().item<double>(), 0.97);
  }
}

TEST(AttentionSoftmax, LargeScoresStayFinite) {
  auto s = scores({3, 40}, 300.0, 2);  // exp of the raw scores would overflow fp32
  auto got = nn::scaled_softmax_bf16(s, 1.0);
  EXPECT_TRUE(torch::isfinite(got).all().item<bool>());
  expect_within_a_rounding(got, unfused_softmax(s, 1.0), 1e-7, "large scores");
}

TEST(AttentionSoftmax, GradientEqualsTheUpcastPath) {
  const double scale = 0.125;
  auto s = scores({6, 20, 37}, 3.0, 3).requires_grad_();
  torch::manual_seed(4);
  auto upstream = torch::randn({6, 20, 37}).to(torch::kBFloat16);
  nn::scaled_softmax_bf16(s, scale).backward(upstream);
  auto sr = s.detach().clone().requires_grad_();
  unfused_softmax(sr, scale).backward(upstream);
  ASSERT_EQ(s.grad().scalar_type(), torch::kBFloat16);
  expect_within_a_rounding(s.grad(), sr.grad(), 1e-3 * sr.grad().abs().max().item<double>(), "score gradient");
}

// Small score matrices keep their fp32 probabilities for the backward pass; larger ones (here: a
// budget too small for any) recompute them from the scores. The gradient is the same bit for bit.
TEST(AttentionSoftmax, KeptAndRecomputedProbabilitiesGiveTheSameGradient) {
  auto grad_with_budget = [](int64_t budget) {
    const int64_t before = nn::attention_memory_budget();
    nn::set_attention_memory_budget(budget);
    auto s = scores({3, 24, 50}, 3.0, 6).requires_grad_();
    torch::manual_seed(7);
    nn::scaled_softmax_bf16(s, 0.2).backward(torch::randn({3, 24, 50}).to(torch::kBFloat16));
    nn::set_attention_memory_budget(before);
    return s.grad();
  };
  const auto kept = grad_with_budget(int64_t{128} << 20), recomputed = grad_with_budget(64);
  EXPECT_TRUE(torch::equal(kept, recomputed));
}

TEST(AttentionSoftmax, ThreadsDoNotChangeTheResult) {
  diffuse::test::expect_same_on_one_and_two_threads([] {
    auto s = scores({16, 64, 64}, 3.0, 5).requires_grad_();
    auto p = nn::scaled_softmax_bf16(s, 0.3);
    p.backward(torch::ones_like(p));
    return std::vector<torch::Tensor>{p.detach(), s.grad()};
  });
}

TEST(AttentionSoftmax, AttentionWithUpcastSoftmaxInBf16) {
  torch::manual_seed(6);
  auto q = torch::randn({2, 4, 30, 16}).to(torch::kBFloat16), k = torch::randn({2, 4, 30, 16}).to(torch::kBFloat16),
       v = torch::randn({2, 4, 30, 16}).to(torch::kBFloat16);
  const double scale = 0.25;
  auto got = nn::dot_product_attention(q, k, v, scale, torch::Tensor(), 0, false, /*upcast_softmax=*/true);
  auto want = torch::matmul(unfused_softmax(torch::matmul(q, k.transpose(-1, -2)), scale), v);
  ASSERT_EQ(got.scalar_type(), torch::kBFloat16);
  EXPECT_LE((got.to(torch::kFloat) - want.to(torch::kFloat)).abs().max().item<double>(), 0.03);
  // Query chunks give the same rows.
  auto chunked = nn::dot_product_attention(q, k, v, scale, torch::Tensor(), 7, false, true);
  EXPECT_TRUE(torch::equal(chunked, got));
}

TEST(AttentionSoftmax, Fp32ScoresAreRefused) {
  try {
    nn::scaled_softmax_bf16(torch::randn({2, 3}), 1.0);
    FAIL() << "fp32 scores accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}

TEST(AttentionSoftmax, ANanScoreMakesItsRowNan) {
  auto s = scores({3, 8}, 2.0, 7);
  s.index_put_({1, 4}, std::numeric_limits<float>::quiet_NaN());
  auto got = nn::scaled_softmax_bf16(s, 0.5);
  EXPECT_TRUE(torch::isnan(got[1]).all().item<bool>());  // as ATen's softmax
  EXPECT_TRUE(torch::isfinite(got[0]).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(got[2]).all().item<bool>());
}
