#include "train/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "pipelines/pixel_pipeline.h"
#include "train/run_helpers.h"
#include "two_class_data.h"

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
  g.sampler = "euler";  // DDIM (eta 0) in k-diffusion form; "ddim" follows diffusers' leading timesteps
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

TEST(Trainer, NonFiniteStepsAreSkippedThenStopTheRun) {
  NonFiniteGuard g(3);
  auto p = torch::ones({2}, torch::requires_grad());
  p.mutable_grad() = torch::ones({2});
  EXPECT_TRUE(g.ok(1.0, {p}, 0));
  EXPECT_FALSE(g.ok(NAN, {p}, 1));
  p.mutable_grad() = torch::tensor({1.0f, INFINITY});
  EXPECT_FALSE(g.ok(1.0, {p}, 2));
  p.mutable_grad() = torch::ones({2});
  EXPECT_TRUE(g.ok(1.0, {p}, 3));  // a good step resets the count
  EXPECT_FALSE(g.ok(NAN, {p}, 4));
  EXPECT_FALSE(g.ok(INFINITY, {p}, 5));
  EXPECT_NE(test::error_of([&] { g.ok(NAN, {p}, 6); }).find("3 steps in a row"), std::string::npos);
  EXPECT_EQ(g.skipped(), 5);
}

TEST(Trainer, DivergingRunStopsAndKeepsItsCheckpoint) {
  TempDir dir;
  write_two_class_set(dir / "data", 8);
  auto a = tiny_options(dir / "data", dir / "a");
  a.steps = 40;
  a.save_every = 2;
  a.warmup = 0;
  a.lr = 1e30;  // the first update blows the weights up; every later loss overflows
  a.grad_clip = 0;
  a.max_nonfinite_steps = 4;
  const std::string msg = test::error_of([&] { train(a); });
  EXPECT_NE(msg.find("training diverged: 4 steps in a row"), std::string::npos) << msg;
  const auto state = nlohmann::json::parse(read_file(dir / "a/checkpoint/state.json"));
  EXPECT_LT(state.at("step").get<int64_t>(), 40);
  a.resume = true;  // the checkpoint loads (and the run diverges again)
  EXPECT_NE(test::error_of([&] { train(a); }).find("diverged"), std::string::npos);
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

TEST(Trainer, InitFineTunesFromAModelFolder) {
  TempDir dir;
  write_two_class_set(dir / "data", 8);
  auto a = tiny_options(dir / "data", dir / "a");
  a.steps = 120;
  a.prediction = "v_prediction";
  a.ema_decay = 0.9;
  auto ra = train(a);

  // Five steps from the trained model stay near its loss; five steps from scratch do not.
  auto b = tiny_options(dir / "data", dir / "b");
  b.config = "enormous";  // ignored: the network's config comes from --init
  b.init = dir / "a";
  b.prediction = "v_prediction";
  b.steps = 5;
  b.warmup = 1;
  auto rb = train(b);
  auto c = b;
  c.out = dir / "c";
  c.config = "tiny";
  c.init.clear();
  auto rc = train(c);
  std::printf("smoothed loss: %.4f after 120 steps, %.4f after 5 more from it, %.4f after 5 from scratch\n",
              ra.final_loss, rb.final_loss, rc.final_loss);
  EXPECT_LT(rb.final_loss, 2.0 * ra.final_loss);
  EXPECT_GT(rc.final_loss, 3.0 * rb.final_loss);
  EXPECT_EQ(read_file(dir / "a/unet/config.json"), read_file(dir / "b/unet/config.json"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "b/train_config.json")).at("init"), dir / "a");

  // With a negligible learning rate the fine-tuned weights are the initial ones.
  auto d = b;
  d.out = dir / "d";
  d.steps = 1;
  d.lr = 1e-9;
  train(d);
  auto wa = safetensors::load(dir / "a/unet/diffusion_pytorch_model.safetensors");
  auto wd = safetensors::load(dir / "d/unet/diffusion_pytorch_model.safetensors");
  ASSERT_EQ(wa.size(), wd.size());
  for (auto& [k, v] : wa) EXPECT_TRUE(torch::allclose(v, wd.at(k), 0.0, 1e-6)) << k;

  // What a fine-tune may not change: the prediction type, the classes; a missing folder.
  auto e = b;
  e.out = dir / "e";
  e.prediction = "epsilon";
  std::string msg = test::error_of([&] { train(e); });
  EXPECT_NE(msg.find("--prediction v_prediction"), std::string::npos) << msg;
  fs::create_directories(dir / "other");
  fs::copy(dir / "data/bottom", dir / "other/bottom");
  fs::copy(dir / "data/top", dir / "other/upper");
  e.prediction = "v_prediction";
  e.data = dir / "other";
  msg = test::error_of([&] { train(e); });
  EXPECT_NE(msg.find("top vs upper"), std::string::npos) << msg;
  e.data = dir / "data";
  e.init = dir / "nothing";
  msg = test::error_of([&] { train(e); });
  EXPECT_NE(msg.find(dir / "nothing"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir / "e"));
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
  o.batch = 3;  // incompatible with the checkpoint
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

namespace diffuse {
namespace {

TEST(Trainer, EvaluatesDuringTrainingThroughTheGivenFunction) {
  test::TempDir dir;
  write_two_class_set(dir / "data", 4);
  auto o = tiny_options(dir / "data", dir / "run");
  o.steps = 6;
  o.eval_every = 4;
  std::vector<std::string> seen;
  o.evaluate = [&](const std::string& pipeline_dir) {
    seen.push_back(pipeline_dir);
    EXPECT_TRUE(fs::exists(pipeline_dir + "/model_index.json"));  // the model is written first
    return 10.0 + static_cast<double>(seen.size());
  };
  train(o);
  ASSERT_EQ(seen.size(), 2u);  // at step 4 and at the end
  EXPECT_EQ(seen[0], dir / "run");
  auto cols = read_csv_columns(dir / "run/metrics.csv");
  ASSERT_EQ(cols["step"], (std::vector<double>{4, 6}));
  EXPECT_EQ(cols["fid"], (std::vector<double>{11, 12}));
  EXPECT_TRUE(fs::exists(dir / "run/fid.png"));
  auto bad = tiny_options(dir / "data", dir / "bad");
  bad.eval_every = 2;  // no evaluation given
  EXPECT_NE(test::error_of([&] { train(bad); }).find("--eval-every 2"), std::string::npos);
}

}  // namespace
}  // namespace diffuse
