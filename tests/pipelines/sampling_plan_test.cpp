// The pixel pipeline's ddim / ddpm runs follow diffusers' DDIMScheduler / DDPMScheduler step for
// step (tests/fixtures/schedulers, clip_sample cases): the plan's sigmas are diffusers' timesteps,
// the initial sample is scaled as init_noise_sigma, the network gets integer timesteps, x0 is
// clamped while the noise direction keeps the unclamped prediction. The whole run goes through
// make_sampling_plan + the sampler as generate() runs it, compared after every step.
#include "pipelines/sampling_plan.h"

#include <gtest/gtest.h>

#include <iostream>

#include "diffusion/denoiser.h"
#include "diffusion/noise.h"
#include "diffusion/sched_fixtures.h"

namespace diffuse {
namespace {

ModelFn plan_fake_model() {
  return [](const torch::Tensor& x_in, const torch::Tensor& t, const Cond&) {
    auto tt = t.to(torch::kFloat32).reshape({-1, 1, 1, 1});
    return 0.1 * x_in + 0.05 * torch::sin(tt / 100);
  };
}

void whole_runs(const std::string& variant, const std::string& sampler) {
  auto v = test::load_variant(variant);
  auto start = safetensors::load(test::fixture("schedulers/common.safetensors")).at("noise");
  int cases = 0;
  double worst = 0;
  for (const auto& c : v.doc["cases"]) {
    const std::string key = c["key"];
    auto cfg = test::config_from(c["config"]);
    // diffusers' linspace spacing steps to t - T/N but then calls the model at the next linspace
    // timestep; a sigma schedule cannot express that (the sampler tests cover it step by step)
    if (!cfg.clip_sample || cfg.timestep_spacing == "linspace") continue;
    const int n = c["num_inference_steps"];
    SamplingPlan plan = make_sampling_plan(cfg, sampler, "", "", n, PlanStyle::KDiffusion);
    EXPECT_TRUE(plan.quantize);
    EXPECT_EQ(plan.x0_clamp, cfg.clip_sample_range);
    EXPECT_FALSE(plan.denoiser_clamps(cfg));
    DiscreteDenoiserOptions o;
    o.quantize = plan.quantize;
    if (plan.denoiser_clamps(cfg)) o.clip_sample_range = cfg.clip_sample_range;
    Denoiser D =
        bind(discrete_denoiser(plan_fake_model(), DiscreteSchedule(cfg), parse_prediction(cfg.prediction_type), o), {});
    auto ref = v.tensors.at(key + "/samples");
    std::vector<torch::Tensor> draws;
    auto it = v.tensors.find(key + "/noise");
    if (it != v.tensors.end())
      for (int64_t k = 0; k < it->second.size(0); ++k) draws.push_back(it->second[k]);
    ReplayNoise replay(draws);
    SamplerOptions so;
    so.noise = &replay;
    so.eta = v.doc["step_kwargs"].value("eta", 1.0);
    so.x0_clamp = plan.x0_clamp;
    auto sig = plan.sigmas;
    ASSERT_EQ(sig.size(0), n + 1) << key;
    int k = 0;
    so.callback = [&](const StepInfo& s) {
      auto vp = s.x / std::sqrt(1 + s.sigma_next * s.sigma_next);
      const double m = std::max(ref[k].abs().max().item<double>(), 1e-30);
      const double e = (vp.to(torch::kFloat64) - ref[k].to(torch::kFloat64)).abs().max().item<double>() / m;
      worst = std::max(worst, e);
      EXPECT_LE(e, test::kParityTol) << variant << " " << key << " step " << k;
      ++k;
    };
    const double s0 = sig[0].item<double>();
    plan.sampler->fn(D, start * plan.init_scale(s0) * test::jnum(c["init_noise_sigma"]), sig, so);
    EXPECT_EQ(k, n) << key;
    ++cases;
  }
  EXPECT_GT(cases, 0);
  std::cout << "[plan] " << variant << " as " << sampler << ": " << cases << " clip_sample runs, max rel err " << worst
            << "\n";
}

TEST(SamplingPlan, DdimFollowsDiffusersEta0) { whole_runs("ddim_eta0", "ddim"); }
TEST(SamplingPlan, DdimFollowsDiffusersEta1) { whole_runs("ddim_eta1", "ddim"); }
TEST(SamplingPlan, DdpmFollowsDiffusers) { whole_runs("ddpm", "ddpm"); }

TEST(SamplingPlan, OtherSamplersKeepKDiffusionConventions) {
  NoiseScheduleConfig cfg;
  cfg.clip_sample = true;
  auto p = make_sampling_plan(cfg, "dpm++2m", "", "", 20, PlanStyle::KDiffusion);
  EXPECT_FALSE(p.quantize);
  EXPECT_FALSE(p.vp_init);
  EXPECT_EQ(p.x0_clamp, 0.0);
  EXPECT_TRUE(p.denoiser_clamps(cfg));
  EXPECT_EQ(p.schedule, "discrete");
  // a named schedule keeps the k-diffusion start for ddim too, but the clamp stays diffusers'
  auto q = make_sampling_plan(cfg, "ddim", "karras", "", 20, PlanStyle::KDiffusion);
  EXPECT_FALSE(q.vp_init);
  EXPECT_EQ(q.x0_clamp, 1.0);
  // Stable Diffusion style: every sampler follows its diffusers scheduler
  auto d = make_sampling_plan(cfg, "dpm++2m", "", "", 20, PlanStyle::Diffusers);
  EXPECT_TRUE(d.quantize);
  EXPECT_THROW(make_sampling_plan(cfg, "nope", "", "", 20, PlanStyle::KDiffusion), Error);
  EXPECT_THROW(make_sampling_plan(cfg, "ddim", "", "", 0, PlanStyle::KDiffusion), Error);
}

}  // namespace
}  // namespace diffuse
