// diffuse::denoise and diffuse::animate on the shipped models: results, errors by field, and the
// CLI's errors for bad input (no output file).
#include <gtest/gtest.h>

#include <filesystem>

#include "animation_decode.h"
#include "cli/run_cli.h"
#include "core/atomic_file.h"
#include "core/image.h"
#include "diffuse/diffuse.h"
#include "fixtures.h"
#include "pipelines/pixel_pipeline.h"
#include "tiny_unet.h"

namespace fs = std::filesystem;

namespace diffuse {
namespace {

const Model& fashion_model() {
  static const Model m = Model::load(test::source_path("models/fashion-mnist"));
  return m;
}

// A tiny unconditional pixel model with random weights, saved once.
const std::string& tiny_unconditional_dir() {
  static test::TempDir tmp;
  static const std::string dir = [] {
    torch::manual_seed(5);
    PixelPipeline p;
    p.net = DiffusionNet(UNet2DModel(test::tiny_unet_config(8, 1, 0)));
    p.scheduler.prediction_type = "v_prediction";
    p.save(tmp / "uncond");
    return tmp / "uncond";
  }();
  return dir;
}

// A horizontal ramp with Gaussian noise of sigma 0.2 (clipped), as PNG bytes.
std::string noisy_image_png(int channels = 1, int side = 28) {
  auto gen = at::detail::createCPUGenerator(1);
  auto x = torch::linspace(-1, 1, side).view({1, 1, side}).expand({channels, side, side}).contiguous();
  return encode_image(x + 0.2 * torch::randn({channels, side, side}, gen), "png");
}

std::string request_field_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const RequestError& e) {
    return e.errors.at(0).field + ": " + e.errors.at(0).message;
  }
  return "<no RequestError>";
}

TEST(Denoise, EstimatesSigmaAndDenoisesInBothModes) {
  DenoiseRequest r;
  r.image = noisy_image_png();
  auto mmse = denoise(fashion_model(), r);
  EXPECT_TRUE(mmse.sigma_estimated);
  EXPECT_EQ(mmse.sigma, mmse.estimated_sigma);
  EXPECT_GT(mmse.sigma, 0.05);
  EXPECT_EQ(mmse.image.sizes(), (std::vector<int64_t>{1, 28, 28}));
  EXPECT_NE(mmse.infotext.find("Denoise: mmse, Sigma: "), std::string::npos) << mmse.infotext;
  r.mode = "sample";
  r.sigma = 0.2;
  r.steps = 4;
  r.seed = 3;
  auto s = denoise(fashion_model(), r);
  EXPECT_FALSE(s.sigma_estimated);
  EXPECT_EQ(s.sigma, 0.2);
  EXPECT_FALSE(torch::allclose(s.image, mmse.image));
  EXPECT_TRUE(torch::equal(denoise(fashion_model(), r).image, s.image));  // the seed fixes it
  EXPECT_NE(s.infotext.find("Seed: 3"), std::string::npos) << s.infotext;
}

TEST(Denoise, ErrorsNameTheirField) {
  DenoiseRequest r;
  r.image = noisy_image_png(3);
  EXPECT_EQ(request_field_of([&] { denoise(fashion_model(), r); }),
            "image: the model denoises 28x28 images with 1 channel (grey); this image is 28x28 with 3 channels");
  r.image = noisy_image_png(1, 32);
  EXPECT_NE(request_field_of([&] { denoise(fashion_model(), r); }).find("image: the model denoises 28x28"),
            std::string::npos);
  r.image = noisy_image_png();
  r.sigma = -1;
  EXPECT_EQ(request_field_of([&] { denoise(fashion_model(), r); }).rfind("sigma: ", 0), 0u);
  r.sigma = 1e6;
  EXPECT_NE(request_field_of([&] { denoise(fashion_model(), r); }).find("beyond the model's largest noise level"),
            std::string::npos);
  r.sigma.reset();
  r.mode = "fast";
  EXPECT_EQ(request_field_of([&] { denoise(fashion_model(), r); }), "mode: must be mmse or sample, got 'fast'");
  r.mode = "mmse";
  r.class_label = "hat";
  EXPECT_EQ(request_field_of([&] { denoise(fashion_model(), r); }).rfind("class: ", 0), 0u);
  auto dit = Model::load(test::source_path("models/emoji-dit"));
  r.class_label.clear();
  EXPECT_NE(request_field_of([&] { denoise(dit, r); }).find("model: emoji-dit samples the latent space of a VAE"),
            std::string::npos);
}

TEST(Animate, TrajectoryHasTheFramesAndSizeAsked) {
  AnimationRequest r;
  r.generation.steps = 6;
  r.generation.class_label = "sneaker";
  r.frames = 4;
  auto res = animate(fashion_model(), r);
  auto d = test::decode_gif(res.bytes);
  ASSERT_EQ(d.rgb.size(), 4u);
  // 28 px upscaled by 5 (>= 128 px), x_t and x0 side by side with a 4 px gap, a 12 px caption
  EXPECT_EQ(d.width, 2 * 140 + 4);
  EXPECT_EQ(d.height, 140 + 12);
  EXPECT_EQ(res.width, d.width);
  EXPECT_EQ(res.frames, 4);
  EXPECT_EQ(d.delay_ms[0], 130);
  EXPECT_NE(d.comment.find("Animation: trajectory, Frames: 4"), std::string::npos) << d.comment;
  // the last frame's two panels are the finished sample
  const auto& last = d.rgb.back();
  for (int y = 12; y < 152; y += 7)
    for (int x = 0; x < 140; x += 7)
      ASSERT_EQ(last[(y * d.width + x) * 3], last[(y * d.width + x + 144) * 3]) << x << "," << y;
  r.frames = 8;  // 6 steps have 7 states
  EXPECT_NE(request_field_of([&] { animate(fashion_model(), r); }).find("frames: 8 frames from a run of 6 steps"),
            std::string::npos);
}

