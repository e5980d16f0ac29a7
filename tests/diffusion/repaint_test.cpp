// RePaint against diffusers 0.28.2's RePaintPipeline + RePaintScheduler (tests/fixtures/repaint):
// the timesteps with their jumps, the sample after every step and undo step, and the final
// image, with the recorded noise replayed in order. Relative tolerance 1e-4 per operation.
#include "diffusion/repaint.h"

#include <gtest/gtest.h>

#include <iostream>

#include "core/error.h"
#include "diffusion/sched_fixtures.h"

namespace diffuse {
namespace {

struct RePaintFixture {
  std::map<std::string, torch::Tensor> t;
  RePaintFixture() : t(safetensors::load(test::fixture("repaint/io.safetensors"))) {}
};

// The fixture's fake model: eps = 0.1 x + 0.05 sin(float32(t) / 100), fed the VP sample.
Denoiser repaint_fake(const torch::Tensor& alphas_cumprod) {
  ModelFn model = [](const torch::Tensor& x_in, const torch::Tensor& t, const Cond&) {
    auto tt = t.to(torch::kFloat32).reshape({-1, 1, 1, 1});
    return 0.1 * x_in + 0.05 * torch::sin(tt / 100);
  };
  DiscreteDenoiserOptions o;
  o.quantize = true;
  return bind(discrete_denoiser(model, DiscreteSchedule(alphas_cumprod), Prediction::Epsilon, o), {});
}

double op_rel_err(const torch::Tensor& ours, const torch::Tensor& ref) {
  const double m = std::max(ref.abs().max().item<double>(), 1e-30);
  return (ours.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs().max().item<double>() / m;
}

TEST(RePaint, TimestepsMatchDiffusers) {
  RePaintFixture f;
  auto ref = f.t.at("timesteps");
  auto ours = repaint_timesteps(1000, 20, 3, 3);
  ASSERT_EQ(static_cast<int64_t>(ours.size()), ref.size(0));
  for (size_t i = 0; i < ours.size(); ++i) EXPECT_EQ(ours[i], ref[static_cast<int64_t>(i)].item<int64_t>()) << i;
  // op kinds: 0 = step, 1 = undo (an entry above its predecessor)
  auto kinds = f.t.at("op_kind");
  for (size_t i = 1; i < ours.size(); ++i)
    EXPECT_EQ(ours[i] > ours[i - 1] ? 1 : 0, kinds[static_cast<int64_t>(i)].item<int64_t>()) << i;
  // no jumps: plain descending steps
  auto plain = repaint_timesteps(1000, 10, 10, 1);
  ASSERT_EQ(plain.size(), 10u);
  EXPECT_EQ(plain.front(), 900);
  EXPECT_EQ(plain.back(), 0);
}

void parity(const std::string& run, double eta) {
  RePaintFixture f;
  const auto& t = f.t;
  std::vector<torch::Tensor> draws;
  for (int64_t i = 0; i < t.at("noise").size(0); ++i) draws.push_back(t.at("noise")[i]);
  ReplayNoise noise(draws);
  auto ac = t.at("alphas_cumprod");
  auto samples = t.at(run + "/samples");
  RePaintOptions o;
  o.steps = 20;
  o.jump_length = 3;
  o.jump_n_sample = 3;
  o.eta = eta;
  o.x0_clamp = 1.0;  // the scheduler's clip_sample
  o.noise = &noise;
  int op = 0, steps = 0;
  double worst = 0;
  o.trace = [&](int, bool, const torch::Tensor& x) {
    ASSERT_LT(op, samples.size(0));
    const double e = op_rel_err(x, samples[op]);
    worst = std::max(worst, e);
    EXPECT_LE(e, 1e-4) << run << " op " << op;
    ++op;
  };
  o.callback = [&](const StepInfo& s) {
    EXPECT_EQ(s.step, steps);
    EXPECT_EQ(s.total, 56);
    ++steps;
  };
  // diffusers' mask: 1 = keep; ours: 1 = repaint
  auto out = sample_repaint(repaint_fake(ac), t.at("initial_noise"), t.at("original_image"), 1 - t.at("mask"),
                            t.at("betas"), ac, o);
  EXPECT_EQ(op, samples.size(0));
  EXPECT_EQ(steps, 56);
  EXPECT_EQ(noise.used(), draws.size());
  auto image = (out / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1});
  EXPECT_LE(op_rel_err(image, t.at(run + "/image_out")), 1e-4);
  // the known region is the original image, exactly
  auto keep = t.at("mask").expand_as(out) > 0.5;
  EXPECT_TRUE(torch::equal(out.masked_select(keep), t.at("original_image").masked_select(keep)));
  std::cout << "[repaint] " << run << ": " << op << " operations, max rel err " << worst << "\n";
}

TEST(RePaint, ParityEta0) { parity("eta0", 0.0); }
TEST(RePaint, ParityEta1) { parity("eta1", 1.0); }

TEST(RePaint, RejectsBadOptions) {
  EXPECT_THROW(repaint_timesteps(1000, 0, 10, 10), Error);
  EXPECT_THROW(repaint_timesteps(1000, 20, 0, 10), Error);
  EXPECT_THROW(repaint_timesteps(1000, 20, 10, 0), Error);
  auto ac = torch::linspace(0.99, 0.01, 100);
  RePaintOptions o;
  o.steps = 10;
  EXPECT_THROW(sample_repaint(repaint_fake(ac), torch::zeros({1, 1, 4, 4}), torch::zeros({1, 1, 4, 4}),
                              torch::ones({1, 1, 4, 4}), torch::full({100}, 0.01), ac, o),
               Error);  // no noise source
  TorchNoise n(0);
  o.noise = &n;
  EXPECT_THROW(sample_repaint(repaint_fake(ac), torch::zeros({1, 1, 4, 4}), torch::zeros({1, 1, 8, 8}),
                              torch::ones({1, 1, 4, 4}), torch::full({100}, 0.01), ac, o),
               Error);  // known image of another shape
}

}  // namespace
}  // namespace diffuse
