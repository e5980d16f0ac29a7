// Stable Diffusion pipeline: end-to-end parity with diffusers' StableDiffusionPipeline on the
// tiny fixture (DDIM, 5 steps, CFG 7.5), img2img / inpainting invariants, bad input.
#include "pipelines/sd_pipeline.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "diffusion/noise.h"
#include "fixtures.h"
#include "models/error_of.h"

namespace fs = std::filesystem;

namespace diffuse {
namespace {

const char* kTiny = "sd_pipeline_tiny";

const std::map<std::string, torch::Tensor>& fixture_io() {
  static const auto io = safetensors::load(test::fixture(std::string(kTiny) + "/io.safetensors"));
  return io;
}

const SDPipeline& tiny() {
  static const SDPipeline pipe = SDPipeline::load(test::fixture(kTiny), torch::kCPU, torch::kFloat32, false);
  return pipe;
}

// The fixture's call: prompt embeddings + latents, 5 DDIM steps, guidance 7.5, 16x16.
SDOptions fixture_options() {
  const auto& io = fixture_io();
  SDOptions o;
  o.prompt_embeds = io.at("prompt_embeds");
  o.negative_prompt_embeds = io.at("negative_prompt_embeds");
  o.latents = io.at("latents");
  o.steps = 5;
  o.guidance = 7.5;
  o.eta = 0;
  o.width = o.height = 16;
  return o;
}

// The fixture's prompt embeddings with latents drawn from `seed`.
SDOptions seeded(uint64_t seed, int steps) {
  SDOptions o = fixture_options();
  o.latents = torch::Tensor();
  o.seed = seed;
  o.steps = steps;
  return o;
}

TEST(SdPipeline, Txt2ImgMatchesDiffusersStepByStep) {
  const auto& io = fixture_io();
  const auto& pipe = tiny();
  EXPECT_EQ(pipe.scheduler_class, "DDIMScheduler");
  auto o = fixture_options();
  std::vector<torch::Tensor> steps;
  o.callback = [&](const StepInfo& s) {
    steps.push_back(s.x.clone() / std::sqrt(1 + s.sigma_next * s.sigma_next));  // VE -> diffusers' latents
  };
  auto r = generate(pipe, o);
  ASSERT_EQ(steps.size(), 5u);
  double worst = 0;
  for (int i = 0; i < 5; ++i) {
    double e = test::max_abs_diff(steps[i], io.at("step_latents")[i]);
    worst = std::max(worst, e);
    EXPECT_LT(e, 2e-4) << "step " << i;
  }
  EXPECT_LT(test::max_abs_diff(r.latents, io.at("step_latents")[4]), 2e-4);
  EXPECT_TRUE(torch::equal(r.noise, io.at("latents")));
  auto image = (r.samples / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1});
  double ei = test::max_abs_diff(image, io.at("image"));
  EXPECT_LT(ei, 1e-3);
  EXPECT_LT(test::max_abs_diff(r.samples, io.at("vae_decoded")), 2e-3);
  std::cout << "[parity] sd_pipeline_tiny: latents max diff " << worst << ", image max diff " << ei << "\n";
}

// bfloat16 compute (UNet; the VAE stays float32) stays close to diffusers' float32 result.
TEST(SdPipeline, Bf16ComputeStaysClose) {
  const auto& io = fixture_io();
  auto pipe = SDPipeline::load(test::fixture(kTiny), torch::kCPU, torch::kBFloat16, false);
  EXPECT_EQ(pipe.unet->dtype(), torch::kBFloat16);
  auto r = generate(pipe, fixture_options());
  // relative L2 error: bfloat16 keeps 8 mantissa bits and CFG 7.5 amplifies cond - uncond
  const auto& ref = io.at("step_latents")[4];
  const double rel = ((r.latents - ref).norm() / ref.norm()).item<double>();
  std::cout << "[bf16] relative L2 error of the final latents " << rel << "\n";
  EXPECT_LT(rel, 0.05);
  EXPECT_EQ(r.samples.scalar_type(), torch::kFloat32);
}

TEST(SdPipeline, PromptEmbeddingsOfOneRowServeEveryImage) {
  const auto& io = fixture_io();
  const auto& pipe = tiny();
  auto o = fixture_options();
  o.steps = 2;
  o.latents = torch::cat({io.at("latents"), io.at("latents")});
  o.n = 2;
  o.batch_size = 2;
  auto both = generate(pipe, o);
  o.n = 1;
  o.latents = io.at("latents");
  auto one = generate(pipe, o);
  // Batched and single-image convolutions round differently in float32 (the kernels block by batch
  // size, 1.7e-5 on some CPUs); a wrong prompt row would differ by orders of magnitude more.
  EXPECT_LT(test::max_abs_diff(both.latents[1], one.latents[0]), 1e-4);
  o.prompt_embeds = io.at("negative_prompt_embeds");  // another prompt row: another image
  auto other = generate(pipe, o);
  EXPECT_GT(test::max_abs_diff(other.latents[0], one.latents[0]), 1e-2);
}

TEST(SdPipeline, SeedsDrawDiffusersNoise) {
  const auto& pipe = tiny();
  auto o = seeded(42, 1);
  o.n = 2;
  auto r = generate(pipe, o);
  EXPECT_TRUE(torch::equal(r.noise[0], TorchNoise(42).randn({1, 4, 8, 8})[0]));
  EXPECT_TRUE(torch::equal(r.noise[1], TorchNoise(43).randn({1, 4, 8, 8})[0]));
}

// img2img with strength 0 re-runs nothing: the output is the VAE round trip of the input
// (posterior sample drawn from the image's generator, as diffusers does).
TEST(SdPipeline, GuidanceIntervalGuidesOnlyItsNoiseLevels) {
  const auto& pipe = tiny();
  auto run = [&](double lo, double hi, double guidance, std::vector<torch::Tensor>* xs,
                 std::vector<double>* sigmas = nullptr) {
    auto o = fixture_options();
    o.guidance = guidance;
    o.guidance_sigma_lo = lo;
    o.guidance_sigma_hi = hi;
    o.callback = [&](const StepInfo& s) {
      xs->push_back(s.x.clone());
      if (sigmas) sigmas->push_back(s.sigma);
    };
    return generate(pipe, o).latents;
  };
  std::vector<torch::Tensor> full, none, plain, split;
  std::vector<double> sig;
  auto l_full = run(0, INFINITY, 7.5, &full, &sig);
  ASSERT_EQ(sig.size(), 5u);
  // An interval holding every step is plain guidance; one holding none is no guidance.
  EXPECT_TRUE(torch::equal(run(0, 1e9, 7.5, &none), l_full));
  auto l_plain = run(0, INFINITY, 1.0, &plain);
  none.clear();
  EXPECT_TRUE(torch::equal(run(1e8, 1e9, 7.5, &none), l_plain));
  // Guidance for the first three steps only: those match the guided run, the rest do not.
  const double lo = 0.5 * (sig[2] + sig[3]);
  run(lo, INFINITY, 7.5, &split);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal(split[i], full[i])) << "step " << i;
  EXPECT_GT(test::max_abs_diff(split[3], full[3]), 1e-3);
  EXPECT_GT(test::max_abs_diff(split[4], plain[4]), 1e-3);
  auto o = fixture_options();
  o.guidance_sigma_lo = lo;
  EXPECT_NE(sd_generation_parameters(pipe, o, 0).find("Guidance interval: \""), std::string::npos);
}