TEST(Animate, ClassInterpolationAsWebp) {
  AnimationRequest r;
  r.mode = "interpolate";
  r.format = "webp";
  r.frames = 3;
  r.frame_size = 56;
  r.generation.class_label = "sneaker";
  r.generation.steps = 4;
  r.to_class = "sandal";
  auto res = animate(fashion_model(), r);
  auto d = test::decode_webp(res.bytes);
  ASSERT_EQ(d.rgb.size(), 3u);
  EXPECT_EQ(d.width, 56);
  EXPECT_EQ(d.height, 56 + 12);
  EXPECT_EQ(res.request.to_seed, res.request.generation.seed);  // same seed, only the class moves
  // The ends are the plain class samples of that seed.
  GenerationRequest g = res.request.generation;
  g.class_label = "sandal";
  auto sandal = to_image(fashion_model().generate(g).images[0].clamp(-1, 1));
  auto up = [&](const Image& im, int f) {
    std::vector<uint8_t> out;
    for (int y = 0; y < 28 * f; ++y)
      for (int x = 0; x < 28 * f; ++x) out.push_back(im.data[(y / f) * 28 + x / f]);
    return out;
  };
  auto want = up(sandal, 2);
  for (int y = 0; y < 56; ++y)
    for (int x = 0; x < 56; ++x) ASSERT_EQ(d.rgb[2][((y + 12) * 56 + x) * 3], want[y * 56 + x]) << x << "," << y;
}

TEST(Animate, LatentTrajectoryIsDecoded) {
  auto dit = Model::load(test::source_path("models/emoji-dit"));
  AnimationRequest r;
  r.generation.steps = 2;
  r.generation.class_label = "food-fruit";
  r.format = "webp";
  auto d = test::decode_webp(animate(dit, r).bytes);
  ASSERT_EQ(d.rgb.size(), 3u);  // every state of 2 steps
  EXPECT_EQ(d.width, 2 * 128 + 4);
  EXPECT_EQ(d.height, 128 + 12);
}

TEST(Animate, ErrorsNameTheirField) {
  AnimationRequest r;
  r.frames = 1;
  EXPECT_EQ(request_field_of([&] { animate(fashion_model(), r); }), "frames: must be at least 2, got 1");
  r.frames.reset();
  r.mode = "zoom";
  EXPECT_EQ(request_field_of([&] { animate(fashion_model(), r); }).rfind("mode: ", 0), 0u);
  r.mode = "interpolate";
  r.to_class = "hat";
  EXPECT_EQ(request_field_of([&] { animate(fashion_model(), r); }).rfind("to_class: class hat: unknown class", 0), 0u);
  auto uncond = Model::load(tiny_unconditional_dir());
  r.to_class = "sandal";
  EXPECT_EQ(request_field_of([&] { animate(uncond, r); }),
            "to_class: this model is unconditional: it has no classes to interpolate between");
}

TEST(AnimateCli, BadInputIsOneClearErrorAndNoFile) {
  test::TempDir tmp;
  const std::string fmm = test::source_path("models/fashion-mnist");
  const std::string grey = tmp / "grey.png", rgb = tmp / "rgb.png";
  write_file_atomically(grey, noisy_image_png());
  write_file_atomically(rgb, noisy_image_png(3));
  struct Case {
    std::string args, out, error;
  };
  const std::vector<Case> cases = {
      {"animate --model " + tiny_unconditional_dir() + " --mode interpolate --to-class 1", "a.gif",
       "error: --to-class: this model is unconditional"},
      {"animate --model " + fmm + " --frames 1", "b.gif", "error: --frames: must be at least 2, got 1"},
      {"animate --model " + fmm, "c.mp4", "unknown animation format '.mp4' (expected .gif or .webp)"},
      {"denoise --model " + fmm + " --image " + rgb, "d.png",
       "error: --image: the model denoises 28x28 images with 1 channel (grey); this image is 28x28 with 3 channels"},
      {"denoise --model " + test::source_path("models/emoji-dit") + " --image " + grey, "e.png",
       "error: model: emoji-dit samples the latent space of a VAE"},
  };
  for (const auto& c : cases) {
    const std::string out = tmp / c.out;
    auto r = test::run_cli(c.args + " --out " + out);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.error), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(fs::exists(out)) << out;
  }
  auto ok = test::run_cli("denoise --model " + fmm + " --image " + grey + " --out " + (tmp / "ok.png"));
  EXPECT_EQ(ok.code, 0) << ok.output;
  EXPECT_NE(ok.output.find("(estimated)"), std::string::npos) << ok.output;
  EXPECT_NE(png_parameters(read_file(tmp / "ok.png")).find("Denoise: mmse"), std::string::npos);
}

}  // namespace
}  // namespace diffuse
