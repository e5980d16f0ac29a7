#include "nn/attention.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "fixtures.h"
#include "nn/deterministic.h"
#include "nn/state_dict.h"

using namespace diffuse;
using diffuse::test::max_abs_diff;

namespace {
std::vector<std::string> keys(const torch::nn::Module& m) {
  std::vector<std::string> out;
  for (auto& [k, v] : nn::state_dict(m)) out.push_back(k);
  return out;
}
}  // namespace

TEST(Attention, ChunkedEqualsUnchunked) {
  torch::manual_seed(1);
  auto q = torch::randn({2, 3, 10, 8}), k = torch::randn({2, 3, 7, 8}), v = torch::randn({2, 3, 7, 5});
  auto mask = torch::randn({2, 1, 10, 7});
  for (bool with_mask : {false, true}) {
    auto m = with_mask ? mask : torch::Tensor();
    auto full = nn::dot_product_attention(q, k, v, 0.35, m);
    ASSERT_EQ(full.sizes(), (std::vector<int64_t>{2, 3, 10, 5}));
    // reference: explicit softmax
    auto s = torch::matmul(q, k.transpose(-1, -2)) * 0.35;
    if (with_mask) s = s + mask;
    EXPECT_LT(max_abs_diff(full, torch::matmul(torch::softmax(s, -1), v)), 1e-6);
    for (int64_t chunk : {1, 3, 4, 9, 10, 64}) {
      auto c = nn::dot_product_attention(q, k, v, 0.35, m, chunk);
      EXPECT_LT(max_abs_diff(c, full), 1e-6) << "chunk " << chunk << " mask " << with_mask;
    }
  }
  // A key-only mask broadcast over queries is also chunkable.
  auto kmask = torch::zeros({2, 1, 1, 7});
  kmask.index_put_({torch::indexing::Slice(), 0, 0, torch::indexing::Slice(4, 7)}, -1e9);
  auto masked = nn::dot_product_attention(q, k, v, 0.35, kmask, 3);
  auto subset = nn::dot_product_attention(q, k.slice(2, 0, 4), v.slice(2, 0, 4), 0.35);
  EXPECT_LT(max_abs_diff(masked, subset), 1e-6);
}

TEST(Attention, ModuleChunkingAndShapes) {
  nn::AttentionOptions o(32, 4, 8);
  o.norm_num_groups = 8;
  o.residual_connection = true;
  o.bias = true;
  o.upcast_softmax = true;
  nn::Attention attn(o);
  attn->eval();
  auto x = torch::randn({2, 32, 6, 5});
  auto full = attn(x);
  ASSERT_EQ(full.sizes(), x.sizes());
  attn->set_query_chunk_size(7);
  EXPECT_LT(max_abs_diff(attn(x), full), 1e-6);
  attn->set_query_chunk_size(0);
  // Automatic chunking: a budget smaller than the [2, 4, 30, 30] score matrix forces chunks.
  const int64_t saved = nn::attention_memory_budget();
  nn::set_attention_memory_budget(2 * 4 * 7 * 30 * 4);
  EXPECT_EQ(nn::resolve_query_chunk(0, torch::empty({2, 4, 30, 8}), 30), 7);
  EXPECT_EQ(nn::resolve_query_chunk(-1, torch::empty({2, 4, 30, 8}), 30), 0);
  EXPECT_LT(max_abs_diff(attn(x), full), 1e-6);
  nn::set_attention_memory_budget(saved);
  EXPECT_EQ(nn::resolve_query_chunk(0, torch::empty({2, 4, 30, 8}), 30), 0);
  // channels-last memory layout is accepted and gives the same values.
  EXPECT_LT(max_abs_diff(attn(x.contiguous(torch::MemoryFormat::ChannelsLast)), full), 1e-6);
  // Tokens in [B, N, C] layout give the same result as the feature map.
  auto tokens = x.flatten(2).transpose(1, 2);
  auto out_tokens = attn(tokens);
  EXPECT_LT(max_abs_diff(out_tokens.transpose(1, 2).reshape(x.sizes()), full), 1e-6);
}

