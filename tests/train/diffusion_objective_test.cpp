#include "train/diffusion_objective.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "diffusion/schedule.h"

namespace diffuse {
namespace {

torch::Tensor objective_alphas() {
  NoiseScheduleConfig cfg;
  cfg.beta_schedule = "squaredcos_cap_v2";
  return make_alphas_cumprod(cfg);
}

DiffusionObjective make_objective(const std::string& prediction, double dropout = 0.0, double gamma = 0.0) {
  DiffusionObjectiveOptions o;
  o.prediction = prediction;
  o.class_dropout = dropout;
  o.null_class = 10;
  o.min_snr_gamma = gamma;
  return DiffusionObjective(objective_alphas(), o);
}

TEST(DiffusionObjective, NoisesAndTargetsFollowTheForwardProcess) {
  const auto a_all = objective_alphas().to(torch::kFloat64);
  auto x0 = torch::rand({6, 3, 4, 4}) * 2 - 1;
  for (const std::string pred : {"epsilon", "v_prediction", "sample"}) {
    auto obj = make_objective(pred);
    auto gen = at::detail::createCPUGenerator(7);
    auto d = obj.draw(x0, torch::Tensor(), gen);
    // The draws are those of a generator with the same seed, in the documented order.
    auto ref = at::detail::createCPUGenerator(7);
    auto t = torch::randint(1000, {6}, ref, torch::kInt64);
    auto noise = torch::randn({6, 3, 4, 4}, ref);
    ASSERT_TRUE(torch::equal(d.t, t));
    ASSERT_TRUE(torch::equal(d.noise, noise));
    EXPECT_FALSE(d.labels.defined());
    auto a = a_all.index_select(0, t).view({6, 1, 1, 1});
    auto x = x0.to(torch::kFloat64), n = noise.to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(d.xt.to(torch::kFloat64), a.sqrt() * x + (1 - a).sqrt() * n, 1e-6, 1e-6)) << pred;
    torch::Tensor want = pred == "epsilon" ? n : pred == "sample" ? x : a.sqrt() * n - (1 - a).sqrt() * x;
    EXPECT_TRUE(torch::allclose(d.target.to(torch::kFloat64), want, 1e-6, 1e-6)) << pred;
  }
  EXPECT_THROW(make_objective("noise"), Error);
  EXPECT_THROW(make_objective("epsilon", 1.0), Error);
}

TEST(DiffusionObjective, MinSnrWeightsAndWeightedLoss) {
  const auto a_all = objective_alphas().to(torch::kFloat64);
  auto t = torch::tensor({0, 10, 250, 500, 900, 999}, torch::kInt64);
  auto a = a_all.index_select(0, t);
  auto snr = a / (1 - a);
  auto clipped = torch::clamp_max(snr, 5.0);
  const std::vector<std::pair<std::string, torch::Tensor>> cases = {
      {"epsilon", clipped / snr}, {"v_prediction", clipped / (snr + 1)}, {"sample", clipped}};
  for (const auto& [pred, want] : cases) {
    auto obj = make_objective(pred, 0.0, 5.0);
    EXPECT_TRUE(torch::allclose(obj.weights(t).to(torch::kFloat64), want, 1e-5, 1e-7)) << pred;
    // An output off by c_i in every element of sample i costs mean_i(w_i c_i^2).
    DiffusionDraw d;
    d.t = t;
    d.target = torch::zeros({6, 2, 3, 3});
    auto c = torch::tensor({0.5, 1.0, 2.0, 0.1, 3.0, 1.5});
    auto out = c.view({6, 1, 1, 1}).expand({6, 2, 3, 3}).to(torch::kFloat32);
    double expect = (want * c.pow(2)).mean().item<double>();
    EXPECT_NEAR(obj.loss(out, d).item<double>(), expect, 1e-5 * expect) << pred;
  }
  // Without gamma: weights are ones and the loss is the plain MSE.
  auto plain = make_objective("epsilon");
  EXPECT_TRUE(torch::equal(plain.weights(t), torch::ones({6})));
  DiffusionDraw d;
  d.t = t;
  d.target = torch::randn({6, 1, 2, 2});
  auto out = torch::randn({6, 1, 2, 2});
  EXPECT_NEAR(plain.loss(out, d).item<double>(), (out - d.target).pow(2).mean().item<double>(), 1e-6);
}

TEST(DiffusionObjective, ClassDropoutReplacesLabelsByTheNullClass) {
  const int64_t n = 4000;
  auto labels = torch::randint(10, {n}, torch::kInt64);
  auto x0 = torch::zeros({n, 1, 1, 1});
  auto obj = make_objective("epsilon", 0.25);
  auto gen = at::detail::createCPUGenerator(3);
  auto d = obj.draw(x0, labels, gen);
  auto dropped = d.labels == 10;
  // Exactly the rows whose uniform draw (after t and noise) is below the dropout.
  auto ref = at::detail::createCPUGenerator(3);
  torch::randint(1000, {n}, ref, torch::kInt64);
  torch::randn({n, 1, 1, 1}, ref);
  auto want = torch::rand({n}, ref) < 0.25;
  EXPECT_TRUE(torch::equal(dropped, want));
  EXPECT_NEAR(dropped.to(torch::kFloat64).mean().item<double>(), 0.25, 0.03);
  EXPECT_TRUE(torch::equal(d.labels.masked_select(~dropped), labels.masked_select(~dropped)));
  // No dropout: the labels as given. Unconditional: none, or the null class for every sample.
  auto keep = make_objective("epsilon", 0.0);
  EXPECT_TRUE(torch::equal(keep.draw(x0, labels, gen).labels, labels));
  DiffusionObjectiveOptions o;
  o.null_class = 2;
  o.always_null = true;
  auto uncond = DiffusionObjective(objective_alphas(), o).draw(x0, torch::Tensor(), gen);
  EXPECT_TRUE(torch::equal(uncond.labels, torch::full({n}, 2, torch::kInt64)));
}

TEST(DiffusionObjective, SlicesOfAGlobalBatchDrawWhatTheWholeBatchDraws) {
  auto obj = make_objective("v_prediction", 0.5);
  auto x0 = torch::randn({12, 2, 4, 4});
  auto labels = torch::randint(10, {12}, torch::kInt64);
  auto g = at::detail::createCPUGenerator(99);
  auto whole = obj.draw(x0, labels, g);
  for (int64_t offset : {0, 4, 8}) {
    auto gs = at::detail::createCPUGenerator(99);
    auto part = obj.draw(x0.narrow(0, offset, 4), labels.narrow(0, offset, 4), gs, {offset, 12});
    EXPECT_TRUE(torch::equal(part.t, whole.t.narrow(0, offset, 4)));
    EXPECT_TRUE(torch::equal(part.noise, whole.noise.narrow(0, offset, 4)));
    EXPECT_TRUE(torch::equal(part.labels, whole.labels.narrow(0, offset, 4)));
    EXPECT_TRUE(torch::equal(part.target, whole.target.narrow(0, offset, 4)));
  }
  auto gs = at::detail::createCPUGenerator(99);
  EXPECT_THROW(obj.draw(x0.narrow(0, 0, 4), labels.narrow(0, 0, 4), gs, {10, 12}), Error);
}

}  // namespace
}  // namespace diffuse
