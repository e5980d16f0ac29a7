// Super-resolution (SR3): the conditioning the trainer builds, tiled sampling, a training run of
// --task superres, and the shipped models/fashion-mnist-sr against bicubic on held-out images.
#include "pipelines/superres.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <string>

#include "core/error.h"
#include "core/json_file.h"
#include "eval/eval_helpers.h"
#include "eval/superres_eval.h"
#include "fixtures.h"
#include "train/dataset.h"
#include "train/trainer.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

const std::string kShipped = "models/fashion-mnist-sr";
// Measured on test images 1000..1023 (models/fashion-mnist-sr/README.md): the bounds sit a little
// below the measurement.
constexpr double kPsnrMargin = 1.2;    // measured 1.56 dB
constexpr int64_t kBetterImages = 15;  // measured 17 of 24

TEST(SuperRes, LowResolutionIsTheAreaMeanOfTheHighResolutionImage) {
  torch::manual_seed(0);
  auto hr = torch::rand({2, 3, 8, 12}) * 2 - 1;
  auto lr = sr_downsample(hr, 2);
  ASSERT_EQ(lr.sizes(), torch::IntArrayRef({2, 3, 4, 6}));
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 6; ++x) {
      auto block = hr.slice(2, 2 * y, 2 * y + 2).slice(3, 2 * x, 2 * x + 2).mean({2, 3});
      EXPECT_LT(test::max_abs_diff(lr.select(3, x).select(2, y), block), 1e-6);
    }
  EXPECT_EQ(sr_downsample(torch::rand({1, 1, 16, 16}), 4).sizes(), torch::IntArrayRef({1, 1, 4, 4}));
  EXPECT_THROW(sr_downsample(torch::rand({1, 1, 14, 14}), 4), Error);
  // Bicubic upsampling keeps constants and doubles the sides.
  auto flat = sr_upsample(torch::full({1, 1, 5, 7}, 0.25), 2);
  ASSERT_EQ(flat.sizes(), torch::IntArrayRef({1, 1, 10, 14}));
  EXPECT_LT((flat - 0.25).abs().max().item<double>(), 1e-6);
}

TEST(SuperRes, NetworkInputIsTheNoisySampleThenTheUpsampledLowResolutionImage) {
  torch::manual_seed(1);
  auto x0 = torch::rand({3, 1, 28, 28}) * 2 - 1;
  auto xt = torch::randn({3, 1, 28, 28});
  auto in = superres_input(xt, sr_condition(x0, 2));
  ASSERT_EQ(in.sizes(), torch::IntArrayRef({3, 2, 28, 28}));
  EXPECT_TRUE(torch::equal(in.slice(1, 0, 1), xt));
  EXPECT_LT(test::max_abs_diff(in.slice(1, 1, 2), sr_upsample(sr_downsample(x0, 2), 2)), 1e-6);
  // Only the low-resolution image reaches the network: detail inside each 2x2 block that keeps its
  // mean leaves the conditioning unchanged, a changed block mean changes it.
  auto detail = torch::tensor({1.0f, -1.0f, -1.0f, 1.0f}).view({1, 1, 2, 2}).repeat({3, 1, 14, 14}) * 0.1;
  EXPECT_LT(test::max_abs_diff(sr_condition(x0 + detail, 2), sr_condition(x0, 2)), 1e-5);
  EXPECT_GT(test::max_abs_diff(sr_condition(x0 + 0.1, 2), sr_condition(x0, 2)), 0.05);
  EXPECT_THROW(superres_input(xt, torch::zeros({3, 1, 14, 14})), Error);
}

TEST(SuperRes, TileOriginsCoverTheCanvasWithTheOverlap) {
  EXPECT_EQ(tile_origins(28, 28, 8), std::vector<int64_t>({0}));
  EXPECT_EQ(tile_origins(20, 28, 8), std::vector<int64_t>({0}));
  for (int64_t size : {29, 56, 57, 100, 133}) {
    auto o = tile_origins(size, 28, 8);
    EXPECT_EQ(o.front(), 0);
    EXPECT_EQ(o.back(), size - 28);
    for (size_t i = 1; i < o.size(); ++i) EXPECT_GE(o[i - 1] + 28 - o[i], 8) << size;
  }
}

