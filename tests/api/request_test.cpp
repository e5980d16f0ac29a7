// GenerationRequest: validation by field, JSON and A1111 infotext round trips.
#include <gtest/gtest.h>

#include <cmath>

#include "api/names_field.h"
#include "diffuse/diffuse.h"

namespace diffuse {
namespace {

using test::names;

GenerationRequest full() {
  GenerationRequest r;
  r.model = "m";
  r.prompt = "a photo, of \"a\" cat: 1";
  r.negative_prompt = "blurry";
  r.class_label = "";
  r.sampler = "dpm++2m";
  r.schedule = "karras";
  r.steps = 17;
  r.guidance = 6.5;
  r.guidance_rescale = 0.25;
  r.guidance_interval = {0.3, 5};
  r.guide_model = "";
  r.seed = 1234567890123;
  r.rng = "philox";
  r.eta = 0.5;
  r.s_noise = 1.003;
  r.width = 64;
  r.height = 96;
  r.n = 3;
  r.batch_size = 2;
  r.init_image = std::string("\x89PNG\r\n\x1a\n\0\xff", 10);
  r.strength = 0.6;
  r.mask = "mask-bytes";
  r.mask_blur = 4;
  r.mask_invert = true;
  r.inpaint_only_masked = true;
  r.inpaint_only_masked_padding = 16;
  r.inpaint_method = "blend";
  r.jump_length = 5;
  r.jump_n_sample = 3;
  r.invert_from = "sneaker";
  r.loras = {{"style", 0.8}, {"detail", -0.25}};
  r.clip_skip = 1;
  r.dtype = "bf16";
  r.weights = "int8";
  r.vae_tiling = true;
  r.vae_tile_size = 256;
  r.output_format = "jpeg";
  r.original_size = {1024, 768};
  r.crop_coords = {12, 40};
  r.target_size = {896, 1152};
  r.negative_original_size = {512, 512};
  r.negative_crop_coords = {4, 8};
  r.negative_target_size = {1024, 1024};
  r.aesthetic_score = 6.5;
  r.negative_aesthetic_score = 2.25;
  return r;
}

TEST(Request, JsonRoundTripKeepsEveryField) {
  const GenerationRequest r = full();
  EXPECT_EQ(GenerationRequest::from_json(r.to_json()), r);
  GenerationRequest d;  // defaults, unset optionals and an open guidance interval
  EXPECT_EQ(GenerationRequest::from_json(d.to_json()), d);
  EXPECT_FALSE(GenerationRequest::from_json(d.to_json()).steps.has_value());
  GenerationRequest o;
  o.outpaint = {8, 0, 16, 24};
  o.init_image = "x";
  EXPECT_EQ(GenerationRequest::from_json(o.to_json()), o);
}

TEST(Request, JsonErrorsNameTheField) {
  auto field_of = [](const std::string& json) {
    try {
      GenerationRequest::from_json(json);
    } catch (const RequestError& e) {
      return e.errors.at(0).field;
    }
    return std::string("(accepted)");
  };
  EXPECT_EQ(field_of("{\"stepz\": 3}"), "stepz");
  EXPECT_EQ(field_of("{\"steps\": \"3\"}"), "steps");
  EXPECT_EQ(field_of("{\"steps\": 3.5}"), "steps");
  EXPECT_EQ(field_of("{\"guidance\": [1]}"), "guidance");
  EXPECT_EQ(field_of("{\"width\": 1e40}"), "width");
  EXPECT_EQ(field_of("{\"init_image\": \"not base64!\"}"), "init_image");
  EXPECT_EQ(field_of("{\"outpaint\": [1, 2]}"), "outpaint");
  EXPECT_EQ(field_of("{\"loras\": 3}"), "loras");
  EXPECT_EQ(field_of("[1, 2]"), "body");
  EXPECT_EQ(field_of("{\"steps\": 3"), "body");
  EXPECT_EQ(field_of("{\"class\": 7, \"steps\": 3, \"seed\": 9, \"output_format\": \"jpg\"}"), "(accepted)");
  EXPECT_EQ(GenerationRequest::from_json("{\"class\": 7}").class_label, "7");
  EXPECT_EQ(GenerationRequest::from_json("{\"output_format\": \"jpg\"}").output_format, "jpeg");
  EXPECT_EQ(GenerationRequest::from_json("{\"init_image\": \"data:image/png;base64,aGk=\"}").init_image, "hi");
}

TEST(Request, ValidateNamesEachBadField) {
  GenerationRequest r;
  r.steps = 0;
  r.sampler = "bogus";
  r.schedule = "sideways";
  r.strength = 1.5;
  r.mask = "m";
  r.rng = "gpu";
  r.guidance = -1;
  r.guidance_interval = {5, 1};
  r.n = 0;
  r.dtype = "int8";
  r.weights = "int4";
  r.output_format = "gif";
  r.outpaint = {-1, 0, 0, 0};
  r.sigmas = {1, 2, 0};
  r.seed = -5;
  const auto e = r.validate();
  for (const char* f : {"steps", "sampler", "schedule", "strength", "mask", "rng", "guidance", "guidance_interval", "n",
                        "dtype", "weights", "output_format", "outpaint", "sigmas", "seed"})
    EXPECT_TRUE(names(e, f)) << f;
  EXPECT_THROW(r.check(), RequestError);
  EXPECT_TRUE(GenerationRequest().validate().empty());
  GenerationRequest a1111_names;
  a1111_names.sampler = "DPM++ 2M Karras";
  EXPECT_TRUE(a1111_names.validate().empty());
}

TEST(Request, LimitsAreCheckedByField) {
  GenerationRequest r;
  r.width = 4096;
  r.steps = 5000;
  r.n = 100;
  r.prompt.assign(20000, 'a');
  RequestLimits l;
  const auto e = check_limits(r, l);
  for (const char* f : {"width", "steps", "n", "prompt"}) EXPECT_TRUE(names(e, f)) << f;
  EXPECT_TRUE(check_limits(GenerationRequest(), l).empty());
  // SDXL sizes: pairs of non-negative numbers, both zero or both set
  GenerationRequest bad;
  bad.original_size = {1024, 0};
  bad.crop_coords = {-1, 0};
  bad.aesthetic_score = -1;
  const auto be = bad.validate();
  for (const char* f : {"original_size", "crop_coords", "aesthetic_score"}) EXPECT_TRUE(names(be, f)) << f;
  EXPECT_ANY_THROW(GenerationRequest::from_json(R"({"target_size": [1024]})"));
  GenerationRequest huge;  // n x width x height beyond int64: refused without overflowing
  huge.n = 2000000000;
  huge.width = huge.height = 2000000000;
  EXPECT_TRUE(names(check_limits(huge, RequestLimits::sanity()), "n"));
  EXPECT_TRUE(names(check_limits(huge, RequestLimits::sanity()), "width"));
}

TEST(Request, InfotextRoundTrip) {
  GenerationRequest r = full();
  r.init_image.clear();  // images and counts are not part of one image's parameters
  r.mask.clear();
  r.n.reset();
  r.batch_size.reset();
  r.output_format = "png";
  r.strength = 0.8;
  r.prompt = "a photo, of a cat\nsecond line";
  r.negative_prompt = "blurry\nugly";
  r.outpaint = {8, 0, 16, 24};
  r.sigmas = {14.6, 3.25, 0.5, 0};
  r.schedule.clear();
  const std::string text = r.to_infotext();
  EXPECT_EQ(GenerationRequest::from_infotext(text), r) << text;
  GenerationRequest c;
  c.class_label = "sneaker";
  c.guide_model = "fashion-mnist-guide";
  c.guide_unconditional = true;
  c.steps = 20;
  c.sampler = "dpm++2m";
  c.guidance = 1.5;
  c.seed = 3;
  EXPECT_EQ(GenerationRequest::from_infotext(c.to_infotext()), c) << c.to_infotext();
}

TEST(Request, ReadsA1111Infotext) {
  const std::string text =
      "masterpiece, a castle on a hill\nat dawn\nNegative prompt: lowres, bad anatomy\nSteps: 28, Sampler: DPM++ 2M "
      "Karras, CFG scale: 7.5, Seed: 3921, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned, Denoising "
      "strength: 0.45, Clip skip: 2, RNG: NV, Lora hashes: \"x: abc, y: def\", Version: v1.6.0";
  const auto r = GenerationRequest::from_infotext(text);
  EXPECT_EQ(r.prompt, "masterpiece, a castle on a hill\nat dawn");
  EXPECT_EQ(r.negative_prompt, "lowres, bad anatomy");
  EXPECT_EQ(r.steps, 28);
  EXPECT_EQ(r.sampler, "dpm++2m");
  EXPECT_EQ(r.schedule, "karras");
  EXPECT_EQ(r.guidance, 7.5);
  EXPECT_EQ(r.seed, 3921);
  EXPECT_EQ(r.width, 512);
  EXPECT_EQ(r.height, 768);
  EXPECT_EQ(r.model, "v1-5-pruned");
  EXPECT_DOUBLE_EQ(r.strength, 0.45);
  EXPECT_EQ(r.clip_skip, 1);
  EXPECT_EQ(r.rng, "philox");
  // newer A1111: the schedule in its own key; stable-diffusion.cpp: the sampler's short name
  const auto n = GenerationRequest::from_infotext("a\nSteps: 20, Sampler: Euler a, Schedule type: Karras, Seed: 1");
  EXPECT_EQ(n.sampler, "euler_a");
  EXPECT_EQ(n.schedule, "karras");
  EXPECT_EQ(GenerationRequest::from_infotext("x\nSteps: 4, Sampler: euler, CFG scale: 5, Seed: 42").sampler, "euler");
  EXPECT_THROW(GenerationRequest::from_infotext("x\nSteps: many, Sampler: euler, Seed: 1"), RequestError);
  EXPECT_EQ(GenerationRequest::from_infotext("just a prompt").prompt, "just a prompt");
}

}  // namespace
}  // namespace diffuse
