// LoRA merging (kohya / A1111 and diffusers / PEFT keys, LDM-named kohya keys, conv 3x3) and
// textual-inversion embeddings on the tiny fixture pipeline, with LoRA files written here.
#include "pipelines/lora.h"

#include <gtest/gtest.h>

#include <tuple>

#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "nn/int8_weights.h"
#include "pipelines/prompt_weights.h"
#include "pipelines/sd_pipeline.h"
#include "pipelines/textual_inversion.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

using TensorMap = std::map<std::string, torch::Tensor>;

SDPipeline tiny_pipe(const test::TempDir& dir) { return SDPipeline::load(test::tiny_sd_folder(dir / "pipe")); }

torch::Tensor param(const torch::nn::Module& m, const std::string& name) {
  return m.named_parameters().find(name)->clone();
}
torch::Tensor unet_w(const SDPipeline& p, const std::string& n) { return param(*p.unet, n); }
torch::Tensor text_w(const SDPipeline& p, const std::string& n) { return param(*p.text->model, n); }

// W + weight * scale * up @ down, as the merge computes it.
torch::Tensor merged(const torch::Tensor& w, const torch::Tensor& up, const torch::Tensor& down, double factor) {
  const int64_t r = down.size(0);
  return w + (torch::mm(up.reshape({up.size(0), r}), down.reshape({r, -1})) * factor).reshape(w.sizes());
}

const char* kQ = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
const char* kConv = "down_blocks.0.resnets.0.conv1.weight";
const char* kProjIn = "down_blocks.0.attentions.0.proj_in.weight";
const char* kTeQ = "text_model.encoder.layers.0.self_attn.q_proj.weight";

