#include "models/unet2d.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "models/param_count.h"
#include "nn/deterministic.h"
#include "nn/state_dict.h"

using namespace diffuse;
using diffuse::test::error_of;
using diffuse::test::fixture;
using diffuse::test::max_abs_diff;
using diffuse::test::param_count;
using diffuse::test::TempDir;
using nlohmann::json;

namespace fs = std::filesystem;

namespace {

std::map<std::string, torch::Tensor> io(const std::string& name) {
  return safetensors::load(fixture(name + "/io.safetensors"));
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }

void copy_folder(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    fs::copy_file(e.path(), fs::path(to) / e.path().filename());
    fs::permissions(fs::path(to) / e.path().filename(), fs::perms::owner_read | fs::perms::owner_write);
  }
}

std::vector<std::string> key_list(const torch::nn::Module& m) {
  std::vector<std::string> out;
  for (auto& [k, v] : nn::state_dict(m)) out.push_back(k);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- parity with diffusers

TEST(UNet2D, DdpmMatchesDiffusers) {
  auto m = load_unet2d(fixture("unet2d_ddpm"));
  EXPECT_EQ(param_count(*m), 702499);
  auto t = io("unet2d_ddpm");
  torch::NoGradGuard ng;
  auto out = m->forward(t.at("sample"), t.at("timestep"));
  const double diff = max_abs_diff(out, t.at("out"));
  EXPECT_LE(diff, test::kParityTol);
  std::cout << "[ unet2d_ddpm ] max abs diff " << diff << "\n";

  // Intermediates, each fed with the reference input of its stage.
  EXPECT_LE(max_abs_diff(m->conv_in(t.at("sample")), t.at("inter.conv_in")), test::kParityTol);
  auto emb = m->embed(t.at("timestep"), 2);
  EXPECT_LE(max_abs_diff(emb, t.at("inter.time_embedding")), test::kParityTol);
  auto d0 = m->down[0]->forward(t.at("inter.conv_in"), emb);
  EXPECT_LE(max_abs_diff(d0.hidden_states, t.at("inter.down_blocks.0")), test::kParityTol);
  ASSERT_EQ(d0.res_samples.size(), 2u);
  EXPECT_LE(max_abs_diff(d0.res_samples[0], t.at("inter.down_blocks.0.res0")), test::kParityTol);
  EXPECT_LE(max_abs_diff(d0.res_samples[1], t.at("inter.down_blocks.0.res1")), test::kParityTol);
  auto d1 = m->down[1]->forward(t.at("inter.down_blocks.0"), emb);
  EXPECT_LE(max_abs_diff(d1.hidden_states, t.at("inter.down_blocks.1")), test::kParityTol);
  EXPECT_LE(max_abs_diff(d1.res_samples[0], t.at("inter.down_blocks.1.res0")), test::kParityTol);
  EXPECT_LE(max_abs_diff(m->mid_block->forward(t.at("inter.down_blocks.1"), emb), t.at("inter.mid_block")),
            test::kParityTol);
  auto u0 = m->up[0]->forward(t.at("inter.mid_block"),
                              {t.at("inter.down_blocks.0.res1"), t.at("inter.down_blocks.1.res0")}, emb);
  EXPECT_LE(max_abs_diff(u0, t.at("inter.up_blocks.0")), test::kParityTol);
  auto u1 =
      m->up[1]->forward(t.at("inter.up_blocks.0"), {t.at("inter.conv_in"), t.at("inter.down_blocks.0.res0")}, emb);
  EXPECT_LE(max_abs_diff(u1, t.at("inter.up_blocks.1")), test::kParityTol);
  EXPECT_LE(max_abs_diff(m->conv_norm_out(t.at("inter.up_blocks.1")), t.at("inter.conv_norm_out")), test::kParityTol);
  EXPECT_LE(max_abs_diff(m->conv_out(torch::silu(t.at("inter.conv_norm_out"))), t.at("inter.conv_out")),
            test::kParityTol);
}

TEST(UNet2D, ClassConditionalMatchesDiffusers) {
  auto m = load_unet2d(fixture("unet2d_classcond"));
  EXPECT_EQ(param_count(*m), 702625);
  auto t = io("unet2d_classcond");
  torch::NoGradGuard ng;
  auto out = m->forward(t.at("sample"), t.at("timestep"), t.at("class_labels"));
  const double diff = max_abs_diff(out, t.at("out"));
  EXPECT_LE(diff, test::kParityTol);
  std::cout << "[ unet2d_classcond ] max abs diff " << diff << "\n";

  EXPECT_LE(max_abs_diff(m->class_embedding_table(t.at("class_labels")), t.at("inter.class_embedding")),
            test::kParityTol);
  EXPECT_LE(max_abs_diff(m->time_embedding(m->time_features(t.at("timestep"), 2)), t.at("inter.time_embedding")),
            test::kParityTol);
  auto emb = m->embed(t.at("timestep"), 2, t.at("class_labels"));
  EXPECT_LE(max_abs_diff(emb, t.at("inter.time_embedding") + t.at("inter.class_embedding")), test::kParityTol);
  EXPECT_LE(max_abs_diff(m->mid_block->forward(t.at("inter.down_blocks.1"), emb), t.at("inter.mid_block")),
            test::kParityTol);

  // The class labels matter, and are required.
  auto other = m->forward(t.at("sample"), t.at("timestep"), torch::tensor({4, 7}, torch::kLong));
  EXPECT_GT(max_abs_diff(other[0], out[0]), 1e-3);
  EXPECT_LE(max_abs_diff(other[1], out[1]), 1e-6);
  EXPECT_THROW(m->forward(t.at("sample"), t.at("timestep")), diffuse::Error);
  auto plain = load_unet2d(fixture("unet2d_ddpm"));
  EXPECT_THROW(plain->forward(torch::zeros({1, 3, 16, 16}), torch::tensor(1.0), torch::tensor({1}, torch::kLong)),
               diffuse::Error);
}

TEST(UNet2D, TimestepBroadcastAndChunkedAttention) {
  auto m = load_unet2d(fixture("unet2d_ddpm"));
  auto t = io("unet2d_ddpm");
  torch::NoGradGuard ng;
  auto x = t.at("sample");
  auto scalar = m->forward(x, torch::tensor(37.5f));
  auto both = m->forward(x, torch::tensor({37.5f, 37.5f}));
  EXPECT_TRUE(torch::equal(scalar, both));
  EXPECT_TRUE(torch::equal(m->forward(x, torch::tensor({37.5f})), both));
  // Integer timesteps are accepted.
  EXPECT_LE(
      max_abs_diff(m->forward(x, torch::tensor({999, 37}, torch::kLong)), m->forward(x, torch::tensor({999.f, 37.f}))),
      1e-6);
  EXPECT_THROW(m->forward(x, torch::tensor({1.f, 2.f, 3.f})), diffuse::Error);
  EXPECT_THROW(m->forward(torch::zeros({1, 3, 15, 16}), torch::tensor(1.f)), diffuse::Error);
  EXPECT_THROW(m->forward(torch::zeros({1, 4, 16, 16}), torch::tensor(1.f)), diffuse::Error);

  // channels-last inputs give the same result.
  EXPECT_LE(max_abs_diff(m->forward(x.contiguous(torch::MemoryFormat::ChannelsLast), t.at("timestep")), t.at("out")),
            test::kParityTol);

  m->set_attention_chunk_size(5);
  const double diff = max_abs_diff(m->forward(x, t.at("timestep")), t.at("out"));
  EXPECT_LE(diff, test::kParityTol);
}

TEST(UNet2D, Bfloat16) {
  auto m = load_unet2d(fixture("unet2d_ddpm"));
  auto t = io("unet2d_ddpm");
  m->to(torch::kBFloat16);
  EXPECT_EQ(m->dtype(), torch::kBFloat16);
  torch::NoGradGuard ng;
  auto out = m->forward(t.at("sample").to(torch::kBFloat16), t.at("timestep"));
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  const auto ref = t.at("out");
  const double rel = max_abs_diff(out, ref) / ref.abs().max().item<double>();
  EXPECT_LT(rel, 0.1);
  std::cout << "[ bf16 ] max abs diff / max |out| " << rel << "\n";
}

// ---------------------------------------------------------------- config

TEST(UNet2D, ConfigRoundTrip) {
  for (const char* name : {"unet2d_ddpm", "unet2d_classcond"}) {
    const json original = read_json(fixture(std::string(name) + "/config.json"));
    const auto cfg = UNet2DConfig::from_json(original);
    const json out = cfg.to_json();
    for (const auto& [key, value] : original.items()) {
      ASSERT_TRUE(out.contains(key)) << key;
      EXPECT_EQ(out.at(key), value) << key;
      EXPECT_EQ(out.at(key).dump(), value.dump()) << key;  // same JSON text (1 stays 1, 0.0 stays 0.0)
    }
    EXPECT_EQ(out.size(), original.size());
    EXPECT_EQ(UNet2DConfig::from_json(out), cfg);
    EXPECT_EQ(UNet2DConfig::from_json(out).to_json(), out);
  }
  const auto c = UNet2DConfig::from_json(read_json(fixture("unet2d_classcond/config.json")));
  EXPECT_EQ(c.sample_size, std::vector<int64_t>{28});
  EXPECT_EQ(c.num_class_embeds, std::optional<int64_t>(10));
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{32, 64}));
  EXPECT_FALSE(c.attn_norm_num_groups.has_value());
}

