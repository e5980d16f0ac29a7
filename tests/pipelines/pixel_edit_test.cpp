// Editing with class-conditional and unconditional pipelines (issue: edit with any model):
// img2img strength limits, inpainting that keeps the known region, DDIM-inversion round trips,
// for the shipped pixel UNet (models/fashion-mnist), the shipped latent DiT (models/emoji-dit)
// and a pixel-space DiT (the dit_tiny fixture).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>

#include "core/error.h"
#include "fixtures.h"
#include "pipelines/pixel_pipeline.h"

namespace diffuse {
namespace {

const PixelPipeline& fashion() {
  static PixelPipeline p = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  return p;
}
const PixelPipeline& emoji() {
  static PixelPipeline p = PixelPipeline::load(test::source_path("models/emoji-dit"));
  return p;
}
const PixelPipeline& tiny_dit() {
  static PixelPipeline p = PixelPipeline::load(test::fixture("dit_tiny"));
  return p;
}

GenerateOptions quick(int64_t cls) {
  GenerateOptions o;
  o.n = 1;
  o.steps = 10;
  o.seed = 3;
  if (cls >= 0) o.classes = {cls};
  return o;
}

// A sample of the model itself, as the image to edit.
torch::Tensor sample_of(const PixelPipeline& p, int64_t cls) { return generate(p, quick(cls)).samples; }

// A mask [1, 1, H, W] repainting the right half.
torch::Tensor right_half(int64_t h, int64_t w) {
  auto m = torch::zeros({1, 1, h, w});
  m.slice(3, w / 2).fill_(1);
  return m;
}

TEST(PixelEdit, StrengthZeroReturnsThePixelImage) {
  const auto& p = fashion();
  auto img = sample_of(p, 7);
  auto o = quick(5);
  o.image = img;
  o.strength = 0;
  EXPECT_TRUE(torch::equal(generate(p, o).samples, img));
}

TEST(PixelEdit, StrengthZeroIsTheVaeRoundTripForLatentModels) {
  const auto& p = emoji();
  auto img = sample_of(p, 10);
  auto o = quick(10);
  o.image = img;
  o.strength = 0;
  torch::NoGradGuard ng;
  auto round_trip = p.decode(p.encode(img)).to(torch::kCPU);
  EXPECT_TRUE(torch::allclose(generate(p, o).samples, round_trip, 1e-5, 1e-5));
}

TEST(PixelEdit, StrengthOneIgnoresTheImage) {
  const auto& p = fashion();
  auto o = quick(5);
  auto plain = generate(p, o).samples;
  o.image = sample_of(p, 7);
  o.strength = 1;
  EXPECT_TRUE(torch::equal(generate(p, o).samples, plain));
  o.strength = 0.5;  // in between: neither the input nor the free sample
  auto half = generate(p, o).samples;
  EXPECT_GT((half - plain).abs().mean().item<double>(), 0.01);
  EXPECT_GT((half - o.image).abs().mean().item<double>(), 0.01);
}

void check_inpainting(const PixelPipeline& p, int64_t cls, const std::string& method) {
  auto img = sample_of(p, cls);
  const int64_t h = img.size(2), w = img.size(3);
  auto o = quick(cls);
  o.image = img;
  o.mask = right_half(h, w);
  o.inpaint = method;
  o.jump_length = 3;
  o.jump_n_sample = 2;
  o.seed = 11;  // other noise than the image's
  auto out = generate(p, o).samples;
  auto keep = img.slice(3, 0, w / 2), kept = out.slice(3, 0, w / 2);
  EXPECT_TRUE(torch::equal(kept, keep)) << method;
  const double changed = (out.slice(3, w / 2) - img.slice(3, w / 2)).abs().mean().item<double>();
  std::cout << "[inpaint] " << p.net.class_name() << (p.latent() ? " (latent) " : " (pixel) ") << method
            << ": mean |change| in the mask " << changed << "\n";
  EXPECT_GT(changed, 0.01) << method;
}

TEST(PixelEdit, RePaintKeepsTheUnmaskedPixelsUNet) { check_inpainting(fashion(), 7, "repaint"); }
TEST(PixelEdit, BlendKeepsTheUnmaskedPixelsUNet) { check_inpainting(fashion(), 7, "blend"); }
TEST(PixelEdit, RePaintKeepsTheUnmaskedPixelsDiT) { check_inpainting(tiny_dit(), 1, "repaint"); }
TEST(PixelEdit, BlendKeepsTheUnmaskedPixelsLatentDiT) { check_inpainting(emoji(), 10, "blend"); }
TEST(PixelEdit, RePaintKeepsTheUnmaskedPixelsLatentDiT) { check_inpainting(emoji(), 10, "repaint"); }

TEST(PixelEdit, SoftMaskBlendsWithTheInput) {
  const auto& p = fashion();
  auto img = sample_of(p, 7);
  auto o = quick(7);
  o.image = img;
  o.inpaint = "blend";
  o.mask = torch::zeros({1, 1, 28, 28});
  auto same = generate(p, o).samples;
  EXPECT_TRUE(torch::equal(same, img));  // an all-black mask keeps everything
  o.mask.fill_(0.5);
  auto out = generate(p, o).samples;
  EXPECT_GT((out - img).abs().max().item<double>(), 0.01);
  EXPECT_LT((out - img).abs().max().item<double>(), 1.0 + 1e-6);  // at most half of a full [-1, 1] swing
}

TEST(PixelEdit, InversionRoundTripReturnsTheImage) {
  const auto& p = fashion();
  auto g = quick(7);
  g.steps = 20;
  auto img = generate(p, g).samples;
  auto o = quick(7);
  o.image = img;
  o.invert_from = 7;
  o.strength = 1;
  o.sampler = "euler";  // DDIM's step: it retraces the inversion
  o.steps = 30;
  int calls = 0, total = 0;
  o.callback = [&](const StepInfo& s) {
    ++calls;
    total = s.total;
  };
  auto back = generate(p, o).samples;
  EXPECT_EQ(calls, total);       // inversion and sampling report as one run
  EXPECT_EQ(total, 2 * 30 - 1);  // up from the smallest sigma, back down to 0
  const double mean = (back - img).abs().mean().item<double>(), worst = (back - img).abs().max().item<double>();
  std::cout << "[inversion] fashion-mnist, 30 steps each way (2 refinements): mean |error| " << mean << ", max "
            << worst << " (in [-1, 1])\n";
  EXPECT_LT(mean, 0.008);
  EXPECT_LT(worst, 0.06);
  // the same inversion sampled back as another class is another picture
  o.classes = {5};
  auto sandal = generate(p, o).samples;
  EXPECT_GT((sandal - img).abs().mean().item<double>(), 5 * mean);
}

TEST(PixelEdit, OtherSizesAndOutpaintingCanvases) {
  const auto& p = fashion();
  auto o = quick(7);
  o.width = 36;
  o.height = 28;
  EXPECT_EQ(generate(p, o).samples.sizes(), torch::IntArrayRef({1, 1, 28, 36}));
  o.width = 30;  // not a multiple of the UNet's 4
  EXPECT_THROW(generate(p, o), Error);
}

TEST(PixelEdit, RejectsBadEditingInput) {
  const auto& p = fashion();
  auto o = quick(7);
  o.image = torch::zeros({1, 3, 28, 28});  // RGB for a greyscale model
  EXPECT_THROW(generate(p, o), Error);
  o.image = torch::zeros({1, 1, 28, 28});
  o.mask = torch::zeros({1, 1, 20, 20});  // another size than the image
  EXPECT_THROW(generate(p, o), Error);
  o.mask = torch::zeros({1, 1, 28, 28});
  o.inpaint = "magic";
  EXPECT_THROW(generate(p, o), Error);
  o.inpaint = "repaint";
  o.strength = 1.5;
  EXPECT_THROW(generate(p, o), Error);
  o = quick(7);
  o.invert_from = 3;  // no image
  EXPECT_THROW(generate(p, o), Error);
  auto uncond = PixelPipeline::load(test::fixture("unet2d_ddpm"));
  auto u = quick(-1);
  u.image = torch::zeros({1, 3, 16, 16});
  u.invert_from = 0;
  EXPECT_THROW(generate(uncond, u), Error);
}

}  // namespace
}  // namespace diffuse
