// diffuse::Model over the shipped models and the tiny Stable Diffusion fixture: defaults,
// validation by field, progress and cancellation, and the same pixels as the CLI.
#include <gtest/gtest.h>

#include "api/names_field.h"
#include "cli/run_cli.h"
#include "core/image.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

using test::names;

std::string fashion() { return test::source_path("models/fashion-mnist"); }

const Model& fm() {
  static const Model m = Model::load(fashion());
  return m;
}

TEST(Model, InfoAndRecommendedSettings) {
  const ModelInfo& i = fm().info();
  EXPECT_EQ(i.kind, ModelKind::ClassConditional);
  EXPECT_EQ(to_string(i.kind), "class-conditional");
  EXPECT_EQ(i.network, "UNet2DModel");
  EXPECT_EQ(i.width, 28);
  EXPECT_EQ(i.channels, 1);
  EXPECT_EQ(i.size_step, 4);  // sides: multiples of 4 (56x56, 28x32, ...)
  ASSERT_EQ(i.classes.size(), 10u);
  EXPECT_EQ(i.classes[7], "sneaker");
  // generation_config.json: the settings the model's README recommends
  GenerationRequest r = fm().resolve(GenerationRequest());
  EXPECT_EQ(r.sampler, "dpm++2m");
  EXPECT_EQ(r.steps, 20);
  EXPECT_EQ(r.guidance, 1.5);
  EXPECT_NE(r.guide_model.find("fashion-mnist-guide"), std::string::npos);
  EXPECT_EQ(r.guide_unconditional, true);
  EXPECT_EQ(r.n, 8);
  // a guidance scale of one's own drops the recommended guide
  GenerationRequest g;
  g.guidance = 2;
  EXPECT_TRUE(fm().resolve(g).guide_model.empty());
}

TEST(Model, FieldsThatDoNotApplyAreErrors) {
  GenerationRequest r;
  r.init_image = "x";
  r.strength = 0;
  r.inpaint_only_masked = true;
  r.invert_from = "zebra";
  r.negative_prompt = "blurry";
  r.loras = {{"style", 1}};
  r.width = 30;  // not a multiple of the UNet's 4
  r.class_label = "zebra";
  r.dtype = "fp16";  // Stable Diffusion only (fp32 and bf16 apply)
  r.weights = "int8";
  const auto e = fm().validate(r);
  for (const char* f :
       {"inpaint_only_masked", "invert_from", "negative_prompt", "loras", "width", "class", "dtype", "weights"})
    EXPECT_TRUE(names(e, f)) << f;
  EXPECT_THROW(fm().generate(r), RequestError);
  GenerationRequest p;
  p.prompt = "sneaker";  // the prompt names the class
  EXPECT_TRUE(fm().validate(p).empty());
  p.prompt = "a red car";
  EXPECT_TRUE(names(fm().validate(p), "prompt"));
  GenerationRequest absurd;  // refused before anything is allocated
  absurd.n = 50000000;
  EXPECT_TRUE(names(fm().validate(absurd), "n"));
}

TEST(Model, ProgressPreviewAndCancel) {
  GenerationRequest r;
  r.class_label = "bag";
  r.n = 2;
  r.steps = 6;
  r.guidance = 1;
  r.seed = 11;
  GenerateHooks h;
  std::vector<int> steps;
  int previews = 0;
  h.preview_every = 2;
  h.progress = [&](const ProgressInfo& p) {
    steps.push_back(p.step);
    EXPECT_EQ(p.total, 6);
    EXPECT_GE(p.eta_s, 0);
    if (p.preview.defined()) {
      ++previews;
      EXPECT_EQ(p.preview.size(1), 28);
    }
  };
  auto res = fm().generate(r, h);
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(previews, 3);
  ASSERT_EQ(res.seeds, (std::vector<int64_t>{11, 12}));
  EXPECT_NE(res.infotexts[1].find("Seed: 12"), std::string::npos);
  EXPECT_NE(res.infotexts[1].find("Class: bag"), std::string::npos);
  // the infotext runs the same image again
  auto again = fm().generate(GenerationRequest::from_infotext(res.infotexts[1]));
  EXPECT_TRUE(torch::equal(again.images[0], res.images[1]));

  GenerateHooks c;
  int seen = 0;
  c.progress = [&](const ProgressInfo& p) {
    seen = p.step;
    if (p.step == 2) c.cancel.cancel();
  };
  EXPECT_THROW(fm().generate(r, c), Cancelled);
  EXPECT_EQ(seen, 2);  // honoured at the next step
}

