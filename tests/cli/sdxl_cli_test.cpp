// `diffuse generate` on an SDXL pipeline folder, through the real binary: both recorded diffusers
// runs from --prompt-embeds (with the pooled embeddings) and --latents, micro-conditioning flags,
// the parameters they leave in the PNG, and bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>

#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "pipelines/sd_pipeline.h"
#include "sdxl_tiny.h"

namespace diffuse {
namespace {

using test::TempDir;

std::pair<int, std::string> xl_cli(const std::string& args) {
  std::string out;
  FILE* p = popen((std::string(DIFFUSE_CLI) + " " + args + " --threads 1 2>&1").c_str(), "r");
  if (!p) return {-1, out};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string xl_tiny() { return test::fixture("sdxl_pipeline_tiny"); }

void check_xl_run(const std::string& file, const std::string& flags) {
  TempDir t;
  const std::string io = xl_tiny() + "/" + file;
  auto [code, out] =
      xl_cli("generate --model " + xl_tiny() + " --prompt-embeds " + io + " --latents " + io +
             " --steps 5 --cfg 5 --width 32 --height 32 --dtype fp32 " + flags + " --out " + (t / "o.safetensors"));
  ASSERT_EQ(code, 0) << out;
  auto got = safetensors::load(t / "o.safetensors");
  auto ref = safetensors::load(io);
  EXPECT_LT(test::max_abs_diff(got.at("latents"), ref.at("step_latents")[4]), 2e-4 + 2e-5 * 25) << file;
  EXPECT_LT(test::max_abs_diff((got.at("samples") / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1}), ref.at("image")), 1e-3)
      << file;
  EXPECT_TRUE(torch::equal(got.at("noise"), ref.at("latents")));
}

TEST(SdxlCli, ReproducesDiffusersFromLatentsAndEmbeddings) { check_xl_run("io.safetensors", ""); }

// No negative embeddings in the file: zeros (force_zeros_for_empty_prompt); the size flags.
TEST(SdxlCli, MicroConditioningFlagsReproduceDiffusers) {
  check_xl_run("io_microcond.safetensors",
               "--original-size 1024,768 --crop-coords 12,40 --target-size 32,48 --negative-original-size 512,512 "
               "--negative-target-size 32,32");
}

TEST(SdxlCli, PngCarriesTheSdxlParameters) {
  TempDir t;
  const std::string io = xl_tiny() + "/io.safetensors";
  auto [code, out] = xl_cli("generate --model " + xl_tiny() + " --prompt-embeds " + io +
                            " --steps 2 --original-size 1024,768 --crop-coords 12,40 --out " + (t / "a.png"));
  ASSERT_EQ(code, 0) << out;
  auto params = read_png_text(t / "a.png").at("parameters");
  for (const char* s : {"Original size: \"1024, 768\"", "Crop coords: \"12, 40\"", "Sampler: euler", "Size: 16x16"})
    EXPECT_NE(params.find(s), std::string::npos) << s << " in " << params;
  // --params-from reads them back: the same image
  auto [c2, o2] = xl_cli("generate --model " + xl_tiny() + " --prompt-embeds " + io + " --params-from " +
                         (t / "a.png") + " --out " + (t / "b.png"));
  ASSERT_EQ(c2, 0) << o2;
  EXPECT_EQ(read_image(t / "a.png").data, read_image(t / "b.png").data);
}

TEST(SdxlCli, BadInputIsAClearError) {
  TempDir t;
  const std::string io = xl_tiny() + "/io.safetensors";
  auto [c1, o1] = xl_cli("generate --model " + xl_tiny() + " --prompt-embeds " + io + " --original-size 1024 --out " +
                         (t / "a.png"));
  EXPECT_NE(c1, 0);
  EXPECT_NE(o1.find("--original-size"), std::string::npos) << o1;
  auto [c2, o2] = xl_cli("generate --model " + xl_tiny() + " --prompt-embeds " + io + " --aesthetic-score 6 --out " +
                         (t / "a.png"));
  EXPECT_NE(c2, 0);
  EXPECT_NE(o2.find("refiners only"), std::string::npos) << o2;
  auto [c3, o3] =
      xl_cli("generate --model " + test::fixture("sd_pipeline_tiny") + " --prompt-embeds " +
             test::fixture("sd_pipeline_tiny/io.safetensors") + " --target-size 512,512 --out " + (t / "a.png"));
  EXPECT_NE(c3, 0);
  EXPECT_NE(o3.find("SDXL models only"), std::string::npos) << o3;
  auto [c4, o4] =
      xl_cli("generate --model " + xl_tiny() + " --prompt-embeds " + io + " --width 36 --out " + (t / "a.png"));
  EXPECT_NE(c4, 0);
  EXPECT_NE(o4.find("--width: must be a multiple of 8"), std::string::npos) << o4;
}

// --refiner: the base runs the steps up to --refiner-switch, the refiner the rest from the base's
// latents, as the library's denoising_end / denoising_start do; the PNG names both (A1111's keys).
TEST(SdxlCli, RefinerTakesOverAtTheSwitch) {
  TempDir t;
  const std::string base = test::tiny_sdxl_folder(t / "base"), refiner = test::tiny_sdxl_refiner(t / "refiner");
  auto [code, out] = xl_cli("generate --model " + base + " --refiner " + refiner +
                            " --refiner-switch 0.6 --prompt 'a red cube' --negative-prompt 'blurry' --steps 5 "
                            "--width 32 --height 32 --seed 4 --dtype fp32 --out " +
                            (t / "o.safetensors"));
  ASSERT_EQ(code, 0) << out;
  auto got = safetensors::load(t / "o.safetensors");
  auto bp = SDPipeline::load(base), rp = SDPipeline::load(refiner);
  SDOptions o;
  o.prompt = "a red cube";
  o.negative_prompt = "blurry";
  o.steps = 5;
  o.guidance = 5;  // the SDXL default of the CLI, as diffusers
  o.width = o.height = 32;
  o.seed = 4;
  o.denoising_end = 0.6;
  auto a = generate(bp, o);
  SDOptions r = o;
  r.denoising_end = NAN;
  r.denoising_start = 0.6;
  r.start_latents = a.x_end;
  auto b = generate(rp, r);
  EXPECT_LT(test::max_abs_diff(got.at("latents"), b.latents), 1e-5);
  EXPECT_LT(test::max_abs_diff(got.at("samples"), b.samples), 1e-5);
  // the base alone gives another image
  SDOptions plain = o;
  plain.denoising_end = NAN;
  EXPECT_GT(test::max_abs_diff(generate(bp, plain).latents, b.latents), 1e-3);
  auto [c2, o2] = xl_cli("generate --model " + base + " --refiner " + refiner +
                         " --prompt 'a red cube' --steps 5 --width 32 --height 32 --out " + (t / "o.png"));
  ASSERT_EQ(c2, 0) << o2;
  auto params = read_png_text(t / "o.png").at("parameters");
  for (const std::string& s : {"Refiner: " + refiner, std::string("Refiner switch at: 0.8")})
    EXPECT_NE(params.find(s), std::string::npos) << s << " in " << params;
}

// --vae replaces the model's VAE (here with its own weights: the same image); a bad file is named.
TEST(SdxlCli, VaeFlagReplacesTheVae) {
  TempDir t;
  const std::string io = xl_tiny() + "/io.safetensors";
  safetensors::save(t / "vae.safetensors", safetensors::load(xl_tiny() + "/vae/diffusion_pytorch_model.safetensors"));
  const std::string run = "generate --model " + xl_tiny() + " --prompt-embeds " + io + " --steps 2 --out ";
  auto [c1, o1] = xl_cli(run + (t / "a.safetensors"));
  ASSERT_EQ(c1, 0) << o1;
  auto [c2, o2] = xl_cli(run + (t / "b.safetensors") + " --vae " + (t / "vae.safetensors"));
  ASSERT_EQ(c2, 0) << o2;
  EXPECT_TRUE(torch::equal(safetensors::load(t / "a.safetensors").at("samples"),
                           safetensors::load(t / "b.safetensors").at("samples")));
  auto [c3, o3] = xl_cli(run + (t / "c.safetensors") + " --vae " + io);
  EXPECT_NE(c3, 0);
  EXPECT_NE(o3.find("--vae"), std::string::npos) << o3;
}

// A refiner given as the model of a text-to-image run, and a refiner for a non-SDXL model.
TEST(SdxlCli, RefinerMisuseIsAClearError) {
  TempDir t;
  const std::string refiner = test::tiny_sdxl_refiner(t / "refiner");
  auto [c1, o1] = xl_cli("generate --model " + refiner + " --prompt 'a cube' --out " + (t / "a.png"));
  EXPECT_NE(c1, 0);
  EXPECT_NE(o1.find("SDXL refiner"), std::string::npos) << o1;
  EXPECT_NE(o1.find("--image"), std::string::npos) << o1;
  auto [c2, o2] =
      xl_cli("generate --model " + test::fixture("sd_pipeline_tiny") + " --prompt-embeds " +
             test::fixture("sd_pipeline_tiny/io.safetensors") + " --refiner " + refiner + " --out " + (t / "a.png"));
  EXPECT_NE(c2, 0);
  EXPECT_NE(o2.find("--refiner"), std::string::npos) << o2;
  auto [c3, o3] = xl_cli("generate --model " + test::tiny_sdxl_folder(t / "base") + " --refiner " + refiner +
                         " --refiner-switch 1.5 --prompt x --out " + (t / "a.png"));
  EXPECT_NE(c3, 0);
  EXPECT_NE(o3.find("--refiner-switch"), std::string::npos) << o3;
}

}  // namespace
}  // namespace diffuse
