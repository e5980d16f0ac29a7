// `diffuse generate` on a Stable Diffusion pipeline folder, through the real binary.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/atomic_file.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "nn/state_dict.h"
#include "pipelines/ldm_convert.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse {
namespace {

using test::TempDir;

// Exit code and stdout+stderr of `diffuse ARGS`.
std::pair<int, std::string> sd_cli(const std::string& args) {
  std::string out;
  FILE* p = popen((std::string(DIFFUSE_CLI) + " " + args + " --threads 1 2>&1").c_str(), "r");
  if (!p) return {-1, out};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string tiny() { return test::fixture("sd_pipeline_tiny"); }
std::string io() { return tiny() + "/io.safetensors"; }

// --latents + --prompt-embeds reproduce diffusers' output; --out .safetensors holds
// samples, latents and noise.
TEST(SdCli, ReproducesDiffusersFromLatentsAndEmbeddings) {
  TempDir t;
  auto [code, out] = sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --latents " + io() +
                            " --steps 5 --eta 0 --dtype fp32 --out " + (t / "o.safetensors"));
  ASSERT_EQ(code, 0) << out;
  auto got = safetensors::load(t / "o.safetensors");
  auto ref = safetensors::load(io());
  EXPECT_LT(test::max_abs_diff(got.at("latents"), ref.at("step_latents")[4]), 2e-4);
  EXPECT_LT(test::max_abs_diff((got.at("samples") / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1}), ref.at("image")), 1e-3);
  EXPECT_TRUE(torch::equal(got.at("noise"), ref.at("latents")));
}

// The tiny pipeline written as a single-file LDM checkpoint, run with the folder's configs
// (--model-config), reproduces diffusers' StableDiffusionPipeline.
TEST(SdCli, SingleFileCheckpointReproducesDiffusers) {
  TempDir t;
  auto pipe = SDPipeline::load(tiny());
  auto ldm = to_ldm(pipe.unet->config(), nn::state_dict(*pipe.unet), pipe.vae->config(), nn::state_dict(*pipe.vae),
                    nn::state_dict(*pipe.text->model));
  safetensors::save(t / "tiny.safetensors", ldm);
  auto [code, out] =
      sd_cli("generate --model " + (t / "tiny.safetensors") + " --model-config " + tiny() + " --prompt-embeds " + io() +
             " --latents " + io() + " --steps 5 --eta 0 --dtype fp32 --out " + (t / "o.safetensors"));
  ASSERT_EQ(code, 0) << out;
  auto got = safetensors::load(t / "o.safetensors");
  auto ref = safetensors::load(io());
  EXPECT_LT(test::max_abs_diff(got.at("latents"), ref.at("step_latents")[4]), 2e-4);
  EXPECT_LT(test::max_abs_diff((got.at("samples") / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1}), ref.at("image")), 1e-3);
}

TEST(SdCli, PngCarriesA1111Parameters) {
  TempDir t;
  auto [code, out] = sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() +
                            " --steps 2 --seed 5 --cfg 5 --sampler 'DPM++ 2M Karras' --out " + (t / "a.png"));
  ASSERT_EQ(code, 0) << out;
  auto img = read_image(t / "a.png");
  EXPECT_EQ(img.width, 16);
  auto params = read_png_text(t / "a.png").at("parameters");
  for (const char* s : {"Steps: 2", "Sampler: dpm++2m", "Schedule type: karras", "CFG scale: 5", "Seed: 5",
                        "Size: 16x16", "Model: sd_pipeline_tiny"})
    EXPECT_NE(params.find(s), std::string::npos) << s << " in " << params;
}