TEST(Attention, StateDictNamesMatchDiffusers) {
  nn::AttentionOptions cross(16, 2, 8);
  cross.cross_attention_dim = 12;
  EXPECT_EQ(keys(*nn::Attention(cross)), (std::vector<std::string>{"to_k.weight", "to_out.0.bias", "to_out.0.weight",
                                                                   "to_q.weight", "to_v.weight"}));
  nn::AttentionOptions spatial(16, 2, 8);
  spatial.norm_num_groups = 4;
  spatial.bias = true;
  EXPECT_EQ(
      keys(*nn::Attention(spatial)),
      (std::vector<std::string>{"group_norm.bias", "group_norm.weight", "to_k.bias", "to_k.weight", "to_out.0.bias",
                                "to_out.0.weight", "to_q.bias", "to_q.weight", "to_v.bias", "to_v.weight"}));
}

// Reference numbers: diffusers 0.28.2 Attention + AttnProcessor, parameters from deterministic_fill.
TEST(Attention, MatchesDiffusersCrossAttention) {
  nn::AttentionOptions o(16, 2, 8);
  o.cross_attention_dim = 12;
  nn::Attention attn(o);
  attn->eval();
  test::deterministic_fill(*attn);
  auto h = test::deterministic_input({2, 5, 16});
  auto ctx = torch::cos(torch::arange(2 * 7 * 12, torch::kFloat64) * 0.11).reshape({2, 7, 12}).to(torch::kFloat32);
  auto y = attn(h, ctx).flatten();
  ASSERT_EQ(y.numel(), 160);
  EXPECT_NEAR(y.sum().item<double>(), -0.7313493904657662, 1e-4);
  const std::vector<std::pair<int64_t, double>> expect = {{0, 0.11141770333051682},
                                                          {3, -0.04236903041601181},
                                                          {53, -0.10688372701406479},
                                                          {80, 0.04102902114391327},
                                                          {159, -0.08642725646495819}};
  for (auto [i, v] : expect) EXPECT_NEAR(y[i].item<double>(), v, 1e-5) << "index " << i;
}

TEST(Attention, MatchesDiffusersSpatialAttention) {
  nn::AttentionOptions o(16, 2, 8);
  o.norm_num_groups = 4;
  o.residual_connection = true;
  o.bias = true;
  o.rescale_output_factor = 2.0;
  o.upcast_softmax = true;
  nn::Attention attn(o);
  attn->eval();
  test::deterministic_fill(*attn);
  auto y = attn(test::deterministic_input({2, 16, 3, 3}));
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 16, 3, 3}));
  y = y.flatten();
  EXPECT_NEAR(y.sum().item<double>(), 2.437114853411913, 1e-4);
  const std::vector<std::pair<int64_t, double>> expect = {{0, -0.12771008908748627},
                                                          {3, 0.32310083508491516},
                                                          {96, -0.29511794447898865},
                                                          {144, -0.20898494124412537},
                                                          {287, -0.08808229863643646}};
  for (auto [i, v] : expect) EXPECT_NEAR(y[i].item<double>(), v, 1e-5) << "index " << i;
}

TEST(Attention, Bfloat16UpcastSoftmax) {
  nn::AttentionOptions o(16, 2, 8);
  o.norm_num_groups = 4;
  o.bias = true;
  o.upcast_softmax = true;
  nn::Attention attn(o);
  attn->eval();
  auto x = torch::randn({1, 16, 4, 4});
  auto ref = attn(x);
  attn->to(torch::kBFloat16);
  auto y = attn(x.to(torch::kBFloat16));
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_LT(max_abs_diff(y, ref), 0.1);
}

TEST(Attention, RejectsBadInput) {
  nn::Attention attn(nn::AttentionOptions(16, 2, 8));
  EXPECT_THROW(attn(torch::randn({16})), diffuse::Error);
  nn::AttentionOptions bad(16, 2, 8);
  bad.norm_num_groups = 5;
  EXPECT_THROW(nn::Attention{bad}, diffuse::Error);
}