TEST(UNet2D, ConfigParsing) {
  // Defaults are diffusers' defaults; unknown keys are ignored.
  const auto d = UNet2DConfig::from_json(json{{"unknown_key", 1}, {"_use_default_values", json::array()}});
  EXPECT_EQ(d.block_out_channels, (std::vector<int64_t>{224, 448, 672, 896}));
  EXPECT_EQ(d.attention_head_dim, std::optional<int64_t>(8));
  EXPECT_EQ(d.norm_num_groups, 32);
  EXPECT_TRUE(d.sample_size.empty());
  EXPECT_TRUE(d.to_json().at("sample_size").is_null());
  // null attention_head_dim differs from an absent one.
  EXPECT_FALSE(UNet2DConfig::from_json(json{{"attention_head_dim", nullptr}}).attention_head_dim.has_value());
  // sample_size as [h, w]
  const auto hw = UNet2DConfig::from_json(json{{"sample_size", {32, 48}}});
  EXPECT_EQ(hw.sample_size, (std::vector<int64_t>{32, 48}));
  EXPECT_EQ(hw.to_json().at("sample_size"), json({32, 48}));
  // Integral floats are accepted for integer keys.
  EXPECT_EQ(UNet2DConfig::from_json(json{{"layers_per_block", 2.0}}).layers_per_block, 2);

  // Wrong types name the key.
  EXPECT_NE(error_of([] {
              UNet2DConfig::from_json(json{{"in_channels", "3"}});
            }).find("in_channels"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              UNet2DConfig::from_json(json{{"block_out_channels", {32, "a"}}});
            }).find("block_out_channels"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              UNet2DConfig::from_json(json{{"center_input_sample", 1}});
            }).find("center_input_sample"),
            std::string::npos);
  EXPECT_NE(error_of([] { UNet2DConfig::from_json(json{{"norm_eps", "1e-5"}}); }).find("norm_eps"), std::string::npos);
  EXPECT_NE(error_of([] {
              UNet2DConfig::from_json(json{{"layers_per_block", 1.5}});
            }).find("layers_per_block"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              UNet2DConfig::from_json(json{{"_class_name", "UNet2DConditionModel"}});
            }).find("UNet2DConditionModel"),
            std::string::npos);
  EXPECT_THROW(UNet2DConfig::from_json(json::array()), diffuse::Error);

  // Inconsistent configurations are rejected when a model is built.
  auto bad = UNet2DConfig::from_json(read_json(fixture("unet2d_ddpm/config.json")));
  bad.up_block_types.pop_back();
  EXPECT_NE(error_of([&] { UNet2DModel m(bad); }).find("up_block_types"), std::string::npos);
  bad = UNet2DConfig::from_json(read_json(fixture("unet2d_ddpm/config.json")));
  bad.down_block_types[0] = "CrossAttnDownBlock2D";
  EXPECT_NE(error_of([&] { UNet2DModel m(bad); }).find("CrossAttnDownBlock2D"), std::string::npos);
  bad = UNet2DConfig::from_json(read_json(fixture("unet2d_ddpm/config.json")));
  bad.time_embedding_type = "learned";
  EXPECT_NE(error_of([&] { UNet2DModel m(bad); }).find("num_train_timesteps"), std::string::npos);
  bad = UNet2DConfig::from_json(read_json(fixture("unet2d_ddpm/config.json")));
  bad.norm_num_groups = 5;
  EXPECT_NE(error_of([&] { UNet2DModel m(bad); }).find("norm_num_groups"), std::string::npos);
}