TEST(SdCli, Img2ImgAndInpaintFromFiles) {
  TempDir t;
  write_png(t / "in.png", to_image(torch::rand({3, 16, 16}) * 2 - 1));
  auto m = -torch::ones({1, 16, 16});
  m.slice(1, 0, 8).fill_(1);
  write_png(t / "mask.png", to_image(m));
  auto [c1, o1] = sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --image " + (t / "in.png") +
                         " --strength 0.5 --steps 4 --out " + (t / "i2i.png"));
  EXPECT_EQ(c1, 0) << o1;
  EXPECT_NE(read_png_text(t / "i2i.png").at("parameters").find("Denoising strength: 0.5"), std::string::npos);
  auto [c2, o2] = sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --image " + (t / "in.png") +
                         " --mask " + (t / "mask.png") + " --mask-blur 1 --steps 2 --out " + (t / "inp.safetensors"));
  EXPECT_EQ(c2, 0) << o2;
  auto [c3, o3] = sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --image " + (t / "in.png") +
                         " --outpaint 8,0,0,8 --steps 2 --out " + (t / "outp.png"));
  ASSERT_EQ(c3, 0) << o3;
  EXPECT_EQ(read_image(t / "outp.png").width, 24);
}

TEST(SdCli, BadInputIsAClearError) {
  TempDir t;
  auto [c1, o1] =
      sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --width 20 --out " + (t / "a.png"));
  EXPECT_EQ(c1, 1);
  EXPECT_NE(o1.find("--width: must be a multiple of 8"), std::string::npos) << o1;
  std::FILE* f = std::fopen((t / "m.ckpt").c_str(), "w");
  std::fclose(f);
  auto [c2, o2] = sd_cli("generate --model " + (t / "m.ckpt") + " --out " + (t / "a.png"));
  EXPECT_EQ(c2, 1);
  EXPECT_NE(o2.find("pickled"), std::string::npos) << o2;
  auto [c5, o5] =
      sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --dtype fp16 --out " + (t / "a.png"));
  EXPECT_EQ(c5, 1);
  EXPECT_NE(o5.find("use bf16 or fp32"), std::string::npos) << o5;
  auto [c4, o4] = sd_cli("generate --model " + io() + " --out " + (t / "a.png"));  // safetensors, not SD
  EXPECT_EQ(c4, 1);
  EXPECT_NE(o4.find("not a Stable Diffusion 1.x/2.x/XL checkpoint: missing UNet"), std::string::npos) << o4;
  auto [c3, o3] = sd_cli("generate --model " + tiny() + " --mask x.png --out " + (t / "a.png"));
  EXPECT_EQ(c3, 1);
  EXPECT_NE(o3.find("--mask: needs --image"), std::string::npos) << o3;
}

// Broken init images: each refused with one error naming the file, exit code 1, no output file.
TEST(SdCli, BrokenImagesAreRefusedWithoutOutput) {
  TempDir t;
  const std::string good = encode_png(to_image(torch::zeros({3, 16, 16})));
  std::string huge = good;  // IHDR claiming 100000 x 100000 pixels, CRC fixed
  for (int i = 0; i < 4; ++i) huge[16 + i] = huge[20 + i] = static_cast<char>((100000u >> (24 - 8 * i)) & 0xff);
  const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(huge.data()) + 12, 17));
  for (int i = 0; i < 4; ++i) huge[29 + i] = static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
  const std::string jpg = read_file(test::source_path("tests/data/images/baseline.jpg"));
  const std::pair<std::string, std::string> cases[] = {
      {"truncated.png", good.substr(0, good.size() / 2)},
      {"huge.png", huge},
      {"noise.png", std::string(300, '\x17')},
      {"truncated.jpg", jpg.substr(0, 40)},
      {"empty.png", ""},
  };
  for (const auto& [name, bytes] : cases) {
    std::ofstream(t / name, std::ios::binary) << bytes;
    auto [code, out] = sd_cli("generate --model " + tiny() + " --prompt-embeds " + io() + " --image " + (t / name) +
                              " --steps 2 --out " + (t / "out.png"));
    EXPECT_EQ(code, 1) << name << "\n" << out;
    EXPECT_NE(out.find(name), std::string::npos) << out;
    EXPECT_EQ(out.find("terminate called"), std::string::npos) << out;
    EXPECT_FALSE(std::filesystem::exists(t / "out.png")) << name;
  }
}

}  // namespace
}  // namespace diffuse