// dtype auto is the model's LoadOptions::dtype, itself auto by default: bf16 on a CPU with native
// bf16, fp32 elsewhere. Results and their infotexts carry the dtype that ran, never "auto".
TEST(Model, AutoDtypeResolvesAndTheInfotextRecordsIt) {
  const std::string native = resolve_dtype("auto", torch::kCPU);
  EXPECT_EQ(GenerationRequest().dtype, "auto");
  EXPECT_EQ(LoadOptions().dtype, "auto");
  EXPECT_EQ(fm().resolve(GenerationRequest()).dtype, native);
  GenerationRequest r;
  r.class_label = "bag";
  r.n = 1;
  r.steps = 3;
  r.guidance = 1;
  r.seed = 3;
  auto res = fm().generate(r);
  EXPECT_EQ(res.request.dtype, native);
  EXPECT_NE(res.infotexts[0].find("Dtype: " + native), std::string::npos) << res.infotexts[0];
  EXPECT_EQ(res.infotexts[0].find("auto"), std::string::npos);

  LoadOptions fp32;
  fp32.dtype = "fp32";
  const Model m = Model::load(fashion(), fp32);
  auto a = m.generate(r);  // auto: the model's fp32
  EXPECT_EQ(a.request.dtype, "fp32");
  EXPECT_NE(a.infotexts[0].find("Dtype: fp32"), std::string::npos) << a.infotexts[0];
  r.dtype = "bf16";
  auto b = m.generate(r);
  EXPECT_NE(b.infotexts[0].find("Dtype: bf16"), std::string::npos) << b.infotexts[0];
  EXPECT_FALSE(torch::equal(a.images, b.images));
  // each infotext runs its own dtype again (n is the model's default there: compare the first image)
  GenerationRequest again_a = GenerationRequest::from_infotext(a.infotexts[0]);
  GenerationRequest again_b = GenerationRequest::from_infotext(b.infotexts[0]);
  EXPECT_EQ(again_a.dtype, "fp32");
  again_a.n = again_b.n = 1;
  EXPECT_TRUE(torch::equal(m.generate(again_b).images[0], b.images[0]));
  EXPECT_TRUE(torch::equal(fm().generate(again_a).images[0], a.images[0]));
}

TEST(Model, SamePixelsAsTheCli) {
  test::TempDir t;
  auto run = test::run_cli("generate --model " + fashion() +
                           " --class sneaker -n 3 --steps 4 --seed 5 --guidance 2 --threads " +
                           std::to_string(torch::get_num_threads()) + " --out " + (t / "o.safetensors"));
  ASSERT_EQ(run.code, 0) << run.output;
  GenerationRequest r;
  r.class_label = "sneaker";
  r.n = 3;
  r.steps = 4;
  r.seed = 5;
  r.guidance = 2;
  auto res = fm().generate(r);
  EXPECT_TRUE(torch::equal(safetensors::load(t / "o.safetensors").at("samples"), res.images));
  // --params-from re-runs a PNG's request
  auto png = test::run_cli("generate --model " + fashion() +
                           " --class sneaker -n 1 --steps 4 --seed 6 --guidance 2 "
                           "--out " +
                           (t / "one.png"));
  ASSERT_EQ(png.code, 0) << png.output;
  auto re = test::run_cli("generate --model " + fashion() + " --params-from " + (t / "one.png") + " --threads " +
                          std::to_string(torch::get_num_threads()) + " --out " + (t / "re.safetensors"));
  ASSERT_EQ(re.code, 0) << re.output;
  r.n = 1;
  r.seed = 6;
  EXPECT_TRUE(torch::equal(safetensors::load(t / "re.safetensors").at("samples"), fm().generate(r).images));
}

