#include "train/compute_weights.h"

#include <gtest/gtest.h>

#include <optional>

#include "models/dit.h"
#include "nn/autocast.h"

namespace diffuse {
namespace {

DiTConfig tiny_dit() {
  DiTConfig c;
  c.num_attention_heads = 2;
  c.attention_head_dim = 8;
  c.num_layers = 2;
  c.sample_size = 8;
  c.num_embeds_ada_norm = 3;
  return c;
}

struct Trained {
  std::vector<torch::Tensor> params, exp_avg;
  bool clipped = false;
};

// Three AdamW steps of a tiny DiT under bf16 autocast, two micro-batches each, gradients clipped
// to a norm small enough to clip; with or without bf16 copies of the Linear weights.
Trained train(bool copies) {
  torch::manual_seed(5);
  DiTTransformer2DModel model(tiny_dit());
  std::vector<std::pair<std::string, torch::Tensor>> named;
  std::vector<torch::Tensor> params;
  for (const auto& p : model->named_parameters()) {
    named.emplace_back(p.key(), p.value());
    params.push_back(p.value());
  }
  AdamW opt(named, AdamW::Options{0.9, 0.999, 1e-8, 0.01});
  std::optional<ComputeWeights> weights;
  if (copies) {
    weights.emplace(*model, opt);
    EXPECT_GT(weights->tensors(), 20);
  }
  Trained out;
  auto gen = at::detail::createCPUGenerator(7);
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    for (int micro = 0; micro < 2; ++micro) {
      const auto x = torch::randn({3, 4, 8, 8}, gen);
      const auto t = torch::randint(1000, {3}, gen).to(torch::kFloat32);
      const auto y = torch::randint(3, {3}, gen);
      torch::Tensor pred;
      {
        nn::AutocastGuard autocast(torch::kCPU, true);
        pred = model->forward(x, t, y).to(torch::kFloat32);
      }
      (pred - x).pow(2).mean().backward();
      if (weights) weights->gather_gradients();
    }
    const GradNorm n = grad_norm(params, 0.05);
    out.clipped = out.clipped || n.scale < 1.0;
    opt.step(1e-3, n.scale);
  }
  if (weights) {  // the copies are the parameters in bf16
    for (const auto& m : model->modules()) {
      auto l = std::dynamic_pointer_cast<nn::LinearImpl>(m);
      if (!l) continue;
      EXPECT_TRUE(torch::equal(l->compute_weight, l->weight.detach().to(torch::kBFloat16)));
      EXPECT_TRUE(torch::equal(l->compute_bias, l->bias.detach().to(torch::kBFloat16)));
    }
    weights.reset();
    for (const auto& m : model->modules()) {
      if (auto l = std::dynamic_pointer_cast<nn::LinearImpl>(m)) {
        EXPECT_FALSE(l->compute_weight.defined());
      }
    }
  }
  for (const auto& p : params) out.params.push_back(p.detach().clone());
  for (const auto& [k, v] : opt.state())
    if (k.size() > 8 && k.compare(k.size() - 8, 8, ".exp_avg") == 0) out.exp_avg.push_back(v.clone());
  return out;
}

// The copies change where the casts happen, not the numbers: bit for bit the same training.
TEST(ComputeWeights, TrainsBitForBitAsAutocastDoes) {
  const auto plain = train(false), copies = train(true);
  EXPECT_TRUE(plain.clipped);
  ASSERT_EQ(plain.params.size(), copies.params.size());
  for (size_t i = 0; i < plain.params.size(); ++i) EXPECT_TRUE(torch::equal(plain.params[i], copies.params[i])) << i;
  ASSERT_EQ(plain.exp_avg.size(), copies.exp_avg.size());
  for (size_t i = 0; i < plain.exp_avg.size(); ++i) EXPECT_TRUE(torch::equal(plain.exp_avg[i], copies.exp_avg[i])) << i;
}

TEST(ComputeWeights, LeavesOtherLayersAlone) {
  DiTTransformer2DModel model(tiny_dit());
  model->proj_out_2->weight.set_requires_grad(false);  // frozen: keeps autocast's cast
  model->proj_out_1->to(torch::kFloat64);              // not float32
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (const auto& p : model->named_parameters()) named.emplace_back(p.key(), p.value());
  AdamW opt(named, {});
  ComputeWeights weights(*model, opt);
  EXPECT_FALSE(model->proj_out_2->compute_weight.defined());
  EXPECT_FALSE(model->proj_out_1->compute_weight.defined());
  EXPECT_TRUE(model->blocks[0]->ff_proj->compute_weight.defined());
  EXPECT_EQ(model->blocks[0]->ff_proj->compute_weight.scalar_type(), torch::kBFloat16);
}

}  // namespace
}  // namespace diffuse
