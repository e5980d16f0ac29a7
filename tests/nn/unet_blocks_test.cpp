#include <gtest/gtest.h>

#include "core/error.h"
#include "fixtures.h"
#include "nn/state_dict.h"
#include "nn/unet_2d_blocks.h"

using namespace diffuse;
using diffuse::test::max_abs_diff;

namespace {
using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

Shapes shapes(const torch::nn::Module& m) {
  Shapes out;
  for (auto& [k, v] : nn::state_dict(m)) out.emplace_back(k, v.sizes().vec());
  return out;
}

Shapes sorted(Shapes s) {
  std::sort(s.begin(), s.end());
  return s;
}
}  // namespace

// Names and shapes printed by diffusers 0.28.2 for the same constructor arguments.
TEST(UNetBlocks, AttnDownBlockStateDictMatchesDiffusers) {
  nn::DownBlock2DOptions o;
  o.type = nn::parse_down_block_type("AttnDownBlock2D");
  o.in_channels = 8;
  o.out_channels = 16;
  o.temb_channels = 32;
  o.resnet_groups = 4;
  o.attention_head_dim = 8;
  nn::UNetDownBlock2D block(o);
  const Shapes expect = {{"attentions.0.group_norm.weight", {16}},
                         {"attentions.0.group_norm.bias", {16}},
                         {"attentions.0.to_q.weight", {16, 16}},
                         {"attentions.0.to_q.bias", {16}},
                         {"attentions.0.to_k.weight", {16, 16}},
                         {"attentions.0.to_k.bias", {16}},
                         {"attentions.0.to_v.weight", {16, 16}},
                         {"attentions.0.to_v.bias", {16}},
                         {"attentions.0.to_out.0.weight", {16, 16}},
                         {"attentions.0.to_out.0.bias", {16}},
                         {"resnets.0.norm1.weight", {8}},
                         {"resnets.0.norm1.bias", {8}},
                         {"resnets.0.conv1.weight", {16, 8, 3, 3}},
                         {"resnets.0.conv1.bias", {16}},
                         {"resnets.0.time_emb_proj.weight", {16, 32}},
                         {"resnets.0.time_emb_proj.bias", {16}},
                         {"resnets.0.norm2.weight", {16}},
                         {"resnets.0.norm2.bias", {16}},
                         {"resnets.0.conv2.weight", {16, 16, 3, 3}},
                         {"resnets.0.conv2.bias", {16}},
                         {"resnets.0.conv_shortcut.weight", {16, 8, 1, 1}},
                         {"resnets.0.conv_shortcut.bias", {16}},
                         {"downsamplers.0.conv.weight", {16, 16, 3, 3}},
                         {"downsamplers.0.conv.bias", {16}}};
  EXPECT_EQ(shapes(*block), sorted(expect));

  auto out = block(torch::randn({2, 8, 8, 8}), torch::randn({2, 32}));
  EXPECT_EQ(out.hidden_states.sizes(), (std::vector<int64_t>{2, 16, 4, 4}));
  ASSERT_EQ(out.res_samples.size(), 2u);
  EXPECT_EQ(out.res_samples[0].sizes(), (std::vector<int64_t>{2, 16, 8, 8}));
  EXPECT_TRUE(out.res_samples[1].is_same(out.hidden_states));
}