TEST(SdPipeline, Img2ImgStrengthZeroIsTheVaeRoundTrip) {
  const auto& pipe = tiny();
  auto o = seeded(7, 5);
  o.image = torch::rand({1, 3, 16, 16}, torch::TensorOptions().dtype(torch::kFloat32)) * 2 - 1;
  o.strength = 0;
  auto r = generate(pipe, o);
  auto post = pipe.encode(o.image);
  auto init = post.mean + post.std() * TorchNoise(7).randn({1, 4, 8, 8});
  EXPECT_LT(test::max_abs_diff(r.latents, init), 1e-6);
  EXPECT_LT(test::max_abs_diff(r.samples, pipe.decode(init)), 1e-6);
}

TEST(SdPipeline, Img2ImgStrengthRunsTheTailOfTheSchedule) {
  const auto& pipe = tiny();
  auto o = seeded(0, 5);
  o.image = torch::zeros({1, 3, 16, 16});
  o.strength = 0.6;
  int calls = 0;
  o.callback = [&](const StepInfo&) { ++calls; };
  auto r = generate(pipe, o);
  EXPECT_EQ(calls, 3);  // int(5 * 0.6)
  EXPECT_TRUE(torch::isfinite(r.samples).all().item<bool>());
}

// Masked img2img on an ordinary UNet: latents outside the mask are the init image's latents.
TEST(SdPipeline, MaskedImg2ImgKeepsTheKnownRegion) {
  const auto& pipe = tiny();
  auto o = seeded(3, 3);
  o.strength = 1.0;
  o.image = torch::rand({1, 3, 16, 16}) * 2 - 1;
  o.mask = torch::zeros({1, 1, 16, 16});
  o.mask.slice(2, 0, 8).fill_(1);  // repaint the top half
  auto r = generate(pipe, o);
  auto post = pipe.encode(o.image);
  auto init = post.mean + post.std() * TorchNoise(3).randn({1, 4, 8, 8});
  EXPECT_LT(test::max_abs_diff(r.latents.slice(2, 4, 8), init.slice(2, 4, 8)), 1e-6);
  EXPECT_GT(test::max_abs_diff(r.latents.slice(2, 0, 4), init.slice(2, 0, 4)), 1e-2);
  // an empty mask keeps everything: the VAE round trip
  o.mask = torch::zeros({1, 1, 16, 16});
  auto k = generate(pipe, o);
  EXPECT_LT(test::max_abs_diff(k.samples, pipe.decode(init)), 1e-6);
}

