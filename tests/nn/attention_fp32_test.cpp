#include "nn/attention_fp32.h"

#include <gtest/gtest.h>

#include "nn/attention.h"

namespace diffuse::nn {
namespace {

#define REQUIRE_KERNEL()                                                                                             \
  if (!fused_attention_fp32(torch::zeros({1, 1, 1, 1}), torch::zeros({1, 1, 1, 1}), torch::zeros({1, 1, 1, 1}), 1.0) \
           .defined())                                                                                               \
  GTEST_SKIP() << "built without oneDNN"

// softmax(q k^T * scale) v in fp64.
torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, double scale) {
  return torch::matmul((torch::matmul(q, k.transpose(-1, -2)) * scale).softmax(-1), v);
}

double error_against_fp64(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kFloat64) - want).abs().max().item<double>() / want.abs().max().item<double>();
}

// Restores the attention memory budget.
struct AttentionBudget {
  int64_t before = attention_memory_budget();
  explicit AttentionBudget(int64_t bytes) { set_attention_memory_budget(bytes); }
  ~AttentionBudget() { set_attention_memory_budget(before); }
};

struct AttentionCase {
  int64_t b, h, n, m, d, dv;
  bool keep;  // probabilities kept for backward, or recomputed
};

// Output and gradients against fp64, for heads read from a [B, N, H*D] projection (as the
// attention block passes them), self- and cross-attention, several query blocks, and with the
// probabilities kept or recomputed.
TEST(AttentionFp32, MatchesFloat64WithGradients) {
  REQUIRE_KERNEL();
  for (const AttentionCase& c :
       {AttentionCase{3, 2, 49, 49, 32, 32, true}, AttentionCase{2, 3, 40, 77, 16, 24, true},
        AttentionCase{2, 2, 300, 700, 8, 8, false}, AttentionCase{1, 4, 196, 196, 32, 32, false}}) {
    SCOPED_TRACE(c10::str("B", c.b, " H", c.h, " N", c.n, " M", c.m, " D", c.d, " Dv", c.dv, " keep ", c.keep));
    AttentionBudget budget(c.keep ? int64_t{1} << 30 : 0);
    torch::manual_seed(c.n + c.m);
    const auto pq = torch::randn({c.b, c.n, c.h * c.d}).requires_grad_();
    const auto pk = torch::randn({c.b, c.m, c.h * c.d}).requires_grad_();
    const auto pv = torch::randn({c.b, c.m, c.h * c.dv}).requires_grad_();
    auto heads = [&](const torch::Tensor& t, int64_t n, int64_t d) { return t.view({c.b, n, c.h, d}).transpose(1, 2); };
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
    const auto o = fused_attention_fp32(heads(pq, c.n, c.d), heads(pk, c.m, c.d), heads(pv, c.m, c.dv), scale);
    ASSERT_TRUE(o.defined());
    ASSERT_EQ(o.sizes(), (torch::IntArrayRef{c.b, c.h, c.n, c.dv}));
    EXPECT_TRUE(o.transpose(1, 2).is_contiguous());  // [B, N, H, Dv] in memory
    const auto g = torch::randn_like(o);
    const auto grads = torch::autograd::grad({o}, {pq, pk, pv}, {g});

    const auto q64 = pq.detach().to(torch::kFloat64).requires_grad_();
    const auto k64 = pk.detach().to(torch::kFloat64).requires_grad_();
    const auto v64 = pv.detach().to(torch::kFloat64).requires_grad_();
    const auto o64 = reference(heads(q64, c.n, c.d), heads(k64, c.m, c.d), heads(v64, c.m, c.dv), scale);
    const auto ref = torch::autograd::grad({o64}, {q64, k64, v64}, {g.to(torch::kFloat64)});
    EXPECT_LT(error_against_fp64(o, o64), 2e-6);
    const char* names[] = {"q", "k", "v"};
    for (int i = 0; i < 3; ++i) EXPECT_LT(error_against_fp64(grads[i], ref[i]), 2e-6) << names[i];

    // Without gradients: the same values.
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(
        torch::equal(fused_attention_fp32(heads(pq, c.n, c.d), heads(pk, c.m, c.d), heads(pv, c.m, c.dv), scale), o));
  }
}

// Each (image, head) is computed whole by one thread: one thread and two give the same bits.
TEST(AttentionFp32, ThreadsDoNotChangeTheResult) {
  REQUIRE_KERNEL();
  torch::manual_seed(7);
  const auto q = torch::randn({4, 2, 64, 16}).requires_grad_(), k = torch::randn({4, 2, 64, 16}).requires_grad_();
  const auto v = torch::randn({4, 2, 64, 16}).requires_grad_();
  auto run = [&] {
    const auto o = fused_attention_fp32(q, k, v, 0.25);
    auto g = torch::autograd::grad({o}, {q, k, v}, {torch::cos(o)});
    g.push_back(o);
    return g;
  };
  const auto two = run();
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = run();
  at::set_num_threads(threads);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << i;
}

// The attention block takes it for fp32 without a mask, and its result is the unfused one's.
TEST(AttentionFp32, DotProductAttentionUsesIt) {
  REQUIRE_KERNEL();
  torch::manual_seed(8);
  const auto q = torch::randn({2, 2, 30, 8}), k = torch::randn({2, 2, 30, 8}), v = torch::randn({2, 2, 30, 8});
  const auto fused = dot_product_attention(q, k, v, 0.3, {}, 0, false, false);
  EXPECT_TRUE(torch::equal(fused, fused_attention_fp32(q, k, v, 0.3)));
  EXPECT_TRUE(torch::allclose(fused, reference(q, k, v, 0.3), 1e-5, 1e-6));
}

TEST(AttentionFp32, DeclinesOtherInputs) {
  REQUIRE_KERNEL();
  const auto x = torch::randn({1, 2, 5, 4});
  EXPECT_FALSE(fused_attention_fp32(x.to(torch::kBFloat16), x, x, 1.0).defined());
  EXPECT_FALSE(fused_attention_fp32(x, x.to(torch::kFloat64), x, 1.0).defined());
  EXPECT_FALSE(fused_attention_fp32(x[0], x[0], x[0], 1.0).defined());                  // 3-D
  EXPECT_FALSE(fused_attention_fp32(x, torch::randn({1, 2, 5, 3}), x, 1.0).defined());  // head sizes disagree
  EXPECT_FALSE(fused_attention_fp32(x, x, torch::randn({1, 2, 6, 4}), 1.0).defined());  // keys and values disagree
}

}  // namespace
}  // namespace diffuse::nn