TEST(UNetBlocks, ResnetUpsampleBlockStateDictMatchesDiffusers) {
  nn::UpBlock2DOptions o;
  o.type = nn::parse_up_block_type("ResnetUpsampleBlock2D");
  o.in_channels = 8;
  o.prev_output_channel = 16;
  o.out_channels = 8;
  o.temb_channels = 32;
  o.resnet_groups = 4;
  nn::UNetUpBlock2D block(o);
  const Shapes expect = {{"resnets.0.norm1.weight", {24}},
                         {"resnets.0.norm1.bias", {24}},
                         {"resnets.0.conv1.weight", {8, 24, 3, 3}},
                         {"resnets.0.conv1.bias", {8}},
                         {"resnets.0.time_emb_proj.weight", {8, 32}},
                         {"resnets.0.time_emb_proj.bias", {8}},
                         {"resnets.0.norm2.weight", {8}},
                         {"resnets.0.norm2.bias", {8}},
                         {"resnets.0.conv2.weight", {8, 8, 3, 3}},
                         {"resnets.0.conv2.bias", {8}},
                         {"resnets.0.conv_shortcut.weight", {8, 24, 1, 1}},
                         {"resnets.0.conv_shortcut.bias", {8}},
                         {"upsamplers.0.norm1.weight", {8}},
                         {"upsamplers.0.norm1.bias", {8}},
                         {"upsamplers.0.conv1.weight", {8, 8, 3, 3}},
                         {"upsamplers.0.conv1.bias", {8}},
                         {"upsamplers.0.time_emb_proj.weight", {8, 32}},
                         {"upsamplers.0.time_emb_proj.bias", {8}},
                         {"upsamplers.0.norm2.weight", {8}},
                         {"upsamplers.0.norm2.bias", {8}},
                         {"upsamplers.0.conv2.weight", {8, 8, 3, 3}},
                         {"upsamplers.0.conv2.bias", {8}}};
  EXPECT_EQ(shapes(*block), sorted(expect));
  auto y = block->forward(torch::randn({2, 16, 4, 4}), {torch::randn({2, 8, 4, 4})}, torch::randn({2, 32}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 8, 8, 8}));
  EXPECT_THROW(block->forward(torch::randn({2, 16, 4, 4}), {}, torch::randn({2, 32})), diffuse::Error);
}

TEST(UNetBlocks, ScaleShiftMidBlockStateDictMatchesDiffusers) {
  nn::MidBlock2DOptions o;
  o.in_channels = 16;
  o.temb_channels = 32;
  o.resnet_groups = 4;
  o.attention_head_dim = 8;
  o.resnet_time_scale_shift = "scale_shift";  // attention without group_norm, time_emb_proj 2x wide
  nn::UNetMidBlock2D block(o);
  Shapes expect = {{"attentions.0.to_q.weight", {16, 16}},     {"attentions.0.to_q.bias", {16}},
                   {"attentions.0.to_k.weight", {16, 16}},     {"attentions.0.to_k.bias", {16}},
                   {"attentions.0.to_v.weight", {16, 16}},     {"attentions.0.to_v.bias", {16}},
                   {"attentions.0.to_out.0.weight", {16, 16}}, {"attentions.0.to_out.0.bias", {16}}};
  for (std::string r : {"resnets.0.", "resnets.1."}) {
    Shapes res = {{r + "norm1.weight", {16}},
                  {r + "norm1.bias", {16}},
                  {r + "conv1.weight", {16, 16, 3, 3}},
                  {r + "conv1.bias", {16}},
                  {r + "time_emb_proj.weight", {32, 32}},
                  {r + "time_emb_proj.bias", {32}},
                  {r + "norm2.weight", {16}},
                  {r + "norm2.bias", {16}},
                  {r + "conv2.weight", {16, 16, 3, 3}},
                  {r + "conv2.bias", {16}}};
    expect.insert(expect.end(), res.begin(), res.end());
  }
  EXPECT_EQ(shapes(*block), sorted(expect));
  auto x = torch::randn({2, 16, 4, 4});
  EXPECT_EQ(block(x, torch::randn({2, 32})).sizes(), x.sizes());
  EXPECT_THROW(block(x), diffuse::Error);  // scale_shift needs temb
}

TEST(UNetBlocks, ResnetBlockShortcutAndNoTemb) {
  nn::ResnetBlock2DOptions same(8, 8, 16);
  same.groups = 4;
  EXPECT_FALSE(nn::ResnetBlock2D(same)->conv_shortcut);
  nn::ResnetBlock2DOptions forced = same;
  forced.use_in_shortcut = true;
  EXPECT_TRUE(nn::ResnetBlock2D(forced)->conv_shortcut);

  // No time embedding (as in VAE blocks): no time_emb_proj, forward without temb.
  nn::ResnetBlock2DOptions vae(8, 16, 0);
  vae.groups = 4;
  nn::ResnetBlock2D r(vae);
  EXPECT_FALSE(r->time_emb_proj);
  EXPECT_EQ(nn::state_dict(*r).count("time_emb_proj.weight"), 0u);
  auto x = torch::randn({1, 8, 6, 6});
  auto y = r(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{1, 16, 6, 6}));
  // Written out: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))), scale 1.
  auto h = r->conv1(torch::silu(r->norm1(x)));
  auto expect = r->conv_shortcut(x) + r->conv2(torch::silu(r->norm2(h)));
  EXPECT_LT(max_abs_diff(y, expect), 1e-6);

  nn::ResnetBlock2DOptions bad(8, 8, 16);
  bad.groups = 3;
  EXPECT_THROW(nn::ResnetBlock2D{bad}, diffuse::Error);
  bad.groups = 4;
  bad.time_embedding_norm = "ada_group";
  EXPECT_THROW(nn::ResnetBlock2D{bad}, diffuse::Error);
}

