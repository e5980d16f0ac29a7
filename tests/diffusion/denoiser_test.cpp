// Denoiser wrappers, guidance and noise sources.
#include "diffusion/denoiser.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "core/error.h"
#include "diffusion/noise.h"
#include "fixtures.h"

namespace diffuse {
namespace {

NoiseScheduleConfig sd_config() {
  NoiseScheduleConfig c;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.beta_schedule = "scaled_linear";
  return c;
}

TEST(Denoiser, DiscreteParameterisations) {
  DiscreteSchedule ds(sd_config());
  auto x = torch::randn({2, 4, 3, 3}, torch::kFloat64);
  auto sigma = torch::tensor({ds.sigmas()[700].item<double>(), ds.sigmas()[20].item<double>()}, torch::kFloat64);
  torch::Tensor seen_x, seen_t;
  auto out = torch::randn({2, 4, 3, 3}, torch::kFloat64);
  ModelFn model = [&](const torch::Tensor& xi, const torch::Tensor& t, const Cond&) {
    seen_x = xi;
    seen_t = t;
    return out;
  };
  for (auto p : {Prediction::Epsilon, Prediction::V, Prediction::Sample}) {
    auto x0 = bind(discrete_denoiser(model, ds, p), {})(x, sigma);
    EXPECT_EQ(seen_t.scalar_type(), torch::kFloat32);
    EXPECT_NEAR(seen_t[0].item<double>(), 700, 1e-3);
    EXPECT_NEAR(seen_t[1].item<double>(), 20, 1e-3);
    for (int b = 0; b < 2; ++b) {
      double s = sigma[b].item<double>(), a = 1 / (1 + s * s);
      EXPECT_LT(test::max_abs_diff(seen_x[b], x[b] * std::sqrt(a)), 1e-12);
      // in VP terms: x_vp = sqrt(a) x0 + sqrt(1-a) eps
      torch::Tensor expect;
      auto xvp = x[b] * std::sqrt(a);
      if (p == Prediction::Epsilon) expect = (xvp - std::sqrt(1 - a) * out[b]) / std::sqrt(a);
      if (p == Prediction::V) expect = std::sqrt(a) * xvp - std::sqrt(1 - a) * out[b];
      if (p == Prediction::Sample) expect = out[b];
      EXPECT_LT(test::max_abs_diff(x0[b], expect), 1e-10) << to_string(p);
    }
  }
  DiscreteDenoiserOptions o;
  o.quantize = true;
  o.clip_sample_range = 0.5;
  auto x0 = bind(discrete_denoiser(model, ds, Prediction::Sample, o), {})(x, sigma * 1.001);
  EXPECT_EQ(seen_t[0].item<float>(), 700.f);
  EXPECT_LE(x0.abs().max().item<double>(), 0.5);
  EXPECT_EQ(parse_prediction("v_prediction"), Prediction::V);
  EXPECT_EQ(parse_prediction("epsilon"), Prediction::Epsilon);
  EXPECT_THROW(parse_prediction("flow"), Error);
}

TEST(Denoiser, EdmPreconditioning) {
  const double sd = 0.5;
  ModelFn model = [](const torch::Tensor& xi, const torch::Tensor& t, const Cond&) {
    return xi * 2 + t.reshape({-1, 1});
  };
  auto x = torch::randn({2, 3}, torch::kFloat64);
  auto sigma = torch::tensor({0.1, 20.0}, torch::kFloat64);
  auto y = bind(edm_denoiser(model, sd), {})(x, sigma);
  for (int b = 0; b < 2; ++b) {
    double s = sigma[b].item<double>();
    double c_skip = sd * sd / (s * s + sd * sd), c_out = s * sd / std::sqrt(s * s + sd * sd),
           c_in = 1 / std::sqrt(s * s + sd * sd), c_noise = std::log(s) / 4;
    auto expect = c_skip * x[b] + c_out * (x[b] * c_in * 2 + c_noise);
    EXPECT_LT(test::max_abs_diff(y[b], expect), 1e-12);
  }
}

TEST(Denoiser, CondCatRepeat) {
  Cond a, b;
  a.tensors["c"] = torch::tensor({1, 2});
  b.tensors["c"] = torch::tensor({3});
  auto ab = Cond::cat(a, b);
  EXPECT_TRUE(torch::equal(ab.get("c"), torch::tensor({1, 2, 3})));
  EXPECT_TRUE(torch::equal(a.repeat(2).get("c"), torch::tensor({1, 1, 2, 2})));
  Cond other;
  other.tensors["d"] = torch::tensor({1});
  EXPECT_THROW(Cond::cat(a, other), Error);
  EXPECT_FALSE(a.has("d"));
  EXPECT_FALSE(a.get("d").defined());
}

TEST(Denoiser, CfgBatchesOnceAndRescales) {
  int calls = 0;
  CondDenoiser d = [&](const torch::Tensor& x, const torch::Tensor& sigma, const Cond& c) {
    ++calls;
    EXPECT_EQ(x.size(0), 4);
    EXPECT_EQ(sigma.size(0), 4);
    // uncond rows first: label 0 for uncond, 1 for cond
    auto lab = c.get("label").to(x.scalar_type()).reshape({-1, 1});
    return x * 0.5 + lab * (1 + x.abs());
  };
  Cond cond, uncond;
  cond.tensors["label"] = torch::ones({1});
  uncond.tensors["label"] = torch::zeros({1});
  auto x = torch::randn({2, 8}, torch::kFloat64);
  auto sigma = torch::full({2}, 3.0, torch::kFloat64);
  auto y = cfg_denoiser(d, cond, uncond, 7.5)(x, sigma);
  EXPECT_EQ(calls, 1);
  auto u = x * 0.5, c = x * 0.5 + (1 + x.abs());
  EXPECT_LT(test::max_abs_diff(y, u + 7.5 * (c - u)), 1e-12);
  // rescale = 1: the guided noise prediction has the std of the conditional one
  auto yr = cfg_denoiser(d, cond, uncond, 7.5, 1.0)(x, sigma);
  auto eps_r = (x - yr) / 3.0, eps_c = (x - c) / 3.0;
  EXPECT_LT(test::max_abs_diff(eps_r.std(1), eps_c.std(1)), 1e-10);
  // rescale 0.5 lies in between
  auto yh = cfg_denoiser(d, cond, uncond, 7.5, 0.5)(x, sigma);
  EXPECT_LT(test::max_abs_diff(yh, 0.5 * (y + yr)), 1e-10);
  EXPECT_THROW(cfg_denoiser(d, cond, uncond, 7.5, 2.0), Error);

  // v-prediction models: diffusers rescales the guided velocity. Recompute that directly in the
  // variance-preserving scaling (alpha = 1/sqrt(1 + sigma^2), x_vp = alpha x, v = alpha eps -
  // sigma_vp x0, x0 = alpha x_vp - sigma_vp v) and compare.
  const double sg = 3.0, alpha = 1 / std::sqrt(1 + sg * sg), sigma_vp = sg * alpha;
  auto x_vp = alpha * x;
  auto v_of = [&](const torch::Tensor& x0) { return alpha * (x - x0) / sg - sigma_vp * x0; };
  auto v_u = v_of(u), v_c = v_of(c);
  auto v_cfg = v_u + 7.5 * (v_c - v_u);
  auto v_r = v_cfg * (v_c.std(1, true, true) / v_cfg.std(1, true, true));
  for (double phi : {1.0, 0.7}) {
    auto v = phi * v_r + (1 - phi) * v_cfg;
    auto expect = alpha * x_vp - sigma_vp * v;
    auto got = cfg_denoiser(d, cond, uncond, 7.5, phi, Prediction::V)(x, sigma);
    EXPECT_LT(test::max_abs_diff(got, expect), 1e-10) << "phi " << phi;
  }
  // x0-prediction models: the guided x0 itself is rescaled.
  auto ys = cfg_denoiser(d, cond, uncond, 7.5, 1.0, Prediction::Sample)(x, sigma);
  EXPECT_LT(test::max_abs_diff(ys, y * (c.std(1, true, true) / y.std(1, true, true))), 1e-10);
  // No rescale: all spaces agree.
  EXPECT_LT(test::max_abs_diff(cfg_denoiser(d, cond, uncond, 7.5, 0.0, Prediction::V)(x, sigma), y), 1e-12);
}

TEST(Denoiser, GuidanceIntervalPicksPerNoiseLevel) {
  int guided_calls = 0, plain_calls = 0;
  Denoiser guided = [&](const torch::Tensor& x, const torch::Tensor&) {
    ++guided_calls;
    return x + 1;
  };
  Denoiser plain = [&](const torch::Tensor& x, const torch::Tensor&) {
    ++plain_calls;
    return x - 1;
  };
  auto g = guidance_interval(guided, plain, 0.5, 2.0);
  auto x = torch::zeros({3, 2}, torch::kFloat64);
  // The interval is (lo, hi]: lo itself is outside, hi inside.
  for (auto [sigma, expect] :
       std::vector<std::pair<double, double>>{{0.1, -1}, {0.5, -1}, {0.7, 1}, {2.0, 1}, {2.5, -1}}) {
    guided_calls = plain_calls = 0;
    auto y = g(x, torch::full({3}, sigma, torch::kFloat64));
    EXPECT_TRUE(torch::all(y == expect).item<bool>()) << "sigma " << sigma;
    EXPECT_EQ(guided_calls, expect > 0 ? 1 : 0) << "sigma " << sigma;
    EXPECT_EQ(plain_calls, expect > 0 ? 0 : 1) << "sigma " << sigma;
  }
  // A scalar sigma, and a batch whose samples sit on both sides of the interval.
  EXPECT_TRUE(torch::all(g(x, torch::tensor(1.0, torch::kFloat64)) == 1).item<bool>());
  auto mixed = g(x, torch::tensor({0.2, 1.0, 3.0}, torch::kFloat64));
  EXPECT_TRUE(torch::equal(mixed, torch::tensor({-1.0, 1.0, -1.0}, torch::kFloat64).reshape({3, 1}).expand({3, 2})));
  // An unbounded interval guides at every noise level (sigma 0 is the only exception when lo = 0).
  auto all = guidance_interval(guided, plain, 0.0, INFINITY);
  EXPECT_TRUE(torch::all(all(x, torch::full({3}, 1e4, torch::kFloat64)) == 1).item<bool>());
  EXPECT_THROW(guidance_interval(guided, plain, 2.0, 1.0), Error);
  EXPECT_THROW(guidance_interval(guided, plain, -1.0, 1.0), Error);
  EXPECT_THROW(guidance_interval(guided, plain, 1.0, 1.0), Error);
  EXPECT_THROW(guidance_interval(nullptr, plain, 0.0, 1.0), Error);
}

TEST(Denoiser, AutoguidanceExtrapolatesAwayFromTheGuide) {
  int main_calls = 0, guide_calls = 0;
  Denoiser main = [&](const torch::Tensor& x, const torch::Tensor& sigma) {
    ++main_calls;
    return x * 0.5 + sigma.reshape({-1, 1});
  };
  Denoiser guide = [&](const torch::Tensor& x, const torch::Tensor&) {
    ++guide_calls;
    return x * 0.25;
  };
  auto x = torch::randn({4, 3}, torch::kFloat64);
  auto sigma = torch::tensor({0.1, 1.0, 2.0, 10.0}, torch::kFloat64);
  auto m = x * 0.5 + sigma.reshape({-1, 1}), g = x * 0.25;
  for (double w : {0.0, 1.5, 2.0, 3.0}) {
    main_calls = guide_calls = 0;
    auto y = autoguidance(main, guide, w)(x, sigma);
    EXPECT_TRUE(torch::allclose(y, g + w * (m - g), 0, 1e-12)) << "scale " << w;
    EXPECT_EQ(main_calls, 1);
    EXPECT_EQ(guide_calls, 1);
  }
  // Scale 1 is the main model alone: the guide is never evaluated.
  main_calls = guide_calls = 0;
  EXPECT_TRUE(torch::equal(autoguidance(main, guide, 1.0)(x, sigma), m));
  EXPECT_EQ(guide_calls, 0);
  // A guide equal to the main model leaves it unchanged at any scale.
  EXPECT_TRUE(torch::allclose(autoguidance(main, main, 2.5)(x, sigma), m, 0, 1e-12));
  // It composes with the guidance interval like CFG does.
  auto limited = guidance_interval(autoguidance(main, guide, 2.0), main, 0.5, 5.0);
  auto y = limited(x, sigma);
  EXPECT_TRUE(torch::allclose(y[0], m[0], 0, 1e-12));
  EXPECT_TRUE(torch::allclose(y[2], g[2] + 2.0 * (m[2] - g[2]), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(y[3], m[3], 0, 1e-12));
  EXPECT_THROW(autoguidance(nullptr, guide, 2.0), Error);
  EXPECT_THROW(autoguidance(main, nullptr, 2.0), Error);
  EXPECT_THROW(autoguidance(main, guide, NAN), Error);
}

TEST(Noise, PhiloxKnownAnswers) {
  // Random123 kat_vectors, philox4x32_10
  using A4 = std::array<uint32_t, 4>;
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}), (A4{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (A4{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (A4{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Noise, PhiloxNoiseIsStandardNormalAndReproducible) {
  PhiloxNoise a(42), b(42), c(43);
  auto x = a.randn({64, 1024});
  EXPECT_TRUE(torch::equal(x, b.randn({64, 1024})));
  EXPECT_FALSE(torch::equal(x, c.randn({64, 1024})));
  EXPECT_FALSE(torch::equal(x, a.randn({64, 1024})));  // offset advances
  EXPECT_EQ(a.offset(), 2u);
  EXPECT_NEAR(x.mean().item<double>(), 0, 0.01);
  EXPECT_NEAR(x.std().item<double>(), 1, 0.01);
  // element i of a call does not depend on the total size (counter = element index)
  PhiloxNoise d(42);
  EXPECT_TRUE(torch::equal(d.randn({10}), x.reshape({-1}).slice(0, 0, 10)));
  auto like = torch::zeros({2, 3}, torch::kFloat64);
  EXPECT_EQ(PhiloxNoise(1).randn_like(like).scalar_type(), torch::kFloat64);
}

// Values produced by A1111's modules/rng_philox.py Generator (numpy) for two consecutive
// randn calls of 6 and 3 values.
TEST(Noise, PhiloxNoiseMatchesA1111Generator) {
  struct Ref {
    uint64_t seed;
    std::vector<float> a, b;
  };
  const Ref refs[] = {
      {0,
       {-0x1.d96d5ap-1f, -0x1.b38d5ep-2f, -0x1.52698ap+1f, 0x1.29562ap-3f, -0x1.ef11b8p-4f, -0x1.28d1cep-1f},
       {0x1.7254d8p-3f, -0x1.1ac22ep-1f, 0x1.d8fe12p-1f}},
      {12345,
       {0x1.2843acp-1f, -0x1.0cacc0p-1f, -0x1.2ae8d0p-2f, 0x1.cb3512p-7f, -0x1.1515dcp+1f, 0x1.1daed6p-2f},
       {0x1.59c3b6p+1f, -0x1.6bb830p-1f, -0x1.601e5cp+0f}},
      {(uint64_t{1} << 40) + 7,
       {-0x1.ea8c08p-2f, -0x1.473b6ep+0f, -0x1.eeba5ap-3f, -0x1.8a3d4ep-2f, 0x1.1e3b4ep-2f, -0x1.346490p-1f},
       {-0x1.17d47cp-2f, 0x1.3b28dcp-3f, -0x1.24b1fep+0f}},
  };
  for (const auto& r : refs) {
    PhiloxNoise g(r.seed);
    EXPECT_TRUE(torch::equal(g.randn({6}), torch::tensor(r.a))) << r.seed;
    EXPECT_TRUE(torch::equal(g.randn({3}), torch::tensor(r.b))) << r.seed;
  }
}

TEST(Noise, TorchNoiseSeededAndThreadIndependent) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  auto one = TorchNoise(1234).randn({4, 64, 64});
  at::set_num_threads(2);
  auto two = TorchNoise(1234).randn({4, 64, 64});
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one, two));
  // diffusers' initial noise: torch.randn(1,4,8,8, generator=torch.Generator().manual_seed(1234))
  auto common = safetensors::load(test::fixture("schedulers/common.safetensors"));
  TorchNoise n(1234);
  EXPECT_TRUE(torch::equal(n.randn_like(torch::zeros({1, 4, 8, 8})), common.at("noise")));
  auto d = TorchNoise(5).randn_like(torch::zeros({3}, torch::kFloat64));
  EXPECT_EQ(d.scalar_type(), torch::kFloat64);
}

TEST(Noise, ReplayNoise) {
  ReplayNoise r({torch::ones({4}), torch::zeros({2, 2})});
  EXPECT_TRUE(torch::equal(r.randn_like(torch::empty({2, 2})), torch::ones({2, 2})));
  EXPECT_EQ(r.used(), 1u);
  EXPECT_THROW(r.randn_like(torch::empty({3})), Error);
  r.randn_like(torch::empty({4}));
  EXPECT_THROW(r.randn_like(torch::empty({4})), Error);
}

}  // namespace
}  // namespace diffuse
