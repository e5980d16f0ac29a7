// Single-file (LDM / A1111) checkpoints: the complete SD1.5 key list maps onto the diffusers
// models with nothing unused and nothing missing; a tiny checkpoint written in LDM names
// (stored fp32 and bf16) loads and generates what the diffusers folder generates.
#include "pipelines/ldm_convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "nn/int8_weights.h"
#include "nn/state_dict.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse {
namespace {

// sd15_keys.tsv as uninitialised tensors (never touched, so nearly free).
TensorMap sd15_tensors() {
  std::ifstream f(test::fixture("sd15_keys.tsv"));
  TensorMap t;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream row(line);
    std::string name, shape, count, dtype;
    std::getline(row, name, '\t');
    std::getline(row, shape, '\t');
    std::getline(row, count, '\t');
    std::getline(row, dtype, '\t');
    std::vector<int64_t> dims;
    std::istringstream s(shape.substr(1, shape.size() - 2));
    for (std::string d; std::getline(s, d, ',');) dims.push_back(std::stoll(d));
    t[name] = torch::empty(dims, safetensors::scalar_type(dtype));
  }
  return t;
}

// Every converted tensor has a parameter of the same name in `reduced` (the architecture with
// every width divided by `k`) and none is missing; each dimension is equal or k times larger.
void expect_same_structure(const TensorMap& converted, torch::nn::Module& reduced, int64_t k, const std::string& what) {
  auto sd = nn::state_dict(reduced);
  std::set<std::string> a, b;
  for (const auto& [n, v] : converted) a.insert(n);
  for (const auto& [n, v] : sd) b.insert(n);
  std::vector<std::string> extra, missing;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(extra));
  std::set_difference(b.begin(), b.end(), a.begin(), a.end(), std::back_inserter(missing));
  EXPECT_TRUE(extra.empty()) << what << ": unused " << extra.size() << ", first " << (extra.empty() ? "" : extra[0]);
  EXPECT_TRUE(missing.empty()) << what << ": missing " << missing.size() << ", first "
                               << (missing.empty() ? "" : missing[0]);
  for (const auto& [n, v] : converted) {
    if (!sd.count(n)) continue;
    const auto& r = sd.at(n);
    ASSERT_EQ(v.dim(), r.dim()) << what << " " << n;
    for (int64_t d = 0; d < v.dim(); ++d)
      EXPECT_TRUE(v.size(d) == r.size(d) || v.size(d) == k * r.size(d))
          << what << " " << n << " dim " << d << ": " << v.sizes() << " vs reduced " << r.sizes();
  }
}

// What the tensors of the tiny fixture cannot tell (the SD defaults would be wrong).
LdmConfigOverrides tiny_overrides() {
  LdmConfigOverrides over;
  over.unet = {{"norm_num_groups", 8}, {"sample_size", 8}};
  over.vae = {{"norm_num_groups", 8}};
  over.text = {{"num_attention_heads", 4}};
  return over;
}

// The tiny fixture pipeline, its LDM-named tensors, and the fixture's prompt embeddings as options.
struct TinyLdm {
  SDPipeline folder;
  TensorMap ldm;
  TensorMap io;
  SDOptions options;
};

TinyLdm tiny_ldm(int steps, int size) {
  ::setenv("DIFFUSE_CLIP_VOCAB", test::source_path("models/clip/bpe_simple_vocab_16e6.txt.gz").c_str(), 1);
  TinyLdm t;
  t.folder = SDPipeline::load(test::fixture("sd_pipeline_tiny"));
  t.ldm = to_ldm(t.folder.unet->config(), nn::state_dict(*t.folder.unet), t.folder.vae->config(),
                 nn::state_dict(*t.folder.vae), nn::state_dict(*t.folder.text->model));
  t.io = safetensors::load(test::fixture("sd_pipeline_tiny/io.safetensors"));
  t.options.prompt_embeds = t.io.at("prompt_embeds");
  t.options.negative_prompt_embeds = t.io.at("negative_prompt_embeds");
  t.options.steps = steps;
  t.options.width = t.options.height = size;
  return t;
}

