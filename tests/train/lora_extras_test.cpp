// train-lora's extras on the tiny SD fixture: prior preservation (the loss is instance +
// weight * prior, prior_weight 0 trains exactly what no prior data does, bad class-image input
// gets clear errors) and full fine-tuning of the UNet (the loss falls, the pipeline folder loads
// and generates, resume is bit-exact with EMA and gradient checkpointing).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "fixtures.h"
#include "lora_fixture.h"
#include "models/error_of.h"
#include "pipelines/sd_pipeline.h"
#include "train/lora_trainer.h"
#include "train/run_helpers.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;

// Class images without captions: three grey squares.
std::string write_class_images(const std::string& dir) {
  fs::create_directories(dir);
  for (int i = 0; i < 3; ++i) {
    const auto v = static_cast<uint8_t>(60 + 50 * i);
    write_png(dir + "/class" + std::to_string(i) + ".png", Image{16, 16, 3, std::vector<uint8_t>(16 * 16 * 3, v)});
  }
  return dir;
}

TEST(LoraExtras, PriorPreservationLossIsInstancePlusWeightedPrior) {
  test::TempDir dir;
  auto o = test::tiny_lora_options(dir);
  o.steps = 20;
  o.eval_images = 0;
  o.save_dtype = "fp32";
  o.out = dir / "plain.safetensors";
  train_lora(o);

  auto p = o;
  p.prior_data = write_class_images(dir / "class");
  p.prior_prompt = "a grey picture";
  p.prior_weight = 0;
  p.out = dir / "zero.safetensors";
  const auto zero = train_lora(p);
  EXPECT_EQ(zero.prior_images, 3);
  // Weight 0 trains exactly what no prior data does, and still logs the prior loss.
  const auto a = safetensors::load(dir / "plain.safetensors"), b = safetensors::load(dir / "zero.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
  EXPECT_GT(zero.final_loss_prior, 0);
  EXPECT_DOUBLE_EQ(zero.final_loss, zero.final_loss_instance);

  p.prior_weight = 0.5;
  p.out = dir / "half.safetensors";
  const auto half = train_lora(p);
  EXPECT_NEAR(half.final_loss, half.final_loss_instance + 0.5 * half.final_loss_prior, 1e-9 * half.final_loss);
  auto cols = read_csv_columns(lora_train_dir(p.out) + "/metrics.csv");
  ASSERT_EQ(cols["step"].size(), 2u);  // steps 10 and 20
  for (size_t i = 0; i < cols["step"].size(); ++i) {
    EXPECT_GT(cols["loss_prior"][i], 0);
    EXPECT_NEAR(cols["loss"][i], cols["loss_instance"][i] + 0.5 * cols["loss_prior"][i], 1e-7 * cols["loss"][i]);
  }
  // The prior batches changed what was trained.
  const auto c = safetensors::load(dir / "half.safetensors");
  double diff = 0;
  for (const auto& [k, v] : a) diff = std::max(diff, test::max_abs_diff(v, c.at(k)));
  EXPECT_GT(diff, 1e-6);
  EXPECT_EQ(safetensors::File::open(p.out).metadata().at("ss_num_reg_images"), "3");
}

TEST(LoraExtras, BadPriorInputGivesClearErrors) {
  test::TempDir dir;
  auto o = test::tiny_lora_options(dir);
  o.steps = 1;
  auto err = [&](const LoraTrainOptions& opt) { return test::error_of([&] { train_lora(opt); }); };
  fs::create_directories(dir / "empty");
  o.prior_data = dir / "empty";
  o.prior_prompt = "a dog";
  EXPECT_NE(err(o).find("prior_data " + (dir / "empty") + ": no PNG or JPEG images found"), std::string::npos)
      << err(o);
  o.prior_data = dir / "missing";
  EXPECT_NE(err(o).find("prior_data " + (dir / "missing") + ": not a folder"), std::string::npos) << err(o);
  o.prior_data = write_class_images(dir / "class");
  o.prior_prompt.clear();  // images without captions and no prior_prompt
  EXPECT_NE(err(o).find("3 of 3 images have no caption"), std::string::npos) << err(o);
  EXPECT_NE(err(o).find("prior_prompt"), std::string::npos) << err(o);
  o.prior_prompt = "a grey picture";
  o.prior_weight = -1;
  EXPECT_NE(err(o).find("prior_weight -1: must be a number >= 0"), std::string::npos) << err(o);
  o.prior_weight = 1;
  o.prior_data.clear();
  EXPECT_NE(err(o).find("prior_prompt: needs prior_data"), std::string::npos) << err(o);
  EXPECT_FALSE(fs::exists(o.out));
}

LoraTrainOptions full_options(const test::TempDir& dir) {
  auto o = test::tiny_lora_options(dir);
  o.full = true;
  o.lr = 1e-3;
  o.out = dir / "tuned";
  return o;
}

TEST(LoraExtras, FullFineTuningWritesAPipelineThatGenerates) {
  test::TempDir dir;
  auto o = full_options(dir);
  o.steps = 40;
  o.gradient_checkpointing = true;
  const auto r = train_lora(o);
  std::printf("train-lora --full tiny: %lld parameters, fixed-noise loss %.5f -> %.5f, %.1f s\n",
              static_cast<long long>(r.parameters), r.eval_loss_before, r.eval_loss_after, r.seconds);
  EXPECT_LT(r.eval_loss_after, 0.9 * r.eval_loss_before);
  EXPECT_EQ(r.unet_layers, 0);
  auto base = SDPipeline::load(o.model);
  int64_t unet_params = 0;
  for (const auto& p : base.unet->parameters()) unet_params += p.numel();
  EXPECT_EQ(r.parameters, unet_params);
  EXPECT_TRUE(fs::exists(o.out + "/checkpoint/state.json"));
  EXPECT_TRUE(fs::exists(o.out + "/metrics.csv"));
  // The folder loads like any SD pipeline, with the trained UNet, and generates.
  auto tuned = SDPipeline::load(o.out);
  double diff = 0;
  auto bp = base.unet->named_parameters();
  for (const auto& p : tuned.unet->named_parameters())
    diff = std::max(diff, test::max_abs_diff(p.value(), bp[p.key()]));
  EXPECT_GT(diff, 1e-4);
  SDOptions g;
  g.prompt = "a red picture";
  g.steps = 4;
  g.width = g.height = 16;
  const auto img = generate(tuned, g).samples;
  EXPECT_EQ(img.sizes(), (std::vector<int64_t>{1, 3, 16, 16}));
  EXPECT_TRUE(torch::isfinite(img).all().item<bool>());
  // Other combinations are refused.
  auto b = o;
  b.out = dir / "x.safetensors";
  EXPECT_NE(test::error_of([&] { train_lora(b); }).find("writes a pipeline folder"), std::string::npos);
  b = o;
  b.text_encoder_lr = 1e-4;
  EXPECT_NE(test::error_of([&] { train_lora(b); }).find("text_encoder_lr: full fine-tuning trains the UNet only"),
            std::string::npos);
}

TEST(LoraExtras, FullFineTuningResumeIsBitExact) {
  test::TempDir dir;
  auto o = full_options(dir);
  o.steps = 4;
  o.ema_decay = 0.9;
  o.eval_images = 0;
  o.prior_data = write_class_images(dir / "class");
  o.prior_prompt = "a grey picture";
  o.out = dir / "straight";
  train_lora(o);
  o.out = dir / "resumed";
  o.steps = 2;
  train_lora(o);
  o.steps = 4;
  o.resume = true;
  EXPECT_EQ(train_lora(o).steps, 4);
  for (const char* f : {"unet/diffusion_pytorch_model.safetensors", "checkpoint/model.safetensors",
                        "checkpoint/ema.safetensors", "checkpoint/optimizer.safetensors"}) {
    const auto a = safetensors::load(dir / ("straight/" + std::string(f)));
    const auto b = safetensors::load(dir / ("resumed/" + std::string(f)));
    ASSERT_EQ(a.size(), b.size()) << f;
    for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << f << " " << k;
  }
  // The saved UNet is the EMA, not the trained weights.
  const auto ema = safetensors::load(dir / "straight/unet/diffusion_pytorch_model.safetensors");
  const auto model = safetensors::load(dir / "straight/checkpoint/model.safetensors");
  EXPECT_FALSE(torch::equal(ema.at("conv_in.weight"), model.at("conv_in.weight")));
}

// A base stored in fp16 stays fp16 under gradient checkpointing (computed in fp32 layer by
// layer) and trains like the same weights upcast once, which is what happens without it.
TEST(LoraExtras, SixteenBitBaseStaysSixteenBitWithCheckpointing) {
  test::TempDir dir;
  auto o = test::tiny_lora_options(dir);
  {
    auto pipe = SDPipeline::load(o.model);
    pipe.unet->to(torch::kFloat16);
    fs::remove(o.model + "/unet");  // a link to the fixture's fp32 UNet
    save_unet2d_condition(pipe.unet, o.model + "/unet");
  }
  o.steps = 4;
  o.save_dtype = "fp32";
  o.gradient_checkpointing = true;
  o.out = dir / "kept.safetensors";
  const auto kept = train_lora(o);
  EXPECT_EQ(kept.base_weights, "fp16 computed in fp32");
  o.gradient_checkpointing = false;
  o.out = dir / "upcast.safetensors";
  const auto upcast = train_lora(o);
  EXPECT_EQ(upcast.base_weights, "fp32");
  EXPECT_NEAR(kept.eval_loss_before, upcast.eval_loss_before, 1e-6 * upcast.eval_loss_before);
  EXPECT_NEAR(kept.eval_loss_after, upcast.eval_loss_after, 1e-4 * upcast.eval_loss_after);
  EXPECT_LT(kept.eval_loss_after, kept.eval_loss_before);
}

}  // namespace
}  // namespace diffuse