TEST(Model, CliRejectsOptionsThatDoNotApply) {
  test::TempDir t;
  write_png(t / "in.png", to_image(torch::zeros({1, 28, 28})));
  auto r = test::run_cli("generate --model " + fashion() + " --image " + (t / "in.png") +
                         " --strength 0 --only-masked --mask " + (t / "in.png") + " --out " + (t / "x.png"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--only-masked"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(t / "x.png"));
}

TEST(Model, StableDiffusionFromPromptAndImages) {
  test::TempDir t;
  const std::string dir = test::tiny_sd_folder(t / "sd");
  Model m = Model::load(dir);
  EXPECT_EQ(m.info().kind, ModelKind::StableDiffusion);
  EXPECT_EQ(m.info().width, 16);
  GenerationRequest r;
  r.prompt = "a red car";
  r.steps = 3;
  r.seed = 9;
  GenerationRequest bad = r;
  bad.class_label = "car";
  bad.width = 20;
  EXPECT_TRUE(names(m.validate(bad), "class"));
  EXPECT_TRUE(names(m.validate(bad), "width"));
  auto a = m.generate(r);
  EXPECT_EQ(a.images.size(0), 1);  // Stable Diffusion's default
  EXPECT_EQ(a.request.guidance, 7.5);
  EXPECT_NE(a.infotexts[0].find("a red car"), std::string::npos);
  // img2img and inpainting from encoded images
  GenerationRequest e = r;
  e.init_image = encode_image(a.images[0], "png");
  e.strength = 0.5;
  Image mask{16, 16, 1, std::vector<uint8_t>(256, 0)};
  for (int i = 0; i < 128; ++i) mask.data[static_cast<size_t>(i)] = 255;
  e.mask = encode_png(mask);
  auto b = m.generate(e);
  EXPECT_EQ(b.images.sizes(), a.images.sizes());
  EXPECT_NE(b.infotexts[0].find("Denoising strength: 0.5"), std::string::npos);
  GenerationRequest o = r;
  o.init_image = encode_image(a.images[0], "jpeg");
  o.outpaint = {8, 0, 0, 0};
  EXPECT_EQ(m.generate(o).images.size(3), 24);
}

// int8 weights are a request option: the pipeline is reloaded with them, the image carries
// "Weights: int8" and stays close to the one from the weights as stored.
TEST(Model, StableDiffusionWithInt8Weights) {
  test::TempDir t;
  Model m = Model::load(test::tiny_sd_folder(t / "sd"));
  GenerationRequest r;
  r.prompt = "a red car";
  r.steps = 3;
  r.seed = 9;
  const auto a = m.generate(r);
  EXPECT_EQ(a.infotexts[0].find("Weights:"), std::string::npos);
  r.weights = "int8";
  const auto b = m.generate(r);
  EXPECT_NE(b.infotexts[0].find("Weights: int8"), std::string::npos) << b.infotexts[0];
  EXPECT_EQ(GenerationRequest::from_infotext(b.infotexts[0]).weights, "int8");
  EXPECT_FALSE(torch::equal(a.images, b.images));
  EXPECT_LT((a.images - b.images).abs().max().item<double>(), 0.2);
  r.weights = "int4";
  EXPECT_TRUE(names(m.validate(r), "weights"));
  // the CLI names its flag
  auto cli = test::run_cli("generate --model " + fashion() + " --weights int8 --out " + (t / "x.png"));
  EXPECT_EQ(cli.code, 1);
  EXPECT_NE(cli.output.find("--weights: applies to Stable Diffusion models only"), std::string::npos) << cli.output;
  EXPECT_FALSE(std::filesystem::exists(t / "x.png"));
}

TEST(Model, NanIsAnErrorNotABlackImage) {
  test::TempDir t;
  std::filesystem::copy(test::source_path("models/fashion-mnist-guide"), t / "g",
                        std::filesystem::copy_options::recursive);
  const std::string w = t / "g/unet/diffusion_pytorch_model.safetensors";
  auto weights = safetensors::load(w);
  weights["conv_out.bias"] = torch::full_like(weights.at("conv_out.bias"), NAN);
  safetensors::save(w, weights);
  Model g = Model::load(t / "g");
  GenerationRequest r;
  r.n = 1;
  r.steps = 2;
  r.guidance = 1;
  try {
    g.generate(r);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
  }
}

TEST(Model, ImagesEncodeWithTheirParameters) {
  auto img = torch::rand({3, 8, 8}) * 2 - 1;
  const std::string png = encode_image(img, "png", "Steps: 3, Seed: 1");
  EXPECT_EQ(png_parameters(png), "Steps: 3, Seed: 1");
  EXPECT_TRUE(torch::allclose(decode_image(png, 3, "png"), img, 0, 1.0 / 127));
  const std::string jpg = encode_image(img, "jpeg");
  EXPECT_EQ(decode_image(jpg, 3, "jpeg").sizes(), img.sizes());
  EXPECT_THROW(decode_image("not an image", 3, "init_image"), Error);
}

}  // namespace
}  // namespace diffuse