TEST(SdPipeline, OnlyMaskedPastesTheCropBack) {
  const auto& pipe = tiny();
  auto o = seeded(0, 2);
  o.image = torch::rand({1, 3, 32, 32}) * 2 - 1;
  o.mask = torch::zeros({1, 1, 32, 32});
  o.mask.slice(2, 2, 6).slice(3, 2, 6).fill_(1);
  o.only_masked = true;
  o.only_masked_padding = 2;
  o.width = o.height = 16;
  auto r = generate(pipe, o);
  ASSERT_EQ(r.samples.sizes(), (std::vector<int64_t>{1, 3, 32, 32}));
  // far from the mask the input is untouched
  EXPECT_TRUE(torch::equal(r.samples.slice(2, 16, 32), o.image.slice(2, 16, 32)));
  EXPECT_GT(test::max_abs_diff(r.samples.slice(2, 2, 6).slice(3, 2, 6), o.image.slice(2, 2, 6).slice(3, 2, 6)), 1e-3);
}

TEST(SdPipeline, BlurAndOutpaintHelpers) {
  auto m = torch::zeros({1, 1, 9, 9});
  m[0][0][4][4] = 1;
  auto b = blur_mask(m, 1.0);
  EXPECT_NEAR(b.sum().item<double>(), 1.0, 1e-5);  // normalised kernel, no mass lost away from the edges
  // separable: the value next to the centre is k(0) k(1) of the normalised 7-tap kernel
  double ksum = 0;
  for (int i = -3; i <= 3; ++i) ksum += std::exp(-i * i / 2.0);
  EXPECT_NEAR(b[0][0][4][5].item<double>(), std::exp(-0.5) / (ksum * ksum), 1e-6);
  EXPECT_TRUE(torch::equal(blur_mask(m, 0), m));
  auto img = torch::rand({1, 3, 8, 8});
  auto [padded, mask] = outpaint_pad(img, 8, 0, 0, 8);
  ASSERT_EQ(padded.sizes(), (std::vector<int64_t>{1, 3, 16, 16}));
  EXPECT_TRUE(torch::equal(padded.slice(2, 0, 8).slice(3, 8, 16), img));
  EXPECT_EQ(mask.sum().item<double>(), 16 * 16 - 64);
  EXPECT_EQ(mask[0][0][0][8].item<float>(), 0.f);
}

