#include "models/clip_text.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "models/clip_tokenizer.h"
#include "models/error_of.h"
#include "nn/state_dict.h"

using namespace diffuse;
using diffuse::test::error_of;
using diffuse::test::fixture;
using diffuse::test::max_abs_diff;
using diffuse::test::TempDir;

namespace fs = std::filesystem;

namespace {

void check_parity(const std::string& name, const std::string& act) {
  torch::NoGradGuard ng;
  auto model = load_clip_text_model(fixture(name));
  EXPECT_EQ(model->config().hidden_act, act);
  EXPECT_EQ(model->config().eos_token_id, 2);
  auto io = safetensors::load(fixture(name + "/io.safetensors"));
  auto out = model->forward(io.at("input_ids"), true);
  const double d_last = max_abs_diff(out.last_hidden_state, io.at("last_hidden_state"));
  const double d_pool = max_abs_diff(out.pooler_output, io.at("pooler_output"));
  std::printf("%s: last_hidden_state %.3g, pooler_output %.3g", name.c_str(), d_last, d_pool);
  EXPECT_LT(d_last, test::kParityTol);
  EXPECT_LT(d_pool, test::kParityTol);
  ASSERT_EQ(out.hidden_states.size(), 3u);
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    const double d = max_abs_diff(out.hidden_states[i], io.at("hidden_states." + std::to_string(i)));
    std::printf(", hidden_states.%zu %.3g", i, d);
    EXPECT_LT(d, test::kParityTol) << "hidden_states." << i;
  }
  std::printf("\n");
  // Clip-skip as SD 2.x uses it: final_layer_norm of the penultimate hidden state.
  auto skip = model->final_norm(out.hidden_states[1]);
  auto ref = model->final_norm(io.at("hidden_states.1"));
  EXPECT_LT(max_abs_diff(skip, ref), test::kParityTol);
  // Without hidden states: same outputs, empty list.
  auto plain = model->forward(io.at("input_ids"));
  EXPECT_TRUE(plain.hidden_states.empty());
  EXPECT_LT(max_abs_diff(plain.last_hidden_state, io.at("last_hidden_state")), test::kParityTol);
}

}  // namespace

TEST(ClipText, ParityQuickGelu) { check_parity("clip_text_tiny_quickgelu", "quick_gelu"); }
TEST(ClipText, ParityGelu) { check_parity("clip_text_tiny_gelu", "gelu"); }

