// Stable Diffusion with int8 weights (SDPipeline::int8_weights) on the tiny fixture: the UNet's and
// text encoder's Linear / Conv2d weights are int8, the pipeline computes exactly what the same
// pipeline with the dequantised weights computes, its image stays close to the fp32 one, and the
// UNet holds about a quarter of the bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <iostream>

#include "core/safetensors.h"
#include "fixtures.h"
#include "nn/int8_weights.h"
#include "pipelines/sd_pipeline.h"

namespace fs = std::filesystem;

namespace diffuse {
namespace {

const char* kInt8Tiny = "sd_pipeline_tiny";

// The fixture's call (prompt embeddings + latents, 5 DDIM steps, CFG 7.5, 16x16), with the
// prompt embeddings given.
SDOptions int8_fixture_options(const torch::Tensor& cond, const torch::Tensor& uncond) {
  static const auto io = safetensors::load(test::fixture(std::string(kInt8Tiny) + "/io.safetensors"));
  SDOptions o;
  o.prompt_embeds = cond.defined() ? cond : io.at("prompt_embeds");
  o.negative_prompt_embeds = uncond.defined() ? uncond : io.at("negative_prompt_embeds");
  o.latents = io.at("latents");
  o.steps = 5;
  o.guidance = 7.5;
  o.eta = 0;
  o.width = o.height = 16;
  return o;
}

const TensorMap& int8_io() {
  static const auto io = safetensors::load(test::fixture(std::string(kInt8Tiny) + "/io.safetensors"));
  return io;
}

// PSNR of images in [-1, 1] (peak-to-peak 2), in dB.
double psnr_pm1(const torch::Tensor& a, const torch::Tensor& b) {
  const double mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean().item<double>();
  return 10 * std::log10(4.0 / mse);
}

// Sets every weight of `ref` that is int8 in `q8` (same architecture) to its dequantised value.
int64_t dequantise_into(const torch::nn::Module& q8, torch::nn::Module& ref) {
  torch::NoGradGuard ng;
  const auto buffers = q8.named_buffers();
  auto params = ref.named_parameters();
  int64_t n = 0;
  for (const auto& p : q8.named_parameters()) {
    if (p.value().scalar_type() != torch::kInt8) continue;
    const auto* scale = buffers.find(p.key() + "_scale");
    if (!scale) ADD_FAILURE() << p.key() << ": no scale";
    if (!scale) continue;
    params[p.key()].set_data(nn::dequantize_int8(p.value(), *scale));
    ++n;
  }
  return n;
}

int64_t count_int8(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters())
    if (p.scalar_type() == torch::kInt8) ++n;
  return n;
}

TEST(SdInt8Weights, FolderComputesWhatTheDequantisedWeightsCompute) {
  const auto q8 = SDPipeline::load(test::fixture(kInt8Tiny), torch::kCPU, torch::kFloat32, true, true);
  auto ref = SDPipeline::load(test::fixture(kInt8Tiny));
  EXPECT_TRUE(q8.int8_weights);
  EXPECT_FALSE(ref.int8_weights);
  // Linear / Conv2d weights int8; biases, norms, embeddings and the VAE as stored (float32 here)
  EXPECT_EQ(q8.unet->conv_in->weight.scalar_type(), torch::kInt8);
  EXPECT_EQ(q8.unet->conv_in->bias.scalar_type(), torch::kFloat32);
  EXPECT_EQ(q8.unet->conv_norm_out->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(q8.unet->dtype(), torch::kFloat32);
  EXPECT_EQ(q8.text->model->token_embedding->weight.scalar_type(), torch::kFloat32);
  EXPECT_EQ(count_int8(*q8.vae), 0);
  const int64_t unet_layers = count_int8(*q8.unet), text_layers = count_int8(*q8.text->model);
  EXPECT_GT(unet_layers, 30);
  EXPECT_GT(text_layers, 10);
  EXPECT_EQ(dequantise_into(*q8.unet, *ref.unet), unet_layers);
  EXPECT_EQ(dequantise_into(*q8.text->model, *ref.text->model), text_layers);

  const auto& ids = int8_io().at("cond_input_ids");
  const auto& unids = int8_io().at("uncond_input_ids");
  const auto cond = q8.text->encode_ids(ids), uncond = q8.text->encode_ids(unids);
  EXPECT_TRUE(torch::equal(cond, ref.text->encode_ids(ids)));
  const auto a = generate(q8, int8_fixture_options(cond, uncond));
  const auto b = generate(ref, int8_fixture_options(cond, uncond));
  EXPECT_TRUE(torch::equal(a.latents, b.latents)) << (a.latents - b.latents).abs().max().item<double>();
  EXPECT_TRUE(torch::equal(a.samples, b.samples));
  // the weights are int8 again after each use
  EXPECT_EQ(count_int8(*q8.unet), unet_layers);
  EXPECT_EQ(count_int8(*q8.text->model), text_layers);
}

TEST(SdInt8Weights, ImageStaysCloseToFp32AndTheUNetHoldsAQuarterOfTheBytes) {
  const auto q8 = SDPipeline::load(test::fixture(kInt8Tiny), torch::kCPU, torch::kFloat32, true, true);
  const auto fp = SDPipeline::load(test::fixture(kInt8Tiny));
  const auto& ids = int8_io().at("cond_input_ids");
  const auto& unids = int8_io().at("uncond_input_ids");
  const auto a = generate(q8, int8_fixture_options(q8.text->encode_ids(ids), q8.text->encode_ids(unids)));
  const auto b = generate(fp, int8_fixture_options(fp.text->encode_ids(ids), fp.text->encode_ids(unids)));
  const double db = psnr_pm1(a.samples, b.samples);
  const double rel = ((a.latents - b.latents).norm() / b.latents.norm()).item<double>();
  std::cout << "[int8] sd_pipeline_tiny: image PSNR against fp32 " << db << " dB, relative L2 error of the latents "
            << rel << "\n";
  EXPECT_GT(db, 35.0);
  EXPECT_LT(rel, 0.03);

  const double ratio =
      static_cast<double>(nn::tensor_bytes(*q8.unet)) / static_cast<double>(nn::tensor_bytes(*fp.unet));
  const double text_ratio =
      static_cast<double>(nn::tensor_bytes(*q8.text->model)) / static_cast<double>(nn::tensor_bytes(*fp.text->model));
  std::cout << "[int8] resident bytes against fp32: UNet " << ratio << ", text encoder " << text_ratio << "\n";
  EXPECT_GT(ratio, 0.25);  // int8 weights plus float32 scales, biases and norms
  EXPECT_LT(ratio, 0.29);
  EXPECT_LT(text_ratio, 0.9);  // 0.81: the tiny encoder's float32 token embedding dominates
  EXPECT_EQ(nn::tensor_bytes(*q8.vae), nn::tensor_bytes(*fp.vae));
}

// A fp16 folder: quantised from its fp16 values, the rest stays fp16; bf16 compute works too.
TEST(SdInt8Weights, HalfFolderAndBf16Compute) {
  test::TempDir dir;
  const fs::path half = dir / "half";
  fs::copy(test::fixture(kInt8Tiny), half, fs::copy_options::recursive);
  TensorMap h;
  const std::string file = "unet/diffusion_pytorch_model.safetensors";
  const auto wide = safetensors::load(test::fixture(std::string(kInt8Tiny) + "/" + file));
  for (const auto& [k, v] : wide) h[k] = v.is_floating_point() ? v.to(torch::kFloat16) : v;
  safetensors::save((half / file).string(), h);
  const auto q8 = SDPipeline::load(half.string(), torch::kCPU, torch::kFloat32, false, true);
  EXPECT_EQ(q8.unet->conv_in->bias.scalar_type(), torch::kFloat16);
  EXPECT_EQ(q8.unet->conv_norm_out->weight.scalar_type(), torch::kFloat16);
  const auto expect = nn::quantize_int8(h.at("conv_in.weight"));
  EXPECT_TRUE(torch::equal(q8.unet->conv_in->weight, expect.q));
  EXPECT_TRUE(torch::equal(nn::int8_scale_of(*q8.unet->conv_in), expect.scale));
  const auto fp = SDPipeline::load(half.string(), torch::kCPU, torch::kFloat32, false);
  const double db =
      psnr_pm1(generate(q8, int8_fixture_options({}, {})).samples, generate(fp, int8_fixture_options({}, {})).samples);
  EXPECT_GT(db, 35.0);

  const auto bf = SDPipeline::load(half.string(), torch::kCPU, torch::kBFloat16, false, true);
  EXPECT_EQ(bf.unet->dtype(), torch::kBFloat16);
  EXPECT_EQ(bf.unet->conv_in->weight.scalar_type(), torch::kInt8);
  EXPECT_EQ(bf.unet->conv_in->bias.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(nn::int8_scale_of(*bf.unet->conv_in).scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(bf.unet->conv_in->weight, expect.q)) << "quantised from the file's values";
  const auto r = generate(bf, int8_fixture_options({}, {}));
  EXPECT_GT(psnr_pm1(r.samples, generate(fp, int8_fixture_options({}, {})).samples), 25.0);
}

// SDXL: both text encoders (with the second's projection) and the UNet's added embedding.
TEST(SdInt8Weights, SdxlFolder) {
  const std::string dir = test::fixture("sdxl_pipeline_tiny");
  const auto q8 = SDPipeline::load(dir, torch::kCPU, torch::kFloat32, true, true);
  auto ref = SDPipeline::load(dir);
  ASSERT_TRUE(q8.text_2 && q8.text);
  EXPECT_EQ(q8.unet->add_embedding->linear_1->weight.scalar_type(), torch::kInt8);
  EXPECT_EQ(q8.text_2->model->text_projection->weight.scalar_type(), torch::kInt8);
  EXPECT_GT(dequantise_into(*q8.unet, *ref.unet), 30);
  EXPECT_GT(dequantise_into(*q8.text->model, *ref.text->model), 10);
  EXPECT_GT(dequantise_into(*q8.text_2->model, *ref.text_2->model), 10);
  const auto ids = torch::arange(3, 80, torch::kInt64).remainder(900).unsqueeze(0);
  torch::Tensor pa, pb;
  EXPECT_TRUE(torch::equal(q8.text_2->encode_ids(ids, 0, &pa), ref.text_2->encode_ids(ids, 0, &pb)));
  EXPECT_TRUE(torch::equal(pa, pb));
  const auto io = safetensors::load(dir + "/io.safetensors");
  SDOptions o;
  o.prompt_embeds = io.at("prompt_embeds");
  o.pooled_prompt_embeds = io.at("pooled_prompt_embeds");
  o.negative_prompt_embeds = io.at("negative_prompt_embeds");
  o.negative_pooled_prompt_embeds = io.at("negative_pooled_prompt_embeds");
  o.latents = io.at("latents");
  o.steps = 3;
  o.guidance = 5.0;
  o.width = o.height = 32;
  const auto a = generate(q8, o), b = generate(ref, o);
  EXPECT_TRUE(torch::equal(a.latents, b.latents)) << (a.latents - b.latents).abs().max().item<double>();
  const auto fp = SDPipeline::load(dir, torch::kCPU, torch::kFloat32, false);
  const double db = psnr_pm1(a.samples, generate(fp, o).samples);
  std::cout << "[int8] sdxl_pipeline_tiny: image PSNR against fp32 " << db << " dB\n";
  EXPECT_GT(db, 30.0);
}

}  // namespace
}  // namespace diffuse
