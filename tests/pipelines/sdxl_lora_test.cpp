// LoRA on SDXL (the tiny SDXL fixture pipeline, LoRA files written here): kohya's SGM-named UNet
// keys and lora_te1_ / lora_te2_ for the two text encoders, diffusers' text_encoder_2 keys, and an
// SD 1.x LoRA refused with its unmatched keys listed.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "pipelines/lora.h"
#include "pipelines/sd_pipeline.h"
#include "pipelines/textual_inversion.h"
#include "sdxl_tiny.h"

namespace diffuse {
namespace {

torch::Tensor xl_param(const torch::nn::Module& m, const std::string& name) {
  return m.named_parameters().find(name)->clone();
}

torch::Tensor xl_merged(const torch::Tensor& w, const torch::Tensor& up, const torch::Tensor& down, double factor) {
  const int64_t r = down.size(0);
  return w + (torch::mm(up.reshape({up.size(0), r}), down.reshape({r, -1})) * factor).reshape(w.sizes());
}

TEST(SdxlLora, KohyaKeysOfTheUNetAndBothTextEncodersMerge) {
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::fixture("sdxl_pipeline_tiny"));
  torch::manual_seed(0);
  const int64_t r = 2;
  std::map<std::string, torch::Tensor> lora;
  auto add = [&](const std::string& base, int64_t out, int64_t in, double alpha) {
    auto down = torch::randn({r, in}) * 0.1, up = torch::randn({out, r}) * 0.1;
    lora[base + ".lora_down.weight"] = down;
    lora[base + ".lora_up.weight"] = up;
    lora[base + ".alpha"] = torch::tensor(alpha);
    return std::pair{down, up};
  };
  // input_blocks.4.1 = down_blocks.1.attentions.0 (level 0 has no attention, input_blocks.3 downsamples)
  auto [qd, qu] = add("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_k", 64, 64, 1.0);
  auto [od, ou] = add("lora_unet_output_blocks_2_1_proj_out", 64, 64, 2.0);  // up_blocks.0.attentions.2
  auto [t1d, t1u] = add("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", 32, 32, 4.0);
  auto [t2d, t2u] = add("lora_te2_text_model_encoder_layers_1_mlp_fc1", 37, 32, 2.0);
  safetensors::save(dir / "xl.safetensors", lora);

  const std::string k = "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight";
  const std::string o = "up_blocks.0.attentions.2.proj_out.weight";
  const std::string q1 = "text_model.encoder.layers.0.self_attn.q_proj.weight";
  const std::string f2 = "text_model.encoder.layers.1.mlp.fc1.weight";
  auto k0 = xl_param(*pipe.unet, k), o0 = xl_param(*pipe.unet, o);
  auto a0 = xl_param(*pipe.text->model, q1), b0 = xl_param(*pipe.text_2->model, f2);
  auto untouched = xl_param(*pipe.text_2->model, q1);
  auto rep = apply_lora_file(pipe, {dir / "xl.safetensors", 0.5});
  EXPECT_EQ(rep.unet_layers, 2);
  EXPECT_EQ(rep.text_layers, 2);
  EXPECT_TRUE(torch::allclose(xl_param(*pipe.unet, k), xl_merged(k0, qu, qd, 0.5 * 1.0 / 2)));
  EXPECT_TRUE(torch::allclose(xl_param(*pipe.unet, o), xl_merged(o0, ou, od, 0.5 * 2.0 / 2)));
  EXPECT_TRUE(torch::allclose(xl_param(*pipe.text->model, q1), xl_merged(a0, t1u, t1d, 0.5 * 4.0 / 2)));
  EXPECT_TRUE(torch::allclose(xl_param(*pipe.text_2->model, f2), xl_merged(b0, t2u, t2d, 0.5 * 2.0 / 2)));
  EXPECT_TRUE(torch::equal(xl_param(*pipe.text_2->model, q1), untouched));  // te1 went to the first encoder only