TEST(Lora, KohyaKeysMergeExactly) {
  test::TempDir dir;
  auto pipe = tiny_pipe(dir);
  torch::manual_seed(0);
  const int64_t r = 4;
  TensorMap lora;
  auto q_down = torch::randn({r, 32}) * 0.1, q_up = torch::randn({32, r}) * 0.1;
  auto c_down = torch::randn({r, 32, 3, 3}) * 0.1, c_up = torch::randn({32, r, 1, 1}) * 0.1;
  auto p_down = torch::randn({r, 32, 1, 1}) * 0.1, p_up = torch::randn({32, r, 1, 1}) * 0.1;
  auto t_down = torch::randn({r, 32}) * 0.1, t_up = torch::randn({32, r}) * 0.1;
  auto add = [&](const std::string& base, const torch::Tensor& down, const torch::Tensor& up, double alpha) {
    lora[base + ".lora_down.weight"] = down;
    lora[base + ".lora_up.weight"] = up;
    lora[base + ".alpha"] = torch::tensor(alpha);
  };
  add("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", q_down, q_up, 2.0);
  add("lora_unet_down_blocks_0_resnets_0_conv1", c_down, c_up, 1.0);
  add("lora_unet_input_blocks_1_1_proj_in", p_down, p_up, 4.0);  // LDM name of down_blocks.0.attentions.0.proj_in
  add("lora_te_text_model_encoder_layers_0_self_attn_q_proj", t_down, t_up, 8.0);
  safetensors::save(dir / "k.safetensors", lora);

  auto q0 = unet_w(pipe, kQ), c0 = unet_w(pipe, kConv), p0 = unet_w(pipe, kProjIn), t0 = text_w(pipe, kTeQ);
  auto k0 = unet_w(pipe, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight");
  auto rep = apply_lora_file(pipe, parse_lora_arg(dir / "k.safetensors:0.7"));
  EXPECT_EQ(rep.unet_layers, 3);
  EXPECT_EQ(rep.text_layers, 1);
  EXPECT_TRUE(torch::equal(unet_w(pipe, kQ), merged(q0, q_up, q_down, 0.7 * 2.0 / 4)));
  EXPECT_TRUE(torch::equal(unet_w(pipe, kConv), merged(c0, c_up, c_down, 0.7 * 1.0 / 4)));
  EXPECT_TRUE(torch::equal(unet_w(pipe, kProjIn), merged(p0, p_up, p_down, 0.7 * 4.0 / 4)));
  EXPECT_TRUE(torch::equal(text_w(pipe, kTeQ), merged(t0, t_up, t_down, 0.7 * 8.0 / 4)));
  EXPECT_TRUE(torch::equal(unet_w(pipe, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight"), k0));
}

// int8 weights: the LoRA is merged into the dequantised weights, which are quantised again.
TEST(Lora, MergesIntoInt8WeightsByRequantising) {
  test::TempDir dir;
  const std::string folder = test::tiny_sd_folder(dir / "pipe");
  auto pipe = SDPipeline::load(folder, torch::kCPU, torch::kFloat32, true, true);
  auto wide = SDPipeline::load(folder);
  torch::manual_seed(4);
  const int64_t r = 4;
  TensorMap lora;
  auto q_down = torch::randn({r, 32}) * 0.1, q_up = torch::randn({32, r}) * 0.1;
  auto t_down = torch::randn({r, 32}) * 0.1, t_up = torch::randn({32, r}) * 0.1;
  lora["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = q_down;
  lora["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"] = q_up;
  lora["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = t_down;
  lora["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = t_up;
  safetensors::save(dir / "k.safetensors", lora);
  auto dequantised = [](const torch::nn::Module& m, const std::string& name) {
    const auto q = m.named_parameters().find(name)->clone();
    EXPECT_EQ(q.scalar_type(), torch::kInt8) << name;
    return nn::dequantize_int8(q, *m.named_buffers().find(name + "_scale"));
  };
  const auto q0 = dequantised(*pipe.unet, kQ), t0 = dequantised(*pipe.text->model, kTeQ);
  const auto rep = apply_lora_file(pipe, parse_lora_arg(dir / "k.safetensors"));
  EXPECT_EQ(rep.unet_layers, 1);
  EXPECT_EQ(rep.text_layers, 1);
  for (auto [m, name, w0, up, down] :
       {std::make_tuple(static_cast<torch::nn::Module*>(pipe.unet.ptr().get()), kQ, q0, q_up, q_down),
        std::make_tuple(static_cast<torch::nn::Module*>(pipe.text->model.ptr().get()), kTeQ, t0, t_up, t_down)}) {
    const auto want = nn::quantize_int8(merged(w0, up, down, 1.0));
    EXPECT_TRUE(torch::equal(m->named_parameters().find(name)->clone(), want.q)) << name;
    EXPECT_TRUE(torch::equal(*m->named_buffers().find(std::string(name) + "_scale"), want.scale)) << name;
  }
  // and the merged layer is close to the same LoRA merged into the float32 weights
  apply_lora_file(wide, parse_lora_arg(dir / "k.safetensors"));
  EXPECT_LT((dequantised(*pipe.unet, kQ) - unet_w(wide, kQ)).abs().max().item<double>(),
            pipe.unet->named_buffers().find(std::string(kQ) + "_scale")->max().item<double>());
}

TEST(Lora, PeftKeysMergeAndChangeTheOutput) {
  test::TempDir dir;
  auto pipe = tiny_pipe(dir);
  torch::manual_seed(1);
  TensorMap lora;
  auto down = torch::randn({2, 32}) * 0.5, up = torch::randn({32, 2}) * 0.5;
  auto tdown = torch::randn({2, 32}) * 0.5, tup = torch::randn({32, 2}) * 0.5;
  lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"] = down;
  lora["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight"] = up;
  lora["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = tdown;
  lora["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight"] = tup;
  safetensors::save(dir / "p.safetensors", lora);

  SDOptions o;
  o.prompt = "a photo";
  o.steps = 2;
  o.width = o.height = 16;
  auto before = generate(pipe, o).samples;
  const std::string k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
  auto k0 = unet_w(pipe, k), t0 = text_w(pipe, kTeQ);

  // Weight 0 leaves every weight as it was.
  apply_lora_file(pipe, {dir / "p.safetensors", 0.0});
  EXPECT_TRUE(torch::equal(unet_w(pipe, k), k0));
  EXPECT_TRUE(torch::equal(text_w(pipe, kTeQ), t0));
  EXPECT_TRUE(torch::equal(generate(pipe, o).samples, before));

  auto rep = apply_lora_file(pipe, {dir / "p.safetensors", 1.0});  // no alpha: scale 1
  EXPECT_EQ(rep.unet_layers, 1);
  EXPECT_EQ(rep.text_layers, 1);
  EXPECT_TRUE(torch::equal(unet_w(pipe, k), merged(k0, up, down, 1.0)));
  EXPECT_TRUE(torch::equal(text_w(pipe, kTeQ), merged(t0, tup, tdown, 1.0)));
  EXPECT_GT(test::max_abs_diff(generate(pipe, o).samples, before), 1e-4);
}

TEST(Lora, UnmatchedKeysAreRefusedBeforeAnyChange) {
  test::TempDir dir;
  auto pipe = tiny_pipe(dir);
  TensorMap lora;
  lora["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"] = torch::ones({1, 32});
  lora["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"] = torch::ones({32, 1});
  lora["lora_unet_down_blocks_3_attentions_1_proj_out.lora_down.weight"] = torch::ones({1, 1280});
  lora["lora_unet_down_blocks_3_attentions_1_proj_out.lora_up.weight"] = torch::ones({1280, 1});
  lora["lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch::ones({1, 32});
  const std::string path = dir / "other.safetensors";
  safetensors::save(path, lora);
  auto q0 = unet_w(pipe, kQ);
  const auto msg = test::error_of([&] { apply_lora_file(pipe, {path, 1.0}); });
  EXPECT_NE(msg.find("2 LoRA keys match no layer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lora_unet_down_blocks_3_attentions_1_proj_out"), std::string::npos) << msg;
  EXPECT_NE(msg.find("lora_te2_text_model_encoder_layers_0_mlp_fc1"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(unet_w(pipe, kQ), q0));

  // A shape that does not fit is refused too.
  TensorMap wrong;
  wrong["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch::ones({2, 16});
  wrong["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"] = torch::ones({32, 2});
  EXPECT_NE(test::error_of([&] { apply_lora(pipe, wrong, 1.0, "wrong"); }).find("does not fit"), std::string::npos);
  EXPECT_NE(test::error_of([&] {
              apply_lora_file(pipe, {dir / "missing.safetensors", 1.0});
            }).find("no such file"),
            std::string::npos);
}

TEST(Lora, ArgumentsAndPromptTags) {
  auto a = parse_lora_arg("/x/style.safetensors:0.6");
  EXPECT_EQ(a.path, "/x/style.safetensors");
  EXPECT_DOUBLE_EQ(a.weight, 0.6);
  auto b = parse_lora_arg("/x/y:z.safetensors");
  EXPECT_EQ(b.path, "/x/y:z.safetensors");
  EXPECT_DOUBLE_EQ(b.weight, 1.0);

  test::TempDir dir;
  safetensors::save(dir / "style.safetensors", TensorMap{{"x", torch::zeros({1})}});
  safetensors::save(dir / "detail.safetensors", TensorMap{{"x", torch::zeros({1})}});
  std::string prompt = "a cat <lora:style:0.8>, sunny <lora:detail>";
  auto specs = extract_prompt_loras(prompt, dir.path);
  EXPECT_EQ(prompt, "a cat , sunny ");
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].path, dir / "style.safetensors");
  EXPECT_DOUBLE_EQ(specs[0].weight, 0.8);
  EXPECT_DOUBLE_EQ(specs[1].weight, 1.0);
  std::string missing = "x <lora:nothere:1>";
  EXPECT_NE(test::error_of([&] { extract_prompt_loras(missing, dir.path); }).find("nothere"), std::string::npos);
  std::string nodir = "x <lora:style:1>";
  EXPECT_NE(test::error_of([&] { extract_prompt_loras(nodir, ""); }).find("lora_dir"), std::string::npos);
}

TEST(TextualInversion, TokensGetTheirVectors) {
  test::TempDir dir;
  auto pipe = tiny_pipe(dir);
  auto& te = *pipe.text;
  torch::manual_seed(2);
  auto a1111 = torch::randn({2, 32});
  auto diffusers = torch::randn({32});
  safetensors::save(dir / "mystyle.safetensors", TensorMap{{"emb_params", a1111}});
  safetensors::save(dir / "toy.safetensors", TensorMap{{"<cat-toy>", diffusers}});
  EXPECT_EQ(load_embedding(te, dir / "toy.safetensors"), "<cat-toy>");
  auto loaded = load_embeddings_for(te, dir.path, {"a mystyle picture", ""});
  ASSERT_EQ(loaded, std::vector<std::string>{"mystyle"});

  const auto a = te.tokenizer.encode("a");
  EXPECT_EQ(te.tokenizer.encode("a <cat-toy> mystyle"), (std::vector<int64_t>{a[0], 1000, 1001, 1002}));
  auto table = te.model->token_embedding->weight;
  EXPECT_EQ(table.size(0), 1003);
  EXPECT_TRUE(torch::equal(table[1000], diffusers));
  EXPECT_TRUE(torch::equal(table.slice(0, 1001, 1003), a1111));
  // The prompt encodes through the new rows.
  auto z = encode_weighted_prompt(te, "a <cat-toy> mystyle");
  EXPECT_EQ(z.sizes(), (std::vector<int64_t>{1, 77, 32}));
  EXPECT_FALSE(torch::equal(z, encode_weighted_prompt(te, "a")));
  EXPECT_NE(test::error_of([&] { load_embedding(te, dir / "toy.safetensors"); }).find("already"), std::string::npos);
  safetensors::save(dir / "wide.safetensors", TensorMap{{"emb_params", torch::zeros({1, 768})}});
  EXPECT_NE(test::error_of([&] { load_embedding(te, dir / "wide.safetensors"); }).find("does not fit"),
            std::string::npos);
}

}  // namespace
}  // namespace diffuse
