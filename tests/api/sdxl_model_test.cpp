// diffuse::Model on SDXL: information, the SDXL request fields end to end (the diffusers runs of
// the tiny fixture through GenerateHooks), fields that do not apply, and the refiner handoff.
#include <gtest/gtest.h>

#include <cmath>

#include "api/names_field.h"
#include "core/safetensors.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "sdxl_tiny.h"

namespace diffuse {
namespace {

using test::names;

TEST(SdxlModel, InfoAndTheDiffusersRunsThroughTheApi) {
  Model m = Model::load(test::fixture("sdxl_pipeline_tiny"));
  EXPECT_EQ(m.info().kind, ModelKind::StableDiffusion);
  EXPECT_EQ(m.info().architecture, "SDXL");
  EXPECT_EQ(m.info().width, 16);
  EXPECT_EQ(m.resolve(GenerationRequest()).guidance, 5.0);  // diffusers' SDXL default
  EXPECT_EQ(m.resolve(GenerationRequest()).sampler, "euler");
  for (const char* file : {"io.safetensors", "io_microcond.safetensors"}) {
    const auto io = safetensors::load(test::fixture(std::string("sdxl_pipeline_tiny/") + file));
    GenerateHooks h;
    h.latents = io.at("latents");
    h.prompt_embeds = io.at("prompt_embeds");
    h.pooled_prompt_embeds = io.at("pooled_prompt_embeds");
    GenerationRequest r;
    r.steps = 5;
    r.guidance = 5;
    r.width = r.height = 32;
    r.seed = 0;
    r.dtype = "fp32";  // diffusers' reference ran in fp32
    if (std::string(file) == "io.safetensors") {
      h.negative_prompt_embeds = io.at("negative_prompt_embeds");
      h.negative_pooled_prompt_embeds = io.at("negative_pooled_prompt_embeds");
    } else {
      r.original_size = {1024, 768};
      r.crop_coords = {12, 40};
      r.target_size = {32, 48};
      r.negative_original_size = {512, 512};
      r.negative_target_size = {32, 32};
    }
    auto res = m.generate(r, h);
    EXPECT_LT(test::max_abs_diff((res.images / 2 + 0.5).clamp(0, 1).permute({0, 2, 3, 1}), io.at("image")), 1e-3)
        << file;
    EXPECT_LT(test::max_abs_diff(res.latents, io.at("step_latents")[4]), 1e-3) << file;
    if (r.original_size[0] > 0) {
      EXPECT_NE(res.infotexts[0].find("Original size: \"1024, 768\""), std::string::npos) << res.infotexts[0];
    }
  }
}

TEST(SdxlModel, FieldsThatDoNotApplyAreErrors) {
  Model xl = Model::load(test::fixture("sdxl_pipeline_tiny"));
  GenerationRequest r;
  r.aesthetic_score = 6;
  r.refiner_switch = 1.0;
  auto e = xl.validate(r);
  EXPECT_TRUE(names(e, "aesthetic_score"));  // refiners only
  EXPECT_TRUE(names(e, "refiner_switch"));
  test::TempDir t;
  Model sd1 = Model::load(test::tiny_sd_folder(t / "sd"));
  EXPECT_EQ(sd1.info().architecture, "SD1");
  GenerationRequest s;
  s.original_size = {1024, 1024};
  s.refiner = "x";
  e = sd1.validate(s);
  EXPECT_TRUE(names(e, "original_size"));
  EXPECT_TRUE(names(e, "refiner"));
  // a refiner: text-to-image is refused, img2img runs with the aesthetic score
  Model ref = Model::load(test::tiny_sdxl_refiner(t / "refiner"));
  EXPECT_EQ(ref.info().architecture, "SDXL refiner");
  GenerationRequest q;
  q.prompt = "a red cube";
  q.steps = 2;
  EXPECT_TRUE(names(ref.validate(q), "init_image"));
  q.init_image = encode_image(torch::zeros({3, 16, 16}), "png");
  q.aesthetic_score = 7;
  q.strength = 0.5;
  EXPECT_TRUE(ref.validate(q).empty());
  auto res = ref.generate(q);
  EXPECT_NE(res.infotexts[0].find("Aesthetic score: 7"), std::string::npos) << res.infotexts[0];
}

}  // namespace
}  // namespace diffuse