// A 9-channel inpainting UNet (random weights, the tiny architecture) runs through the
// diffusers inpainting layout: [latents, mask, masked-image latents].
TEST(SdPipeline, NineChannelInpaintingUNet) {
  test::TempDir dir;
  const std::string src = test::fixture(kTiny);
  for (const char* c : {"vae", "scheduler"}) fs::copy(src + "/" + c, dir / c, fs::copy_options::recursive);
  auto index = nlohmann::json::parse(std::ifstream(src + "/model_index.json"));
  index["_class_name"] = "StableDiffusionInpaintPipeline";
  std::ofstream(dir / "model_index.json") << index.dump(2);
  auto cfg = UNet2DConditionConfig::from_json(nlohmann::json::parse(std::ifstream(src + "/unet/config.json")));
  cfg.in_channels = 9;
  torch::manual_seed(0);
  UNet2DConditionModel unet(cfg);
  save_unet2d_condition(unet, dir / "unet");
  auto pipe = SDPipeline::load(dir.path, torch::kCPU, torch::kFloat32, false);
  ASSERT_TRUE(pipe.is_inpaint_model());
  auto io = safetensors::load(test::fixture(std::string(kTiny) + "/io.safetensors"));
  auto o = fixture_options();
  o.steps = 2;
  o.image = torch::rand({1, 3, 16, 16}) * 2 - 1;
  o.mask = torch::zeros({1, 1, 16, 16});
  o.mask.slice(3, 0, 8).fill_(1);
  auto r = generate(pipe, o);
  EXPECT_TRUE(torch::isfinite(r.samples).all().item<bool>());
  // the mask conditions the model: another mask, another result
  o.mask = 1 - o.mask;
  auto r2 = generate(pipe, o);
  EXPECT_GT(test::max_abs_diff(r.latents, r2.latents), 1e-4);
  // txt2img on an inpainting model repaints everything
  o.image = torch::Tensor();
  o.mask = torch::Tensor();
  EXPECT_TRUE(torch::isfinite(generate(pipe, o).samples).all().item<bool>());
}

TEST(SdPipeline, BadInput) {
  const auto& pipe = tiny();
  auto o = seeded(0, 1);
  o.width = 20;
  EXPECT_NE(test::error_of([&] { generate(pipe, o); }).find("multiples of 8"), std::string::npos);
  o.width = 16;
  o.prompt_embeds = torch::Tensor();
  EXPECT_NE(test::error_of([&] { generate(pipe, o); }).find("text encoder"), std::string::npos);
  o = fixture_options();
  o.latents = torch::zeros({1, 4, 4, 4});
  EXPECT_NE(test::error_of([&] { generate(pipe, o); }).find("latents"), std::string::npos);
  o = fixture_options();
  o.mask = torch::ones({1, 1, 16, 16});
  EXPECT_NE(test::error_of([&] { generate(pipe, o); }).find("init image"), std::string::npos);

  test::TempDir dir;
  const std::string src = test::fixture(kTiny);
  for (const char* c : {"unet", "scheduler", "model_index.json"})
    fs::copy(src + "/" + c, dir / c, fs::copy_options::recursive);
  auto err = test::error_of([&] { SDPipeline::load(dir.path, torch::kCPU, torch::kFloat32, false); });
  EXPECT_NE(err.find("missing component 'vae'"), std::string::npos) << err;
  fs::copy(src + "/vae", dir / "vae", fs::copy_options::recursive);
  err = test::error_of([&] { SDPipeline::load(dir.path); });
  EXPECT_NE(err.find("missing component 'text_encoder'"), std::string::npos) << err;
}

}  // namespace
}  // namespace diffuse

