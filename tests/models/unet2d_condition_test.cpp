#include "models/unet2d_condition.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "models/param_count.h"
#include "nn/state_dict.h"

using namespace diffuse;
using diffuse::test::fixture;
using diffuse::test::max_abs_diff;
using diffuse::test::param_count;
using diffuse::test::TempDir;
using nlohmann::json;

namespace {

void check_parity(const std::string& name) {
  auto m = load_unet2d_condition(fixture(name));
  EXPECT_EQ(param_count(*m), 792964);
  auto t = safetensors::load(fixture(name + "/io.safetensors"));
  torch::NoGradGuard ng;
  auto ehs = t.at("encoder_hidden_states");
  auto out = m->forward(t.at("sample"), t.at("timestep"), ehs);
  const double diff = max_abs_diff(out, t.at("out"));
  EXPECT_LE(diff, test::kParityTol);
  std::cout << "[ " << name << " ] max abs diff " << diff << "\n";

  // Stages, each fed with the reference input of its stage.
  auto emb = m->embed(t.at("timestep"), 2);
  EXPECT_LE(max_abs_diff(emb, t.at("inter.time_embedding")), test::kParityTol);
  EXPECT_LE(max_abs_diff(m->conv_in(t.at("sample")), t.at("inter.conv_in")), test::kParityTol);
  auto d0 = m->down_cross[0]->forward(t.at("inter.conv_in"), emb, ehs);
  EXPECT_LE(max_abs_diff(d0.hidden_states, t.at("inter.down_blocks.0")), test::kParityTol);
  ASSERT_EQ(d0.res_samples.size(), 2u);
  EXPECT_LE(max_abs_diff(d0.res_samples[0], t.at("inter.down_blocks.0.res0")), test::kParityTol);
  auto mid = m->mid_block->forward(t.at("inter.down_blocks.1"), emb, ehs);
  EXPECT_LE(max_abs_diff(mid, t.at("inter.mid_block")), test::kParityTol);
  auto up1 = m->up_cross[1]->forward(t.at("inter.up_blocks.0"),
                                     {t.at("inter.conv_in"), t.at("inter.down_blocks.0.res0")}, emb, ehs);
  EXPECT_LE(max_abs_diff(up1, t.at("inter.up_blocks.1")), test::kParityTol);
}

}  // namespace

TEST(UNet2DCondition, Sd1MatchesDiffusers) { check_parity("unet_sd1_tiny"); }
TEST(UNet2DCondition, Sd2MatchesDiffusers) { check_parity("unet_sd2_tiny"); }