TEST(LdmConvert, Sd15KeyListMapsCompletely) {
  auto all = sd15_tensors();
  ASSERT_EQ(all.size(), 1143u);
  auto ck = convert_ldm(all, "sd15_keys.tsv");
  EXPECT_EQ(ck.architecture, "SD1");
  EXPECT_FALSE(ck.openclip);
  EXPECT_EQ(ck.unet.size(), 686u);
  EXPECT_EQ(ck.vae.size(), 248u);
  EXPECT_EQ(ck.text.size(), 196u);
  EXPECT_EQ(ck.ignored.size(), 13u);  // 12 schedule buffers + position_ids
  const auto& u = ck.unet_config;
  EXPECT_EQ(u.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(u.layers_per_block.at(0), 2);
  EXPECT_EQ(u.cross_attention_dim.at(0), 768);
  EXPECT_EQ(u.in_channels, 4);
  EXPECT_FALSE(u.use_linear_projection);
  EXPECT_EQ(u.down_block_types, UNet2DConditionConfig().down_block_types);
  EXPECT_EQ(u.up_block_types, UNet2DConditionConfig().up_block_types);
  EXPECT_EQ(ck.vae_config.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
  EXPECT_EQ(ck.vae_config.layers_per_block, 2);
  EXPECT_EQ(ck.text_config.hidden_size, 768);
  EXPECT_EQ(ck.text_config.num_hidden_layers, 12);
  EXPECT_EQ(ck.text_config.intermediate_size, 3072);
  EXPECT_EQ(ck.text_config.num_attention_heads, 12);
  EXPECT_EQ(ck.text_config.hidden_act, "quick_gelu");
  // VAE attention 1x1 convs became linears
  EXPECT_EQ(ck.vae.at("encoder.mid_block.attentions.0.to_q.weight").sizes(), (std::vector<int64_t>{512, 512}));

  auto uc = u;
  uc.block_out_channels = {32, 64, 128, 128};
  UNet2DConditionModel unet(uc);
  expect_same_structure(ck.unet, *unet, 10, "UNet");
  auto vc = ck.vae_config;
  vc.block_out_channels = {32, 64, 128, 128};
  AutoencoderKL vae(vc);
  expect_same_structure(ck.vae, *vae, 4, "VAE");
  auto tc = ck.text_config;
  tc.hidden_size = 64;
  tc.intermediate_size = 256;
  tc.num_attention_heads = 1;
  CLIPTextModel text(tc);
  expect_same_structure(ck.text, *text, 12, "text encoder");

  // inpainting: 9 input channels
  all["model.diffusion_model.input_blocks.0.0.weight"] = torch::empty({320, 9, 3, 3}, torch::kHalf);
  EXPECT_EQ(convert_ldm(all, "x").architecture, "SD1 inpainting");
}

TEST(LdmConvert, UnknownKeysAndMissingComponentsAreListed) {
  auto all = sd15_tensors();
  all["model.diffusion_model.extra.weight"] = torch::empty({1});
  all["lora_unet_down.alpha"] = torch::empty({1});
  auto err = test::error_of([&] { convert_ldm(all, "f.safetensors"); });
  EXPECT_NE(err.find("2 tensors of no known"), std::string::npos) << err;
  EXPECT_NE(err.find("model.diffusion_model.extra.weight"), std::string::npos) << err;
  TensorMap unet_only;
  for (const auto& [k, v] : all)
    if (k.rfind("model.diffusion_model.", 0) == 0) unet_only[k] = v;
  err = test::error_of([&] { convert_ldm(unet_only, "f.safetensors"); });
  EXPECT_NE(err.find("missing VAE"), std::string::npos) << err;
  EXPECT_NE(err.find("text encoder"), std::string::npos) << err;
}

// The tiny pipeline written as an A1111-style checkpoint loads back and runs one step exactly
// like the folder (fp32 storage) or closely (bf16 storage, converted to float32).
TEST(LdmConvert, TinyCheckpointRunsLikeTheFolder) {
  auto [folder, ldm, io, o] = tiny_ldm(1, 64);
  ldm["alphas_cumprod"] = DiscreteSchedule(folder.scheduler).alphas_cumprod();
  const auto over = tiny_overrides();
  auto ref = generate(folder, o);
  test::TempDir dir;
  for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
    TensorMap stored;
    for (const auto& [k, v] : ldm) stored[k] = v.is_floating_point() ? v.to(dt) : v;
    safetensors::save(dir / "tiny.safetensors", stored);
    auto pipe = load_single_file(dir / "tiny.safetensors", torch::kCPU, torch::kFloat32, true, over);
    EXPECT_EQ(pipe.unet->dtype(), torch::kFloat32);
    EXPECT_EQ(pipe.unet->config().block_out_channels, folder.unet->config().block_out_channels);
    auto got = generate(pipe, o);
    const double tol = dt == torch::kFloat32 ? 1e-6 : 0.1;
    EXPECT_LT(test::max_abs_diff(got.samples, ref.samples), tol) << "stored as " << dt;
    EXPECT_LT(test::max_abs_diff(pipe.text->encode_ids(io.at("cond_input_ids")), io.at("prompt_embeds")),
              dt == torch::kFloat32 ? 1e-5 : 0.1);
  }
  // bf16 compute: the UNet is built in bf16 directly, the default dtype is restored
  auto bf = load_single_file(dir / "tiny.safetensors", torch::kCPU, torch::kBFloat16, false, over);
  EXPECT_EQ(bf.unet->dtype(), torch::kBFloat16);
  EXPECT_EQ(bf.vae->dtype(), torch::kFloat32);
  EXPECT_EQ(torch::get_default_dtype(), caffe2::TypeMeta::Make<float>());
  EXPECT_TRUE(torch::isfinite(generate(bf, o).samples).all().item<bool>());
  // a UNet under diffusers names is not an LDM UNet
  TensorMap wrong;
  for (const auto& [k, v] : ldm)
    if (k.rfind("model.diffusion_model.", 0) != 0) wrong[k] = v;
  for (const auto& [k, v] : nn::state_dict(*folder.unet)) wrong["model.diffusion_model." + k] = v;
  auto err = test::error_of([&] { convert_ldm(wrong, "x.safetensors"); });
  EXPECT_NE(err.find("x.safetensors (UNet): tensor 'input_blocks.0.0.weight' not found: unknown architecture"),
            std::string::npos)
      << err;
}

// fp16 / bf16 checkpoints computed in fp32 keep their weights 16-bit in memory (the UNet upcasts
// one block at a time, the text encoder while it encodes) and give bit-identical results to the
// same weights upcast once at load time.
TEST(LdmConvert, SixteenBitWeightsStayResidentAndComputeExactly) {
  auto [folder, ldm, io, o] = tiny_ldm(2, 32);
  const auto over = tiny_overrides();
  test::TempDir dir;
  for (auto dt : {torch::kFloat16, torch::kBFloat16}) {
    TensorMap half, wide;
    for (const auto& [k, v] : ldm) {
      half[k] = v.is_floating_point() ? v.to(dt) : v;
      wide[k] = v.is_floating_point() ? v.to(dt).to(torch::kFloat32) : v;
    }
    safetensors::save(dir / "half.safetensors", half);
    safetensors::save(dir / "wide.safetensors", wide);
    auto resident = load_single_file(dir / "half.safetensors", torch::kCPU, torch::kFloat32, true, over);
    auto upcast = load_single_file(dir / "wide.safetensors", torch::kCPU, torch::kFloat32, true, over);
    EXPECT_EQ(resident.unet->dtype(), torch::kFloat32) << "compute dtype";
    EXPECT_EQ(resident.unet->conv_in->weight.scalar_type(), dt);
    EXPECT_EQ(resident.text->model->token_embedding->weight.scalar_type(), dt);
    EXPECT_EQ(upcast.unet->conv_in->weight.scalar_type(), torch::kFloat32);
    auto a = generate(resident, o);
    auto b = generate(upcast, o);
    EXPECT_TRUE(torch::equal(a.latents, b.latents))
        << "stored as " << dt << ": " << test::max_abs_diff(a.latents, b.latents);
    EXPECT_TRUE(torch::equal(a.samples, b.samples)) << "stored as " << dt;
    EXPECT_TRUE(torch::equal(resident.text->encode_ids(io.at("cond_input_ids")),
                             upcast.text->encode_ids(io.at("cond_input_ids"))));
    // the weights are back in their storage dtype after each use
    for (const auto& p : resident.unet->parameters()) ASSERT_EQ(p.scalar_type(), dt);
    for (const auto& p : resident.text->model->parameters()) ASSERT_EQ(p.scalar_type(), dt);
  }
}

// int8 weights from a fp16 checkpoint: quantised from the file's values part by part, the rest
// kept fp16, the VAE untouched; the image stays close to the fp16 weights'.
TEST(LdmConvert, Int8WeightsFromAHalfCheckpoint) {
  auto [folder, ldm, io, o] = tiny_ldm(2, 32);
  const auto over = tiny_overrides();
  test::TempDir dir;
  TensorMap half;
  for (const auto& [k, v] : ldm) half[k] = v.is_floating_point() ? v.to(torch::kFloat16) : v;
  safetensors::save(dir / "half.safetensors", half);
  auto q8 = load_single_file(dir / "half.safetensors", torch::kCPU, torch::kFloat32, true, over, true);
  auto fp = load_single_file(dir / "half.safetensors", torch::kCPU, torch::kFloat32, true, over);
  EXPECT_TRUE(q8.int8_weights);
  EXPECT_EQ(q8.unet->dtype(), torch::kFloat32);
  const auto want = nn::quantize_int8(half.at("model.diffusion_model.input_blocks.0.0.weight"));
  EXPECT_TRUE(torch::equal(q8.unet->conv_in->weight, want.q));
  EXPECT_TRUE(torch::equal(nn::int8_scale_of(*q8.unet->conv_in), want.scale));
  EXPECT_EQ(q8.unet->conv_in->bias.scalar_type(), torch::kFloat16);
  EXPECT_EQ(q8.text->model->token_embedding->weight.scalar_type(), torch::kFloat16);
  EXPECT_EQ(q8.text->compute_dtype, torch::kFloat32);
  int64_t unet_q = 0, text_q = 0;
  for (const auto& p : q8.unet->parameters()) unet_q += p.scalar_type() == torch::kInt8;
  for (const auto& p : q8.text->model->parameters()) text_q += p.scalar_type() == torch::kInt8;
  EXPECT_GT(unet_q, 30);
  EXPECT_GT(text_q, 10);
  for (const auto& p : q8.vae->parameters()) ASSERT_EQ(p.scalar_type(), torch::kFloat32);
  const auto a = generate(q8, o), b = generate(fp, o);
  const double mse = (a.samples.clamp(-1, 1) - b.samples.clamp(-1, 1)).pow(2).mean().item<double>();
  EXPECT_GT(10 * std::log10(4.0 / mse), 35.0);
  const auto cond = q8.text->encode_ids(io.at("cond_input_ids")), ref = fp.text->encode_ids(io.at("cond_input_ids"));
  EXPECT_LT(((cond - ref).norm() / ref.norm()).item<double>(), 0.02);
}

// SD 2.x checkpoints carry the OpenCLIP text tower (cond_stage_model.model.*): fused in_proj
// q/k/v, ln_1/ln_2, c_fc/c_proj; its last block is dropped (SD 2.x uses the penultimate layer).
TEST(LdmConvert, OpenClipTextTower) {
  auto folder = SDPipeline::load(test::fixture("sd_pipeline_tiny"), torch::kCPU, torch::kFloat32, true);
  auto text = nn::state_dict(*folder.text->model);
  auto ldm = to_ldm(folder.unet->config(), nn::state_dict(*folder.unet), folder.vae->config(),
                    nn::state_dict(*folder.vae), {});
  const std::string m = "cond_stage_model.model.";
  ldm[m + "token_embedding.weight"] = text.at("text_model.embeddings.token_embedding.weight");
  ldm[m + "positional_embedding"] = text.at("text_model.embeddings.position_embedding.weight");
  ldm[m + "ln_final.weight"] = text.at("text_model.final_layer_norm.weight");
  ldm[m + "ln_final.bias"] = text.at("text_model.final_layer_norm.bias");
  ldm[m + "text_projection"] = torch::zeros({32, 32});
  ldm[m + "logit_scale"] = torch::zeros({});
  for (int i = 0; i < 3; ++i) {  // block 2 repeats block 1: the unused last layer
    const std::string l = "text_model.encoder.layers." + std::to_string(std::min(i, 1)) + ".";
    const std::string r = m + "transformer.resblocks." + std::to_string(i) + ".";
    for (const char* kind : {"weight", "bias"}) {
      const std::string k = kind;
      ldm[r + "attn.in_proj_" + k] =
          torch::cat({text.at(l + "self_attn.q_proj." + k), text.at(l + "self_attn.k_proj." + k),
                      text.at(l + "self_attn.v_proj." + k)});
      ldm[r + "attn.out_proj." + k] = text.at(l + "self_attn.out_proj." + k);
      ldm[r + "ln_1." + k] = text.at(l + "layer_norm1." + k);
      ldm[r + "ln_2." + k] = text.at(l + "layer_norm2." + k);
      ldm[r + "mlp.c_fc." + k] = text.at(l + "mlp.fc1." + k);
      ldm[r + "mlp.c_proj." + k] = text.at(l + "mlp.fc2." + k);
    }
  }
  auto ck = convert_ldm(ldm, "sd2.safetensors", tiny_overrides());
  EXPECT_TRUE(ck.openclip);
  EXPECT_EQ(ck.text_config.hidden_act, "gelu");
  EXPECT_EQ(ck.text_config.num_hidden_layers, 2);
  ASSERT_EQ(ck.text.size(), text.size());
  for (const auto& [k, v] : text) {
    ASSERT_TRUE(ck.text.count(k)) << k;
    EXPECT_TRUE(torch::equal(ck.text.at(k), v)) << k;
  }
  EXPECT_EQ(ck.ignored.size(), 2u + 12u);  // text_projection, logit_scale, the last block's 12 tensors
}

// An SD 2.x-layout UNet (linear projections, per-block heads) in LDM names converts back to
// exactly its diffusers tensors and reproduces diffusers' output.
TEST(LdmConvert, Sd2LayoutUNetRoundTrip) {
  auto folder = SDPipeline::load(test::fixture("sd_pipeline_tiny"), torch::kCPU, torch::kFloat32, true);
  auto unet = load_unet2d_condition(test::fixture("unet_sd2_tiny"));
  auto sd = nn::state_dict(*unet);
  auto ldm = to_ldm(unet->config(), sd, folder.vae->config(), nn::state_dict(*folder.vae),
                    nn::state_dict(*folder.text->model));
  EXPECT_EQ(ldm.at("model.diffusion_model.input_blocks.1.1.proj_in.weight").dim(), 2);
  auto over = tiny_overrides();
  over.unet["attention_head_dim"] = {2, 4};
  auto ck = convert_ldm(ldm, "sd2_unet.safetensors", over);
  EXPECT_TRUE(ck.unet_config.use_linear_projection);
  ASSERT_EQ(ck.unet.size(), sd.size());
  for (const auto& [k, v] : sd) {
    ASSERT_TRUE(ck.unet.count(k)) << k;
    EXPECT_TRUE(torch::equal(ck.unet.at(k), v)) << k;
  }
  UNet2DConditionModel m(ck.unet_config);
  nn::load_state_dict(*m, ck.unet, "converted");
  auto io = safetensors::load(test::fixture("unet_sd2_tiny/io.safetensors"));
  torch::NoGradGuard ng;
  auto out = m->forward(io.at("sample"), io.at("timestep"), io.at("encoder_hidden_states"));
  EXPECT_LT(test::max_abs_diff(out, io.at("out")), 1e-4);
}

}  // namespace
}  // namespace diffuse
