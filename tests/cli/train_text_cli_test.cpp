// `diffuse train-lora` and `diffuse train --text-encoder` through the real binary: the LoRA file
// that `generate --lora` applies, the StableDiffusionPipeline folder that `generate --prompt` runs,
// and errors that name the command's flags.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "run_cli.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

using test::run_cli;
using test::TempDir;
namespace fs = std::filesystem;

// Four captioned 16x16 images of one colour each.
std::string write_captioned(const TempDir& dir) {
  fs::create_directories(dir / "data");
  const char* names[] = {"red", "green", "blue", "black"};
  for (int i = 0; i < 4; ++i) {
    auto img = torch::full({3, 16, 16}, -1.0);
    if (i < 3) img[i].fill_(1.0);
    write_png(dir / ("data/" + std::to_string(i) + ".png"), to_image(img));
    std::ofstream(dir / ("data/" + std::to_string(i) + ".txt")) << "a " << names[i] << " square";
  }
  return dir / "data";
}

TEST(TrainTextCli, TrainLoraWritesAKohyaFileThatGenerateApplies) {
  TempDir dir;
  const std::string model = test::tiny_sd_folder(dir / "sd");
  const std::string data = write_captioned(dir);
  auto r = run_cli("train-lora --model " + model + " --data " + data + " --out " + dir / "my.safetensors" +
                   " --rank 2 --steps 8 --lr 1e-3 --threads 1 --quiet");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("8 steps, 32 UNet + 0 text-encoder layers"), std::string::npos) << r.output;
  auto f = safetensors::File::open(dir / "my.safetensors");
  EXPECT_EQ(f.metadata().at("ss_network_dim"), "2");
  r = run_cli("generate --model " + model + " --lora " + dir / "my.safetensors:0.5" +
              " --prompt \"a red square\" --steps 2 --out " + dir / "out.png");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir / "out.png"));
  // Errors name the flags.
  r = run_cli("train-lora --model " + model + " --data " + data + " --out " + dir / "big.safetensors" +
              " --rank 40 --steps 1 --quiet");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--rank 40: larger than the width of layer"), std::string::npos) << r.output;
  r = run_cli("train-lora --model " + test::source_path("models/fashion-mnist") + " --data " + data + " --out " +
              dir / "x.safetensors --steps 1 --quiet");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("'DDPMPipeline' is not a Stable Diffusion pipeline"), std::string::npos) << r.output;
  fs::remove(dir / "data/2.txt");
  r = run_cli("train-lora --model " + model + " --data " + data + " --out " + dir / "y.safetensors --steps 1 --quiet");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("1 of 4 images have no caption"), std::string::npos) << r.output;
}

TEST(TrainTextCli, TrainTextEncoderWritesAPipelineThatGenerateRuns) {
  TempDir dir;
  const std::string data = write_captioned(dir);
  auto r = run_cli("train --data " + data + " --text-encoder clip-tiny --latent " +
                   test::source_path("models/emoji-vae") + " --config t2i-tiny --image-size 16 --out " + dir / "t2i" +
                   " --steps 3 --batch 2 --sample-every 3 --sample-prompt \"a blue square\" --threads 1 --quiet");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir / "t2i/samples/step_0000003.png"));
  r = run_cli("generate --model " + dir / "t2i" + " --prompt \"a green square\" -n 2 --steps 3 --out " + dir / "g.png");
  ASSERT_EQ(r.code, 0) << r.output;
  const Image g = read_image(dir / "g.png");
  EXPECT_GT(g.width, 2 * 16);  // two 16x16 images side by side
  EXPECT_GE(g.height, 16);
  r = run_cli("train --data " + data + " --text-encoder clip-tiny --out " + dir / "nolatent --steps 1 --quiet");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--latent is required"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace diffuse
