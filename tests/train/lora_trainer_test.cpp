// `train-lora` on the tiny SD fixture: the fixed-noise loss of its data goes down, the kohya file
// (with its ss_* metadata) changes the model only when applied and merges to exactly what the
// trained adapters compute, resume is bit-exact, and bad input gets one clear error.
#include "train/lora_trainer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "lora_fixture.h"
#include "models/error_of.h"
#include "pipelines/lora.h"
#include "pipelines/sd_pipeline.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;

TEST(LoraTrainer, LearnsItsDataAndTheFileRoundTripsThroughTheLoader) {
  test::TempDir dir;
  auto o = test::tiny_lora_options(dir);
  o.caption_dropout = 0.1;
  o.network.conv = true;
  o.text_encoder_lr = 1e-3;
  o.save_dtype = "fp32";
  o.sample_every = 60;
  o.sample_prompts = {"a red picture", "a wide blue picture"};
  auto r = train_lora(o);
  std::printf("train-lora tiny: %d UNet + %d text layers, %lld parameters, fixed-noise loss %.5f -> %.5f, %.1f s\n",
              r.unet_layers, r.text_layers, static_cast<long long>(r.parameters), r.eval_loss_before, r.eval_loss_after,
              r.seconds);
  EXPECT_EQ(r.steps, 60);
  EXPECT_EQ(r.images, 6);
  EXPECT_EQ(r.text_layers, 12);
  EXPECT_LT(r.eval_loss_after, 0.9 * r.eval_loss_before);
  ASSERT_TRUE(fs::exists(o.out));
  EXPECT_TRUE(fs::exists(lora_train_dir(o.out) + "/checkpoint/state.json"));
  EXPECT_TRUE(fs::exists(lora_train_dir(o.out) + "/loss.png"));
  const Image grid = read_image(lora_train_dir(o.out) + "/samples/step_0000060.png");
  EXPECT_EQ(grid.width, 4 * 16 + 5 * 2);  // 4 seeds of 16x16 per prompt, 2 px padding
  EXPECT_EQ(grid.height, 2 * 16 + 3 * 2);

  // kohya keys and metadata.
  auto file = safetensors::File::open(o.out);
  const auto& meta = file.metadata();
  EXPECT_EQ(meta.at("ss_network_module"), "networks.lora");
  EXPECT_EQ(meta.at("ss_network_dim"), "4");
  EXPECT_EQ(meta.at("ss_network_alpha"), "4");
  EXPECT_EQ(meta.at("ss_steps"), "60");
  EXPECT_EQ(meta.at("ss_base_model_version"), "sd_v1");
  EXPECT_EQ(meta.at("ss_num_train_images"), "8");  // 2 images repeated twice
  EXPECT_EQ(meta.at("ss_network_train_unet_only"), "False");
  EXPECT_NE(meta.at("ss_network_args").find("conv_dim"), std::string::npos);
  const auto dirs = nlohmann::json::parse(meta.at("ss_dataset_dirs"));
  EXPECT_EQ(dirs["2_shapes"]["n_repeats"], 2);
  EXPECT_EQ(dirs["2_shapes"]["img_count"], 2);
  EXPECT_EQ(dirs["data"]["img_count"], 4);
  EXPECT_EQ(nlohmann::json::parse(meta.at("ss_tag_frequency"))["data"]["a wide red picture"], 1);
  const auto lora = file.load_all();
  EXPECT_EQ(static_cast<int>(lora.size()), 3 * (r.unet_layers + r.text_layers));
  EXPECT_TRUE(lora.count("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"));
  EXPECT_TRUE(lora.count("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"));

  // Applied by the loader, it changes the UNet's output; the merged result equals the adapters'.
  torch::manual_seed(9);
  auto x = torch::randn({2, 4, 8, 8}), t = torch::tensor({500.0f, 20.0f}), ehs = torch::randn({2, 7, 32});
  auto out = [&](SDPipeline& p) {
    torch::NoGradGuard ng;
    return p.unet->forward(x, t, ehs);
  };
  auto base = SDPipeline::load(o.model);
  const auto before = out(base);
  auto merged = SDPipeline::load(o.model);
  apply_lora_file(merged, {o.out, 1.0});
  EXPECT_GT(test::max_abs_diff(out(merged), before), 1e-3);
  auto adapted = SDPipeline::load(o.model);
  LoraNetworkOptions no = o.network;
  no.text_encoder = true;
  LoraNetwork net(*adapted.unet, adapted.text->model.ptr().get(), no, 0);
  net->load_kohya_state_dict(lora, o.out);
  {
    torch::NoGradGuard ng;
    net->attach();
  }
  EXPECT_LT(test::max_abs_diff(out(merged), out(adapted)), 1e-5);
  {
    torch::NoGradGuard ng;
    const auto ids = adapted.text->tokenizer.tokenize("a red picture", 77, true);
    auto idt = torch::tensor(ids, torch::kInt64).unsqueeze(0);
    EXPECT_LT(test::max_abs_diff(merged.text->model->forward(idt).last_hidden_state,
                                 adapted.text->model->forward(idt).last_hidden_state),
              1e-5);
  }
  // A second run into the same place needs resume.
  EXPECT_NE(test::error_of([&] { train_lora(o); }).find("already holds a training run"), std::string::npos);
}

