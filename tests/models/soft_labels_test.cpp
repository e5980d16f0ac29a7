// Soft class labels: float class_labels [B, K] are weights over the class embedding rows of the
// UNet2DModel and the DiT (class interpolation).
#include <gtest/gtest.h>

#include "fixtures.h"
#include "models/dit.h"
#include "models/error_of.h"
#include "models/unet2d.h"
#include "tiny_unet.h"

using namespace diffuse;
using diffuse::test::error_of;
using diffuse::test::fixture;

namespace {

// Weights [labels.size(), k] with 1 at each label.
torch::Tensor one_hot(const std::vector<int64_t>& labels, int64_t k) {
  return torch::one_hot(torch::tensor(labels, torch::kLong), k).to(torch::kFloat32);
}

// Runs `forward(labels)` with one-hot weights and with the ids, and with a 50/50 mix of rows a
// and b against the ids of row c after row c of every table is set to the mean of its rows a and b.
template <typename Forward>
void check_soft_labels(const std::vector<torch::nn::Embedding>& tables, const Forward& forward) {
  torch::NoGradGuard ng;
  const int64_t k = tables[0]->weight.size(0);
  const std::vector<int64_t> ids = {0, 2, 1};
  EXPECT_TRUE(torch::equal(forward(one_hot(ids, k)), forward(torch::tensor(ids, torch::kLong))));
  const int64_t a = 0, b = 1, c = 2;
  for (const auto& table : tables) table->weight[c].copy_((table->weight[a] + table->weight[b]) / 2);
  auto mix = torch::zeros({3, k});
  mix.index_put_({torch::indexing::Slice(), a}, 0.5);
  mix.index_put_({torch::indexing::Slice(), b}, 0.5);
  torch::Tensor by_mix = forward(mix), by_mean = forward(torch::full({3}, c, torch::kLong));
  EXPECT_TRUE(torch::allclose(by_mix, by_mean, 1e-6, 1e-6)) << (by_mix - by_mean).abs().max().item<double>();
  // and the mix differs from either end
  EXPECT_FALSE(torch::allclose(by_mix, forward(torch::full({3}, a, torch::kLong)), 1e-4, 1e-4));
  EXPECT_FALSE(torch::allclose(by_mix, forward(torch::full({3}, b, torch::kLong)), 1e-4, 1e-4));
}

}  // namespace

TEST(SoftLabels, UNetWeightsOverClassEmbeddings) {
  torch::manual_seed(3);
  UNet2DModel m(test::tiny_unet_config(8, 1, 3));
  m->eval();
  auto x = torch::randn({3, 1, 8, 8}, at::detail::createCPUGenerator(1));
  auto t = torch::tensor({10.0f, 500.0f, 900.0f});
  check_soft_labels({m->class_embedding_table}, [&](const torch::Tensor& l) { return m->forward(x, t, l); });
  EXPECT_NE(error_of([&] { m->forward(x, t, torch::ones({3, 3})); }).find("must be [B, 4]"), std::string::npos);
}

TEST(SoftLabels, DiTWeightsOverLabelEmbeddings) {
  auto dit = load_dit(fixture("dit_tiny"));
  dit->eval();
  std::vector<torch::nn::Embedding> tables;  // each block's adaLN-Zero has its own
  for (auto& blk : dit->blocks) tables.push_back(blk->norm1->emb->embedding_table);
  const int64_t k = tables[0]->weight.size(0);
  auto x = torch::randn({3, 4, 8, 8}, at::detail::createCPUGenerator(2));
  auto t = torch::tensor({10.0f, 500.0f, 900.0f});
  check_soft_labels(tables, [&](const torch::Tensor& l) { return dit->forward(x, t, l); });
  EXPECT_NE(error_of([&] {
              dit->forward(x, t, torch::ones({3, k + 1}));
            }).find("float class_labels"),
            std::string::npos);
}
