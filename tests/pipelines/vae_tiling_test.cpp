// Tiled VAE encode / decode: the tiling geometry joins up exactly for a translation-invariant
// function, one tile reproduces the untiled VAE bit for bit, and on the tiny VAE with tiles
// smaller than the image the result follows the untiled one.
#include "pipelines/vae_tiling.h"

#include <gtest/gtest.h>

#include "fixtures.h"
#include "models/error_of.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse {
namespace {

AutoencoderKL& tiny_vae() {
  static AutoencoderKL vae = load_autoencoder_kl(test::fixture("sd_pipeline_tiny/vae"));
  return vae;
}

TEST(VaeTiling, TilesJoinUpForAPointwiseFunction) {
  torch::manual_seed(0);
  auto x = torch::randn({1, 2, 23, 37});
  auto up = [](const torch::Tensor& t) {
    return torch::nn::functional::interpolate(t * 2, torch::nn::functional::InterpolateFuncOptions()
                                                         .scale_factor(std::vector<double>{4, 4})
                                                         .mode(torch::kNearest)
                                                         .recompute_scale_factor(false));
  };
  // 8-latent tiles every 6 latents, blended over 8 output pixels, kept 24: diffusers' numbers for 32 px.
  auto tiled = tiled_apply(x, 8, 6, 8, 24, up);
  auto whole = up(x);
  ASSERT_EQ(tiled.sizes(), whole.sizes());
  EXPECT_LT(test::max_abs_diff(tiled, whole), 1e-5);
  EXPECT_TRUE(torch::equal(tiled_apply(x, 64, 48, 8, 24, up), whole));  // one tile

  // A local operator (3x3 convolution, then 4x up): exact away from the seams, which lie in
  // output rows / columns 24..31 (tile edges at input 6 and 7).
  auto kernel = torch::randn({2, 2, 3, 3});
  auto local = [&](const torch::Tensor& t) {
    return up(torch::nn::functional::conv2d(t, kernel, torch::nn::functional::Conv2dFuncOptions().padding(1)));
  };
  auto lt = tiled_apply(x, 8, 6, 8, 24, local), lw = local(x);
  ASSERT_EQ(lt.sizes(), lw.sizes());
  EXPECT_LT(test::max_abs_diff(lt.slice(2, 0, 24).slice(3, 0, 24), lw.slice(2, 0, 24).slice(3, 0, 24)), 1e-5);
  EXPECT_GT(test::max_abs_diff(lt, lw), 1e-3);  // the seams do differ
}

TEST(VaeTiling, OneTileIsTheUntiledVae) {
  torch::NoGradGuard ng;
  torch::manual_seed(1);
  auto z = torch::randn({1, 4, 16, 16});
  auto img = torch::rand({1, 3, 32, 32}) * 2 - 1;
  auto& vae = tiny_vae();
  EXPECT_TRUE(torch::equal(tiled_decode(vae, z, 32), vae->decode(z)));
  EXPECT_TRUE(torch::equal(tiled_decode(vae, z, 64), vae->decode(z)));
  auto post = vae->encode(img);
  EXPECT_TRUE(torch::equal(tiled_encode_moments(vae, img, 32).chunk(2, 1)[0], post.mean));
  VaeTiling t;
  t.enabled = true;
  t.tile = 32;
  EXPECT_TRUE(torch::equal(vae_decode(vae, z, t), vae->decode(z)));  // not larger than a tile: untiled
}

TEST(VaeTiling, SmallTilesFollowTheUntiledVae) {
  torch::NoGradGuard ng;
  auto& vae = tiny_vae();
  torch::manual_seed(2);
  // A smooth latent field (what a sampler produces looks more like this than white noise).
  auto z =
      torch::nn::functional::interpolate(torch::randn({1, 4, 4, 4}), torch::nn::functional::InterpolateFuncOptions()
                                                                         .size(std::vector<int64_t>{32, 32})
                                                                         .mode(torch::kBilinear)
                                                                         .align_corners(false));
  VaeTiling t;
  t.enabled = true;
  t.tile = 32;  // 16 latents, stride 12: 3 x 3 tiles over 64 x 64 pixels
  ASSERT_TRUE(t.applies(vae->config(), 64, 64));
  auto tiled = vae_decode(vae, z, t);
  auto whole = vae->decode(z);
  ASSERT_EQ(tiled.sizes(), whole.sizes());
  // The tiny random VAE normalises over each tile (group norm, mid-block attention), so tiles are
  // not exact; the tiled image must still follow the untiled one closely.
  auto corr = [](const torch::Tensor& a, const torch::Tensor& b) {
    auto x = a.flatten() - a.mean(), y = b.flatten() - b.mean();
    return ((x * y).sum() / (x.norm() * y.norm())).item<double>();
  };
  const double mean_all = (tiled - whole).abs().mean().item<double>();
  EXPECT_GT(corr(tiled, whole), 0.3);
  EXPECT_LT(mean_all, whole.std().item<double>());
  EXPECT_GT(mean_all, 0.0);  // really tiled

  auto img = whole.clamp(-1, 1);
  auto post_t = vae_encode(vae, img, t);
  auto post = vae->encode(img);
  ASSERT_EQ(post_t.mean.sizes(), post.mean.sizes());
  EXPECT_GT(corr(post_t.mean, post.mean), 0.3);
  EXPECT_NE(test::error_of([&] { tiled_decode(vae, z, 3); }).find("multiple of 2"), std::string::npos);
}

}  // namespace
}  // namespace diffuse
