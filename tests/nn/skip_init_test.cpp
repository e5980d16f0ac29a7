#include "nn/skip_init.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using diffuse::nn::SkipInitGuard;

// Inside the guard torch::nn's random initialisers neither fill nor draw from the generator.
TEST(SkipInit, ModulesBuiltInsideDoNotDrawFromTheGenerator) {
  torch::manual_seed(3);
  const auto expected = torch::rand({4});
  torch::manual_seed(3);
  {
    SkipInitGuard guard;
    torch::nn::Linear lin(256, 256);
    torch::nn::Conv2d conv(torch::nn::Conv2dOptions(8, 8, 3));
    torch::nn::Embedding emb(100, 16);
    EXPECT_EQ(lin->weight.sizes(), (std::vector<int64_t>{256, 256}));
    EXPECT_EQ(emb->weight.sizes(), (std::vector<int64_t>{100, 16}));
  }
  EXPECT_TRUE(torch::equal(torch::rand({4}), expected));
}

// Outside the guard (before and after one) initialisation is torch's own, draw for draw; and
// deterministic fills run inside it.
TEST(SkipInit, IsScopedAndLeavesDeterministicOpsAlone) {
  torch::manual_seed(11);
  torch::nn::Linear reference(16, 8);
  {
    SkipInitGuard guard;
    EXPECT_TRUE(torch::equal(torch::ones({3}), torch::full({3}, 1.0)));
    EXPECT_EQ(torch::arange(5).sum().item<int64_t>(), 10);
    torch::nn::LayerNorm norm(torch::nn::LayerNormOptions({6}));
    EXPECT_TRUE(torch::equal(norm->weight, torch::ones({6})));
    EXPECT_TRUE(torch::equal(norm->bias, torch::zeros({6})));
  }
  torch::manual_seed(11);
  torch::nn::Linear again(16, 8);
  EXPECT_TRUE(torch::equal(again->weight, reference->weight));
  EXPECT_TRUE(torch::equal(again->bias, reference->bias));
  // normal_ and uniform_ called directly work again
  torch::manual_seed(5);
  auto a = torch::empty({64}).normal_();
  torch::manual_seed(5);
  EXPECT_TRUE(torch::equal(torch::empty({64}).normal_(), a));
  EXPECT_GT(a.std().item<double>(), 0.5);
}