// SDXL's structure (text_time added conditioning, per-block transformer depths and head counts,
// linear projections): the output and every intermediate output of the fixture, each stage fed
// with the reference input of its stage.
TEST(UNet2DCondition, SdxlMatchesDiffusers) {
  auto m = load_unet2d_condition(fixture("unet_sdxl_tiny"));
  EXPECT_EQ(param_count(*m), 1976516);
  const auto& c = m->config();
  EXPECT_TRUE(c.text_time());
  EXPECT_EQ(c.num_time_ids(32), 6);
  EXPECT_EQ(c.num_time_ids(40), 5);   // a refiner-like split: 5 ids x 8 + 40
  EXPECT_EQ(c.num_time_ids(33), -1);  // does not add up
  auto t = safetensors::load(fixture("unet_sdxl_tiny/io.safetensors"));
  torch::NoGradGuard ng;
  const auto &ehs = t.at("encoder_hidden_states"), &text = t.at("text_embeds"), &ids = t.at("time_ids");
  auto out = m->forward(t.at("sample"), t.at("timestep"), ehs, {}, {}, text, ids);
  const double diff = max_abs_diff(out, t.at("out"));
  EXPECT_LE(diff, test::kParityTol);
  std::cout << "[ unet_sdxl_tiny ] max abs diff " << diff << "\n";

  // transformer depths and heads per block: down 1 = [1, 2] entry 1, mid = last, up 0 = reversed
  ASSERT_TRUE(m->down_cross[1]);
  EXPECT_EQ(m->down_cross[1]->attention_blocks.size(), 2u);
  EXPECT_EQ(m->down_cross[1]->attention_blocks[0]->blocks.size(), 2u);
  EXPECT_EQ(m->down_cross[1]->attention_blocks[0]->blocks[0]->attn1->heads(), 4);
  EXPECT_EQ(m->mid_block->attention_blocks[0]->blocks.size(), 2u);
  ASSERT_TRUE(m->up_cross[0]);
  EXPECT_EQ(m->up_cross[0]->attention_blocks.size(), 3u);
  EXPECT_EQ(m->up_cross[0]->attention_blocks[2]->blocks.size(), 2u);
  EXPECT_TRUE(m->up_cross[0]->attention_blocks[0]->proj_in_linear);

  std::vector<std::pair<std::string, double>> diffs;
  auto check = [&](const std::string& name, const torch::Tensor& got) {
    const double d = max_abs_diff(got, t.at(name));
    diffs.emplace_back(name, d);
    EXPECT_LE(d, test::kParityTol) << name;
  };
  check("inter.time_proj", m->time_proj->forward(t.at("timestep")));
  check("inter.time_embedding", m->time_embedding->forward(t.at("inter.time_proj")));
  check("inter.add_time_proj", m->add_time_proj->forward(ids.flatten()));
  check("inter.add_embedding", m->added_embedding(text, ids, 2));
  auto emb = m->embed(t.at("timestep"), 2, {}, text, ids);
  EXPECT_LE(max_abs_diff(emb, t.at("inter.time_embedding") + t.at("inter.add_embedding")), test::kParityTol);
  check("inter.conv_in", m->conv_in(t.at("sample")));
  auto d0 = m->down_plain[0]->forward(t.at("inter.conv_in"), emb);
  check("inter.down_blocks.0", d0.hidden_states);
  ASSERT_EQ(d0.res_samples.size(), 3u);
  for (size_t i = 0; i < 3; ++i) check("inter.down_blocks.0.res" + std::to_string(i), d0.res_samples[i]);
  auto d1 = m->down_cross[1]->forward(t.at("inter.down_blocks.0"), emb, ehs);
  check("inter.down_blocks.1", d1.hidden_states);
  ASSERT_EQ(d1.res_samples.size(), 2u);
  for (size_t i = 0; i < 2; ++i) check("inter.down_blocks.1.res" + std::to_string(i), d1.res_samples[i]);
  check("inter.mid_block", m->mid_block->forward(t.at("inter.down_blocks.1"), emb, ehs));
  // up 0 takes the skips of down 1 and the last of down 0; up 1 the rest
  check("inter.up_blocks.0",
        m->up_cross[0]->forward(
            t.at("inter.mid_block"),
            {t.at("inter.down_blocks.0.res2"), t.at("inter.down_blocks.1.res0"), t.at("inter.down_blocks.1.res1")}, emb,
            ehs));
  check("inter.up_blocks.1",
        m->up_plain[1]->forward(
            t.at("inter.up_blocks.0"),
            {t.at("inter.conv_in"), t.at("inter.down_blocks.0.res0"), t.at("inter.down_blocks.0.res1")}, emb));
  check("inter.conv_norm_out", m->conv_norm_out->forward(t.at("inter.up_blocks.1")));
  check("inter.conv_out", m->conv_out->forward(torch::silu(t.at("inter.conv_norm_out"))));
  for (const auto& entry : t) {
    const std::string& k = entry.first;
    if (k.rfind("inter.", 0) != 0) continue;
    EXPECT_TRUE(std::any_of(diffs.begin(), diffs.end(), [&](const auto& p) { return p.first == k; }))
        << "unchecked fixture tensor " << k;
  }
  double worst = 0;
  for (const auto& [k, d] : diffs) worst = std::max(worst, d);
  std::cout << "[ unet_sdxl_tiny ] " << diffs.size() << " intermediate outputs, max abs diff " << worst << "\n";

  // Batch-1 time ids and text embeddings are the caller's to repeat; wrong widths are named.
  auto e = test::error_of([&] { m->forward(t.at("sample"), t.at("timestep"), ehs, {}, {}, text, ids.slice(1, 0, 5)); });
  EXPECT_NE(e.find("time_ids"), std::string::npos) << e;
  e = test::error_of([&] { m->forward(t.at("sample"), t.at("timestep"), ehs); });
  EXPECT_NE(e.find("text_embeds"), std::string::npos) << e;
  auto sd1 = load_unet2d_condition(fixture("unet_sd1_tiny"));
  e = test::error_of([&] {
    sd1->forward(torch::randn({1, 4, 8, 8}), torch::tensor(1.0), torch::randn({1, 77, 32}), {}, {},
                 text[0].unsqueeze(0), ids[0].unsqueeze(0));
  });
  EXPECT_NE(e.find("no text_time"), std::string::npos) << e;
}

