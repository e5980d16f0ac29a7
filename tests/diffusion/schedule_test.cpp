// Noise schedules, sigma schedules and timestep spacing against diffusers 0.28.2.
#include "diffusion/schedule.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "diffusion/sigmas.h"
#include "sched_fixtures.h"

namespace diffuse {
namespace {

using test::fixture;

NoiseScheduleConfig named_config(const std::string& name) {
  NoiseScheduleConfig c;
  if (name == "sd") {
    c.beta_start = 0.00085;
    c.beta_end = 0.012;
    c.beta_schedule = "scaled_linear";
  } else if (name == "cosine") {
    c.beta_schedule = "squaredcos_cap_v2";
  }
  return c;
}

TEST(Schedule, BetasAndAlphasCumprodMatchDiffusersExactly) {
  auto common = safetensors::load(fixture("schedulers/common.safetensors"));
  for (const std::string name : {"sd", "ddpm_linear", "cosine"}) {
    auto cfg = named_config(name);
    auto betas = make_betas(cfg);
    auto ac = make_alphas_cumprod(cfg);
    EXPECT_EQ(betas.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(betas, common.at(name + ".betas"))) << name;
    EXPECT_TRUE(torch::equal(ac, common.at(name + ".alphas_cumprod"))) << name;
  }
}

TEST(Schedule, ZeroTerminalSnr) {
  auto cfg = named_config("sd");
  cfg.rescale_betas_zero_snr = true;
  auto ac = make_alphas_cumprod(cfg);
  auto plain = make_alphas_cumprod(named_config("sd"));
  EXPECT_EQ(ac[-1].item<float>(), 0.f);
  EXPECT_NEAR(ac[0].item<double>(), plain[0].item<double>(), 1e-6);
  DiscreteSchedule ds(cfg);
  EXPECT_NEAR(ds.sigma_max(), 4096.0, 1.0);  // alpha_bar 0 -> 2^-24
  auto s = make_sigmas("karras", 10, ds, cfg);
  EXPECT_NEAR(s[0].item<double>(), 4096.0, 1.0);
}

TEST(Schedule, RejectsUnknownBetaSchedule) {
  NoiseScheduleConfig c;
  c.beta_schedule = "sigmoid";
  EXPECT_THROW(make_betas(c), Error);
  EXPECT_THROW(prediction_target("flow", make_alphas_cumprod({}), torch::zeros({1, 2}), torch::zeros({1, 2}),
                                 torch::zeros({1}, torch::kLong)),
               Error);
}

TEST(Schedule, SigmaTimestepRoundTrip) {
  DiscreteSchedule ds(named_config("sd"));
  EXPECT_EQ(ds.num_timesteps(), 1000);
  EXPECT_NEAR(ds.sigma_max(), 14.6146, 1e-3);
  EXPECT_NEAR(ds.sigma_min(), 0.0292, 1e-4);
  auto t = torch::tensor({0.0, 1.0, 37.5, 500.0, 998.25, 999.0});
  auto back = ds.sigma_to_t(ds.t_to_sigma(t));
  EXPECT_LT(test::max_abs_diff(back, t), 2e-3);
  // training sigmas map to their own integer timestep
  auto idx = torch::arange(1000, torch::kFloat32);
  EXPECT_LT(test::max_abs_diff(ds.sigma_to_t(ds.sigmas()), idx), 2e-3);
  // outside the table: clamped
  EXPECT_FLOAT_EQ(ds.sigma_to_t(torch::tensor({1e-4f})).item<float>(), 0.f);
  EXPECT_FLOAT_EQ(ds.sigma_to_t(torch::tensor({1e3f})).item<float>(), 999.f);
}

TEST(Schedule, AddNoiseAndTargets) {
  auto ac = make_alphas_cumprod(named_config("sd"));
  auto x0 = torch::randn({2, 3, 4, 4});
  auto noise = torch::randn({2, 3, 4, 4});
  auto t = torch::tensor({10, 900}, torch::kLong);
  auto xt = add_noise(ac, x0, noise, t);
  for (int b = 0; b < 2; ++b) {
    double a = ac[t[b].item<int64_t>()].item<double>();
    auto expect = std::sqrt(a) * x0[b] + std::sqrt(1 - a) * noise[b];
    EXPECT_LT(test::max_abs_diff(xt[b], expect), 1e-5);
    auto v = prediction_target("v_prediction", ac, x0, noise, t)[b];
    EXPECT_LT(test::max_abs_diff(v, std::sqrt(a) * noise[b] - std::sqrt(1 - a) * x0[b]), 1e-5);
  }
  EXPECT_TRUE(torch::equal(prediction_target("epsilon", ac, x0, noise, t), noise));
  EXPECT_TRUE(torch::equal(prediction_target("sample", ac, x0, noise, t), x0));
  EXPECT_THROW(add_noise(ac, x0, noise, torch::tensor({0, 1000}, torch::kLong)), Error);
}

// Every fixture case's timesteps (and sigmas, where the class has them) follow from our
// spacing functions, exactly.
TEST(Schedule, TimestepsAndSigmasMatchDiffusersExactly) {
  struct V {
    const char* name;
    TimestepStyle style;
  };
  const V variants[] = {{"euler", TimestepStyle::Euler},        {"euler_ancestral", TimestepStyle::Euler},
                        {"heun", TimestepStyle::Euler},         {"lms", TimestepStyle::Euler},
                        {"euler_vpred", TimestepStyle::Euler},  {"ddim_eta0", TimestepStyle::Ddim},
                        {"ddim_eta1", TimestepStyle::Ddim},     {"ddpm", TimestepStyle::Ddim},
                        {"dpmpp_2m", TimestepStyle::DpmSolver}, {"unipc", TimestepStyle::DpmSolver}};
  int checked = 0;
  for (const auto& v : variants) {
    auto doc = test::load_json(fixture(std::string("schedulers/") + v.name + ".json"));
    for (const auto& c : doc["cases"]) {
      auto cfg = test::config_from(c["config"]);
      const int n = c["num_inference_steps"];
      DiscreteSchedule ds(cfg);
      auto t = spaced_timesteps(cfg, n, v.style);
      auto ref_t = test::jvec(c["timesteps"]);
      if (std::string(v.name) == "heun") {  // Heun repeats every timestep but the first
        std::vector<double> u = {ref_t[0]};
        for (size_t k = 1; k < ref_t.size(); k += 2) u.push_back(ref_t[k]);
        ref_t = u;
      }
      ASSERT_EQ(t, ref_t) << v.name << " " << c["key"];
      if (!c["sigmas"].is_null()) {
        auto ref_s = torch::tensor(test::jvec(c["sigmas"]), torch::kFloat64).to(torch::kFloat32);
        torch::Tensor s;
        if (v.style == TimestepStyle::Euler)
          s = make_sigmas("discrete", n, ds, cfg);
        else
          s = torch::cat({sigmas_at_timesteps(ds, t), torch::zeros({1})});
        if (std::string(v.name) == "heun")
          ref_s = torch::cat({ref_s.slice(0, 0, 1), ref_s.slice(0, 1, -1, 2), ref_s.slice(0, -1)});
        ASSERT_TRUE(torch::equal(s, ref_s)) << v.name << " " << c["key"] << "\n" << s << ref_s;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 36 * 9 + 12);
}

TEST(Schedule, KarrasMatchesDpmSolverKarrasExactly) {
  auto doc = test::load_json(fixture("schedulers/dpmpp_2m_karras.json"));
  int checked = 0;
  for (const auto& c : doc["cases"]) {
    auto cfg = test::config_from(c["config"]);
    DiscreteSchedule ds(cfg);
    const int n = c["num_inference_steps"];
    auto s = make_sigmas("karras", n, ds, cfg);
    auto ref = torch::tensor(test::jvec(c["sigmas"]), torch::kFloat64).to(torch::kFloat32);
    ASSERT_TRUE(torch::equal(s, ref)) << c["key"];
    // diffusers feeds the rounded log-sigma-interpolated timestep: our sigma_to_t, rounded
    auto t = ds.sigma_to_t(s.slice(0, 0, -1)).to(torch::kFloat64).round();
    auto ref_t = torch::tensor(test::jvec(c["timesteps"]), torch::kFloat64);
    ASSERT_TRUE(torch::equal(t, ref_t)) << c["key"];
    ++checked;
  }
  EXPECT_EQ(checked, 36);
}

TEST(Sigmas, AllSchedulesDescendToZero) {
  NoiseScheduleConfig cfg = named_config("sd");
  cfg.steps_offset = 1;
  DiscreteSchedule ds(cfg);
  for (const auto& [name, summary, fn] : sigma_schedules()) {
    EXPECT_FALSE(summary.empty());
    for (int steps : {1, 2, 10, 30}) {
      auto s = make_sigmas(name, steps, ds, cfg);
      ASSERT_EQ(s.scalar_type(), torch::kFloat32) << name;
      ASSERT_EQ(s.dim(), 1);
      if (name != "beta") {
        EXPECT_EQ(s.size(0), steps + 1) << name << " " << steps;
      }
      EXPECT_EQ(s[-1].item<float>(), 0.f) << name;
      auto head = s.slice(0, 0, -1);
      EXPECT_TRUE((head > 0).all().item<bool>()) << name << steps;
      EXPECT_TRUE((s.slice(0, 1) < s.slice(0, 0, -1)).all().item<bool>()) << name << " " << steps << s;
      EXPECT_LE(s[0].item<double>(), ds.sigma_max() * 1.0001) << name;
    }
  }
  EXPECT_THROW(make_sigmas("nope", 10, ds, cfg), Error);
  EXPECT_THROW(make_sigmas("karras", 0, ds, cfg), Error);
}

TEST(Sigmas, KnownValues) {
  NoiseScheduleConfig cfg = named_config("sd");
  DiscreteSchedule ds(cfg);
  // AYS at 10 steps is the published table with the last level replaced by 0
  auto ays = make_sigmas("align_your_steps", 10, ds, cfg);
  EXPECT_NEAR(ays[0].item<double>(), 14.6146412293, 1e-5);
  EXPECT_NEAR(ays[5].item<double>(), 1.3943805092, 1e-6);
  EXPECT_NEAR(ays[9].item<double>(), 0.1515232662, 1e-7);
  EXPECT_EQ(ays[10].item<float>(), 0.f);
  // exponential: constant ratio
  auto e = make_sigmas("exponential", 5, ds, cfg);
  for (int i = 0; i < 3; ++i)
    EXPECT_NEAR(e[i + 1].item<double>() / e[i].item<double>(), e[i + 2].item<double>() / e[i + 1].item<double>(), 1e-5);
  EXPECT_NEAR(e[4].item<double>(), ds.sigma_min(), 1e-6);
  // simple: every 100th training sigma from the top
  auto s = make_sigmas("simple", 10, ds, cfg);
  EXPECT_EQ(s[0].item<float>(), ds.sigmas()[999].item<float>());
  EXPECT_EQ(s[1].item<float>(), ds.sigmas()[899].item<float>());
  // kl_optimal endpoints
  auto kl = make_sigmas("kl_optimal", 8, ds, cfg);
  EXPECT_NEAR(kl[0].item<double>(), ds.sigma_max(), 1e-4);
  EXPECT_NEAR(kl[7].item<double>(), ds.sigma_min(), 1e-6);
  // Beta(0.6, 0.6) is symmetric: I_0.5 = 0.5; quantile inverts the CDF
  EXPECT_NEAR(incomplete_beta(0.6, 0.6, 0.5), 0.5, 1e-12);
  EXPECT_NEAR(incomplete_beta(2, 3, 0.4), 0.5248, 1e-12);  // 1 - (1-x)^3 (1 + 3x) at x=0.4
  for (double p : {0.01, 0.3, 0.77, 0.999})
    EXPECT_NEAR(incomplete_beta(0.6, 0.6, beta_quantile(0.6, 0.6, p)), p, 1e-12);
  auto b = make_sigmas("beta", 10, ds, cfg);
  EXPECT_EQ(b[0].item<float>(), ds.sigmas()[999].item<float>());
}

TEST(Sigmas, ParseAndTruncate) {
  auto s = parse_sigmas("14.6, 7.0,3 ,1e-1");
  ASSERT_EQ(s.size(0), 5);
  EXPECT_FLOAT_EQ(s[2].item<float>(), 3.f);
  EXPECT_EQ(s[4].item<float>(), 0.f);
  EXPECT_EQ(parse_sigmas("2,1,0").size(0), 3);
  for (const char* bad : {"", "1,,0.5", "1,2", "1,1", "abc", "1,-1", "nan", "inf,1", "0", "1,0,0", "1, 0.5x"})
    EXPECT_THROW(parse_sigmas(bad), Error) << bad;

  auto sig = torch::linspace(10, 0, 21);  // 20 steps
  EXPECT_EQ(truncate_sigmas(sig, 1.0).size(0), 21);
  auto t = truncate_sigmas(sig, 0.7);  // t_start = 20 - 14 = 6
  ASSERT_EQ(t.size(0), 15);
  EXPECT_FLOAT_EQ(t[0].item<float>(), sig[6].item<float>());
  EXPECT_EQ(truncate_sigmas(sig, 0.0).size(0), 1);
  EXPECT_THROW(truncate_sigmas(sig, 1.5), Error);
}

}  // namespace
}  // namespace diffuse
