// End-to-end tests of the `diffuse` binary: real processes, real files.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/blas.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "run_cli.h"

namespace diffuse {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

using Run = test::CliRun;
Run run(const std::string& args) { return test::run_cli(args); }

bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// A tiny class-conditional model trained once for the whole suite.
class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    fs::create_directories(dir_->path + "/data/a");
    fs::create_directories(dir_->path + "/data/b");
    for (int i = 0; i < 4; ++i) {
      write_png(dir_->path + "/data/a/" + std::to_string(i) + ".png", to_image(torch::full({1, 8, 8}, -0.5)));
      write_png(dir_->path + "/data/b/" + std::to_string(i) + ".png", to_image(torch::full({1, 8, 8}, 0.5)));
    }
    auto r = run("train --data " + dir_->path + "/data --out " + model() +
                 " --config tiny --steps 3 --batch 4 --sample-every 0 --save-every 0 --threads 1 --quiet");
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string model() { return dir_->path + "/model"; }
  static TempDir* dir_;
};
TempDir* Cli::dir_ = nullptr;

TEST(CliVersion, SaysWhatTheKernelsRunOn) {
  const auto r = run("--version");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("diffuse 0.1.0\ntorch ", 0), 0u) << r.output;
  // The BLAS kernels the CLI runs are the ones this process selected (core/blas.h).
  const BlasKernels k = blas_kernels();
  if (!k.in_use.empty()) {
    EXPECT_TRUE(contains(r.output, "OpenBLAS " + k.in_use)) << r.output;
  }
}

