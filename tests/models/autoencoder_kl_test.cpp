#include "models/autoencoder_kl.h"

#include <gtest/gtest.h>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "nn/state_dict.h"

using namespace diffuse;
using diffuse::test::error_of;
using diffuse::test::fixture;
using diffuse::test::max_abs_diff;
using diffuse::test::TempDir;

namespace {

std::map<std::string, torch::Tensor> vae_io() { return safetensors::load(fixture("vae_tiny/io.safetensors")); }

}  // namespace

TEST(AutoencoderKL, ParityWithDiffusers) {
  torch::NoGradGuard ng;
  auto vae = load_autoencoder_kl(fixture("vae_tiny"));
  auto io = vae_io();
  auto post = vae->encode(io.at("sample"));
  const double d_mean = max_abs_diff(post.mean, io.at("latent_mean"));
  const double d_logvar = max_abs_diff(post.logvar, io.at("latent_logvar"));
  const double d_std = max_abs_diff(post.std(), io.at("latent_std"));
  const double d_dec = max_abs_diff(vae->decode(io.at("latents")), io.at("decoded"));
  const double d_rec = max_abs_diff(vae->forward(io.at("sample")), io.at("recon"));
  RecordProperty("latent_mean", std::to_string(d_mean));
  std::printf("vae_tiny max abs diff: latent_mean %.3g latent_logvar %.3g latent_std %.3g decoded %.3g recon %.3g\n",
              d_mean, d_logvar, d_std, d_dec, d_rec);
  EXPECT_LT(d_mean, test::kParityTol);
  EXPECT_LT(d_logvar, test::kParityTol);
  EXPECT_LT(d_std, test::kParityTol);
  EXPECT_LT(d_dec, test::kParityTol);
  EXPECT_LT(d_rec, test::kParityTol);
}

TEST(AutoencoderKL, IntermediatesMatch) {
  torch::NoGradGuard ng;
  auto vae = load_autoencoder_kl(fixture("vae_tiny"));
  auto io = vae_io();
  auto h = vae->encoder->conv_in->forward(io.at("sample"));
  EXPECT_LT(max_abs_diff(h, io.at("inter.encoder.conv_in")), test::kParityTol);
  h = vae->encoder->down[0]->forward(h, {}).hidden_states;
  EXPECT_LT(max_abs_diff(h, io.at("inter.encoder.down_blocks.0")), test::kParityTol);
  auto z = vae->decoder->conv_in->forward(io.at("inter.post_quant_conv"));
  EXPECT_LT(max_abs_diff(z, io.at("inter.decoder.conv_in")), test::kParityTol);
  z = vae->decoder->mid_block->forward(z);
  EXPECT_LT(max_abs_diff(z, io.at("inter.decoder.mid_block")), test::kParityTol);
  z = vae->decoder->up[0]->forward(z);
  EXPECT_LT(max_abs_diff(z, io.at("inter.decoder.up_blocks.0")), test::kParityTol);
}

TEST(AutoencoderKL, ConfigRoundTripAndSaveLoad) {
  torch::NoGradGuard ng;
  auto vae = load_autoencoder_kl(fixture("vae_tiny"));
  const auto& c = vae->config();
  EXPECT_EQ(c.latent_channels, 4);
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{16, 32}));
  EXPECT_DOUBLE_EQ(c.scaling_factor, 0.18215);
  EXPECT_FALSE(c.shift_factor.has_value());
  EXPECT_EQ(c.downsample_factor(), 2);
  auto orig = nlohmann::json::parse(read_file(fixture("vae_tiny/config.json")));
  EXPECT_EQ(c.to_json(), orig);

  int64_t params = 0;
  for (auto& [k, v] : nn::state_dict(*vae)) params += v.numel();
  EXPECT_EQ(params, 167959);

  TempDir tmp;
  save_autoencoder_kl(vae, tmp / "vae");
  auto again = load_autoencoder_kl(tmp / "vae");
  auto io = vae_io();
  EXPECT_EQ(max_abs_diff(again->decode(io.at("latents")), vae->decode(io.at("latents"))), 0.0);
}

TEST(AutoencoderKL, Errors) {
  torch::NoGradGuard ng;
  auto vae = load_autoencoder_kl(fixture("vae_tiny"));
  EXPECT_NE(error_of([&] { vae->encode(torch::zeros({1, 3, 31, 32})); }).find("multiples of 2"), std::string::npos);
  EXPECT_NE(error_of([&] { vae->encode(torch::zeros({1, 4, 32, 32})); }).find("expected images"), std::string::npos);
  EXPECT_NE(error_of([&] { vae->decode(torch::zeros({1, 3, 8, 8})); }).find("expected latents"), std::string::npos);
  nlohmann::json j = {{"_class_name", "UNet2DModel"}};
  EXPECT_NE(error_of([&] { AutoencoderKLConfig::from_json(j); }).find("expected AutoencoderKL"), std::string::npos);
  nlohmann::json k = {{"latent_channels", "four"}};
  EXPECT_NE(error_of([&] { AutoencoderKLConfig::from_json(k); }).find("latent_channels"), std::string::npos);
  AutoencoderKLConfig bad;
  bad.down_block_types = {"CrossAttnDownBlock2D"};
  EXPECT_NE(error_of([&] { bad.validate(); }).find("DownEncoderBlock2D"), std::string::npos);
}

TEST(AutoencoderKL, PosteriorSampleUsesGenerator) {
  torch::NoGradGuard ng;
  auto vae = load_autoencoder_kl(fixture("vae_tiny"));
  auto post = vae->encode(vae_io().at("sample"));
  auto g1 = at::make_generator<at::CPUGeneratorImpl>(5);
  auto g2 = at::make_generator<at::CPUGeneratorImpl>(5);
  EXPECT_TRUE(torch::equal(post.sample(g1), post.sample(g2)));
}