namespace diffuse {
namespace {

// The folder's text encoder reproduces the fixture's prompt embeddings from its id rows (the tiny
// encoder's vocabulary of 1000 cannot take the real tokenizer's ids, which the tokenizer tests cover).
TEST(SdPipeline, TextEncoderReproducesThePromptEmbeddings) {
  const auto& io = fixture_io();
  auto pipe = SDPipeline::load(test::fixture(kTiny));
  ASSERT_TRUE(pipe.text);
  EXPECT_LT(test::max_abs_diff(pipe.text->encode_ids(io.at("cond_input_ids")), io.at("prompt_embeds")), 1e-5);
  EXPECT_LT(test::max_abs_diff(pipe.text->encode_ids(io.at("uncond_input_ids")), io.at("negative_prompt_embeds")),
            1e-5);
  // clip skip 1: the penultimate layer through the final layer norm
  auto out = pipe.text->model->forward(io.at("cond_input_ids"), true);
  auto expect = pipe.text->model->final_norm(out.hidden_states[out.hidden_states.size() - 2]);
  EXPECT_LT(test::max_abs_diff(pipe.text->encode_ids(io.at("cond_input_ids"), 1), expect), 1e-6);
  EXPECT_EQ(pipe.text->tokenizer.tokenize("a photo").size(), 77u);
  EXPECT_NE(test::error_of([&] { pipe.text->encode("a photo of a cat"); }).find("vocabulary"), std::string::npos);
}

}  // namespace
}  // namespace diffuse

namespace diffuse {
namespace {

// A folder saved in fp16 (diffusers' save_pretrained after .half()) and computed in fp32 keeps
// 16-bit UNet and text-encoder weights and matches the same weights upcast once, bit for bit.
TEST(SdPipeline, HalfPrecisionFolderComputedInFp32StaysHalfAndExact) {
  test::TempDir dir;
  const fs::path half = dir / "half", wide = dir / "wide";
  for (const auto& d : {half, wide}) fs::copy(test::fixture(kTiny), d, fs::copy_options::recursive);
  for (const char* file : {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}) {
    TensorMap h, w;
    for (const auto& [k, v] : safetensors::load(test::fixture(std::string(kTiny) + "/" + file))) {
      h[k] = v.is_floating_point() ? v.to(torch::kFloat16) : v;
      w[k] = v.is_floating_point() ? v.to(torch::kFloat16).to(torch::kFloat32) : v;
    }
    safetensors::save((half / file).string(), h);
    safetensors::save((wide / file).string(), w);
  }
  auto a = SDPipeline::load(half.string());
  auto b = SDPipeline::load(wide.string());
  EXPECT_EQ(a.unet->conv_in->weight.scalar_type(), torch::kFloat16);
  EXPECT_EQ(a.unet->dtype(), torch::kFloat32);
  EXPECT_EQ(a.text->model->token_embedding->weight.scalar_type(), torch::kFloat16);
  EXPECT_EQ(b.unet->conv_in->weight.scalar_type(), torch::kFloat32);
  auto ra = generate(a, fixture_options());
  auto rb = generate(b, fixture_options());
  EXPECT_TRUE(torch::equal(ra.latents, rb.latents)) << test::max_abs_diff(ra.latents, rb.latents);
  const auto& ids = fixture_io().at("cond_input_ids");
  EXPECT_TRUE(torch::equal(a.text->encode_ids(ids), b.text->encode_ids(ids)));
  // bf16 compute converts once, as before
  EXPECT_EQ(SDPipeline::load(half.string(), torch::kCPU, torch::kBFloat16).unet->conv_in->weight.scalar_type(),
            torch::kBFloat16);
}

}  // namespace
}  // namespace diffuse
