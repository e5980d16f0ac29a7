// `diffuse train-vae` through the real binary: a loadable AutoencoderKL folder, clear errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/image.h"
#include "fixtures.h"
#include "models/autoencoder_kl.h"
#include "run_cli.h"

namespace diffuse {
namespace {

using test::run_cli;
using test::TempDir;
namespace fs = std::filesystem;

// 12 RGB images of `size` px with a random colour block, and a small f = 2 VAE config.
void write_data(const TempDir& dir, int size) {
  fs::create_directories(dir / "data");
  torch::manual_seed(1);
  for (int i = 0; i < 12; ++i) {
    auto img = torch::ones({3, size, size});
    img.slice(1, size / 4, size / 2 + 2).slice(2, 2, size - 2).copy_(torch::rand({3, 1, 1}) * 2 - 1);
    write_png(dir / ("data/" + std::to_string(i) + ".png"), to_image(img));
  }
  nlohmann::json j = {{"_class_name", "AutoencoderKL"},
                      {"block_out_channels", {8, 16}},
                      {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                      {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}},
                      {"norm_num_groups", 4},
                      {"latent_channels", 2}};
  write_file_atomically(dir / "vae.json", j.dump());
}

TEST(TrainVaeCli, WritesALoadableAutoencoderFolderWithMetrics) {
  TempDir dir;
  write_data(dir, 8);
  auto r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "vae" + " --config " + dir / "vae.json" +
                   " --steps 4 --batch 4 --scale-batches 1 --sample-every 2 --threads 1 --quiet");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("held-out PSNR"), std::string::npos) << r.output;
  auto vae = load_autoencoder_kl(dir / "vae");
  EXPECT_EQ(vae->config().latent_channels, 2);
  auto m = nlohmann::json::parse(read_file(dir / "vae/metrics.json"));
  EXPECT_EQ(m.at("heldout_images").get<int>(), 1);
  EXPECT_DOUBLE_EQ(m.at("scaling_factor").get<double>(), vae->config().scaling_factor);
  EXPECT_TRUE(fs::exists(dir / "vae/samples/step_0000002.png"));
  // Continuing a finished run needs more steps.
  r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "vae" + " --config " + dir / "vae.json" +
              " --steps 4 --batch 4 --scale-batches 1 --threads 1 --quiet --resume");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("raise --steps"), std::string::npos) << r.output;
}

TEST(TrainVaeCli, DecoderFineTuneWithThePerceptualLoss) {
  TempDir dir;
  write_data(dir, 8);
  const std::string common = " --config " + dir / "vae.json" + " --batch 4 --scale-batches 1 --threads 1 --quiet";
  auto r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "base" + common + " --steps 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string emoji_net = std::string(DIFFUSE_SOURCE_DIR) + "/models/emoji-classifier";
  r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "ft" + common + " --steps 2 --init " +
              dir / "base" + " --freeze-encoder --perceptual " + emoji_net);
  ASSERT_EQ(r.code, 0) << r.output;
  auto cfg = nlohmann::json::parse(read_file(dir / "ft/train_config.json"));
  EXPECT_EQ(cfg.at("perceptual"), emoji_net);
  EXPECT_DOUBLE_EQ(cfg.at("perceptual_weight").get<double>(), 1.0);  // the default with --perceptual
  EXPECT_GT(nlohmann::json::parse(read_file(dir / "ft/metrics.json")).at("perceptual").get<double>(), 0.0);
  auto base = load_autoencoder_kl(dir / "base"), ft = load_autoencoder_kl(dir / "ft");
  EXPECT_TRUE(torch::equal(base->encoder->conv_in->weight, ft->encoder->conv_in->weight));
  EXPECT_FALSE(torch::equal(base->decoder->conv_out->weight, ft->decoder->conv_out->weight));
  EXPECT_DOUBLE_EQ(base->config().scaling_factor, ft->config().scaling_factor);

  // A feature network for other images (greyscale Fashion-MNIST): one clear error, nothing written.
  const std::string grey_net = std::string(DIFFUSE_SOURCE_DIR) + "/models/fashion-mnist-classifier";
  r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "grey" + common + " --steps 2 --perceptual " +
              grey_net);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(grey_net), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("channel"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "grey"));
  r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "w" + common + " --perceptual-weight 2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--perceptual"), std::string::npos) << r.output;
  r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "f" + common + " --freeze-encoder");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--init"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "w"));
  EXPECT_FALSE(fs::exists(dir / "f"));
}

TEST(TrainVaeCli, BadInputGivesOneClearError) {
  TempDir dir;
  write_data(dir, 10);
  auto r = run_cli("train-vae --data emoji --out " + dir / "a" + " --quiet", "DIFFUSE_EMOJI_FONT=" + dir / "none.ttf");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("fonts-noto-color-emoji"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "a/checkpoint"));
  r = run_cli("train-vae --data " + dir / "data" + " --out " + dir / "b" + " --config tiny --quiet");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("not divisible by the VAE's downsampling factor 4"), std::string::npos) << r.output;
  r = run_cli("train-vae --data nothing-here --out " + dir / "c" + " --quiet");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("nothing-here"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace diffuse
