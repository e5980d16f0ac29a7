#include "nn/embeddings.h"

#include <gtest/gtest.h>

#include <cmath>

#include "core/error.h"
#include "fixtures.h"
#include "nn/activations.h"
#include "nn/state_dict.h"

using namespace diffuse;
using diffuse::test::max_abs_diff;

namespace {

// The DDPM sinusoidal embedding written out element by element, in double precision.
torch::Tensor reference_embedding(const std::vector<double>& ts, int64_t dim, bool flip, double shift, double scale,
                                  double max_period) {
  const int64_t half = dim / 2;
  auto out = torch::zeros({static_cast<int64_t>(ts.size()), dim}, torch::kFloat64);
  auto a = out.accessor<double, 2>();
  for (size_t n = 0; n < ts.size(); ++n) {
    for (int64_t i = 0; i < half; ++i) {
      const double freq =
          std::exp(-std::log(max_period) * static_cast<double>(i) / (static_cast<double>(half) - shift));
      const double arg = scale * ts[n] * freq;
      a[n][flip ? i + half : i] = std::sin(arg);
      a[n][flip ? i : i + half] = std::cos(arg);
    }
  }
  return out;
}

}  // namespace

TEST(TimestepEmbedding, MatchesDirectFormula) {
  const std::vector<double> ts = {0.0, 1.0, 37.5, 999.0};
  auto t = torch::tensor(std::vector<float>(ts.begin(), ts.end()));
  struct Case {
    int64_t dim;
    bool flip;
    double shift, scale, max_period;
  };
  for (const auto& c : {Case{32, true, 0, 1, 10000}, Case{32, false, 1, 1, 10000}, Case{33, true, 0, 1, 10000},
                        Case{8, false, 1, 1000, 10000}, Case{16, true, 0.5, 2, 500}}) {
    auto got = nn::get_timestep_embedding(t, c.dim, c.flip, c.shift, c.scale, c.max_period);
    ASSERT_EQ(got.scalar_type(), torch::kFloat32);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{4, c.dim}));
    auto ref = reference_embedding(ts, c.dim, c.flip, c.shift, c.scale, c.max_period);
    // float32 arguments of up to ~1e6 rad: the phase error is ~|arg| * 2^-24.
    const double tol = c.scale > 100 ? 0.1 : 2e-4;
    EXPECT_LT(max_abs_diff(got, ref), tol) << "dim " << c.dim << " flip " << c.flip << " shift " << c.shift;
    if (c.dim % 2) {
      EXPECT_EQ(got.select(1, c.dim - 1).abs().max().item<float>(), 0.0f);
    }
  }
  // Integer timesteps give the same result as float ones.
  auto ti = torch::tensor({0, 1, 37, 999}, torch::kLong);
  auto tf = torch::tensor({0.f, 1.f, 37.f, 999.f});
  EXPECT_TRUE(torch::equal(nn::get_timestep_embedding(ti, 32, true, 0), nn::get_timestep_embedding(tf, 32, true, 0)));
  EXPECT_THROW(nn::get_timestep_embedding(torch::zeros({2, 2}), 8), diffuse::Error);
}

TEST(TimestepEmbedding, TimestepsModuleAndMlp) {
  nn::Timesteps proj(32, /*flip_sin_to_cos=*/true, /*downscale_freq_shift=*/0);
  auto t = torch::tensor({999.f, 37.5f});
  EXPECT_TRUE(torch::equal(proj(t), nn::get_timestep_embedding(t, 32, true, 0)));
  EXPECT_TRUE(nn::state_dict(*proj).empty());

  nn::TimestepEmbedding mlp(32, 128);
  auto sd = nn::state_dict(*mlp);
  std::vector<std::string> names;
  for (auto& [k, v] : sd) names.push_back(k);
  EXPECT_EQ(names, (std::vector<std::string>{"linear_1.bias", "linear_1.weight", "linear_2.bias", "linear_2.weight"}));
  EXPECT_EQ(sd["linear_1.weight"].sizes(), (std::vector<int64_t>{128, 32}));
  auto x = torch::randn({2, 32});
  auto expect = mlp->linear_2(torch::silu(mlp->linear_1(x)));
  EXPECT_TRUE(torch::allclose(mlp(x), expect));
}

TEST(TimestepEmbedding, GaussianFourierProjection) {
  nn::GaussianFourierProjection g(4, /*scale=*/16.0);
  EXPECT_FALSE(g->weight.requires_grad());
  EXPECT_EQ(nn::state_dict(*g).count("weight"), 1u);
  auto x = torch::tensor({0.5f, 3.0f});
  auto out = g(x);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 8}));
  auto w = g->weight.to(torch::kFloat64);
  for (int n = 0; n < 2; ++n) {
    for (int i = 0; i < 4; ++i) {
      const double arg = std::log(x[n].item<double>()) * w[i].item<double>() * 2 * M_PI;
      EXPECT_NEAR(out[n][i].item<double>(), std::sin(arg), 1e-4);
      EXPECT_NEAR(out[n][i + 4].item<double>(), std::cos(arg), 1e-4);
    }
  }
  nn::GaussianFourierProjection flipped(4, 1.0, /*log=*/false, /*flip_sin_to_cos=*/true);
  auto o2 = flipped(x);
  auto arg = x.unsqueeze(1) * flipped->weight.unsqueeze(0) * 2 * M_PI;
  EXPECT_TRUE(torch::allclose(o2, torch::cat({torch::cos(arg), torch::sin(arg)}, 1)));
}

TEST(Activations, Names) {
  auto x = torch::linspace(-3, 3, 13);
  EXPECT_TRUE(torch::allclose(nn::activate(nn::parse_activation("swish"), x), x * torch::sigmoid(x)));
  EXPECT_TRUE(torch::allclose(nn::activate(nn::parse_activation("silu"), x), x * torch::sigmoid(x)));
  EXPECT_TRUE(torch::allclose(nn::activate(nn::parse_activation("mish"), x), x * torch::tanh(torch::softplus(x))));
  EXPECT_TRUE(torch::allclose(nn::activate(nn::parse_activation("relu"), x), x.clamp_min(0)));
  EXPECT_TRUE(torch::allclose(nn::activate(nn::parse_activation("gelu"), x),
                              0.5 * x * (1 + torch::erf(x / std::sqrt(2.0))), 1e-5, 1e-6));
  EXPECT_THROW(nn::parse_activation("tanh"), diffuse::Error);
}

TEST(Activations, TemporariesInPlaceOnlyWithoutGradient) {
  for (const char* name : {"silu", "mish", "gelu", "relu"}) {
    const auto a = nn::parse_activation(name);
    const auto x = torch::linspace(-3, 3, 13);
    const auto want = nn::activate(a, x);
    {
      torch::NoGradGuard no_grad;
      auto t = x.clone();
      const auto out = nn::activate_temporary(a, t);
      EXPECT_TRUE(torch::equal(out, want)) << name;
      EXPECT_EQ(out.data_ptr(), t.data_ptr()) << name << ": no gradient, so in place";
    }
    // Recording a gradient: a new tensor, and the backward pass of activate().
    auto leaf = x.clone().requires_grad_(true);
    auto t = leaf * 1.0;
    const auto out = nn::activate_temporary(a, t);
    EXPECT_NE(out.data_ptr(), t.data_ptr()) << name;
    out.sum().backward();
    auto leaf2 = x.clone().requires_grad_(true);
    nn::activate(a, leaf2 * 1.0).sum().backward();
    EXPECT_TRUE(torch::equal(leaf.grad(), leaf2.grad())) << name;
  }
}
