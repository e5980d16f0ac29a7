// One-shot Stable Diffusion models (LoadOptions::one_shot): each component is loaded only while a
// request needs it and released after it, with the same images as a model kept loaded.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "api/model_state.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "sd_tiny_text.h"
#include "sdxl_tiny.h"

namespace diffuse {
namespace {

struct OneShotRun {
  GenerationResult result;
  std::vector<std::string> loaded;  // components, in the order they were loaded
};

OneShotRun run_one_shot(Model& m, const GenerationRequest& r) {
  OneShotRun o;
  GenerateHooks hooks;
  hooks.loaded = [&](const std::string& component, double seconds) {
    EXPECT_GE(seconds, 0.0);
    o.loaded.push_back(component);
  };
  o.result = m.generate(r, hooks);
  return o;
}

LoadOptions one_shot() {
  LoadOptions o;
  o.one_shot = true;
  return o;
}

bool nothing_loaded(const Model& m) {
  const SDComponents c = model_impl(m).sd->loaded();
  return !c.text_encoders && !c.unet && !c.vae;
}

const std::vector<std::string> kInTurn = {"text encoders", "unet", "vae"};

TEST(OneShot, SameImagesLoadingOneComponentAtATime) {
  test::TempDir t;
  const std::string dir = test::tiny_sd_folder(t / "sd");
  Model kept = Model::load(dir);
  Model once = Model::load(dir, one_shot());
  EXPECT_TRUE(nothing_loaded(once));  // the configuration alone
  EXPECT_EQ(once.info().architecture, kept.info().architecture);
  EXPECT_EQ(once.info().width, kept.info().width);
  GenerationRequest r;
  r.prompt = "a red car";
  r.negative_prompt = "blue";
  r.steps = 3;
  r.seed = 9;
  r.n = 3;
  r.batch_size = 2;  // two batches: the latents of both are decoded after the UNet is released
  const auto a = kept.generate(r);
  const auto b = run_one_shot(once, r);
  EXPECT_TRUE(torch::equal(a.images, b.result.images));
  EXPECT_TRUE(torch::equal(a.latents, b.result.latents));
  EXPECT_EQ(a.infotexts, b.result.infotexts);
  EXPECT_EQ(b.loaded, kInTurn);
  EXPECT_TRUE(nothing_loaded(once));
  // a second request loads them again
  r.n = 1;
  r.guidance = 1;  // no negative prompt to encode
  const auto c = run_one_shot(once, r);
  EXPECT_EQ(c.loaded, kInTurn);
  EXPECT_TRUE(torch::equal(c.result.images, kept.generate(r).images));
}

TEST(OneShot, SdxlSameImages) {
  test::TempDir t;
  const std::string dir = test::tiny_sdxl_folder(t / "xl");
  Model kept = Model::load(dir);
  Model once = Model::load(dir, one_shot());
  EXPECT_EQ(once.info().architecture, "SDXL");
  GenerationRequest r;
  r.prompt = "a red car";  // no negative prompt: zeros (force_zeros_for_empty_prompt)
  r.steps = 2;
  r.seed = 3;
  const auto a = kept.generate(r);
  const auto b = run_one_shot(once, r);
  EXPECT_TRUE(torch::equal(a.images, b.result.images));
  EXPECT_EQ(b.loaded, kInTurn);
}

// Init images and LoRAs need the whole model at once: it is loaded for the request and released
// after it, and the LoRA is not left merged for the next request.
TEST(OneShot, InitImagesAndLorasLoadTheWholeModel) {
  test::TempDir t;
  const std::string dir = test::tiny_sd_folder(t / "sd");
  Model kept = Model::load(dir);
  Model once = Model::load(dir, one_shot());
  GenerationRequest r;
  r.prompt = "a red car";
  r.steps = 2;
  r.seed = 5;
  GenerationRequest i = r;
  i.init_image = encode_image(kept.generate(r).images[0], "png");
  i.strength = 0.6;
  const auto a = run_one_shot(once, i);
  EXPECT_TRUE(torch::equal(a.result.images, kept.generate(i).images));
  EXPECT_EQ(a.loaded, kInTurn);
  EXPECT_TRUE(nothing_loaded(once));

  torch::manual_seed(0);
  TensorMap lora;
  const std::string base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
  lora[base + ".lora_down.weight"] = torch::randn({4, 32}) * 0.5;
  lora[base + ".lora_up.weight"] = torch::randn({32, 4}) * 0.5;
  lora[base + ".alpha"] = torch::tensor(4.0);
  safetensors::save(t / "style.safetensors", lora);
  GenerationRequest l = r;
  l.loras = {{t / "style.safetensors", 1.0}};
  const auto with = run_one_shot(once, l);
  EXPECT_TRUE(torch::equal(with.result.images, kept.generate(l).images));
  EXPECT_TRUE(nothing_loaded(once));
  const auto without = run_one_shot(once, r);
  EXPECT_FALSE(torch::equal(with.result.images, without.result.images));
  EXPECT_TRUE(torch::equal(without.result.images, Model::load(dir).generate(r).images));
}

}  // namespace
}  // namespace diffuse