  // diffusers' names for the second encoder
  std::map<std::string, torch::Tensor> peft;
  auto d = torch::randn({1, 32}) * 0.1, u = torch::randn({32, 1}) * 0.1;
  peft["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = d;
  peft["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = u;
  apply_lora(pipe, peft, 1.0, "peft");
  EXPECT_TRUE(torch::allclose(xl_param(*pipe.text_2->model, q1), xl_merged(untouched, u, d, 1.0)));
}

// SDXL textual inversion: clip_l rows for the first encoder, clip_g rows for the second, one
// trigger in both tokenizers; the prompt's trigger encodes to exactly those rows.
TEST(SdxlLora, TextualInversionFillsBothEncoders) {
  torch::NoGradGuard ng;
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::tiny_sdxl_folder(dir / "xl"));
  torch::manual_seed(3);
  auto l = torch::randn({2, 32}), g = torch::randn({2, 32});
  safetensors::save(dir / "shiny.safetensors", {{"clip_l", l}, {"clip_g", g}});
  EXPECT_EQ(load_embedding(pipe, dir / "shiny.safetensors"), "shiny");
  for (auto* te : {pipe.text.get(), pipe.text_2.get()}) {
    auto ids = te->tokenizer.encode("shiny");
    ASSERT_EQ(ids.size(), 2u);
    auto rows = te->model->token_embedding->weight.index({torch::tensor(ids)});
    EXPECT_TRUE(torch::equal(rows, te == pipe.text.get() ? l : g));
  }
  // the embedding changes the prompt's encoding in both halves
  auto with = encode_prompt(pipe, "a shiny cube"), without = encode_prompt(pipe, "a cube");
  EXPECT_GT(
      test::max_abs_diff(with.embeds.slice(2, 0, 32).slice(1, 0, 3), without.embeds.slice(2, 0, 32).slice(1, 0, 3)),
      1e-3);
  // an SD 1.x embedding, or a second file with the same trigger, is refused by name
  safetensors::save(dir / "sd1.safetensors", {{"emb_params", torch::randn({1, 32})}});
  auto e = test::error_of([&] { load_embedding(pipe, dir / "sd1.safetensors"); });
  EXPECT_NE(e.find("clip_l"), std::string::npos) << e;
  e = test::error_of([&] { load_embedding(pipe, dir / "shiny.safetensors"); });
  EXPECT_NE(e.find("already"), std::string::npos) << e;
  // the folder form loads the files a prompt names
  std::filesystem::create_directories(dir / "emb");
  safetensors::save(dir / "emb/glow.safetensors", {{"clip_l", l.slice(0, 0, 1)}, {"clip_g", g.slice(0, 0, 1)}});
  safetensors::save(dir / "emb/unused.safetensors", {{"clip_l", l}, {"clip_g", g}});
  auto loaded = load_embeddings_for(pipe, dir / "emb", {"a glow", ""});
  EXPECT_EQ(loaded, std::vector<std::string>{"glow"});
  EXPECT_EQ(pipe.text->tokenizer.encode("glow").size(), 1u);
  EXPECT_EQ(pipe.text_2->tokenizer.token_id("unused"), -1);
}

// A LoRA made for SD 1.x: lora_te_ (one text encoder) and SD1's UNet layout match nothing here.
TEST(SdxlLora, Sd1LoraIsRefusedWithItsUnmatchedKeys) {
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::fixture("sdxl_pipeline_tiny"));
  std::map<std::string, torch::Tensor> lora;
  lora["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch::ones({1, 32});
  lora["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch::ones({32, 1});
  lora["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = torch::ones({1, 32});
  lora["lora_unet_input_blocks_1_1_proj_in.lora_up.weight"] = torch::ones({32, 1});
  const std::string path = dir / "sd15_style.safetensors";
  safetensors::save(path, lora);
  auto w0 = xl_param(*pipe.text->model, "text_model.encoder.layers.0.self_attn.q_proj.weight");
  const auto msg = test::error_of([&] { apply_lora_file(pipe, {path, 1.0}); });
  EXPECT_NE(msg.find("2 LoRA keys match no layer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lora_te_text_model_encoder_layers_0_self_attn_q_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lora_unet_input_blocks_1_1_proj_in"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(xl_param(*pipe.text->model, "text_model.encoder.layers.0.self_attn.q_proj.weight"), w0));
}

}  // namespace
}  // namespace diffuse
