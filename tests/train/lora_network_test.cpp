// LoRA adapters for training: an untrained network changes nothing, a network's forward equals
// the loader's merge of its kohya file (pipelines/lora.h), the kohya names it gives the full
// SD1.5 UNet and text encoder all name layers of tests/fixtures/sd15_keys.tsv, and a rank larger
// than a layer's width is refused.
#include "train/lora_network.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "pipelines/ldm_convert.h"
#include "pipelines/lora.h"
#include "pipelines/sd_pipeline.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

struct UnetInput {
  torch::Tensor x, t, ehs;
};

UnetInput lora_unet_input() {
  torch::manual_seed(3);
  return {torch::randn({2, 4, 8, 8}), torch::tensor({999.0f, 37.5f}), torch::randn({2, 7, 32})};
}

torch::Tensor unet_out(SDPipeline& p, const UnetInput& in) {
  torch::NoGradGuard ng;
  return p.unet->forward(in.x, in.t, in.ehs);
}

// Random up matrices, so that the adapters change the output.
void randomize_up(LoraNetwork& net, uint64_t seed) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& p : net->parameters())
    if (p.dim() >= 2 && p.size(1) <= 8) p.copy_(torch::randn(p.sizes(), gen) * 0.2);  // up: [out, rank(, 1, 1)]
}

TEST(LoraNetwork, UntrainedChangesNothingAndTheFileMergesToTheAdapterForward) {
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::tiny_sd_folder(dir / "pipe"));
  const auto in = lora_unet_input();
  const auto base = unet_out(pipe, in);
  const auto ids = torch::tensor({{998, 40, 41, 42, 999, 999}}, torch::kInt64);
  torch::Tensor text_base;
  {
    torch::NoGradGuard ng;
    text_base = pipe.text->model->forward(ids).last_hidden_state;
  }
  LoraNetworkOptions o;
  o.rank = 4;
  o.alpha = 2;
  o.unet_layers = "transformer";
  o.conv = true;
  o.conv_rank = 2;
  o.text_encoder = true;
  LoraNetwork net(*pipe.unet, pipe.text->model.ptr().get(), o, 1);
  int unet_layers = 0, text_layers = 0;
  for (const auto& t : net->targets()) ++(t.text ? text_layers : unet_layers);
  // Tiny UNet: 2 transformer blocks x (8 attention + 2 ff) + 2 x (proj_in, proj_out); resnets and samplers.
  EXPECT_EQ(text_layers, 2 * 6);
  EXPECT_GT(unet_layers, 24);
  {
    torch::NoGradGuard ng;
    net->attach();
  }
  EXPECT_TRUE(torch::equal(unet_out(pipe, in), base));  // up = 0
  randomize_up(net, 5);
  torch::Tensor adapted, text_adapted;
  {
    torch::NoGradGuard ng;
    net->attach(0.8);
    adapted = unet_out(pipe, in);
    text_adapted = pipe.text->model->forward(ids).last_hidden_state;
    net->detach();
  }
  EXPECT_TRUE(torch::equal(unet_out(pipe, in), base));  // detached
  EXPECT_GT(test::max_abs_diff(adapted, base), 1e-2);
  EXPECT_GT(test::max_abs_diff(text_adapted, text_base), 1e-2);
  // The kohya file, merged by the loader into a fresh pipeline at weight 0.8, gives the same outputs.
  safetensors::save(dir / "l.safetensors", net->kohya_state_dict(torch::kFloat32));
  auto fresh = SDPipeline::load(dir / "pipe");
  auto rep = apply_lora_file(fresh, parse_lora_arg(dir / "l.safetensors:0.8"));
  EXPECT_EQ(rep.unet_layers, unet_layers);
  EXPECT_EQ(rep.text_layers, text_layers);
  EXPECT_LT(test::max_abs_diff(unet_out(fresh, in), adapted), 1e-5);
  torch::NoGradGuard ng;
  EXPECT_LT(test::max_abs_diff(fresh.text->model->forward(ids).last_hidden_state, text_adapted), 1e-5);
  // Saved in 16 bits, alpha included, and loaded back into a network.
  auto half = net->kohya_state_dict(torch::kFloat16);
  const auto& first = net->targets().front();
  EXPECT_EQ(half.at(first.key + ".alpha").scalar_type(), torch::kFloat16);
  EXPECT_EQ(half.at(first.key + ".alpha").item<double>(), first.alpha);
  LoraNetwork again(*pipe.unet, pipe.text->model.ptr().get(), o, 2);
  again->load_kohya_state_dict(net->kohya_state_dict(), "l.safetensors");
  auto a = again->kohya_state_dict(), b = net->kohya_state_dict();
  for (const auto& [k, v] : b) EXPECT_TRUE(torch::equal(a.at(k), v)) << k;
  o.rank = 8;
  LoraNetwork other(*pipe.unet, nullptr, o, 2);
  EXPECT_NE(test::error_of([&] { other->load_kohya_state_dict(b, "l.safetensors"); }).find("another rank"),
            std::string::npos);
}

