// SDXL pipeline: end-to-end parity with diffusers' StableDiffusionXLPipeline on the tiny fixture
// (Euler, 5 steps, CFG 5) for both recorded runs (given negative embeddings; zeros for no negative
// prompt with micro-conditioning), the encoding of both text encoders, the tokenizers, and the
// prompt path (weights, long prompts, force_zeros_for_empty_prompt) on text encoders with the real
// vocabulary size.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/safetensors.h"
#include "diffusion/noise.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "nn/state_dict.h"
#include "pipelines/ldm_convert.h"
#include "pipelines/prompt_weights.h"
#include "pipelines/sd_pipeline.h"
#include "sdxl_tiny.h"

namespace fs = std::filesystem;

namespace diffuse {
namespace {

const char* kXlTiny = "sdxl_pipeline_tiny";

const std::map<std::string, torch::Tensor>& xl_io(const std::string& file) {
  static std::map<std::string, std::map<std::string, torch::Tensor>> cache;
  auto it = cache.find(file);
  if (it == cache.end())
    it = cache.emplace(file, safetensors::load(test::fixture(std::string(kXlTiny) + "/" + file))).first;
  return it->second;
}

const SDPipeline& xl_pipe() {
  static const SDPipeline pipe = SDPipeline::load(test::fixture(kXlTiny));
  return pipe;
}

// The fixture's call: prompt embeddings (+ negative ones in io.safetensors), latents, 5 Euler
// steps, guidance 5, 32x32.
SDOptions xl_options(const std::string& file) {
  const auto& io = xl_io(file);
  SDOptions o;
  o.prompt_embeds = io.at("prompt_embeds");
  o.pooled_prompt_embeds = io.at("pooled_prompt_embeds");
  if (file == "io.safetensors") {
    o.negative_prompt_embeds = io.at("negative_prompt_embeds");
    o.negative_pooled_prompt_embeds = io.at("negative_pooled_prompt_embeds");
  } else {
    o.size_cond.original_size = {1024, 768};
    o.size_cond.crop_coords = {12, 40};
    o.size_cond.target_size = {32, 48};
    o.size_cond.negative_original_size = {512, 512};
    o.size_cond.negative_crop_coords = {0, 0};
    o.size_cond.negative_target_size = {32, 32};
  }
  o.latents = io.at("latents");
  o.steps = 5;
  o.guidance = 5.0;
  o.width = o.height = 32;
  return o;
}

void check_run(const std::string& file) {
  const auto& io = xl_io(file);
  const auto& pipe = xl_pipe();
  auto o = xl_options(file);
  // the conditioning diffusers gave the UNet
  EXPECT_TRUE(torch::equal(sdxl_time_ids(pipe, o.size_cond, 32, 32, false), io.at("add_time_ids"))) << file;
  EXPECT_TRUE(torch::equal(sdxl_time_ids(pipe, o.size_cond, 32, 32, true), io.at("negative_add_time_ids"))) << file;
  std::vector<torch::Tensor> steps;
  std::vector<double> sigmas;
  o.callback = [&](const StepInfo& s) {
    if (steps.empty()) sigmas.push_back(s.sigma);
    sigmas.push_back(s.sigma_next);
    steps.push_back(s.x.clone());  // Euler keeps diffusers' latents in VE form
  };
  auto r = generate(pipe, o);
  ASSERT_EQ(steps.size(), 5u);
  EXPECT_LT(test::max_abs_diff(torch::tensor(sigmas, torch::kFloat64).to(torch::kFloat32), io.at("sigmas")), 1e-5);
  double worst = 0;
  for (int i = 0; i < 5; ++i) {
    const auto& ref = io.at("step_latents")[i];
    const double tol = 2e-4 + 2e-5 * ref.abs().max().item<double>();
    const double e = test::max_abs_diff(steps[static_cast<size_t>(i)], ref);
    worst = std::max(worst, e);
    EXPECT_LT(e, tol) << file << " step " << i;
  }
  // the final latents as diffusers returns them (sigma 0: unchanged), the decoded image
  EXPECT_LT(test::max_abs_diff(r.latents, io.at("step_latents")[4]), 2e-4 + 2e-5 * 25);
  EXPECT_TRUE(torch::equal(r.noise, io.at("latents")));
  EXPECT_LT(test::max_abs_diff(r.samples, io.at("vae_decoded")), 1e-3) << file;
  auto image = (r.samples / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1});
  const double ei = test::max_abs_diff(image, io.at("image"));
  EXPECT_LT(ei, 1e-3) << file;
  std::cout << "[parity] sdxl_pipeline_tiny/" << file << ": latents max diff " << worst << " (max |ref| "
            << io.at("step_latents").abs().max().item<double>() << "), image max diff " << ei << "\n";
}

TEST(SdxlPipeline, LoadsTheFolder) {
  const auto& pipe = xl_pipe();
  EXPECT_TRUE(pipe.is_xl());
  EXPECT_EQ(pipe.architecture(), "SDXL");
  EXPECT_EQ(pipe.scheduler_class, "EulerDiscreteScheduler");
  ASSERT_TRUE(pipe.text && pipe.text_2);
  EXPECT_TRUE(pipe.text->penultimate && pipe.text_2->penultimate);
  EXPECT_TRUE(pipe.text_2->model->config().with_projection);
  EXPECT_TRUE(pipe.force_zeros_for_empty_prompt);
  EXPECT_FALSE(pipe.requires_aesthetics_score);
  EXPECT_EQ(pipe.pooled_dim(), 32);
  EXPECT_EQ(pipe.num_time_ids(), 6);
  EXPECT_DOUBLE_EQ(pipe.vae->config().scaling_factor, 0.13025);
  EXPECT_TRUE(pipe.vae->config().force_upcast);
  EXPECT_EQ(pipe.default_size(), 16);  // sample_size 8 x VAE factor 2
  // without its text encoders: the pooled width from the UNet's added embedding
  auto bare = SDPipeline::load(test::fixture(kXlTiny), torch::kCPU, torch::kFloat32, false);
  EXPECT_FALSE(bare.has_text_encoder());
  EXPECT_EQ(bare.pooled_dim(), 32);
}

TEST(SdxlPipeline, Txt2ImgMatchesDiffusersStepByStep) { check_run("io.safetensors"); }

// No negative prompt: force_zeros_for_empty_prompt conditions the unconditional branch on zeros;
// micro-conditioning with distinct negative sizes.
TEST(SdxlPipeline, ZeroNegativeAndMicroConditioningMatchDiffusers) { check_run("io_microcond.safetensors"); }

// encode_prompt as diffusers runs it on the fixture's id rows: hidden_states[-2] of both encoders
// (no final_layer_norm) concatenated, pooled = text_embeds of text_encoder_2.
TEST(SdxlPipeline, BothEncodersGiveDiffusersEmbeddings) {
  const auto& io = xl_io("io.safetensors");
  const auto& pipe = xl_pipe();
  for (const std::string row : {"cond", "uncond"}) {
    torch::Tensor pooled;
    auto e1 = pipe.text->encode_ids(io.at(row + "_input_ids"));
    auto e2 = pipe.text_2->encode_ids(io.at(row + "_input_ids_2"), 0, &pooled);
    const std::string neg = row == "cond" ? "" : "negative_";
    EXPECT_LT(test::max_abs_diff(torch::cat({e1, e2}, -1), io.at(neg + "prompt_embeds")), test::kParityTol) << row;
    EXPECT_LT(test::max_abs_diff(pooled, io.at(neg + "pooled_prompt_embeds")), test::kParityTol) << row;
  }
}

// The folder's two tokenizers: the same BPE, padded with <|endoftext|> and '!' respectively.
TEST(SdxlPipeline, TokenizersMatchTransformers) {
  const auto& io = xl_io("io.safetensors");
  const auto meta = safetensors::File::open(test::fixture(std::string(kXlTiny) + "/io.safetensors")).metadata();
  const auto& pipe = xl_pipe();
  for (int i = 0; i < 3; ++i) {
    const std::string prompt = meta.at("prompt_" + std::to_string(i));
    auto a = torch::tensor(pipe.text->tokenizer.tokenize(prompt, 77, true), torch::kInt64);
    auto b = torch::tensor(pipe.text_2->tokenizer.tokenize(prompt, 77, true), torch::kInt64);
    EXPECT_TRUE(torch::equal(a, io.at("tokenizer_input_ids")[i])) << prompt;
    EXPECT_TRUE(torch::equal(b, io.at("tokenizer_2_input_ids")[i])) << prompt;
  }
}

// The tiny fixture's encoders have 1000 tokens, so prompts go through encoders with the real
// vocabulary (random weights) here: the text path against the ids path, pooled embeddings of the
// first chunk, A1111 weights on the hidden states only, and zeros for an empty negative prompt.
struct BigVocab {
  SDPipeline pipe;
  BigVocab() {
    ::setenv("DIFFUSE_CLIP_VOCAB", test::source_path("models/clip/bpe_simple_vocab_16e6.txt.gz").c_str(), 1);
    pipe = xl_pipe();
    torch::manual_seed(5);
    auto make = [](const SDTextEncoder& like, const std::string& pad) {
      auto te = std::make_shared<SDTextEncoder>(like);
      auto c = like.model->config();
      c.vocab_size = 49408;
      c.eos_token_id = 2;
      te->model = CLIPTextModel(c);
      te->model->eval();
      te->tokenizer = CLIPTokenizer::builtin(pad);
      return te;
    };
    pipe.text = make(*pipe.text, "<|endoftext|>");
    pipe.text_2 = make(*pipe.text_2, "!");
  }
};

TEST(SdxlPipeline, PromptsEncodeThroughBothEncoders) {
  torch::NoGradGuard ng;
  BigVocab bv;
  const auto& pipe = bv.pipe;
  auto e = encode_prompt(pipe, "a photo of a cat");
  ASSERT_EQ(e.embeds.sizes(), (std::vector<int64_t>{1, 77, 64}));
  ASSERT_EQ(e.pooled.sizes(), (std::vector<int64_t>{1, 32}));
  auto ids1 = torch::tensor(pipe.text->tokenizer.tokenize("a photo of a cat", 77, true), torch::kInt64).unsqueeze(0);
  auto ids2 = torch::tensor(pipe.text_2->tokenizer.tokenize("a photo of a cat", 77, true), torch::kInt64).unsqueeze(0);
  EXPECT_NE(ids1[0][76].item<int64_t>(), ids2[0][76].item<int64_t>());  // different padding
  auto o1 = pipe.text->model->forward(ids1, true), o2 = pipe.text_2->model->forward(ids2, true);
  EXPECT_LT(test::max_abs_diff(e.embeds, torch::cat({o1.hidden_states[1], o2.hidden_states[1]}, -1)), 1e-6);
  EXPECT_LT(test::max_abs_diff(e.pooled, o2.text_embeds), 1e-6);
  // clip skip 1: one layer further back (hidden_states[-3]), still without final_layer_norm
  auto skip = encode_prompt(pipe, "a photo of a cat", 1);
  EXPECT_LT(test::max_abs_diff(skip.embeds, torch::cat({o1.hidden_states[0], o2.hidden_states[0]}, -1)), 1e-6);

  // A1111 weights change the hidden states, not the pooled embeddings
  auto w = encode_prompt(pipe, "a photo of a (cat:1.5)");
  EXPECT_GT(test::max_abs_diff(w.embeds, e.embeds), 1e-3);
  EXPECT_LT(test::max_abs_diff(w.pooled, e.pooled), 1e-6);
  // a long prompt: two chunks of 77 for both encoders; pooled from the first chunk
  std::string longp;
  for (int i = 0; i < 40; ++i) longp += "red cat, ";
  auto l = encode_prompt(pipe, longp);
  EXPECT_EQ(l.embeds.size(1), 154);
  auto first = prompt_chunks(pipe.text_2->tokenizer, longp).front();
  auto pooled_first = pipe.text_2->model->forward(torch::tensor(first.ids, torch::kInt64).unsqueeze(0)).text_embeds;
  EXPECT_LT(test::max_abs_diff(l.pooled, pooled_first), 1e-6);
}

TEST(SdxlPipeline, EmptyNegativePromptIsZerosWhenTheModelSaysSo) {
  torch::NoGradGuard ng;
  BigVocab bv;
  auto& pipe = bv.pipe;
  SDOptions o;
  o.prompt = "a red cube";
  o.steps = 2;
  o.guidance = 5;
  o.width = o.height = 32;
  o.seed = 3;
  auto by_text = generate(pipe, o);
  auto e = encode_prompt(pipe, o.prompt);
  SDOptions z = o;
  z.prompt_embeds = e.embeds;
  z.pooled_prompt_embeds = e.pooled;
  auto by_embeds = generate(pipe, z);  // no negative embeddings: zeros
  EXPECT_LT(test::max_abs_diff(by_text.latents, by_embeds.latents), 1e-5);
  z.negative_prompt_embeds = torch::zeros_like(e.embeds);
  z.negative_pooled_prompt_embeds = torch::zeros_like(e.pooled);
  EXPECT_LT(test::max_abs_diff(generate(pipe, z).latents, by_text.latents), 1e-5);
  // force_zeros_for_empty_prompt false: the encoding of ""
  pipe.force_zeros_for_empty_prompt = false;
  auto encoded = generate(pipe, o);
  auto empty = encode_prompt(pipe, "");
  z.negative_prompt_embeds = empty.embeds;
  z.negative_pooled_prompt_embeds = empty.pooled;
  EXPECT_LT(test::max_abs_diff(generate(pipe, z).latents, encoded.latents), 1e-5);
  EXPECT_GT(test::max_abs_diff(encoded.latents, by_text.latents), 1e-3);
  // a long negative prompt pads the positive one with chunks of "" of both encoders
  std::string longn;
  for (int i = 0; i < 40; ++i) longn += "blurry, ";
  o.negative_prompt = longn;
  EXPECT_TRUE(torch::isfinite(generate(pipe, o).latents).all().item<bool>());
}

// img2img and masked img2img run through the SD pipeline's editing code: strength 0 is the VAE
// round trip, the known region keeps the init latents.
TEST(SdxlPipeline, Img2ImgAndInpaintingReuseTheEditingPath) {
  const auto& pipe = xl_pipe();
  auto o = xl_options("io.safetensors");
  o.latents = torch::Tensor();
  o.seed = 7;
  o.image = torch::rand({1, 3, 32, 32}) * 2 - 1;
  o.strength = 0;
  auto r = generate(pipe, o);
  auto post = pipe.encode(o.image);
  auto init = post.mean + post.std() * TorchNoise(7).randn({1, 4, 16, 16});
  EXPECT_LT(test::max_abs_diff(r.latents, init), 1e-6);
  o.strength = 1.0;
  o.steps = 3;
  o.mask = torch::zeros({1, 1, 32, 32});
  o.mask.slice(2, 0, 16).fill_(1);  // repaint the top half
  r = generate(pipe, o);
  EXPECT_LT(test::max_abs_diff(r.latents.slice(2, 8, 16), init.slice(2, 8, 16)), 1e-6);
  EXPECT_GT(test::max_abs_diff(r.latents.slice(2, 0, 8), init.slice(2, 0, 8)), 1e-2);
  // micro-conditioning reaches the UNet in img2img too
  o.mask = torch::Tensor();
  o.strength = 0.6;
  auto a = generate(pipe, o);
  o.size_cond.original_size = {1024, 1024};
  EXPECT_GT(test::max_abs_diff(generate(pipe, o).latents, a.latents), 1e-4);
}

// A 9-channel SDXL inpainting UNet gets [latents, mask, masked-image latents]; with zero weights on
// the added channels it must denoise as the base model does, drawing the same noise first.
TEST(SdxlPipeline, NineChannelInpaintingModel) {
  test::TempDir dir;
  auto inpaint = SDPipeline::load(test::tiny_sdxl_inpaint(dir / "inpaint"));
  EXPECT_EQ(inpaint.architecture(), "SDXL inpainting");
  auto o = xl_options("io.safetensors");
  o.latents = torch::Tensor();
  o.seed = 11;
  auto plain = generate(xl_pipe(), o);
  o.image = torch::rand({1, 3, 32, 32}) * 2 - 1;
  o.mask = torch::zeros({1, 1, 32, 32});
  o.mask.slice(3, 0, 16).fill_(1);
  o.strength = 1.0;
  auto r = generate(inpaint, o);
  EXPECT_TRUE(torch::equal(r.noise, plain.noise));
  EXPECT_LT(test::max_abs_diff(r.latents, plain.latents), 1e-4);
}

// A refiner: only the second text encoder, 5 time ids with the aesthetic score, force_zeros off.
TEST(SdxlPipeline, RefinerConditionsOnTheAestheticScore) {
  test::TempDir dir;
  auto pipe = SDPipeline::load(test::tiny_sdxl_refiner(dir / "refiner"));
  EXPECT_EQ(pipe.architecture(), "SDXL refiner");
  EXPECT_FALSE(pipe.text);
  ASSERT_TRUE(pipe.text_2);
  EXPECT_TRUE(pipe.requires_aesthetics_score);
  EXPECT_FALSE(pipe.force_zeros_for_empty_prompt);
  EXPECT_EQ(pipe.num_time_ids(), 5);
  EXPECT_EQ(pipe.pooled_dim(), 32);
  SizeConditioning c;
  EXPECT_TRUE(torch::equal(sdxl_time_ids(pipe, c, 32, 48, false), torch::tensor({{32.f, 48.f, 0.f, 0.f, 6.f}})));
  EXPECT_TRUE(torch::equal(sdxl_time_ids(pipe, c, 32, 48, true), torch::tensor({{32.f, 48.f, 0.f, 0.f, 2.5f}})));
  c.original_size = {1024, 768};
  c.crop_coords = {8, 16};
  c.aesthetic_score = 7;
  c.negative_aesthetic_score = 1.5;
  EXPECT_TRUE(torch::equal(sdxl_time_ids(pipe, c, 32, 48, true), torch::tensor({{1024.f, 768.f, 0.f, 0.f, 1.5f}})));
  // the prompt through bigG alone ([1, 77, 32]); the negative "" is encoded (force_zeros off)
  auto e = encode_prompt(pipe, "a red cube");
  EXPECT_EQ(e.embeds.sizes(), (std::vector<int64_t>{1, 77, 32}));
  SDOptions o;
  o.prompt = "a red cube";
  o.image = torch::rand({1, 3, 32, 32}) * 2 - 1;
  o.strength = 0.5;
  o.steps = 4;
  o.guidance = 5;
  o.seed = 1;
  auto a = generate(pipe, o);
  EXPECT_TRUE(torch::isfinite(a.samples).all().item<bool>());
  o.size_cond.aesthetic_score = 2;
  EXPECT_GT(test::max_abs_diff(generate(pipe, o).latents, a.latents), 1e-4);
  // the same run from embeddings: the unconditional branch is the encoding of ""
  SDOptions p = o;
  p.size_cond = SizeConditioning();
  p.prompt_embeds = e.embeds;
  p.pooled_prompt_embeds = e.pooled;
  auto empty = encode_prompt(pipe, "");
  p.negative_prompt_embeds = empty.embeds;
  p.negative_pooled_prompt_embeds = empty.pooled;
  EXPECT_LT(test::max_abs_diff(generate(pipe, p).latents, a.latents), 1e-5);
  // a base folder's embeddings (64 features) do not fit the refiner
  auto q = p;
  q.prompt_embeds = xl_io("io.safetensors").at("prompt_embeds");
  EXPECT_NE(test::error_of([&] { generate(pipe, q); }).find("prompt embeddings"), std::string::npos);
}

// denoising_end / denoising_start as diffusers splits the schedule: 5 Euler steps at timesteps
// 801, 601, 401, 201, 1; with the same model on both sides the handoff is the uninterrupted run.
TEST(SdxlPipeline, DenoisingEndAndStartSplitTheScheduleAsDiffusers) {
  const auto& pipe = xl_pipe();
  const auto sigmas = xl_io("io.safetensors").at("sigmas").to(torch::kFloat64);
  EXPECT_EQ(denoising_split(pipe, sigmas, 0.8), 4);  // cutoff 200: t >= 200
  EXPECT_EQ(denoising_split(pipe, sigmas, 0.5), 2);  // cutoff 500
  EXPECT_EQ(denoising_split(pipe, sigmas, 0.3), 1);  // cutoff 700
  auto full = xl_options("io.safetensors");
  std::vector<torch::Tensor> full_steps;
  full.callback = [&](const StepInfo& s) { full_steps.push_back(s.x.clone()); };
  auto ref = generate(pipe, full);
  for (double sw : {0.8, 0.5}) {
    auto a = xl_options("io.safetensors");
    int na = 0, nb = 0;
    a.callback = [&](const StepInfo&) { ++na; };
    a.denoising_end = sw;
    auto first = generate(pipe, a);
    EXPECT_FALSE(first.samples.defined());  // nothing decoded
    const int split = static_cast<int>(denoising_split(pipe, sigmas, sw));
    EXPECT_EQ(na, split);
    EXPECT_TRUE(torch::equal(first.x_end, full_steps[static_cast<size_t>(split - 1)]));
    auto b = xl_options("io.safetensors");
    b.latents = torch::Tensor();
    b.denoising_start = sw;
    b.start_latents = first.x_end;
    b.callback = [&](const StepInfo&) { ++nb; };
    auto second = generate(pipe, b);
    EXPECT_EQ(na + nb, 5);
    EXPECT_TRUE(torch::equal(second.latents, ref.latents)) << sw;
    EXPECT_TRUE(torch::equal(second.samples, ref.samples)) << sw;
  }
  auto bad = xl_options("io.safetensors");
  bad.denoising_end = 0.1;  // cutoff 900: no step for the base
  EXPECT_NE(test::error_of([&] { generate(pipe, bad); }).find("leaves no step"), std::string::npos);
  bad.denoising_end = 1.5;
  EXPECT_NE(test::error_of([&] { generate(pipe, bad); }).find("refiner_switch"), std::string::npos);
  bad = xl_options("io.safetensors");
  bad.denoising_start = 0.8;
  EXPECT_NE(test::error_of([&] { generate(pipe, bad); }).find("start_latents"), std::string::npos);
}

// --vae: the model's VAE replaced by a file in LDM names (stand-alone VAE files), with or without
// first_stage_model., or in diffusers names; the result decodes identically to the original.
TEST(SdxlPipeline, VaeReplacedFromFiles) {
  test::TempDir dir;
  SDPipeline pipe = SDPipeline::load(test::fixture(kXlTiny));
  auto vae_sd = nn::state_dict(*pipe.vae);
  TensorMap diffusers_names(vae_sd.begin(), vae_sd.end());
  auto ldm = to_ldm(pipe.unet->config(), {}, pipe.vae->config(), diffusers_names, {});
  TensorMap bare;
  for (const auto& [k, v] : ldm) bare[k.substr(18)] = v.to(torch::kHalf);  // as sdxl_vae.safetensors: fp16
  safetensors::save(dir / "ldm.safetensors", bare);
  safetensors::save(dir / "prefixed.safetensors", ldm);
  safetensors::save(dir / "diffusers.safetensors", diffusers_names);
  auto z = torch::randn({1, 4, 16, 16});
  const auto ref = pipe.decode(z);
  const auto old = pipe.vae;
  for (const char* f : {"ldm.safetensors", "prefixed.safetensors", "diffusers.safetensors"}) {
    replace_vae(pipe, dir / f);
    EXPECT_NE(pipe.vae.ptr(), old.ptr());
    EXPECT_EQ(pipe.vae->encoder->conv_in->weight.scalar_type(), torch::kFloat32);  // runs in float32
    EXPECT_LT(test::max_abs_diff(pipe.decode(z), ref), std::string(f) == "ldm.safetensors" ? 0.05 : 1e-6) << f;
  }
  bare.erase("decoder.conv_out.bias");
  safetensors::save(dir / "partial.safetensors", bare);
  auto e = test::error_of([&] { replace_vae(pipe, dir / "partial.safetensors"); });
  EXPECT_NE(e.find("partial.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("conv_out.bias"), std::string::npos) << e;
  e = test::error_of([&] { replace_vae(pipe, dir / "missing.safetensors"); });
  EXPECT_NE(e.find("vae"), std::string::npos) << e;
}

TEST(SdxlPipeline, BadInput) {
  const auto& pipe = xl_pipe();
  auto o = xl_options("io.safetensors");
  o.pooled_prompt_embeds = torch::Tensor();
  auto e = test::error_of([&] { generate(pipe, o); });
  EXPECT_NE(e.find("pooled_prompt_embeds"), std::string::npos) << e;
  o = xl_options("io.safetensors");
  o.negative_pooled_prompt_embeds = torch::Tensor();
  e = test::error_of([&] { generate(pipe, o); });
  EXPECT_NE(e.find("negative_pooled_prompt_embeds"), std::string::npos) << e;
  o = xl_options("io.safetensors");
  o.pooled_prompt_embeds = torch::zeros({1, 31});
  e = test::error_of([&] { generate(pipe, o); });
  EXPECT_NE(e.find("pooled prompt embeddings"), std::string::npos) << e;
  o = xl_options("io.safetensors");
  o.width = 36;
  e = test::error_of([&] { generate(pipe, o); });
  EXPECT_NE(e.find("multiples of 8"), std::string::npos) << e;
  // a pipeline class that does not fit its UNet
  test::TempDir tmp;
  fs::copy(test::fixture(kXlTiny), tmp.path, fs::copy_options::recursive);
  auto idx = read_file(tmp / "model_index.json");
  idx.replace(idx.find("StableDiffusionXLPipeline"), 25, "StableDiffusionPipeline");
  write_file_atomically(tmp / "model_index.json", idx);
  e = test::error_of([&] { SDPipeline::load(tmp.path); });
  EXPECT_NE(e.find("cannot run an SDXL UNet"), std::string::npos) << e;
}

}  // namespace
}  // namespace diffuse
