#include "train/vae_trainer.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "interrupt.h"
#include "models/error_of.h"
#include "nn/state_dict.h"

namespace diffuse {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

// 20 RGB images of `size` px: a coloured disc of random colour, radius and position on white.
void write_disc_set(const std::string& dir, int n, int size) {
  fs::create_directories(dir);
  torch::manual_seed(3);
  auto yy = torch::arange(size).view({size, 1}).to(torch::kFloat32);
  auto xx = torch::arange(size).view({1, size}).to(torch::kFloat32);
  for (int i = 0; i < n; ++i) {
    auto r = torch::rand({6});
    double cy = size * (0.3 + 0.4 * r[0].item<double>()), cx = size * (0.3 + 0.4 * r[1].item<double>());
    double rad = size * (0.15 + 0.15 * r[2].item<double>());
    auto mask = ((yy - cy).pow(2) + (xx - cx).pow(2) < rad * rad).to(torch::kFloat32);
    auto img = torch::ones({3, size, size});
    for (int c = 0; c < 3; ++c) img[c] = img[c] * (1 - mask) + mask * (2 * r[3 + c].item<double>() - 1);
    char name[32];
    std::snprintf(name, sizeof name, "/%03d.png", i);
    write_png(dir + name, to_image(img));
  }
}

// A small AutoencoderKL: f = 2, 16/32 channels.
std::string write_tiny_config(const std::string& dir) {
  nlohmann::json j = {{"_class_name", "AutoencoderKL"},
                      {"in_channels", 3},
                      {"out_channels", 3},
                      {"block_out_channels", {16, 32}},
                      {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                      {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}},
                      {"layers_per_block", 1},
                      {"latent_channels", 4},
                      {"norm_num_groups", 8}};
  write_file_atomically(dir + "/vae.json", j.dump());
  return dir + "/vae.json";
}

VaeTrainOptions tiny_options(const TempDir& dir, const std::string& out) {
  VaeTrainOptions o;
  o.data = dir / "data";
  o.out = dir / out;
  o.config = write_tiny_config(dir.path);
  o.batch = 8;
  o.lr = 3e-3;
  o.warmup = 5;
  o.save_every = 0;
  o.sample_every = 0;
  o.scale_batches = 2;
  o.device = "cpu";
  o.quiet = true;
  return o;
}

TEST(VaeTrainer, TinyVaeLearnsToReconstruct) {
  TempDir dir;
  write_disc_set(dir / "data", 40, 16);
  auto before = tiny_options(dir, "before");
  before.steps = 1;
  auto r0 = train_vae(before);
  auto o = tiny_options(dir, "run");
  o.steps = 60;
  o.sample_every = 30;
  auto r = train_vae(o);
  std::printf("held-out PSNR after 1 step %.2f dB, after 60 steps %.2f dB; scaling_factor %.4f\n", r0.heldout_psnr,
              r.heldout_psnr, r.scaling_factor);
  EXPECT_EQ(r.steps, 60);
  EXPECT_EQ(r.heldout_images, 4);  // every 10th image of the folder
  EXPECT_GT(r.heldout_psnr, r0.heldout_psnr + 6.0);
  EXPECT_GT(r.heldout_psnr, 16.0);
  EXPECT_TRUE(fs::exists(dir / "run/samples/step_0000030.png"));
  EXPECT_TRUE(fs::exists(dir / "run/loss.png"));
  EXPECT_TRUE(fs::exists(dir / "run/metrics.csv"));

  // The output folder is a diffusers AutoencoderKL folder with the measured scaling factor,
  // and metrics.json reports the same PSNR.
  auto vae = load_autoencoder_kl(dir / "run");
  EXPECT_NEAR(vae->config().scaling_factor, r.scaling_factor, 1e-9);
  auto m = nlohmann::json::parse(read_file(dir / "run/metrics.json"));
  EXPECT_NEAR(m.at("heldout_psnr_db").get<double>(), r.heldout_psnr, 1e-9);
  Dataset all = load_dataset(dir / "data", "train");
  auto held = all.images.index_select(0, torch::tensor({9, 19, 29, 39}, torch::kInt64));
  EXPECT_NEAR(reconstruction_psnr(vae, held, 3), r.heldout_psnr, 1e-4);
}

std::map<std::string, torch::Tensor> checkpoint_tensors(const std::string& run) {
  std::map<std::string, torch::Tensor> m;
  for (const char* f : {"model", "ema", "optimizer", "discriminator", "disc_optimizer", "vae_state"})
    for (auto& [k, v] : safetensors::load(run + "/checkpoint/" + f + ".safetensors"))
      m[std::string(f) + "." + k] = v;
  return m;
}

TEST(VaeTrainer, ResumedRunEqualsUninterruptedBitwise) {
  TempDir dir;
  write_disc_set(dir / "data", 12, 16);
  auto a = tiny_options(dir, "a");
  a.steps = 10;
  a.ema_decay = 0.9;
  a.disc_weight = 0.5;  // the discriminator and its optimizer are part of the checkpoint
  a.disc_start = 3;
  a.disc_channels = 8;
  a.lr_schedule = "cosine";
  train_vae(a);

  auto b = a;
  b.out = dir / "b";
  b.save_every = 5;
  auto rb = test::run_until_file_appears(dir / "b/checkpoint/state.json", [&] { return train_vae(b); });
  EXPECT_TRUE(rb.interrupted);
  EXPECT_LT(rb.steps, 10);
  b.resume = true;
  auto rb2 = train_vae(b);
  EXPECT_EQ(rb2.steps, 10);

  auto wa = checkpoint_tensors(dir / "a"), wb = checkpoint_tensors(dir / "b");
  ASSERT_EQ(wa.size(), wb.size());
  for (auto& [k, v] : wa) EXPECT_TRUE(torch::equal(v, wb.at(k))) << k;
  auto va = safetensors::load(dir / "a/diffusion_pytorch_model.safetensors");
  auto vb = safetensors::load(dir / "b/diffusion_pytorch_model.safetensors");
  for (auto& [k, v] : va) EXPECT_TRUE(torch::equal(v, vb.at(k))) << k;
  EXPECT_EQ(read_file(dir / "a/config.json"), read_file(dir / "b/config.json"));
}

TEST(VaeTrainer, ScalingFactorIsOneOverLatentStd) {
  // A VAE whose posterior is N(0.5, 0.25) everywhere: quant_conv outputs its bias only.
  AutoencoderKLConfig c;
  c.block_out_channels = {8};
  c.norm_num_groups = 4;
  c.latent_channels = 2;
  AutoencoderKL vae(c);
  {
    torch::NoGradGuard ng;
    vae->quant_conv->weight.zero_();
    vae->quant_conv->bias.copy_(torch::tensor({0.5, 0.5, std::log(0.25), std::log(0.25)}));
  }
  Dataset d;
  d.images = torch::randint(0, 256, {64, 3, 8, 8}, torch::kUInt8);
  double s = latent_scaling_factor(vae, d, 4, 16, 0);  // 64 images x 2 x 8 x 8 = 8192 samples of N(0.5, 0.5^2)
  EXPECT_NEAR(s, 2.0, 2.0 * 0.03);
  EXPECT_DOUBLE_EQ(s, latent_scaling_factor(vae, d, 4, 16, 0));  // deterministic
  // PSNR: an error of 0.2 in [-1, 1] is 0.1 in [0, 1] -> exactly 20 dB.
  EXPECT_NEAR(psnr_per_image(torch::zeros({1, 3, 2, 2}), torch::full({1, 3, 2, 2}, 0.2)).item<double>(), 20.0, 1e-5);
}

TEST(VaeTrainer, RejectsBadInput) {
  TempDir dir;
  write_disc_set(dir / "data", 4, 18);
  auto o = tiny_options(dir, "run");
  o.steps = 1;
  o.data = "no-such-dataset";
  EXPECT_THROW(train_vae(o), Error);
  o.data = dir / "data";
  o.config = "tiny";  // f = 4: 18 px is not divisible
  std::string msg = test::error_of([&] { train_vae(o); });
  EXPECT_NE(msg.find("18"), std::string::npos) << msg;
  EXPECT_NE(msg.find("downsampling factor 4"), std::string::npos) << msg;
  o.config = "enormous";
  EXPECT_THROW(train_vae(o), Error);
  o.config = write_tiny_config(dir.path);
  o.recon_loss = "l3";
  EXPECT_THROW(train_vae(o), Error);
  o.recon_loss = "l2";
  o.channels = 1;  // config has 3 input channels
  EXPECT_THROW(train_vae(o), Error);
  o.channels = 0;
  train_vae(o);
  EXPECT_THROW(train_vae(o), Error);  // out already holds a run
  o.resume = true;
  o.kl_weight = 1.0;  // incompatible with the checkpoint
  EXPECT_THROW(train_vae(o), Error);
}

}  // namespace
}  // namespace diffuse
