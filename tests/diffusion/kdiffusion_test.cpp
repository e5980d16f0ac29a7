// Cross-check against k-diffusion's samplers (reference outputs made by
// data/gen_kdiffusion_ref.py from crowsonkb/k-diffusion, float64, injected noise).
#include <gtest/gtest.h>

#include "diffusion/noise.h"
#include "diffusion/sampler.h"
#include "fixtures.h"

namespace diffuse {
namespace {

TEST(KDiffusion, SamplersMatchReference) {
  auto ref = safetensors::load(test::source_path("tests/diffusion/data/kdiffusion_ref.safetensors"));
  auto mu = ref.at("mu"), var = ref.at("var");
  Denoiser D = [&](const torch::Tensor& x, const torch::Tensor& s) {
    auto s2 = (s * s).unsqueeze(1);
    return mu + var / (var + s2) * (x - mu);
  };
  auto pool = ref.at("noise");
  std::vector<torch::Tensor> noise;
  for (int64_t k = 0; k < pool.size(0); ++k) noise.push_back(pool[k]);
  struct Case {
    const char* ref;
    const char* sampler;
    double churn, eta;
  };
  const Case cases[] = {
      {"euler_churn", "euler", 1.0, -1},
      {"heun_churn", "heun", 1.0, -1},
      {"dpm2_churn", "dpm2", 1.0, -1},
      {"heun", "heun", 0, -1},
      {"dpm2", "dpm2", 0, -1},
      {"euler_a", "euler_a", 0, -1},
      {"dpm2_a", "dpm2_a", 0, -1},
      {"dpm++2s_a", "dpm++2s_a", 0, -1},
      {"dpm++sde", "dpm++sde", 0, -1},
      {"dpm++2m", "dpm++2m", 0, -1},
      {"dpm++2m_sde", "dpm++2m_sde", 0, -1},
      {"dpm++2m_sde_heun", "dpm++2m_sde_heun", 0, -1},
      {"dpm++3m_sde", "dpm++3m_sde", 0, -1},
      {"dpm++2m_sde_eta05", "dpm++2m_sde", 0, 0.5},
  };
  for (const auto& c : cases) {
    ReplayNoise rn(noise);
    SamplerOptions opt;
    opt.noise = &rn;
    opt.s_churn = c.churn;
    opt.eta = c.eta;
    auto out = find_sampler(c.sampler).fn(D, ref.at("x"), ref.at("sigmas"), opt);
    auto expect = ref.at(std::string("out.") + c.ref);
    double err = test::max_abs_diff(out, expect) / expect.abs().max().item<double>();
    EXPECT_LT(err, 1e-12) << c.ref;
  }
}

}  // namespace
}  // namespace diffuse