// transformers CLIPTextModelWithProjection (SDXL's text_encoder_2): every output of the fixture,
// the hooks of its sub-modules, and SDXL's use of it (hidden_states[-2] without final_layer_norm).
TEST(ClipText, WithProjectionMatchesTransformers) {
  torch::NoGradGuard ng;
  const std::string name = "clip_text_proj_tiny";
  auto model = load_clip_text_model(fixture(name));
  const auto& c = model->config();
  EXPECT_TRUE(c.with_projection);
  EXPECT_EQ(c.projection_dim, 32);
  EXPECT_EQ(c.hidden_act, "gelu");
  EXPECT_EQ(c.eos_token_id, 2);
  ASSERT_TRUE(model->text_projection);
  EXPECT_FALSE(model->text_projection->options.bias());
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  EXPECT_EQ(params, 49130);
  auto io = safetensors::load(fixture(name + "/io.safetensors"));
  const auto& ids = io.at("input_ids");
  // row 0 pads with 0 ('!'), row 1 with EOS: argmax finds the first EOS in both
  auto pos = model->eos_positions(ids);
  EXPECT_EQ(pos[0].item<int64_t>(), 8);
  EXPECT_EQ(pos[1].item<int64_t>(), 4);
  auto out = model->forward(ids, true);
  std::map<std::string, torch::Tensor> got{{"text_embeds", out.text_embeds},
                                           {"last_hidden_state", out.last_hidden_state},
                                           {"inter.text_projection", out.text_embeds},
                                           {"inter.text_model.final_layer_norm", out.last_hidden_state}};
  ASSERT_EQ(out.hidden_states.size(), 3u);
  for (size_t i = 0; i < out.hidden_states.size(); ++i)
    got["hidden_states." + std::to_string(i)] = out.hidden_states[i];
  got["inter.text_model.embeddings"] = out.hidden_states[0];
  got["inter.text_model.encoder.layers.0"] = out.hidden_states[1];
  got["inter.text_model.encoder.layers.1"] = out.hidden_states[2];
  size_t compared = 0;
  for (const auto& [k, ref] : io) {
    if (k == "input_ids") continue;
    ASSERT_TRUE(got.count(k)) << "no output for fixture tensor " << k;
    const double d = max_abs_diff(got.at(k), ref);
    std::printf("%s %s %.3g\n", name.c_str(), k.c_str(), d);
    EXPECT_LT(d, test::kParityTol) << k;
    ++compared;
  }
  EXPECT_EQ(compared, io.size() - 1);
  // Layer by layer from the reference inputs, so an error cannot hide behind another.
  auto mask = torch::zeros({1, 1, 77, 77}).masked_fill(torch::ones({77, 77}, torch::kBool).triu(1), -3.4e38);
  auto l1 = model->layer_list[1]->forward(io.at("hidden_states.1"), mask);
  EXPECT_LT(max_abs_diff(l1, io.at("hidden_states.2")), test::kParityTol);
  auto pooled = io.at("last_hidden_state").index({torch::arange(2), pos});
  EXPECT_LT(max_abs_diff(model->text_projection->forward(pooled), io.at("text_embeds")), test::kParityTol);
  // The config round-trips with its architecture.
  EXPECT_EQ(CLIPTextConfig::from_json(c.to_json()).to_json(), c.to_json());
  EXPECT_EQ(c.to_json().at("architectures")[0], "CLIPTextModelWithProjection");
  // A plain CLIPTextModel has neither text_projection nor text_embeds.
  auto plain = load_clip_text_model(fixture("clip_text_tiny_gelu"));
  EXPECT_FALSE(plain->text_projection);
  EXPECT_FALSE(plain->forward(ids).text_embeds.defined());
  // A CLIPTextModelWithProjection state dict without text_projection.weight is refused by name.
  auto sd = safetensors::load(fixture(name + "/model.safetensors"));
  ASSERT_TRUE(sd.count("text_projection.weight"));
  sd.erase("text_projection.weight");
  EXPECT_NE(error_of([&] { clip_text_model_from_state_dict(c, sd, "mem"); }).find("text_projection.weight"),
            std::string::npos);
}

TEST(ClipText, PoolingByEosIdWhenNotLegacy) {
  torch::NoGradGuard ng;
  auto legacy = load_clip_text_model(fixture("clip_text_tiny_quickgelu"));
  auto io = safetensors::load(fixture("clip_text_tiny_quickgelu/io.safetensors"));
  auto ids = io.at("input_ids");
  // eos_token_id == 2: argmax of the ids (999 = first EOS in both rows).
  auto pos = legacy->eos_positions(ids);
  EXPECT_EQ(pos[0].item<int64_t>(), 5);
  EXPECT_EQ(pos[1].item<int64_t>(), 8);
  // Another eos id: its first occurrence.
  auto cfg = legacy->config();
  cfg.eos_token_id = 17;
  auto sd = nn::state_dict(*legacy);
  auto m = clip_text_model_from_state_dict(cfg, std::map<std::string, torch::Tensor>(sd.begin(), sd.end()), "mem");
  auto p2 = m->eos_positions(ids);
  EXPECT_EQ(p2[0].item<int64_t>(), 1);
  EXPECT_EQ(p2[1].item<int64_t>(), 0);  // no 17 in row 1: argmax of all-false is 0, as in transformers
}

TEST(ClipText, HalfPrecisionLoads) {
  torch::NoGradGuard ng;
  auto m = load_clip_text_model(fixture("clip_text_tiny_gelu"), torch::kBFloat16);
  EXPECT_EQ(m->dtype(), torch::kBFloat16);
  auto io = safetensors::load(fixture("clip_text_tiny_gelu/io.safetensors"));
  auto out = m->forward(io.at("input_ids"));
  EXPECT_LT(max_abs_diff(out.last_hidden_state.to(torch::kFloat), io.at("last_hidden_state")), 0.25);
}