TEST_F(Cli, HelpListsCommands) {
  auto r = run("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* c : {"train", "generate", "forward", "info", "samplers"}) EXPECT_TRUE(contains(r.output, c)) << c;
}

TEST_F(Cli, ForwardMatchesDiffusersFixture) {
  TempDir t;
  auto r = run("forward --model " + test::fixture("unet2d_classcond") + " --inputs " +
               test::fixture("unet2d_classcond/io.safetensors") + " --out " + (t / "o.safetensors") + " --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  auto out = safetensors::load(t / "o.safetensors").at("out");
  auto ref = safetensors::load(test::fixture("unet2d_classcond/io.safetensors")).at("out");
  EXPECT_LE(test::max_abs_diff(out, ref), 1e-4);
}

// Every network class `forward` knows reproduces the diffusers reference outputs.
TEST_F(Cli, ForwardMatchesEveryModelFixture) {
  struct Case {
    std::string fixture;
    std::vector<std::string> outputs;
  } cases[] = {
      {"unet2d_ddpm", {"out"}},   {"unet_sd1_tiny", {"out"}},
      {"unet_sd2_tiny", {"out"}}, {"unet_sdxl_tiny", {"out"}},  // inputs text_embeds and time_ids
      {"dit_tiny", {"out"}},      {"vae_tiny", {"latent_mean", "latent_logvar", "recon", "decoded"}},
  };
  for (const auto& c : cases) {
    TempDir t;
    std::string io = test::fixture(c.fixture + "/io.safetensors");
    auto r = run("forward --model " + test::fixture(c.fixture) + " --inputs " + io + " --out " + (t / "o.safetensors") +
                 " --threads 1");
    ASSERT_EQ(r.code, 0) << c.fixture << "\n" << r.output;
    auto out = safetensors::load(t / "o.safetensors");
    auto ref = safetensors::load(io);
    for (const auto& name : c.outputs) {
      ASSERT_TRUE(out.count(name)) << c.fixture << " " << name;
      EXPECT_LE(test::max_abs_diff(out.at(name), ref.at(name)), 1e-4) << c.fixture << " " << name;
    }
  }
}

TEST_F(Cli, GenerateGridCarriesParametersAndInfoReadsThem) {
  TempDir t;
  auto r = run("generate --model " + model() + " -n 4 --class b --steps 3 --seed 42 --out " + (t / "g.png") +
               " --threads 1");
  ASSERT_EQ(r.code, 0) << r.output;
  auto info = run("info " + (t / "g.png"));
  EXPECT_EQ(info.code, 0);
  EXPECT_TRUE(contains(info.output, "Steps: 3")) << info.output;
  EXPECT_TRUE(contains(info.output, "Seed: 42")) << info.output;
  EXPECT_TRUE(contains(info.output, "Sampler:")) << info.output;
  auto model_info = run("info " + model());
  EXPECT_EQ(model_info.code, 0);
  EXPECT_TRUE(contains(model_info.output, "UNet2DModel")) << model_info.output;
}

TEST_F(Cli, RawOutputIsReproducibleAndPerImageSeeded) {
  TempDir t;
  std::string base = "generate --model " + model() + " --steps 4 --sampler euler_a --class a ";
  ASSERT_EQ(run(base + "-n 3 --seed 7 --threads 1 --out " + (t / "a.safetensors")).code, 0);
  ASSERT_EQ(run(base + "-n 3 --seed 7 --threads 2 --out " + (t / "b.safetensors")).code, 0);
  ASSERT_EQ(run(base + "-n 1 --seed 9 --threads 1 --out " + (t / "c.safetensors")).code, 0);
  auto a = safetensors::load(t / "a.safetensors"), b = safetensors::load(t / "b.safetensors"),
       c = safetensors::load(t / "c.safetensors");
  EXPECT_EQ(a.at("samples").sizes(), (std::vector<int64_t>{3, 1, 8, 8}));
  EXPECT_TRUE(torch::equal(a.at("noise"), b.at("noise")));
  EXPECT_LE(test::max_abs_diff(a.at("samples"), b.at("samples")), 1e-4);  // thread count does not matter
  // Image 2 of seed 7 is image 0 of seed 9, alone in its batch.
  EXPECT_TRUE(torch::equal(a.at("noise")[2], c.at("noise")[0]));
  EXPECT_LE(test::max_abs_diff(a.at("samples")[2], c.at("samples")[0]), 1e-4);
}

// Autoguidance by the model itself changes nothing (g + w (m - g) with m = g); the option
// reaches the pipeline from generate.
TEST_F(Cli, GuideModelByItselfLeavesSamplesUnchanged) {
  TempDir t;
  std::string base = "generate --model " + model() + " --steps 3 --sampler euler --class a -n 2 --threads 1 ";
  ASSERT_EQ(run(base + "--out " + (t / "a.safetensors")).code, 0);
  auto r = run(base + "--guidance 3 --guide-model " + model() + " --out " + (t / "b.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(torch::equal(safetensors::load(t / "a.safetensors").at("samples"),
                           safetensors::load(t / "b.safetensors").at("samples")));
}

// Flips are opt-in (many datasets face one way: Fashion-MNIST's shoes all point left); the choice is
// recorded and a resumed run must keep it.
TEST_F(Cli, TrainFlipsOnlyWhenAsked) {
  auto flip_of = [](const std::string& run_dir) {
    return nlohmann::json::parse(read_file(run_dir + "/train_config.json")).at("flip").get<bool>();
  };
  EXPECT_FALSE(flip_of(model()));
  TempDir t;
  std::string base = "train --data " + dir_->path + "/data --out " + (t / "f") +
                     " --config tiny --batch 4 --sample-every 0 --save-every 0 --threads 1 --quiet";
  auto r = run(base + " --steps 1 --flip");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(flip_of(t / "f"));
  r = run(base + " --steps 2 --resume");
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(contains(r.output, "flip")) << r.output;
  ASSERT_EQ(run(base + " --steps 2 --resume --flip").code, 0);
}

TEST_F(Cli, BadInputGivesOneClearErrorAndNoOutput) {
  TempDir t;
  fs::create_directories(t / "full");
  std::ofstream(t / "full/keep.txt") << "x";
  struct Case {
    std::string args, expect;
  } cases[] = {
      {"generate --model /nonexistent/m --out " + (t / "x.png"), "/nonexistent/m"},
      {"generate --model " + model() + " --steps -1 --out " + (t / "x.png"), "steps"},
      {"generate --model " + model() + " --sampler bogus --out " + (t / "x.png"), "bogus"},
      {"generate --model " + model() + " --class zebra --out " + (t / "x.png"), "zebra"},
      {"generate --model " + model() + " --out " + (t / "nodir/x.png"), "does not exist"},
      {"generate --model " + model() + " --out " + (t / "x.gif"), "x.gif"},
      {"generate --model " + model() + " --guidance 2 --guidance-interval 5,1 --out " + (t / "x.png"),
       "--guidance-interval"},
      {"generate --model " + model() + " --guidance 2 --guidance-interval 1 --out " + (t / "x.png"),
       "--guidance-interval"},
      {"eval --model " + model() + " --guidance-interval 0,abc", "--guidance-interval"},
      {"generate --model " + model() + " --guidance 2 --guide-model /nonexistent/guide --out " + (t / "x.png"),
       "--guide-model: /nonexistent/guide"},
      {"generate --model " + model() + " --guidance 2 --guide-unconditional --out " + (t / "x.png"),
       "--guide-unconditional requires --guide-model"},
      {"generate --model " + model() + " --guidance 2 --guide-model " + DIFFUSE_SOURCE_DIR +
           "/models/emoji-dit --out " + (t / "x.png"),
       "--guide-model " DIFFUSE_SOURCE_DIR "/models/emoji-dit: a latent model cannot guide a pixel model"},
      {std::string("eval --model ") + DIFFUSE_SOURCE_DIR + "/models/fashion-mnist --guidance 2 --guide-model " +
           model(),
       "--guide-model " + model() + ": samples 1x8x8, the model 1x28x28"},
      {std::string("eval --model ") + DIFFUSE_SOURCE_DIR + "/models/fashion-mnist --n 4 --save-samples " + (t / "full"),
       "--save-samples " + (t / "full") + ": the folder is not empty"},
      {"eval --images " + (t / "full") + " --save-samples " + (t / "s"), "--save-samples requires --model"},
      // captions are scored with their images' classifier (emoji-captions: models/emoji-classifier)
      {std::string("eval --model ") + DIFFUSE_SOURCE_DIR + "/models/fashion-mnist --data emoji-captions --n 2",
       "the feature network " DIFFUSE_SOURCE_DIR "/models/emoji-classifier expects 3 channel(s)"},
      {"eval --model " + test::fixture("sd_pipeline_tiny") + " --data emoji --n 2",
       "--data emoji: a text-to-image model is scored on the held-out captions"},
      {"train --data /nonexistent/d --out " + (t / "run"), "/nonexistent/d"},
      {"train --data emoji-captions --text-encoder clip-tiny --vocab all --out " + (t / "run"), "--vocab"},
      {"reduce-vocab --model " + test::fixture("sd_pipeline_tiny") + " --data /nonexistent/d --out " + (t / "rv"),
       "/nonexistent/d"},
      {"reduce-vocab --model " + test::fixture("sd_pipeline_tiny") + " --data emoji-captions --out " + (t / "full"),
       "out " + (t / "full") + ": already exists"},
      {"reduce-vocab --model " + model() + " --data emoji-captions --out " + (t / "rv"),
       "not a StableDiffusionPipeline folder"},
      {"forward --model " + model() + "/unet --inputs /nonexistent.safetensors --out " + (t / "x.safetensors"),
       "/nonexistent.safetensors"},
      {"info /nonexistent.png", "/nonexistent.png"},
  };
  for (const auto& c : cases) {
    auto r = run(c.args);
    EXPECT_NE(r.code, 0) << c.args;
    EXPECT_TRUE(contains(r.output, c.expect)) << c.args << "\n" << r.output;
    EXPECT_FALSE(contains(r.output, "terminate called")) << r.output;
  }
  EXPECT_FALSE(fs::exists(t / "x.png"));
  EXPECT_FALSE(fs::exists(t / "x.safetensors"));
  EXPECT_FALSE(fs::exists(t / "run"));
  EXPECT_FALSE(fs::exists(t / "rv"));
  EXPECT_FALSE(fs::exists(t / "s"));
}

TEST_F(Cli, CorruptWeightsNameTheFile) {
  TempDir t;
  fs::copy(model(), t / "m", fs::copy_options::recursive);
  std::string w = t / "m/unet/diffusion_pytorch_model.safetensors";
  auto size = fs::file_size(w);
  fs::resize_file(w, size / 2);
  auto r = run("generate --model " + (t / "m") + " --steps 2 --out " + (t / "x.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.output, "diffusion_pytorch_model.safetensors")) << r.output;
  EXPECT_FALSE(fs::exists(t / "x.png"));
  // A config that does not match the weights lists the mismatches.
  fs::copy(model(), t / "m2", fs::copy_options::recursive);
  std::string cfg = t / "m2/unet/config.json";
  std::ifstream in(cfg);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto pos = text.find("\"layers_per_block\": 1");
  ASSERT_NE(pos, std::string::npos) << text;
  text.replace(pos, 21, "\"layers_per_block\": 2");
  std::ofstream(cfg) << text;
  r = run("generate --model " + (t / "m2") + " --steps 2 --out " + (t / "y.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.output, "missing keys")) << r.output;
}

TEST_F(Cli, InfoValidatesModelFolders) {
  TempDir t;
  auto r = run("info " + model());
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "valid: class-conditional UNet2DModel pipeline")) << r.output;
  r = run("info " + model() + "/unet");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "valid: UNet2DModel")) << r.output;
  auto edit = [&](const std::string& name, const std::string& from, const std::string& to) {
    fs::copy(model(), t / name, fs::copy_options::recursive);
    const std::string cfg = t / (name + "/unet/config.json");
    std::string text = read_file(cfg);
    const auto pos = text.find(from);
    EXPECT_NE(pos, std::string::npos) << from;
    if (pos != std::string::npos) text.replace(pos, from.size(), to);
    std::ofstream(cfg) << text;
    return t / name;
  };
  struct Case {
    std::string dir, expect;
  };
  fs::copy(model(), t / "noweights", fs::copy_options::recursive);
  fs::remove(t / "noweights/unet/diffusion_pytorch_model.safetensors");
  const Case cases[] = {
      {t / "noweights", "diffusion_pytorch_model.safetensors"},
      {t / "noweights/unet", "diffusion_pytorch_model.safetensors"},
      {edit("unknown", "\"UNet2DModel\"", "\"UNet9000\""), "UNet9000"},
      {edit("mismatch", "\"layers_per_block\": 1", "\"layers_per_block\": 2"), "missing keys"},
      {edit("negative", "\"in_channels\": 1", "\"in_channels\": -3"), "in_channels"},
  };
  for (const auto& c : cases) {
    r = run("info " + c.dir);
    EXPECT_EQ(r.code, 1) << c.dir << "\n" << r.output;
    EXPECT_TRUE(contains(r.output, c.expect)) << c.dir << "\n" << r.output;
    EXPECT_FALSE(contains(r.output, "terminate called")) << r.output;
  }
}

}  // namespace
}  // namespace diffuse