TEST(UNetBlocks, ResnetBlockTimeConditioning) {
  torch::manual_seed(3);
  nn::ResnetBlock2DOptions o(8, 8, 16);
  o.groups = 4;
  o.output_scale_factor = 2.0;
  nn::ResnetBlock2D def(o);
  o.time_embedding_norm = "scale_shift";
  nn::ResnetBlock2D ss(o);
  EXPECT_EQ(ss->time_emb_proj->weight.size(0), 16);
  auto x = torch::randn({2, 8, 4, 4}), temb = torch::randn({2, 16});
  {
    auto t = def->time_emb_proj(torch::silu(temb)).unsqueeze(-1).unsqueeze(-1);
    auto h = def->norm2(def->conv1(torch::silu(def->norm1(x))) + t);
    auto expect = (x + def->conv2(torch::silu(h))) / 2.0;
    EXPECT_LT(max_abs_diff(def(x, temb), expect), 1e-6);
  }
  {
    auto t = ss->time_emb_proj(torch::silu(temb)).unsqueeze(-1).unsqueeze(-1);
    auto scale = t.slice(1, 0, 8), shift = t.slice(1, 8, 16);
    auto h = ss->norm2(ss->conv1(torch::silu(ss->norm1(x)))) * (1 + scale) + shift;
    auto expect = (x + ss->conv2(torch::silu(h))) / 2.0;
    EXPECT_LT(max_abs_diff(ss(x, temb), expect), 1e-6);
  }
}

TEST(UNetBlocks, Resampling) {
  auto x = torch::randn({2, 4, 6, 6});
  nn::Downsample2D conv(4, true, 8, 1);
  EXPECT_EQ(conv(x).sizes(), (std::vector<int64_t>{2, 8, 3, 3}));
  nn::Downsample2D conv_pad0(4, true, 4, 0);  // pads right/bottom by one, as diffusers
  EXPECT_EQ(conv_pad0(x).sizes(), (std::vector<int64_t>{2, 4, 3, 3}));
  nn::Downsample2D pool(4, false);
  EXPECT_FALSE(pool->conv);
  EXPECT_TRUE(nn::state_dict(*pool).empty());
  auto p = pool(x);
  EXPECT_NEAR(p[1][2][0][0].item<float>(), x[1][2].slice(0, 0, 2).slice(1, 0, 2).mean().item<float>(), 1e-6);

  nn::Upsample2D up(4, false);
  auto u = up(x);
  EXPECT_EQ(u.sizes(), (std::vector<int64_t>{2, 4, 12, 12}));
  EXPECT_TRUE(torch::equal(u.slice(2, 0, 12, 2).slice(3, 0, 12, 2), x));
  EXPECT_TRUE(torch::equal(u.slice(2, 1, 12, 2).slice(3, 1, 12, 2), x));
  EXPECT_EQ(up->forward(x, {13, 11}).sizes(), (std::vector<int64_t>{2, 4, 13, 11}));
  nn::Upsample2D up_conv(4, true);
  EXPECT_EQ(nn::state_dict(*up_conv).count("conv.weight"), 1u);
  auto ub = nn::upsample_nearest_2x(x.to(torch::kBFloat16));
  EXPECT_EQ(ub.scalar_type(), torch::kBFloat16);

  EXPECT_THROW(nn::parse_down_block_type("CrossAttnDownBlock2D"), diffuse::Error);
  EXPECT_EQ(nn::parse_down_block_type("UNetResDownBlock2D"), nn::DownBlockType::DownBlock2D);
  EXPECT_THROW(nn::parse_up_block_type("SkipUpBlock2D"), diffuse::Error);
}