TEST(UNet2DCondition, ConfigRoundTripsExactly) {
  for (const char* name : {"unet_sd1_tiny", "unet_sd2_tiny", "unet_sdxl_tiny"}) {
    auto j = json::parse(read_file(fixture(std::string(name) + "/config.json")));
    auto c = UNet2DConditionConfig::from_json(j);
    EXPECT_EQ(c.to_json(), j) << name;
  }
}

TEST(UNet2DCondition, HeadCountsFollowDiffusersNamingQuirk) {
  auto c1 = UNet2DConditionConfig::from_json(json::parse(read_file(fixture("unet_sd1_tiny/config.json"))));
  EXPECT_EQ(c1.heads(0), 8);
  EXPECT_EQ(c1.heads(1), 8);
  auto c2 = UNet2DConditionConfig::from_json(json::parse(read_file(fixture("unet_sd2_tiny/config.json"))));
  EXPECT_EQ(c2.heads(0), 2);
  EXPECT_EQ(c2.heads(1), 4);
  auto m = UNet2DConditionModel(c2);
  EXPECT_EQ(m->down_cross[0]->attention_blocks[0]->blocks[0]->attn1->heads(), 2);
  EXPECT_EQ(m->mid_block->attention_blocks[0]->blocks[0]->attn2->heads(), 4);
  EXPECT_EQ(m->up_cross[1]->attention_blocks[0]->blocks[0]->attn1->heads(), 2);
  EXPECT_TRUE(m->down_cross[0]->attention_blocks[0]->proj_in_linear);
}

TEST(UNet2DCondition, SaveLoadRoundTrip) {
  TempDir tmp;
  auto m = load_unet2d_condition(fixture("unet_sd2_tiny"));
  save_unet2d_condition(m, tmp.path);
  auto m2 = load_unet2d_condition(tmp.path);
  EXPECT_EQ(m2->config(), m->config());
  auto a = nn::state_dict(*m), b = nn::state_dict(*m2);
  ASSERT_EQ(a.size(), b.size());
  for (auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
  auto ref = safetensors::load(fixture("unet_sd2_tiny/diffusion_pytorch_model.safetensors"));
  auto mine = safetensors::load(tmp / "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(ref.size(), mine.size());
  for (auto& [k, v] : ref) EXPECT_TRUE(mine.count(k)) << k;
}

TEST(UNet2DCondition, InpaintingChannelsAndOddSizes) {
  auto c = UNet2DConditionConfig::from_json(json::parse(read_file(fixture("unet_sd1_tiny/config.json"))));
  c.in_channels = 9;
  UNet2DConditionModel m(c);
  m->eval();
  torch::NoGradGuard ng;
  auto out = m->forward(torch::randn({1, 9, 6, 10}), torch::tensor(10.0), torch::randn({1, 5, 32}));
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({1, 4, 6, 10}));
  // Odd size: upsample sizes are forwarded from the skips.
  out = m->forward(torch::randn({1, 9, 7, 5}), torch::tensor(10.0), torch::randn({1, 5, 32}));
  EXPECT_EQ(out.sizes(), torch::IntArrayRef({1, 4, 7, 5}));
}

TEST(UNet2DCondition, RejectsUnsupportedAndBadInputs) {
  auto j = json::parse(read_file(fixture("unet_sd1_tiny/config.json")));
  auto bad = j;
  bad["addition_embed_type"] = "text_time";  // without addition_time_embed_dim / projection input dim
  EXPECT_THROW(UNet2DConditionConfig::from_json(bad).validate(), Error);
  bad["addition_time_embed_dim"] = 8;
  bad["projection_class_embeddings_input_dim"] = 80;
  EXPECT_NO_THROW(UNet2DConditionConfig::from_json(bad).validate());
  bad["addition_embed_type"] = "text_image";
  EXPECT_THROW(UNet2DConditionConfig::from_json(bad).validate(), Error);
  bad = j;
  bad["attention_head_dim"] = json::array({8, 8, 8});
  EXPECT_THROW(UNet2DConditionConfig::from_json(bad).validate(), Error);
  bad = j;
  bad["_class_name"] = "UNet2DModel";
  EXPECT_THROW(UNet2DConditionConfig::from_json(bad), Error);
  auto m = UNet2DConditionModel(UNet2DConditionConfig::from_json(j));
  torch::NoGradGuard ng;
  EXPECT_THROW(m->forward(torch::randn({1, 4, 8, 8}), torch::tensor(1.0), torch::Tensor()), Error);
  EXPECT_THROW(load_unet2d_condition(fixture("unet2d_ddpm")), Error);
}
