#include "models/size_bounds.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fixtures.h"
#include "models/model_io.h"
#include "models/param_count.h"

using namespace diffuse;
using diffuse::test::fixture;
using diffuse::test::source_path;
using diffuse::test::TempDir;
namespace fs = std::filesystem;

namespace {

nlohmann::json config_of(const std::string& dir) {
  std::ifstream in(dir + "/config.json");
  return nlohmann::json::parse(in);
}

// A copy of a model folder whose config.json is edited by `edit`.
void copy_with_config(const std::string& from, const std::string& to,
                      const std::function<void(nlohmann::json&)>& edit) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from))
    if (e.path().filename() != "config.json") fs::copy(e.path(), fs::path(to) / e.path().filename());
  auto j = config_of(from);
  edit(j);
  std::ofstream(to + "/config.json") << j.dump();
}

std::string load_error(const std::function<void()>& load) {
  try {
    load();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// The bounds hold for every fixture and shipped model: never above the real parameter count,
// and within a small factor of it (so they catch what they are for).
TEST(SizeBounds, AreLowerBoundsOfRealModels) {
  struct Case {
    std::string dir;
    std::function<std::pair<double, int64_t>(const std::string&)> bound_and_count;
  };
  auto unet = [](const std::string& d) {
    auto m = load_unet2d(d);
    return std::make_pair(min_parameters(m->config()), test::param_count(*m));
  };
  auto cond = [](const std::string& d) {
    auto m = load_unet2d_condition(d);
    return std::make_pair(min_parameters(m->config()), test::param_count(*m));
  };
  auto vae = [](const std::string& d) {
    auto m = load_autoencoder_kl(d);
    return std::make_pair(min_parameters(m->config()), test::param_count(*m));
  };
  auto dit = [](const std::string& d) {
    auto m = load_dit(d);
    return std::make_pair(min_parameters(m->config()), test::param_count(*m));
  };
  auto clip = [](const std::string& d) {
    auto m = load_clip_text_model(d);
    return std::make_pair(min_parameters(m->config()), test::param_count(*m));
  };
  const std::vector<Case> cases = {
      {fixture("unet2d_ddpm"), unet},
      {fixture("unet2d_classcond"), unet},
      {fixture("unet_sd1_tiny"), cond},
      {fixture("unet_sd2_tiny"), cond},
      {fixture("vae_tiny"), vae},
      {fixture("dit_tiny"), dit},
      {fixture("clip_text_tiny_gelu"), clip},
      {source_path("models/fashion-mnist/unet"), unet},
      {source_path("models/emoji-dit/transformer"), dit},
      {source_path("models/emoji-dit/vae"), vae},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.dir);
    const auto [bound, count] = c.bound_and_count(c.dir);
    EXPECT_GT(bound, 0);
    EXPECT_LE(bound, static_cast<double>(count));
    EXPECT_GT(bound, 0.2 * static_cast<double>(count));
    EXPECT_EQ(model_io::stored_elements(c.dir, c.dir.find("clip") != std::string::npos
                                                   ? "model.safetensors"
                                                   : "diffusion_pytorch_model.safetensors"),
              static_cast<double>(count));
  }
}

// A config asking for far more than its weights hold is refused before the model is built,
// naming config.json; absurd sizes are refused even without weights.
TEST(SizeBounds, RefuseConfigsThatCannotMatchTheirWeights) {
  TempDir tmp;
  struct Hostile {
    std::string fixture_name;
    std::function<void(nlohmann::json&)> edit;
    std::function<void(const std::string&)> load;
  };
  const std::vector<Hostile> cases = {
      {"unet2d_ddpm",
       [](nlohmann::json& j) {
         j["block_out_channels"] = {2048, 64};
       },
       [](const std::string& d) { load_unet2d(d); }},
      {"unet2d_ddpm", [](nlohmann::json& j) { j["layers_per_block"] = 100000; },
       [](const std::string& d) { load_unet2d(d); }},
      {"unet_sd1_tiny", [](nlohmann::json& j) { j["cross_attention_dim"] = 1 << 22; },
       [](const std::string& d) { load_unet2d_condition(d); }},
      {"vae_tiny",
       [](nlohmann::json& j) {
         j["block_out_channels"] = {8, 16000};
       },
       [](const std::string& d) { load_autoencoder_kl(d); }},
      {"dit_tiny", [](nlohmann::json& j) { j["num_layers"] = 5000000; }, [](const std::string& d) { load_dit(d); }},
      {"dit_tiny", [](nlohmann::json& j) { j["sample_size"] = 1 << 20; }, [](const std::string& d) { load_dit(d); }},
      {"clip_text_tiny_gelu", [](nlohmann::json& j) { j["vocab_size"] = 40000000; },
       [](const std::string& d) { load_clip_text_model(d); }},
  };
  int i = 0;
  for (const auto& c : cases) {
    const auto dir = tmp / (c.fixture_name + std::to_string(i++));
    SCOPED_TRACE(dir);
    copy_with_config(fixture(c.fixture_name), dir, c.edit);
    const auto msg = load_error([&] { c.load(dir); });
    EXPECT_NE(msg.find(dir + "/config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("imply"), std::string::npos) << msg;
  }
  // Without weights the absolute limit still applies (and the missing weights are reported
  // by the loader otherwise).
  const auto bare = tmp / "bare";
  fs::create_directories(bare);
  auto j = config_of(fixture("unet2d_ddpm"));
  j["block_out_channels"] = {3000000, 64};
  std::ofstream(bare + "/config.json") << j.dump();
  const auto msg = load_error([&] { load_unet2d(bare); });
  EXPECT_NE(msg.find("limit"), std::string::npos) << msg;
}
