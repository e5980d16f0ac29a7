// Sampler registry, options, callbacks and basic behaviour.
#include "diffusion/sampler.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "diffusion/sigmas.h"
#include "fixtures.h"

namespace diffuse {
namespace {

// Ideal denoiser for data ~ N(0, v I): D(x, s) = v / (v + s^2) x.
Denoiser gaussian_denoiser(double v) {
  return [v](const torch::Tensor& x, const torch::Tensor& s) {
    auto s2 = (s * s).reshape({-1, 1});
    return x * (v / (v + s2));
  };
}

TEST(Samplers, RegistryAndAliases) {
  std::vector<std::string> names;
  for (const auto& d : samplers()) {
    names.push_back(d.name);
    EXPECT_TRUE(d.fn) << d.name;
    EXPECT_GE(d.order, 1);
    EXPECT_EQ(&find_sampler(d.name), &d);
  }
  for (const char* n : {"euler",     "euler_a", "heun",        "dpm2",        "dpm2_a", "lms",  "dpm++2s_a",
                        "dpm++sde",  "dpm++2m", "dpm++2m_sde", "dpm++3m_sde", "ipndm",  "deis", "unipc",
                        "unipc_bh1", "ddim",    "ddpm",        "plms",        "pndm",   "lcm"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  std::string hint = "discrete";
  EXPECT_EQ(find_sampler("DPM++ 2M Karras", &hint).name, "dpm++2m");
  EXPECT_EQ(hint, "karras");
  hint = "discrete";
  EXPECT_EQ(find_sampler("Euler a", &hint).name, "euler_a");
  EXPECT_EQ(hint, "discrete");
  EXPECT_EQ(find_sampler("DPM++ 2M SDE Exponential", &hint).name, "dpm++2m_sde");
  EXPECT_EQ(hint, "exponential");
  EXPECT_EQ(find_sampler("EulerDiscreteScheduler").name, "euler");
  EXPECT_EQ(find_sampler("EulerAncestralDiscreteScheduler").name, "euler_a");
  EXPECT_EQ(find_sampler("DPMSolverMultistepScheduler").name, "dpm++2m");
  EXPECT_EQ(find_sampler("UniPCMultistepScheduler").name, "unipc");
  EXPECT_EQ(find_sampler("uni_pc").name, "unipc_bh1");
  EXPECT_EQ(find_sampler("dpmpp_2m_sde").name, "dpm++2m_sde");
  EXPECT_EQ(find_sampler("DPM2 a Karras").name, "dpm2_a");
  EXPECT_EQ(find_sampler("k_lms").name, "lms");
  EXPECT_EQ(find_sampler("k_dpm_2_a").name, "dpm2_a");
  try {
    find_sampler("nonsense");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dpm++2m"), std::string::npos);
  }
}

TEST(Samplers, AllRunAndReportEverySteps) {
  auto sigmas = karras_sigmas(12, 0.03, 14.6);
  for (const auto& d : samplers()) {
    TorchNoise noise(7);
    SamplerOptions opt;
    opt.noise = &noise;
    int calls = 0;
    opt.callback = [&](const StepInfo& info) {
      EXPECT_EQ(info.step, calls);
      EXPECT_EQ(info.total, 12);
      EXPECT_TRUE(info.x.defined() && info.denoised.defined());
      ++calls;
    };
    auto x = torch::randn({3, 16}, torch::kFloat64) * sigmas[0].item<double>();
    auto out = d.fn(gaussian_denoiser(1.0), x, sigmas, opt);
    EXPECT_EQ(calls, 12) << d.name;
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>()) << d.name;
    EXPECT_EQ(out.scalar_type(), torch::kFloat64);
    EXPECT_LT(out.abs().max().item<double>(), 6) << d.name;
    if (d.stochastic) {
      SamplerOptions none;
      EXPECT_THROW(d.fn(gaussian_denoiser(1.0), x, sigmas, none), Error) << d.name;
    } else {
      // deterministic: same result twice, no noise source needed
      SamplerOptions none;
      EXPECT_TRUE(torch::equal(d.fn(gaussian_denoiser(1.0), x, sigmas, none), out)) << d.name;
    }
  }
}

TEST(Samplers, CallbackThrowCancels) {
  SamplerOptions opt;
  int calls = 0;
  opt.callback = [&](const StepInfo& i) {
    ++calls;
    if (i.step == 2) throw std::runtime_error("cancel");
  };
  auto sigmas = karras_sigmas(10, 0.03, 14.6);
  EXPECT_THROW(sample_euler(gaussian_denoiser(1), torch::randn({1, 4}), sigmas, opt), std::runtime_error);
  EXPECT_EQ(calls, 3);
}

TEST(Samplers, RejectsBadSigmas) {
  SamplerOptions opt;
  auto x = torch::randn({1, 4});
  EXPECT_THROW(sample_euler(gaussian_denoiser(1), x, torch::tensor({1.f, 2.f, 0.f}), opt), Error);
  EXPECT_THROW(sample_euler(gaussian_denoiser(1), x, torch::tensor({1.f, 0.f, 0.f}), opt), Error);
  EXPECT_THROW(sample_euler(gaussian_denoiser(1), x, torch::tensor({NAN, 0.f}), opt), Error);
  // a single sigma: nothing to do
  EXPECT_TRUE(torch::equal(sample_euler(gaussian_denoiser(1), x, torch::tensor({1.f}), opt), x));
}

TEST(Samplers, DeterministicEulerEqualsDdimEtaZero) {
  auto sigmas = karras_sigmas(25, 0.03, 14.6).to(torch::kFloat64);
  auto x = torch::randn({2, 32}, torch::kFloat64) * 14.6;
  SamplerOptions opt;
  opt.eta = 0;
  auto a = sample_euler(gaussian_denoiser(0.7), x, sigmas, opt);
  auto b = sample_ddim(gaussian_denoiser(0.7), x, sigmas, opt);
  EXPECT_LT(test::max_abs_diff(a, b), 1e-12);
  // euler_a with eta = 0 is Euler, too
  auto c = sample_euler_ancestral(gaussian_denoiser(0.7), x, sigmas, opt);
  EXPECT_LT(test::max_abs_diff(a, c), 1e-12);
}

TEST(Samplers, AncestralStep) {
  auto [down, up] = ancestral_step(2.0, 1.0, 1.0);
  EXPECT_NEAR(up * up + down * down, 1.0, 1e-12);
  EXPECT_NEAR(up, std::sqrt(1.0 * (4 - 1) / 4), 1e-12);
  auto [d0, u0] = ancestral_step(2.0, 1.0, 0.0);
  EXPECT_EQ(d0, 1.0);
  EXPECT_EQ(u0, 0.0);
  // huge ratio: no NaN (diffusers' float32 version produces one, see parity tests)
  auto [d1, u1] = ancestral_step(20291.3, 1.75, 1.0);
  EXPECT_TRUE(std::isfinite(d1) && d1 >= 0);
  EXPECT_LE(u1, 1.75);
}

TEST(Samplers, ReducedPrecisionSamples) {
  // bfloat16 samples: sigma reaches the denoiser as float32, results follow the float32 run
  Denoiser d = [](const torch::Tensor& x, const torch::Tensor& s) {
    EXPECT_EQ(s.scalar_type(), torch::kFloat32);
    auto s2 = (s * s).reshape({-1, 1}).to(x.scalar_type());
    return x / (s2 + 1);
  };
  auto sigmas = karras_sigmas(10, 0.03, 14.6);
  auto x = torch::randn({2, 64}) * 14.6;
  SamplerOptions opt;
  for (const char* name : {"euler", "dpm++2m", "unipc", "heun"}) {
    auto ref = find_sampler(name).fn(d, x, sigmas, opt);
    auto lo = find_sampler(name).fn(d, x.to(torch::kBFloat16), sigmas, opt);
    EXPECT_EQ(lo.scalar_type(), torch::kBFloat16);
    EXPECT_LT(test::max_abs_diff(lo, ref), 0.05 * ref.abs().max().item<double>()) << name;
  }
}

TEST(Samplers, ChurnUsesNoise) {
  auto sigmas = karras_sigmas(8, 0.03, 14.6);
  auto x = torch::randn({1, 16});
  SamplerOptions opt;
  opt.s_churn = 1.0;
  EXPECT_THROW(sample_euler(gaussian_denoiser(1), x, sigmas, opt), Error);
  TorchNoise n1(1), n2(1);
  opt.noise = &n1;
  auto a = sample_heun(gaussian_denoiser(1), x, sigmas, opt);
  opt.noise = &n2;
  EXPECT_TRUE(torch::equal(a, sample_heun(gaussian_denoiser(1), x, sigmas, opt)));
}

}  // namespace
}  // namespace diffuse