TEST(ClipText, ConfigRoundTripAndErrors) {
  std::ifstream f(fixture("clip_text_tiny_quickgelu/config.json"));
  const auto j = nlohmann::json::parse(f);
  const auto c = CLIPTextConfig::from_json(j);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 37);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.vocab_size, 1000);
  const auto c2 = CLIPTextConfig::from_json(c.to_json());
  EXPECT_EQ(c2.to_json(), c.to_json());

  auto bad = j;
  bad["hidden_act"] = "swish";
  EXPECT_NE(error_of([&] { CLIPTextConfig::from_json(bad).validate(); }).find("hidden_act"), std::string::npos);
  bad = j;
  bad["num_attention_heads"] = 5;
  EXPECT_NE(error_of([&] { CLIPTextConfig::from_json(bad).validate(); }).find("divisible"), std::string::npos);
  bad = j;
  bad["architectures"] = {"BertModel"};
  EXPECT_NE(error_of([&] { CLIPTextConfig::from_json(bad); }).find("BertModel"), std::string::npos);
  bad = j;
  bad["hidden_size"] = "big";
  EXPECT_NE(error_of([&] { CLIPTextConfig::from_json(bad); }).find("hidden_size"), std::string::npos);
}

TEST(ClipText, BadInput) {
  TempDir tmp;
  EXPECT_NE(error_of([&] { load_clip_text_model(tmp / "missing"); }).find("missing"), std::string::npos);
  fs::create_directories(tmp / "noweights");
  fs::copy_file(fixture("clip_text_tiny_gelu/config.json"), tmp / "noweights/config.json");
  const auto e = error_of([&] { load_clip_text_model(tmp / "noweights"); });
  EXPECT_NE(e.find("model.safetensors"), std::string::npos) << e;

  // A state dict missing a layer: strict loading names the key.
  auto sd = safetensors::load(fixture("clip_text_tiny_gelu/model.safetensors"));
  sd.erase("text_model.encoder.layers.1.mlp.fc2.bias");
  fs::create_directories(tmp / "partial");
  fs::copy_file(fixture("clip_text_tiny_gelu/config.json"), tmp / "partial/config.json");
  safetensors::save(tmp / "partial/model.safetensors", sd, {{"format", "pt"}});
  const auto e2 = error_of([&] { load_clip_text_model(tmp / "partial"); });
  EXPECT_NE(e2.find("layers.1.mlp.fc2.bias"), std::string::npos) << e2;

  torch::NoGradGuard ng;
  auto m = load_clip_text_model(fixture("clip_text_tiny_gelu"));
  EXPECT_NE(error_of([&] {
              m->forward(torch::full({1, 4}, 1000, torch::kLong));
            }).find("vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              m->forward(torch::zeros({1, 78}, torch::kLong));
            }).find("max_position_embeddings"),
            std::string::npos);
  EXPECT_NE(error_of([&] { m->forward(torch::zeros({4}, torch::kLong)); }).find("input_ids"), std::string::npos);
}

TEST(ClipText, KeptTokenEmbeddingsEncodeAsBefore) {
  torch::NoGradGuard ng;
  CLIPTextConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.pad_token_id = 49407;
  torch::manual_seed(0);
  CLIPTextModel full(c);
  full->eval();
  auto sd = nn::state_dict(*full);
  auto small = clip_text_model_from_state_dict(c, std::map<std::string, torch::Tensor>(sd.begin(), sd.end()), "mem");
  const auto tok = CLIPTokenizer::builtin();
  const std::vector<std::string> texts = {"a red square", "a small blue circle", ""};
  std::vector<int64_t> old_ids;
  const auto reduced = tok.reduced(texts, &old_ids);
  small->keep_token_embeddings(old_ids);
  EXPECT_EQ(small->config().vocab_size, reduced.vocab_size());
  EXPECT_EQ(small->config().eos_token_id, reduced.eos_id());
  EXPECT_EQ(small->config().bos_token_id, reduced.bos_id());
  EXPECT_EQ(small->config().pad_token_id, reduced.pad_id());
  EXPECT_EQ(small->token_embedding->weight.size(0), reduced.vocab_size());
  for (const auto& text : texts) {
    const auto a = full->forward(torch::tensor(tok.tokenize(text)).unsqueeze(0));
    const auto b = small->forward(torch::tensor(reduced.tokenize(text)).unsqueeze(0));
    EXPECT_TRUE(torch::equal(a.last_hidden_state, b.last_hidden_state)) << text;
    EXPECT_TRUE(torch::equal(a.pooler_output, b.pooler_output)) << text;
  }
  EXPECT_NE(error_of([&] {
              small->keep_token_embeddings({0, 1, 99999});
            }).find("outside the vocabulary"),
            std::string::npos);
  EXPECT_NE(error_of([&] { small->keep_token_embeddings({0, 1}); }).find("drops the bos token"), std::string::npos);
}
