#include "train/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "core/error.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "two_class_data.h"
#include "pipelines/pixel_pipeline.h"

namespace diffuse {
namespace {

using test::TempDir;
namespace fs = std::filesystem;

using test::write_two_class_set;

TrainOptions tiny_options(const std::string& data, const std::string& out) {
  TrainOptions o;
  o.data = data;
  o.out = out;
  o.config = "tiny";
  o.batch = 16;
  o.lr = 2e-3;
  o.warmup = 20;
  o.ema_decay = 0.99;
  o.save_every = 0;
  o.sample_every = 0;
  o.device = "cpu";
  o.quiet = true;
  return o;
}

TEST(Trainer, LearnsTwoClassesRecognisably) {
  TempDir dir;
  write_two_class_set(dir / "data", 32);
  auto o = tiny_options(dir / "data", dir / "run");
  o.steps = 400;
  o.prediction = "v_prediction";
  o.min_snr_gamma = 5;
  auto r = train(o);
  EXPECT_EQ(r.steps, 400);
  EXPECT_FALSE(r.interrupted);
  EXPECT_TRUE(fs::exists(dir / "run/model_index.json"));
  EXPECT_TRUE(fs::exists(dir / "run/unet/diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "run/loss.png"));
  EXPECT_TRUE(fs::exists(dir / "run/metrics.csv"));

  auto pipe = PixelPipeline::load(dir / "run");
  ASSERT_EQ(pipe.class_names, (std::vector<std::string>{"bottom", "top"}));
  GenerateOptions g;
  g.n = 16;
  for (int i = 0; i < 16; ++i) g.classes.push_back(i < 8 ? 0 : 1);
  g.guidance = 2.0;
  g.sampler = "ddim";
  g.steps = 20;
  g.seed = 5;
  auto s = generate(pipe, g).samples;
  int correct = test::two_class_correct(s);
  EXPECT_GE(correct, 14) << "class-correct samples: " << correct << "/16";
}

std::map<std::string, torch::Tensor> final_weights(const std::string& run) {
  auto m = safetensors::load(run + "/checkpoint/model.safetensors");
  for (auto& [k, v] : safetensors::load(run + "/checkpoint/ema.safetensors")) m["ema." + k] = v;
  for (auto& [k, v] : safetensors::load(run + "/checkpoint/optimizer.safetensors")) m["opt." + k] = v;
  return m;
}

TEST(Trainer, ResumedRunEqualsUninterruptedBitwise) {
  TempDir dir;
  write_two_class_set(dir / "data", 8);
  auto a = tiny_options(dir / "data", dir / "a");
  a.steps = 12;
  a.lr_schedule = "cosine";
  train(a);

  auto b = a;
  b.out = dir / "b";
  b.save_every = 5;
  // Stop after the first checkpoint (step 5) by request, as Ctrl-C does.
  std::thread stopper([&] {
    while (!fs::exists(dir / "b/checkpoint/state.json")) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    train_stop_flag() = true;
  });
  auto rb = train(b);
  stopper.join();
  EXPECT_TRUE(rb.interrupted);
  EXPECT_LT(rb.steps, 12);
  b.resume = true;
  auto rb2 = train(b);
  EXPECT_EQ(rb2.steps, 12);

  auto wa = final_weights(dir / "a"), wb = final_weights(dir / "b");
  ASSERT_EQ(wa.size(), wb.size());
  for (auto& [k, v] : wa) EXPECT_TRUE(torch::equal(v, wb.at(k))) << k;
}

TEST(Trainer, RejectsBadOptionsAndExistingRuns) {
  TempDir dir;
  write_two_class_set(dir / "data", 2);
  auto o = tiny_options(dir / "data", dir / "run");
  o.steps = -1;
  EXPECT_THROW(train(o), Error);
  o.steps = 2;
  o.prediction = "noise";
  EXPECT_THROW(train(o), Error);
  o.prediction = "epsilon";
  o.config = "enormous";
  EXPECT_THROW(train(o), Error);
  o.config = "tiny";
  train(o);
  EXPECT_THROW(train(o), Error);  // out already holds a run
  o.resume = true;
  o.batch = 3;                    // incompatible with the checkpoint
  EXPECT_THROW(train(o), Error);
}

}  // namespace
}  // namespace diffuse

namespace diffuse {
namespace {

TEST(Trainer, Bf16AutocastTrainsWithFp32Weights) {
  test::TempDir dir;
  write_two_class_set(dir / "data", 4);
  auto o = tiny_options(dir / "data", dir / "run");
  o.steps = 30;
  o.bf16 = true;
  auto r = train(o);
  EXPECT_TRUE(std::isfinite(r.final_loss));
  EXPECT_LT(r.final_loss, 1.0);
  auto w = safetensors::load(dir / "run/checkpoint/model.safetensors");
  for (const auto& [k, v] : w) EXPECT_EQ(v.scalar_type(), torch::kFloat32) << k;
}

}  // namespace
}  // namespace diffuse