// ---------------------------------------------------------------- folder I/O

TEST(UNet2D, SaveLoadRoundTrip) {
  auto m = load_unet2d(fixture("unet2d_classcond"));
  auto t = io("unet2d_classcond");
  TempDir dir;
  const auto path = dir / "unet";
  save_unet2d(m, path);
  EXPECT_TRUE(fs::exists(path + "/config.json"));
  EXPECT_TRUE(fs::exists(path + "/diffusion_pytorch_model.safetensors"));
  for (const auto& e : fs::directory_iterator(path))  // no temporary files left behind
    EXPECT_TRUE(e.path().filename() == "config.json" || e.path().filename() == "diffusion_pytorch_model.safetensors")
        << e.path();
  auto f = safetensors::File::open(path + "/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  // Same tensor names as the diffusers file, and the same config.json content.
  auto ref = safetensors::File::open(fixture("unet2d_classcond/diffusion_pytorch_model.safetensors"));
  EXPECT_EQ(f.names(), ref.names());
  EXPECT_EQ(read_json(path + "/config.json"), read_json(fixture("unet2d_classcond/config.json")));

  auto m2 = load_unet2d(path);
  torch::NoGradGuard ng;
  auto a = m->forward(t.at("sample"), t.at("timestep"), t.at("class_labels"));
  auto b = m2->forward(t.at("sample"), t.at("timestep"), t.at("class_labels"));
  EXPECT_TRUE(torch::equal(a, b));

  // Overwriting an existing folder works.
  save_unet2d(m2, path);
  EXPECT_TRUE(torch::equal(load_unet2d(path)->forward(t.at("sample"), t.at("timestep"), t.at("class_labels")), a));
}

TEST(UNet2D, LoadErrors) {
  TempDir dir;
  // Missing folder / config.json: the message names the path.
  EXPECT_NE(error_of([&] { load_unet2d(dir / "nope"); }).find(dir / "nope"), std::string::npos);
  fs::create_directories(dir / "empty");
  EXPECT_NE(error_of([&] { load_unet2d(dir / "empty"); }).find(dir / "empty/config.json"), std::string::npos);

  // Config present, weights missing.
  const auto no_weights = dir / "no_weights";
  fs::create_directories(no_weights);
  fs::copy_file(fixture("unet2d_ddpm/config.json"), no_weights + "/config.json");
  EXPECT_NE(error_of([&] { load_unet2d(no_weights); }).find("diffusion_pytorch_model.safetensors"), std::string::npos);

  // Broken JSON.
  const auto broken = dir / "broken";
  copy_folder(fixture("unet2d_ddpm"), broken);
  write_file_atomically(broken + "/config.json", "{\"in_channels\": ");
  EXPECT_NE(error_of([&] { load_unet2d(broken); }).find(broken + "/config.json"), std::string::npos);

  // Wrong type in config.json: names file and key.
  auto j = read_json(fixture("unet2d_ddpm/config.json"));
  j["layers_per_block"] = "one";
  write_file_atomically(broken + "/config.json", j.dump());
  auto msg = error_of([&] { load_unet2d(broken); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layers_per_block"), std::string::npos) << msg;

  // Config that does not match the weights: every mismatched key is listed.
  const auto mismatched = dir / "mismatched";
  copy_folder(fixture("unet2d_ddpm"), mismatched);
  j = read_json(fixture("unet2d_ddpm/config.json"));
  j["block_out_channels"] = {32, 48};
  write_file_atomically(mismatched + "/config.json", j.dump(2));
  msg = error_of([&] { load_unet2d(mismatched); });
  EXPECT_NE(msg.find("diffusion_pytorch_model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape mismatches (100)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("down_blocks.1.resnets.0.conv1.weight: checkpoint [64, 32, 3, 3], model [48, 32, 3, 3]"),
            std::string::npos)
      << msg;

  // Extra and missing tensors.
  j = read_json(fixture("unet2d_ddpm/config.json"));
  j["num_class_embeds"] = 10;
  write_file_atomically(mismatched + "/config.json", j.dump(2));
  msg = error_of([&] { load_unet2d(mismatched); });
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("class_embedding.weight"), std::string::npos) << msg;
  j["num_class_embeds"] = nullptr;
  j["add_attention"] = false;
  write_file_atomically(mismatched + "/config.json", j.dump(2));
  msg = error_of([&] { load_unet2d(mismatched); });
  EXPECT_NE(msg.find("unexpected"), std::string::npos) << msg;
  EXPECT_NE(msg.find("mid_block.attentions.0.to_k.bias"), std::string::npos) << msg;
}

TEST(UNet2D, LoadsLegacyAttentionNames) {
  auto m = load_unet2d(fixture("unet2d_ddpm"));
  auto sd = safetensors::load(fixture("unet2d_ddpm/diffusion_pytorch_model.safetensors"));
  std::map<std::string, torch::Tensor> legacy;
  const std::vector<std::pair<std::string, std::string>> renames = {
      {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};
  for (auto& [k, v] : sd) {
    std::string nk = k;
    for (auto& [from, to] : renames)
      if (auto p = nk.find(from); p != std::string::npos) nk = nk.substr(0, p) + to + nk.substr(p + from.size());
    legacy[nk] = v;
  }
  ASSERT_TRUE(legacy.count("mid_block.attentions.0.proj_attn.weight"));
  TempDir dir;
  fs::copy_file(fixture("unet2d_ddpm/config.json"), dir / "config.json");
  safetensors::save(dir / "diffusion_pytorch_model.safetensors", legacy, {{"format", "pt"}});
  auto m2 = load_unet2d(dir.path);
  auto t = io("unet2d_ddpm");
  torch::NoGradGuard ng;
  EXPECT_TRUE(
      torch::equal(m->forward(t.at("sample"), t.at("timestep")), m2->forward(t.at("sample"), t.at("timestep"))));
}

// ---------------------------------------------------------------- configurations without fixtures
// Reference numbers from diffusers 0.28.2 UNet2DModel with the same config, parameters set by
// test::deterministic_fill, sample test::deterministic_input({2, C, 8, 8}).

namespace {

struct Oracle {
  json config;
  int64_t num_keys;
  int64_t num_params;
  uint64_t key_hash;
  double sum, abs_sum;
  std::vector<std::pair<int64_t, double>> values;
};

void check_oracle(const Oracle& o, const torch::Tensor& timestep, const torch::Tensor& labels) {
  auto cfg = UNet2DConfig::from_json(o.config);
  UNet2DModel m(cfg);
  m->eval();
  EXPECT_EQ(static_cast<int64_t>(key_list(*m).size()), o.num_keys);
  EXPECT_EQ(param_count(*m), o.num_params);
  EXPECT_EQ(test::fnv1a(key_list(*m)), o.key_hash);
  test::deterministic_fill(*m);
  auto x = test::deterministic_input({2, cfg.in_channels, 8, 8});
  torch::NoGradGuard ng;
  auto y = m->forward(x, timestep, labels);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, cfg.out_channels, 8, 8}));
  auto flat = y.flatten().to(torch::kFloat64);
  EXPECT_NEAR(flat.sum().item<double>(), o.sum, 1e-3 * std::max(1.0, std::abs(o.sum)));
  EXPECT_NEAR(flat.abs().sum().item<double>(), o.abs_sum, 1e-4 * o.abs_sum);
  double worst = 0;
  for (auto [i, v] : o.values) worst = std::max(worst, std::abs(flat[i].item<double>() - v));
  EXPECT_LE(worst, test::kParityTol);
  std::cout << "[ oracle ] max abs diff at sampled outputs " << worst << "\n";
}

// Gradients reach every trainable parameter and two forwards agree bit for bit.
void check_training(const UNet2DConfig& cfg, const torch::Tensor& timestep, const torch::Tensor& labels) {
  torch::manual_seed(0);
  UNet2DModel m(cfg);
  m->train();
  auto x = torch::randn({2, cfg.in_channels, 8, 8});
  auto y = m->forward(x, timestep, labels);
  EXPECT_TRUE(torch::equal(y, m->forward(x, timestep, labels)));  // dropout 0: deterministic
  y.pow(2).mean().backward();
  for (auto& p : m->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
}

json fourier_config() {
  return json::parse(R"({"sample_size": 8, "in_channels": 3, "out_channels": 3, "center_input_sample": true,
    "time_embedding_type": "fourier", "block_out_channels": [16, 32], "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8, "attention_head_dim": 8})");
}

json resnet_config() {
  return json::parse(R"({"sample_size": 8, "in_channels": 2, "out_channels": 3, "block_out_channels": [16, 32],
    "layers_per_block": 2, "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "ResnetUpsampleBlock2D"], "norm_num_groups": 4, "attention_head_dim": null,
    "resnet_time_scale_shift": "scale_shift", "downsample_type": "resnet", "upsample_type": "resnet",
    "mid_block_scale_factor": 1.41421356, "act_fn": "mish", "flip_sin_to_cos": false, "freq_shift": 1,
    "class_embed_type": "timestep"})");
}

}  // namespace

TEST(UNet2D, FourierTimeEmbeddingMatchesDiffusers) {
  Oracle o{fourier_config(),
           145,
           178467,
           0xc83a5dbf92fc6192ULL,
           60.330319970846176,
           344.0548937804997,
           {{0, -4.639738082885742},
            {1, -5.367109298706055},
            {7, -0.3762066960334778},
            {50, 2.8245110511779785},
            {123, 4.202056884765625},
            {200, 0.10679816454648972},
            {311, 0.16992507874965668},
            {383, 0.4791429042816162}}};
  check_oracle(o, torch::tensor({0.5f, 3.0f}), {});
  auto cfg = UNet2DConfig::from_json(o.config);
  EXPECT_EQ(UNet2DConfig::from_json(cfg.to_json()), cfg);
  check_training(cfg, torch::tensor({0.5f, 3.0f}), {});
  // The Fourier weights are frozen, as in diffusers.
  UNet2DModel m(cfg);
  EXPECT_FALSE(m->time_proj_fourier->weight.requires_grad());
}

TEST(UNet2D, ResnetBlocksScaleShiftMatchesDiffusers) {
  Oracle o{resnet_config(),
           226,
           295923,
           0x859b077b10bc13f4ULL,
           -20.52410388737917,
           541.3222742453218,
           {{0, 0.8373681902885437},
            {1, 1.169533133506775},
            {7, -1.6806060075759888},
            {50, -0.35715192556381226},
            {123, 1.1193236112594604},
            {200, 0.8914375305175781},
            {311, -1.2978531122207642},
            {383, 1.5248676538467407}}};
  check_oracle(o, torch::tensor({999.0f, 37.5f}), torch::tensor({3.0f, 250.0f}));
  check_training(UNet2DConfig::from_json(o.config), torch::tensor({999.0f, 37.5f}), torch::tensor({3.0f, 250.0f}));
}

TEST(UNet2D, SaveLoadGeneratedConfigs) {
  for (const auto& j : {fourier_config(), resnet_config()}) {
    UNet2DModel m(UNet2DConfig::from_json(j));
    m->eval();
    TempDir dir;
    save_unet2d(m, dir.path);
    // Fourier models carry diffusers' duplicate `time_proj.W` key.
    const bool fourier = m->config().time_embedding_type == "fourier";
    EXPECT_EQ(safetensors::File::open(dir / "diffusion_pytorch_model.safetensors").contains("time_proj.W"), fourier);
    auto m2 = load_unet2d(dir.path);
    EXPECT_EQ(m2->config(), m->config());
    auto x = torch::randn({1, m->config().in_channels, 8, 8});
    auto t = torch::tensor({2.0f});
    auto labels = m->config().class_embed_type ? torch::tensor({5.0f}) : torch::Tensor();
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal(m->forward(x, t, labels), m2->forward(x, t, labels)));
  }
}

TEST(UNet2D, LearnedTimeAndIdentityClassEmbedding) {
  auto j = fourier_config();
  j["time_embedding_type"] = "learned";
  j["num_train_timesteps"] = 100;
  j["class_embed_type"] = "identity";
  UNet2DModel m(UNet2DConfig::from_json(j));
  m->eval();
  auto sd = nn::state_dict(*m);
  EXPECT_EQ(sd.at("time_proj.weight").sizes(), (std::vector<int64_t>{100, 16}));
  EXPECT_EQ(sd.count("class_embedding.weight"), 0u);
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 3, 8, 8});
  auto t = torch::tensor({5, 60}, torch::kLong);
  auto zero = torch::zeros({2, 64});
  auto y = m->forward(x, t, zero);
  EXPECT_EQ(y.sizes(), x.sizes());
  // identity class embedding: class_labels are added to the time embedding as they are
  auto emb = m->embed(t, 2, torch::ones({2, 64}));
  EXPECT_LE(max_abs_diff(emb - 1.0, m->embed(t, 2, zero)), 1e-6);
}
