// DiT training and latent pipelines: train/latents.h, the DiT branch of train/trainer.h,
// DiT presets (train/presets.h) and latent PixelPipeline folders.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "fixtures.h"
#include "models/autoencoder_kl.h"
#include "pipelines/pixel_pipeline.h"
#include "train/latents.h"
#include "train/presets.h"
#include "train/trainer.h"
#include "two_class_data.h"

namespace diffuse {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

using test::write_two_class_set;

TrainOptions dit_options(const std::string& data, const std::string& out) {
  TrainOptions o;
  o.data = data;
  o.out = out;
  o.config = "DiT-tiny/2";
  o.batch = 16;
  o.lr = 1e-3;
  o.warmup = 20;
  o.ema_decay = 0.99;
  o.save_every = 0;
  o.sample_every = 0;
  o.device = "cpu";
  o.quiet = true;
  return o;
}

GenerateOptions two_class_generation() {
  GenerateOptions g;
  g.n = 16;
  for (int i = 0; i < 16; ++i) g.classes.push_back(i < 8 ? 0 : 1);
  g.guidance = 2.0;
  g.sampler = "euler";  // DDIM (eta 0) in k-diffusion form; "ddim" follows diffusers' leading timesteps
  g.steps = 20;
  g.seed = 5;
  return g;
}

TEST(DiTPreset, PaperSizesAndPatchChecks) {
  auto j = dit_preset("DiT-XL/2", 32, 4, 1000);
  EXPECT_EQ(j["num_layers"], 28);
  EXPECT_EQ(j["num_attention_heads"].get<int>() * j["attention_head_dim"].get<int>(), 1152);
  EXPECT_EQ(j["patch_size"], 2);
  auto s = dit_preset("dit-s/8", 32, 4, 10);
  EXPECT_EQ(s["num_attention_heads"].get<int>() * s["attention_head_dim"].get<int>(), 384);
  EXPECT_EQ(s["patch_size"], 8);
  EXPECT_EQ(s["num_embeds_ada_norm"], 10);
  EXPECT_TRUE(is_dit_preset("DiT-B/4"));
  EXPECT_FALSE(is_dit_preset("small"));
  EXPECT_THROW(dit_preset("DiT-S/2", 15, 4, 10), Error);  // 15 is not divisible by the patch
  EXPECT_THROW(dit_preset("DiT-M/2", 16, 4, 10), Error);  // no such size
  EXPECT_THROW(dit_preset("DiT-S/3", 18, 4, 10), Error);  // no such patch
  // The paper's parameter count for DiT-S/2 (33M at 256 px, 4 latent channels, 1000 classes).
  // diffusers gives every block its own timestep + class embedder (AdaLayerNormZero.emb), where
  // the paper shares one: count the shared one once.
  auto net = DiffusionNet::from_config(dit_preset("DiT-S/2", 32, 4, 1000));
  int64_t per_block_embedder = 0;
  for (const auto& p : net.dit()->blocks[0]->norm1->emb->parameters()) per_block_embedder += p.numel();
  EXPECT_NEAR((net.num_parameters() - 11 * per_block_embedder) / 1e6, 33.0, 0.5);
}

TEST(DiTTraining, LearnsTwoClassesRecognisably) {
  TempDir dir;
  write_two_class_set(dir / "data", 32, 1);
  auto o = dit_options(dir / "data", dir / "run");
  o.steps = 300;
  o.prediction = "v_prediction";
  o.min_snr_gamma = 5;
  train(o);
  EXPECT_TRUE(fs::exists(dir / "run/transformer/diffusion_pytorch_model.safetensors"));
  auto index = nlohmann::json::parse(read_file(dir / "run/model_index.json"));
  EXPECT_EQ(index["_class_name"], "DiTPipeline");
  EXPECT_EQ(index["id2label"]["1"], "top");

  auto pipe = PixelPipeline::load(dir / "run");
  ASSERT_TRUE(pipe.net.is_dit());
  ASSERT_EQ(pipe.class_names, (std::vector<std::string>{"bottom", "top"}));
  EXPECT_EQ(pipe.null_class, 2);
  auto s = generate(pipe, two_class_generation()).samples;
  EXPECT_GE(test::two_class_correct(s), 14) << "class-correct samples: " << test::two_class_correct(s) << "/16";
}

// A small random-weight VAE (f = 2, 3 -> 4 latent channels) saved as a folder.
std::string write_tiny_vae(const std::string& dir, double scaling = 0.5) {
  nlohmann::json c = {{"_class_name", "AutoencoderKL"},
                      {"in_channels", 3},
                      {"out_channels", 3},
                      {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                      {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}},
                      {"block_out_channels", {8, 16}},
                      {"layers_per_block", 1},
                      {"norm_num_groups", 4},
                      {"latent_channels", 4},
                      {"sample_size", 16},
                      {"scaling_factor", scaling}};
  torch::manual_seed(3);
  AutoencoderKL vae(AutoencoderKLConfig::from_json(c));
  save_autoencoder_kl(vae, dir);
  return dir;
}

TEST(LatentDataset, EncodesOnceWithExactFlipsAndSamplesScaledLatents) {
  TempDir dir;
  auto vae = load_autoencoder_kl(write_tiny_vae(dir / "vae", 0.5));
  Dataset d;
  torch::manual_seed(1);
  d.images = torch::randint(0, 256, {3, 3, 16, 16}, torch::kUInt8);
  d.labels = torch::tensor({0, 1, 0}, torch::kInt64);
  d.class_names = {"a", "b"};
  d.source = "synthetic";
  auto lat = encode_latent_dataset(vae, d, /*flip=*/true, torch::kCPU, /*progress=*/false, 2);
  ASSERT_EQ(lat.images.sizes(), (std::vector<int64_t>{6, 8, 8, 8}));
  ASSERT_TRUE(torch::equal(lat.labels, torch::tensor({0, 1, 0, 0, 1, 0}, torch::kInt64)));
  torch::NoGradGuard ng;
  auto x = d.images.to(torch::kFloat32).div(127.5).sub(1.0);
  auto post = vae->encode(x);
  auto flipped = vae->encode(x.flip({3}));
  EXPECT_LT((lat.images.slice(0, 0, 3).slice(1, 0, 4) - post.mean).abs().max().item<double>(), 1e-5);
  EXPECT_LT((lat.images.slice(0, 0, 3).slice(1, 4, 8) - post.std()).abs().max().item<double>(), 1e-5);
  EXPECT_LT((lat.images.slice(0, 3, 6).slice(1, 0, 4) - flipped.mean).abs().max().item<double>(), 1e-5);

  // (mean + std * eps - shift) * scale with eps from the generator.
  auto cfg = vae->config();
  cfg.shift_factor = 0.25;
  auto gen = at::detail::createCPUGenerator(7);
  auto z = sample_scaled_latents(cfg, lat.images.slice(0, 0, 3), gen);
  auto gen2 = at::detail::createCPUGenerator(7);
  auto eps = torch::randn({3, 4, 8, 8}, gen2);
  auto expect = (post.mean + post.std() * eps - 0.25) * 0.5;
  EXPECT_LT((z - expect).abs().max().item<double>(), 1e-5);

  d.images = torch::zeros({1, 3, 15, 15}, torch::kUInt8);  // not divisible by f = 2
  EXPECT_THROW(encode_latent_dataset(vae, d, false, torch::kCPU, false), Error);
  d.images = torch::zeros({1, 1, 16, 16}, torch::kUInt8);  // wrong channel count
  EXPECT_THROW(encode_latent_dataset(vae, d, false, torch::kCPU, false), Error);
}

TEST(LatentTraining, WritesADiTPipelineThatDecodesThroughItsVAE) {
  TempDir dir;
  write_two_class_set(dir / "data", 8, 3);
  auto o = dit_options(dir / "data", dir / "run");
  o.latent = write_tiny_vae(dir / "vae");
  o.steps = 6;
  auto r = train(o);
  EXPECT_EQ(r.steps, 6);
  auto index = nlohmann::json::parse(read_file(dir / "run/model_index.json"));
  EXPECT_EQ(index["_class_name"], "DiTPipeline");
  EXPECT_EQ(index["vae"][1], "AutoencoderKL");
  EXPECT_EQ(index["transformer"][1], "DiTTransformer2DModel");
  auto pipe = PixelPipeline::load(dir / "run");
  ASSERT_TRUE(pipe.latent());
  EXPECT_EQ(pipe.latent_size(), 8);
  EXPECT_EQ(pipe.image_size(), 16);
  EXPECT_EQ(pipe.channels(), 3);
  EXPECT_FALSE(pipe.scheduler.clip_sample);
  GenerateOptions g;
  g.n = 2;
  g.classes = {0, 1};
  g.steps = 3;
  auto res = generate(pipe, g);
  ASSERT_EQ(res.samples.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  ASSERT_EQ(res.latents.sizes(), (std::vector<int64_t>{2, 4, 8, 8}));
  EXPECT_LT((pipe.decode(res.latents) - res.samples).abs().max().item<double>(), 1e-5);
  // The UNet path writes the LDM layout.
  auto u = o;
  u.out = dir / "run_unet";
  u.config = "tiny";
  u.steps = 2;
  train(u);
  auto ui = nlohmann::json::parse(read_file(dir / "run_unet/model_index.json"));
  EXPECT_EQ(ui["_class_name"], "LDMPipeline");
  EXPECT_EQ(PixelPipeline::load(dir / "run_unet").image_size(), 16);
}

TEST(LatentTraining, RejectsMismatchedVaeAndDiTSizes) {
  TempDir dir;
  write_two_class_set(dir / "data", 2, 3);
  auto o = dit_options(dir / "data", dir / "run");
  o.latent = write_tiny_vae(dir / "vae");
  o.steps = 1;
  // A config whose channels do not match the VAE's 4 latent channels.
  auto bad = dit_preset("DiT-tiny/2", 8, 3, 2);
  write_file_atomically(dir / "bad.json", bad.dump());
  o.config = dir / "bad.json";
  try {
    train(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("latent"), std::string::npos) << e.what();
  }
  // 8x8 latents with patch 8 work; patch 8 on a 12x12 image (6x6 latents) does not.
  o.config = "DiT-tiny/8";
  o.image_size = 12;
  o.out = dir / "run2";
  EXPECT_THROW(train(o), Error);
  // A pipeline whose VAE and network disagree is refused on load.
  o.image_size = 0;
  o.config = "DiT-tiny/2";
  o.out = dir / "run3";
  train(o);
  write_tiny_vae(dir / "run3/vae");
  auto cfg = nlohmann::json::parse(read_file(dir / "run3/vae/config.json"));
  cfg["latent_channels"] = 3;
  fs::remove_all(dir / "run3/vae");
  AutoencoderKL other(AutoencoderKLConfig::from_json(cfg));
  save_autoencoder_kl(other, dir / "run3/vae");
  EXPECT_THROW(PixelPipeline::load(dir / "run3"), Error);
}

// diffusers' DiTPipeline layout (facebook/DiT-XL-2-256 in miniature): learned-sigma DiT with
// 1000 classes, the tiny VAE of the fixtures, a DDIM scheduler config and id2label.
TEST(LatentPipeline, LoadsDiffusersDiTPipelineFolder) {
  TempDir dir;
  const std::string d = dir / "dit";
  fs::create_directories(d + "/transformer");
  fs::create_directories(d + "/vae");
  fs::create_directories(d + "/scheduler");
  for (const char* f : {"config.json", "diffusion_pytorch_model.safetensors"}) {
    fs::copy_file(test::fixture(std::string("dit_tiny/") + f), d + "/transformer/" + f);
    fs::copy_file(test::fixture(std::string("vae_tiny/") + f), d + "/vae/" + f);
  }
  write_file_atomically(d + "/scheduler/scheduler_config.json",
                        R"({"_class_name": "DDIMScheduler", "beta_end": 0.02, "beta_schedule": "linear",
                            "beta_start": 0.0001, "clip_sample": false, "num_train_timesteps": 1000,
                            "prediction_type": "epsilon", "set_alpha_to_one": true, "steps_offset": 0})");
  write_file_atomically(d + "/model_index.json",
                        R"({"_class_name": "DiTPipeline", "_diffusers_version": "0.28.2",
                            "id2label": {"0": "tench, Tinca tinca", "207": "golden retriever"},
                            "scheduler": ["diffusers", "DDIMScheduler"], "transformer": ["diffusers", "Transformer2DModel"],
                            "vae": ["diffusers", "AutoencoderKL"]})");
  auto pipe = PixelPipeline::load(d);
  EXPECT_EQ(pipe.class_names.size(), 1000u);
  EXPECT_EQ(pipe.class_index("golden retriever"), 207);
  EXPECT_EQ(pipe.class_names[0], "tench");
  EXPECT_EQ(pipe.null_class, 1000);
  EXPECT_EQ(pipe.image_size(), 16);  // 8x8 latents, f = 2
  // The learned-variance half of the output is dropped.
  auto x = torch::randn({1, 4, 8, 8});
  auto t = torch::tensor({500.0f});
  auto labels = torch::tensor({207}, torch::kInt64);
  torch::NoGradGuard ng;
  auto full = pipe.net.dit()->forward(x, t, labels);
  ASSERT_EQ(full.size(1), 8);
  EXPECT_TRUE(torch::equal(pipe.net.forward(x, t, labels), full.slice(1, 0, 4)));
  GenerateOptions g;
  g.n = 2;
  g.classes = {207, 0};
  g.guidance = 4.0;
  g.steps = 2;
  auto res = generate(pipe, g);
  EXPECT_EQ(res.samples.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_TRUE(torch::isfinite(res.samples).all().item<bool>());
}

}  // namespace
}  // namespace diffuse
