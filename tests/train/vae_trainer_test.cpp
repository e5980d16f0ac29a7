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
    for (auto& [k, v] : safetensors::load(run + "/checkpoint/" + f + ".safetensors")) m[std::string(f) + "." + k] = v;
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
  for (auto& [k, v] : wa)  // bitwise; NaN (a loss not yet logged) equals NaN
    EXPECT_TRUE(torch::equal(v, wb.at(k)) || torch::allclose(v, wb.at(k), 0.0, 0.0, /*equal_nan=*/true)) << k;
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

TEST(VaeTrainer, PerceptualLossIsAddedToTheObjective) {
  TempDir dir;
  write_disc_set(dir / "data", 40, 16);
  Dataset all = load_dataset(dir / "data", "train");
  auto held = all.images.index_select(0, torch::tensor({9, 19, 29, 39}, torch::kInt64)).to(torch::kFloat32);
  held = held.div(127.5).sub(1.0);
  auto held_brightness = [&](const std::string& run) {
    torch::NoGradGuard ng;
    return load_autoencoder_kl(run)->forward(held).clamp(-1, 1).mean().item<double>();
  };

  // The logged objective after one step is exactly L1 + beta/pixels * KL + weight * perceptual.
  auto one = tiny_options(dir, "one");
  one.steps = 1;
  one.kl_weight = 0.5;
  one.perceptual = [](const torch::Tensor& rec, const torch::Tensor& ref) {
    return (rec - ref).pow(2).mean({1, 2, 3});
  };
  one.perceptual_weight = 3.0;
  auto r1 = train_vae(one);
  auto m = nlohmann::json::parse(read_file(dir / "one/metrics.json"));
  const double rec = m.at("recon_loss").get<double>(), kl = m.at("kl").get<double>();
  const double perc = m.at("perceptual").get<double>();
  EXPECT_GT(perc, 0.0);
  EXPECT_NEAR(r1.final_loss, rec + 0.5 / (3 * 16 * 16) * kl + 3.0 * perc, 1e-6 * r1.final_loss);

  // Its gradient reaches the decoder: a term that rewards dark reconstructions, which the pixel
  // loss does not ask for, darkens them. It is called once per step on the live reconstruction.
  auto plain = tiny_options(dir, "plain");
  plain.steps = 25;
  train_vae(plain);
  auto dark = tiny_options(dir, "dark");
  dark.steps = 25;
  int calls = 0, with_grad = 0;
  dark.perceptual = [&](const torch::Tensor& rec, const torch::Tensor& ref) {
    ++calls;
    EXPECT_EQ(rec.sizes(), ref.sizes());
    if (rec.requires_grad()) ++with_grad;
    return (rec + 1).mean({1, 2, 3});
  };
  dark.perceptual_weight = 1.0;
  dark.perceptual_source = "darkness";
  train_vae(dark);
  EXPECT_EQ(calls, 26);  // one probe before training + one per step
  EXPECT_EQ(with_grad, 25);
  const double b_plain = held_brightness(dir / "plain"), b_dark = held_brightness(dir / "dark");
  std::printf("held-out mean brightness: %.3f without, %.3f with the darkening term\n", b_plain, b_dark);
  EXPECT_LT(b_dark, b_plain - 0.3);

  // metrics.csv and loss.png carry the term; train_config.json names it; plain runs log none.
  EXPECT_NE(read_file(dir / "dark/metrics.csv").find(",perceptual\n"), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "dark/train_config.json")).at("perceptual"), "darkness");
  EXPECT_TRUE(nlohmann::json::parse(read_file(dir / "plain/metrics.json")).at("perceptual").is_null());
}

TEST(VaeTrainer, FrozenEncoderFineTuneKeepsEncoderAndScalingFactor) {
  TempDir dir;
  write_disc_set(dir / "data", 20, 16);
  auto base = tiny_options(dir, "base");
  base.steps = 5;
  auto rb = train_vae(base);

  auto ft = tiny_options(dir, "ft");
  ft.config = "tiny";  // ignored: the configuration comes from --init
  ft.init = dir / "base";
  ft.freeze_encoder = true;
  ft.steps = 5;
  ft.ema_decay = 0.9;
  auto rf = train_vae(ft);
  EXPECT_DOUBLE_EQ(rf.scaling_factor, rb.scaling_factor);
  auto a = safetensors::load(dir / "base/diffusion_pytorch_model.safetensors");
  auto b = safetensors::load(dir / "ft/diffusion_pytorch_model.safetensors");
  ASSERT_EQ(a.size(), b.size());
  int encoder = 0, decoder_changed = 0;
  for (auto& [k, v] : a) {
    if (k.rfind("encoder.", 0) == 0 || k.rfind("quant_conv.", 0) == 0) {
      ++encoder;
      EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
    } else if (!torch::equal(v, b.at(k))) {
      ++decoder_changed;
    }
  }
  EXPECT_GT(encoder, 10);
  EXPECT_GT(decoder_changed, 10);
  EXPECT_DOUBLE_EQ(load_autoencoder_kl(dir / "ft")->config().scaling_factor, rb.scaling_factor);
  // Without freezing, --init starts from the weights and trains everything.
  auto all = tiny_options(dir, "all");
  all.init = dir / "base";
  all.steps = 1;
  all.lr = 1e-6;
  train_vae(all);
  auto c = safetensors::load(dir / "all/diffusion_pytorch_model.safetensors");
  EXPECT_FALSE(torch::equal(a.at("encoder.conv_in.weight"), c.at("encoder.conv_in.weight")));
  EXPECT_LT((a.at("encoder.conv_in.weight") - c.at("encoder.conv_in.weight")).abs().max().item<double>(), 1e-4);
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
  o.perceptual_weight = 1.0;  // without a network
  msg = test::error_of([&] { train_vae(o); });
  EXPECT_NE(msg.find("--perceptual"), std::string::npos) << msg;
  o.perceptual = [](const torch::Tensor& a, const torch::Tensor&) { return a.mean(); };  // not one per image
  o.perceptual_source = "scalar-net";
  msg = test::error_of([&] { train_vae(o); });
  EXPECT_NE(msg.find("scalar-net"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(o.out)) << "no partial output";
  o.perceptual = {};
  o.perceptual_weight = 0;
  o.freeze_encoder = true;  // without --init
  msg = test::error_of([&] { train_vae(o); });
  EXPECT_NE(msg.find("--init"), std::string::npos) << msg;
  o.init = dir / "no-such-vae";
  msg = test::error_of([&] { train_vae(o); });
  EXPECT_NE(msg.find("no-such-vae"), std::string::npos) << msg;
  o.init = dir / "data";  // a folder, but not a VAE
  msg = test::error_of([&] { train_vae(o); });
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  o.init.clear();
  o.freeze_encoder = false;
  train_vae(o);
  EXPECT_THROW(train_vae(o), Error);  // out already holds a run
  o.resume = true;
  o.kl_weight = 1.0;  // incompatible with the checkpoint
  EXPECT_THROW(train_vae(o), Error);
}

}  // namespace
}  // namespace diffuse