TEST(SuperRes, TiledDenoiserBlendsTilesIntoOneCanvas) {
  // A denoiser that acts pixel by pixel is unchanged by tiling.
  CondDenoiser pointwise = [](const torch::Tensor& x, const torch::Tensor& s, const Cond& c) {
    return x * 0.5 + c.get("low_res") - s.view({-1, 1, 1, 1});
  };
  torch::manual_seed(2);
  auto x = torch::randn({2, 1, 40, 61}), lr = torch::randn({2, 1, 40, 61});
  auto sigma = torch::tensor({0.5f, 2.0f});
  Cond c{{{"low_res", lr}}};
  auto tiled = tiled_denoiser(pointwise, 16, 4, 3);
  EXPECT_LT(test::max_abs_diff(tiled(x, sigma, c), pointwise(x, sigma, c)), 1e-5);
  // Neighbouring tiles that disagree (0 and 1, alternately) are blended smoothly: the result stays
  // within their range and steps between neighbouring pixels stay small.
  int calls = 0;
  CondDenoiser offset = [&calls](const torch::Tensor& t, const torch::Tensor&, const Cond&) {
    ++calls;
    auto out = torch::zeros_like(t);
    for (int64_t i = 0; i < t.size(0); ++i) out[i].fill_(static_cast<double>(i % 2));
    return out;
  };
  auto flat = torch::zeros({1, 1, 16, 58});
  auto blended = tiled_denoiser(offset, 16, 8, 64)(flat, torch::ones({1}), Cond{});
  EXPECT_EQ(calls, 1);  // 5 tiles in one pass
  EXPECT_GE(blended.min().item<double>(), 0.0);
  EXPECT_LE(blended.max().item<double>(), 1.0 + 1e-6);
  auto steps = (blended.slice(3, 1, 58) - blended.slice(3, 0, 57)).abs().max().item<double>();
  EXPECT_LT(steps, 0.25);  // tiles pasted edge to edge would step by 1
}

TEST(SuperRes, TrainTaskSuperresWritesAnUpscaler) {
  TempDir dir;
  test::write_image_folder(dir / "data", {""}, 12, 16);
  TrainOptions o;
  o.data = dir / "data";
  o.out = dir / "run";
  o.task = "superres";
  o.scale = 4;
  o.config = "tiny";
  o.steps = 3;
  o.batch = 4;
  o.save_every = 0;
  o.sample_every = 3;
  o.device = "cpu";
  o.quiet = true;
  auto r = train(o);
  EXPECT_EQ(r.steps, 3);
  EXPECT_TRUE(std::isfinite(r.final_loss));
  auto cfg = read_superres_config(dir / "run/superres.json");
  EXPECT_EQ(cfg.scale, 4);
  EXPECT_EQ(cfg.low_resolution_size, 4);
  EXPECT_EQ(cfg.high_resolution_size, 16);
  EXPECT_EQ(cfg.channels, 1);
  auto sr = SuperResPipeline::load(dir / "run");
  EXPECT_EQ(sr.pipe.net.in_channels(), 2);
  EXPECT_EQ(read_json_file(dir / "run/unet/config.json").at("out_channels").get<int>(), 1);
  EXPECT_FALSE(sr.pipe.class_conditional());
  EXPECT_TRUE(fs::exists(dir / "run/samples/step_0000003.png"));
  UpscaleOptions u;
  u.steps = 2;
  EXPECT_EQ(upscale(sr, torch::zeros({2, 1, 4, 4}), 4, u).sizes(), torch::IntArrayRef({2, 1, 16, 16}));
  EXPECT_THROW(upscale(sr, torch::zeros({1, 1, 4, 4}), 2, u), Error);  // trained for 4 only
  EXPECT_THROW(upscale(sr, torch::zeros({1, 3, 4, 4}), 4, u), Error);  // grey model

  // Resuming keeps the task.
  o.task = "generate";
  o.resume = true;
  o.steps = 4;
  EXPECT_THROW(train(o), Error);
  // The image size must be divisible by the scale; DiTs are refused.
  TrainOptions bad = o;
  bad.resume = false;
  bad.task = "superres";
  bad.out = dir / "bad";
  bad.scale = 3;
  EXPECT_THROW(train(bad), Error);
  bad.scale = 2;
  bad.config = "DiT-tiny/2";
  EXPECT_THROW(train(bad), Error);
}

// The shipped model: its README records PSNR / SSIM / FID on 1,000 held-out test images.
class ShippedSuperRes : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    sr_ = new SuperResPipeline(SuperResPipeline::load(test::source_path(kShipped)));
    test_ = new Dataset(load_dataset("fashion-mnist", "test"));
  }
  static void TearDownTestSuite() {
    delete sr_;
    delete test_;
  }
  static SuperResPipeline* sr_;
  static Dataset* test_;
};
SuperResPipeline* ShippedSuperRes::sr_ = nullptr;
Dataset* ShippedSuperRes::test_ = nullptr;

