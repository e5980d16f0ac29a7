#include "eval/perceptual.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "core/error.h"
#include "eval_helpers.h"
#include "fixtures.h"
#include "models/error_of.h"

namespace diffuse {
namespace {

// A classifier whose stages pass RGB through: two stages of one 3x3 conv each whose centre tap is
// the identity, BatchNorm at its initial statistics, ReLU. Its stage activations are relu(x)
// (scaled by 1/sqrt(1 + eps)), the second max-pooled, so distances can be computed by hand.
PerceptualDistance pass_through() {
  ClassifierConfig c;
  c.in_channels = 3;
  c.image_size = 16;
  c.num_classes = 2;
  c.widths = {3, 3};
  c.convs_per_stage = 1;
  c.head_pool = 1;
  c.feature_dim = 4;
  Classifier net(c);
  torch::NoGradGuard ng;
  for (auto& p : net->named_parameters()) {
    if (p.key().rfind("conv", 0) == 0) {
      p.value().zero_();
      for (int i = 0; i < 3; ++i) p.value()[i][i][1][1] = 1.0;
    }
  }
  return PerceptualDistance(net, "pass-through");
}

torch::Tensor solid(double r, double g, double b, int size = 16) {
  return torch::tensor({r, g, b}, torch::kFloat32).view({1, 3, 1, 1}).expand({1, 3, size, size}).clone();
}

TEST(Perceptual, MatchesHandComputedDistances) {
  auto d = pass_through();
  const auto red = solid(0.5, 0, 0), green = solid(0, 0.5, 0), yellow = solid(0.5, 0.5, 0);
  // Unit vectors (1,0,0) and (0,1,0): squared distance 2 at every position of both stages.
  EXPECT_NEAR(d(red, green).item<double>(), 2.0, 1e-6);
  // (1,0,0) against (1,1,0)/sqrt(2): (1 - 1/sqrt(2))^2 + 1/2 = 2 - sqrt(2).
  EXPECT_NEAR(d(red, yellow).item<double>(), 2.0 - std::sqrt(2.0), 1e-6);
  EXPECT_NEAR(d(red, red).item<double>(), 0.0, 1e-12);
  // LPIPS' normalisation ignores the activations' length: a brighter red is at distance 0.
  EXPECT_NEAR(d(red, solid(0.9, 0, 0)).item<double>(), 0.0, 1e-10);
  // Half the columns differ (an even split survives the 2x2 pooling): half of 2.
  auto half = red.clone();
  half.narrow(3, 8, 8).copy_(green.narrow(3, 8, 8));
  EXPECT_NEAR(d(red, half).item<double>(), 1.0, 1e-6);
  // A batch gives one distance per image.
  auto batch = d(torch::cat({red, red, red}), torch::cat({green, yellow, red}));
  ASSERT_EQ(batch.sizes(), (std::vector<int64_t>{3}));
  EXPECT_NEAR(batch[0].item<double>(), 2.0, 1e-6);
  EXPECT_NEAR(batch[2].item<double>(), 0.0, 1e-12);
}

TEST(Perceptual, IsSymmetricBoundedAndDifferentiable) {
  auto net = test::tiny_classifier({"a", "b"}, 16, 3, "discs", 7);
  PerceptualDistance d(net, "tiny");
  for (auto& p : net->parameters()) EXPECT_FALSE(p.requires_grad());  // frozen
  torch::manual_seed(1);
  auto a = torch::rand({4, 3, 16, 16}) * 2 - 1, b = torch::rand({4, 3, 16, 16}) * 2 - 1;
  auto dab = d(a, b), dba = d(b, a);
  EXPECT_TRUE(torch::allclose(dab, dba, 1e-5, 1e-7));
  EXPECT_TRUE((dab > 0).all().item<bool>());
  EXPECT_TRUE((dab <= 4).all().item<bool>());
  // Gradient descent on the first image lowers its distance to the second.
  auto x = a.clone().requires_grad_(true);
  const double start = d(x, b).sum().item<double>();
  for (int i = 0; i < 30; ++i) {
    auto loss = d(x, b).sum();
    auto g = torch::autograd::grad({loss}, {x})[0];
    ASSERT_GT(g.abs().sum().item<double>(), 0.0);
    torch::NoGradGuard ng;
    x.sub_(g.sign() * 0.02);
  }
  const double end = d(x, b).sum().item<double>();
  std::printf("distance %.4f -> %.4f after 30 signed-gradient steps\n", start, end);
  EXPECT_LT(end, 0.6 * start);
  for (auto& p : net->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST(Perceptual, ResizesOtherSizesAndRejectsOtherChannels) {
  test::TempDir dir;
  save_classifier(test::tiny_classifier({"a", "b"}, 16, 3, "discs", 7), dir / "net");
  auto d = PerceptualDistance::load(dir / "net");
  torch::manual_seed(2);
  auto a = torch::rand({2, 3, 40, 40}) * 2 - 1;
  auto v = d(a, a.flip(3));
  EXPECT_EQ(v.size(0), 2);
  EXPECT_TRUE((v > 0).all().item<bool>());
  std::string msg = test::error_of([&] { d(torch::zeros({1, 1, 16, 16}), torch::zeros({1, 1, 16, 16})); });
  EXPECT_NE(msg.find(dir / "net"), std::string::npos) << msg;
  EXPECT_NE(msg.find("channel"), std::string::npos) << msg;
  EXPECT_THROW(d.check_input(1, 16), Error);
  EXPECT_THROW(d(torch::zeros({1, 3, 16, 16}), torch::zeros({2, 3, 16, 16})), Error);
  EXPECT_THROW(PerceptualDistance::load(dir / "missing"), Error);
}

}  // namespace
}  // namespace diffuse
