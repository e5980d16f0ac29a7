#include "models/dit.h"

#include <gtest/gtest.h>

#include <filesystem>

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

namespace fs = std::filesystem;

namespace {

std::map<std::string, torch::Tensor> dit_io() { return safetensors::load(fixture("dit_tiny/io.safetensors")); }

// dit_tiny with config_as_Transformer2DModel.json as its config.json.
std::string legacy_folder(const TempDir& tmp) {
  const auto dir = tmp / "legacy";
  fs::create_directories(dir);
  fs::copy_file(fixture("dit_tiny/config_as_Transformer2DModel.json"), dir + "/config.json");
  fs::copy_file(fixture("dit_tiny/diffusion_pytorch_model.safetensors"), dir + "/diffusion_pytorch_model.safetensors");
  return dir;
}

}  // namespace

TEST(DiT, ParityWithDiffusers) {
  torch::NoGradGuard ng;
  auto dit = load_dit(fixture("dit_tiny"));
  auto io = dit_io();
  auto out = dit->forward(io.at("sample"), io.at("timestep"), io.at("class_labels"));
  const double d = max_abs_diff(out, io.at("out"));
  std::printf("dit_tiny (DiTTransformer2DModel config) max abs diff: %.3g\n", d);
  EXPECT_LT(d, test::kParityTol);
  auto pe = dit->pos_embed->forward(io.at("sample"));
  EXPECT_LT(max_abs_diff(pe, io.at("inter.pos_embed")), test::kParityTol);
  auto t = io.at("timestep");
  auto l = io.at("class_labels");
  auto h = dit->blocks[0]->forward(pe, t, l);
  EXPECT_LT(max_abs_diff(h, io.at("inter.transformer_blocks.0")), test::kParityTol);
}

TEST(DiT, LegacyTransformer2DModelConfig) {
  torch::NoGradGuard ng;
  TempDir tmp;
  auto dit = load_dit(legacy_folder(tmp));
  auto io = dit_io();
  auto out = dit->forward(io.at("sample"), io.at("timestep"), io.at("class_labels"));
  const double d = max_abs_diff(out, io.at("out"));
  std::printf("dit_tiny (Transformer2DModel config) max abs diff: %.3g\n", d);
  EXPECT_LT(d, test::kParityTol);
  auto modern = load_dit(fixture("dit_tiny"));
  EXPECT_EQ(dit->config().to_json(), modern->config().to_json());
}

TEST(DiT, ConfigAndSaveLoad) {
  torch::NoGradGuard ng;
  auto dit = load_dit(fixture("dit_tiny"));
  auto orig = nlohmann::json::parse(read_file(fixture("dit_tiny/config.json")));
  EXPECT_EQ(dit->config().to_json(), orig);
  int64_t params = 0;
  for (auto& [k, v] : nn::state_dict(*dit)) params += v.numel();
  EXPECT_EQ(params, 124160);
  TempDir tmp;
  save_dit(dit, tmp / "dit");
  auto again = load_dit(tmp / "dit");
  auto io = dit_io();
  EXPECT_EQ(max_abs_diff(again->forward(io.at("sample"), io.at("timestep"), io.at("class_labels")),
                         dit->forward(io.at("sample"), io.at("timestep"), io.at("class_labels"))),
            0.0);
}

TEST(DiT, NonSquareAndScalarTimestep) {
  torch::NoGradGuard ng;
  auto dit = load_dit(fixture("dit_tiny"));
  auto x = torch::randn({1, 4, 8, 12});
  auto out = dit->forward(x, torch::tensor(10.0), torch::tensor({int64_t{3}}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 8, 8, 12}));
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
}

TEST(DiT, SinCosPositionsMatchFixtureFormula) {
  // 2x2 grid, dim 4, base 2: first half from the column coordinate, second from the row.
  auto pe = get_2d_sincos_pos_embed(4, 2, 2, 2.0);
  ASSERT_EQ(pe.sizes(), (std::vector<int64_t>{4, 4}));
  EXPECT_FLOAT_EQ(pe[1][0].item<float>(), std::sin(1.0f));
  EXPECT_FLOAT_EQ(pe[1][2].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(pe[2][0].item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(pe[2][2].item<float>(), std::sin(1.0f));
}

TEST(DiT, Errors) {
  torch::NoGradGuard ng;
  auto dit = load_dit(fixture("dit_tiny"));
  auto t = torch::tensor({1.0});
  auto l = torch::tensor({int64_t{1}});
  EXPECT_NE(error_of([&] {
              dit->forward(torch::zeros({1, 4, 7, 8}), t, l);
            }).find("divisible by patch_size 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              dit->forward(torch::zeros({1, 3, 8, 8}), t, l);
            }).find("expected sample"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              dit->forward(torch::zeros({1, 4, 8, 8}), t, torch::tensor({int64_t{1001}}));
            }).find("class_labels"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dit->forward(torch::zeros({1, 4, 8, 8}), t, {}); }).find("class_labels"), std::string::npos);
  nlohmann::json bad = {{"_class_name", "Transformer2DModel"},
                        {"in_channels", 4},
                        {"patch_size", 2},
                        {"sample_size", 8},
                        {"norm_type", "ada_norm_zero"},
                        {"num_embeds_ada_norm", 10},
                        {"cross_attention_dim", 32}};
  EXPECT_NE(error_of([&] { DiTConfig::from_json(bad); }).find("cross_attention_dim"), std::string::npos);
  nlohmann::json other = {{"_class_name", "UNet2DModel"}};
  EXPECT_NE(error_of([&] { DiTConfig::from_json(other); }).find("expected DiTTransformer2DModel"), std::string::npos);
  DiTConfig c;
  c.norm_type = "ada_norm_single";
  EXPECT_NE(error_of([&] { c.validate(); }).find("ada_norm_zero"), std::string::npos);
}