TEST_F(ShippedSuperRes, BeatsBicubicOnHeldOutImages) {
  // Test images 1000..1023 (not those of the README's table), upscaled from 14 px with the default
  // sampler (dpm++2m, 20 steps).
  const auto hr = test_->images.slice(0, 1000, 1024);
  auto ref = hr.to(torch::kFloat32) / 127.5 - 1;
  auto lr = sr_downsample(ref, 2);
  UpscaleOptions o;
  auto out = ((upscale(*sr_, lr, 2, o).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1;
  auto bicubic = ((sr_upsample(lr, 2).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1;
  auto gain = psnr_images(out, ref) - psnr_images(bicubic, ref);
  const double mean_gain = gain.mean().item<double>();
  const int64_t better = (gain > 0).sum().item<int64_t>();
  std::cout << "PSNR gain over bicubic: mean " << mean_gain << " dB, min " << gain.min().item<double>() << ", "
            << better << " / 24 images better\n";
  EXPECT_GT(mean_gain, kPsnrMargin);
  EXPECT_GE(better, kBetterImages);
}

TEST_F(ShippedSuperRes, TiledUpscaleOfALargerImageHasNoSeams) {
  // Four held-out images side by side (56 x 56 px after upscaling, tiles of 28 with an overlap of 8:
  // origins 0, 14, 28 in each direction).
  auto hr = test_->images.slice(0, 2000, 2004).to(torch::kFloat32) / 127.5 - 1;
  auto big = torch::cat({torch::cat({hr[0], hr[1]}, 2), torch::cat({hr[2], hr[3]}, 2)}, 1).unsqueeze(0);
  auto lr = sr_downsample(big, 2);
  UpscaleOptions o;
  o.tile_overlap = 8;
  auto out = upscale(*sr_, lr, 2, o);
  ASSERT_EQ(out.sizes(), torch::IntArrayRef({1, 1, 56, 56}));
  const double psnr_model = psnr_images(out.clamp(-1, 1), big).item<double>();
  const double psnr_bicubic = psnr_images(sr_upsample(lr, 2).clamp(-1, 1), big).item<double>();
  std::cout << "tiled 56x56: PSNR " << psnr_model << " dB, bicubic " << psnr_bicubic << " dB\n";
  EXPECT_GT(psnr_model, psnr_bicubic);

  // Tiles agree in their overlaps: the network's x0 estimates of neighbouring tiles, on the result
  // re-noised to sigma 0.5 with one noise field, differ far less than the estimates differ from the
  // noisy input.
  const auto d = sr_->denoiser();
  auto cond = sr_upsample(lr, 2);
  auto noisy = out + 0.5 * torch::randn(out.sizes(), at::detail::createCPUGenerator(7));
  auto origins = tile_origins(56, 28, 8);
  ASSERT_EQ(origins, std::vector<int64_t>({0, 14, 28}));
  torch::NoGradGuard ng;
  auto estimate = [&](int64_t y, int64_t x) {
    auto crop = [&](const torch::Tensor& t) { return t.slice(2, y, y + 28).slice(3, x, x + 28); };
    auto full = torch::full({56, 56}, NAN).view({1, 1, 56, 56});
    full.slice(2, y, y + 28)
        .slice(3, x, x + 28)
        .copy_(d(crop(noisy), torch::tensor({0.5f}), Cond{{{"low_res", crop(cond)}}}));
    return full;
  };
  double worst = 0, change = 0;
  for (auto y : origins)
    for (size_t k = 1; k < origins.size(); ++k) {
      auto a = estimate(y, origins[k - 1]), b = estimate(y, origins[k]);
      auto both = torch::isfinite(a) & torch::isfinite(b);
      worst = std::max(worst, (a - b).abs().masked_select(both).mean().item<double>());
      change = std::max(change, (a - noisy).abs().masked_select(both).mean().item<double>());
    }
  std::cout << "overlap disagreement " << worst << ", estimate vs noisy input " << change << "\n";
  EXPECT_LT(worst, 0.2 * change);
}

TEST_F(ShippedSuperRes, ScoresAgainstBicubicWithTheEvaluationTooling) {
  // A small version of the README's table: PSNR, SSIM and FID from eval/superres_eval.h.
  auto net = FeatureNet::load(test::source_path("models/fashion-mnist-classifier"));
  UpscaleOptions o;
  auto r = score_superres(*sr_, test_->images.slice(0, 3000, 3032), o, &net);
  EXPECT_EQ(r.n, 32);
  EXPECT_GT(r.psnr_model, r.psnr_bicubic);
  EXPECT_GT(r.ssim_model, 0.5);
  EXPECT_TRUE(std::isfinite(r.fid_model));
  EXPECT_TRUE(std::isfinite(r.fid_bicubic));
  // SSIM of an image with itself is 1, with its negative much lower.
  auto x = test_->images.slice(0, 0, 4).to(torch::kFloat32) / 127.5 - 1;
  EXPECT_NEAR(ssim_images(x, x).min().item<double>(), 1.0, 1e-9);
  EXPECT_LT(ssim_images(-x, x).max().item<double>(), 0.2);
}

}  // namespace
}  // namespace diffuse