TEST(LoraNetwork, RankLargerThanALayerIsRefused) {
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::tiny_sd_folder(dir / "pipe"));
  LoraNetworkOptions o;
  o.rank = 33;  // the tiny UNet's attention is 32 wide
  const auto e = test::error_of([&] { LoraNetwork(*pipe.unet, nullptr, o, 0); });
  EXPECT_NE(e.find("rank 33: larger than the width of layer down_blocks.0.attentions.0.transformer_blocks.0.attn1"),
            std::string::npos)
      << e;
  o.rank = 4;
  o.conv = true;
  o.conv_rank = 1000;
  EXPECT_NE(test::error_of([&] { LoraNetwork(*pipe.unet, nullptr, o, 0); }).find("conv_rank 1000"), std::string::npos);
  o.conv_rank = 0;
  o.unet_layers = "everything";
  EXPECT_NE(test::error_of([&] { LoraNetwork(*pipe.unet, nullptr, o, 0); }).find("unet_layers 'everything'"),
            std::string::npos);
}

// name -> shape of every row of sd15_keys.tsv (tensors never allocated).
std::map<std::string, std::vector<int64_t>> sd15_shapes() {
  std::ifstream f(test::fixture("sd15_keys.tsv"));
  std::map<std::string, std::vector<int64_t>> out;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream row(line);
    std::string name, shape;
    std::getline(row, name, '\t');
    std::getline(row, shape, '\t');
    std::vector<int64_t> dims;
    std::istringstream s(shape.substr(1, shape.size() - 2));
    for (std::string d; std::getline(s, d, ',');) dims.push_back(std::stoll(d));
    out[name] = dims;
  }
  return out;
}

TEST(LoraNetwork, KohyaNamesForTheFullSd15ModelAllExistInItsKeyMapping) {
  const auto shapes = sd15_shapes();
  TensorMap meta;  // uninitialised tensors, never touched (so nearly free)
  for (const auto& [n, s] : shapes) meta[n] = torch::empty(s, torch::kFloat16);
  const auto ck = convert_ldm(meta, "sd15_keys.tsv");
  std::vector<std::pair<std::string, std::vector<int64_t>>> unet, text;
  std::vector<std::string> unet_names, text_names;
  for (const auto& [n, v] : ck.unet) {
    unet.emplace_back(n, v.sizes().vec());
    unet_names.push_back(n);
  }
  for (const auto& [n, v] : ck.text) {
    text.emplace_back(n, v.sizes().vec());
    text_names.push_back(n);
  }
  const auto table = lora_key_table(ck.unet_config, unet_names, ck.vae_config, text_names);
  // The diffusers UNet weight -> its LDM name (the converter's table, as the loader uses it).
  std::map<std::string, std::string> ldm_of;
  {
    TensorMap markers;
    for (size_t i = 0; i < unet_names.size(); ++i)
      markers[unet_names[i]] = torch::full({1}, static_cast<double>(i), torch::kFloat64);
    for (const auto& [ldm, v] : to_ldm(ck.unet_config, markers, ck.vae_config, {}, {}))
      ldm_of[unet_names[static_cast<size_t>(v.item<double>())]] = ldm;
  }
  auto check = [&](const LoraNetworkOptions& o, int want_unet, int want_text) {
    int nu = 0, nt = 0;
    std::set<std::string> keys;
    for (const auto& t : lora_targets_for(unet, text, o)) {
      EXPECT_TRUE(keys.insert(t.key).second) << "duplicate " << t.key;
      ++(t.text ? nt : nu);
      auto it = table.find(t.key);
      ASSERT_NE(it, table.end()) << t.key << " is not a key the LoRA loader knows";
      EXPECT_EQ(it->second.weight, t.weight);
      EXPECT_EQ(it->second.text, t.text);
      const std::string ldm =
          t.text ? "cond_stage_model.transformer." + t.weight : (ldm_of.count(t.weight) ? ldm_of.at(t.weight) : "");
      EXPECT_TRUE(shapes.count(ldm)) << t.key << " -> " << t.weight << " -> '" << ldm << "' not in sd15_keys.tsv";
      if (shapes.count(ldm)) {
        EXPECT_EQ(shapes.at(ldm), t.shape) << ldm;
      }
    }
    EXPECT_EQ(nu, want_unet);
    EXPECT_EQ(nt, want_text);
  };
  LoraNetworkOptions o;
  o.rank = 16;
  check(o, 128, 0);  // 16 transformer blocks x (attn1, attn2) x (to_q, to_k, to_v, to_out.0)
  o.unet_layers = "transformer";
  o.text_encoder = true;
  check(o, 192, 72);  // kohya's SD1.5 counts: + proj_in/out and ff; 12 CLIP layers x 6
  o.conv = true;
  // LoCon: + 22 resnets x (conv1, conv2, time_emb_proj), 14 conv_shortcuts, 3 downsamplers and 3
  // upsamplers: 278, kohya's count with conv_dim
  check(o, 192 + 22 * 3 + 14 + 6, 72);
  o.rank = 321;  // wider than the 320-wide first level
  EXPECT_NE(test::error_of([&] { lora_targets_for(unet, text, o); }).find("rank 321: larger than the width"),
            std::string::npos);
}

}  // namespace
}  // namespace diffuse