TEST(LoraTrainer, ResumeIsBitExact) {
  test::TempDir dir;
  auto o = test::tiny_lora_options(dir);
  o.steps = 6;
  o.caption_dropout = 0.3;
  o.text_encoder_lr = 1e-3;
  o.save_dtype = "fp32";
  o.out = dir / "straight.safetensors";
  train_lora(o);
  o.out = dir / "resumed.safetensors";
  o.steps = 3;
  train_lora(o);
  o.steps = 6;
  o.resume = true;
  auto r = train_lora(o);
  EXPECT_EQ(r.steps, 6);
  const auto a = safetensors::load(dir / "straight.safetensors"), b = safetensors::load(dir / "resumed.safetensors");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
  // Something was trained, and the checkpoints agree too.
  EXPECT_GT(a.at("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight")
                .abs()
                .max()
                .item<double>(),
            0);
  for (const char* f : {"model", "optimizer", "text_optimizer"}) {
    const auto ca = safetensors::load(dir / ("straight-train/checkpoint/" + std::string(f) + ".safetensors"));
    const auto cb = safetensors::load(dir / ("resumed-train/checkpoint/" + std::string(f) + ".safetensors"));
    for (const auto& [k, v] : ca) EXPECT_TRUE(torch::equal(v, cb.at(k))) << f << " " << k;
  }
  // A changed option that matters is refused on resume.
  o.network.rank = 2;
  EXPECT_NE(test::error_of([&] { train_lora(o); }).find("different --rank"), std::string::npos);
}

TEST(LoraTrainer, BadInputGivesOneClearError) {
  test::TempDir dir;
  auto o = test::tiny_lora_options(dir);
  o.steps = 1;
  auto err = [&](const LoraTrainOptions& opt) { return test::error_of([&] { train_lora(opt); }); };
  {  // a rank larger than the layers
    auto b = o;
    b.network.rank = 64;
    EXPECT_NE(err(b).find("rank 64: larger than the width of layer"), std::string::npos) << err(b);
  }
  {  // base models of other architectures
    auto b = o;
    b.model = test::source_path("models/fashion-mnist");
    const auto e = err(b);
    EXPECT_NE(e.find("model"), std::string::npos) << e;
    EXPECT_NE(e.find("'DDPMPipeline' is not a Stable Diffusion pipeline"), std::string::npos) << e;
    b.model = test::fixture("unet_sd1_tiny");
    EXPECT_NE(err(b).find("no model_index.json"), std::string::npos) << err(b);
    b.model = test::fixture("sdxl_pipeline_tiny");
    EXPECT_NE(err(b).find("not a Stable Diffusion 1.x / 2.x UNet"), std::string::npos) << err(b);
  }
  {  // images without captions
    auto b = o;
    fs::remove(b.data + "/img3.txt");
    EXPECT_NE(err(b).find("1 of 6 images have no caption"), std::string::npos) << err(b);
  }
  {
    auto b = o;
    b.out = dir / "lora.bin";
    EXPECT_NE(err(b).find("expected a .safetensors file"), std::string::npos);
    b = o;
    b.resolution = 18;
    EXPECT_NE(err(b).find("resolution 18: must be a multiple of the model's size step 4"), std::string::npos) << err(b);
  }
  EXPECT_FALSE(fs::exists(o.out));
}

}  // namespace
}  // namespace diffuse
