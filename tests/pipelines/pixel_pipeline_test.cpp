#include "pipelines/pixel_pipeline.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "fixtures.h"
#include "tiny_unet.h"

namespace diffuse {
namespace {

// A tiny pixel UNet pipeline with random weights (v-prediction, cosine schedule, x0 clipped).
PixelPipeline tiny(uint64_t seed, int size = 8, int channels = 1, std::vector<std::string> classes = {"a", "b"},
                   bool null_class = true) {
  torch::manual_seed(seed);
  auto c = test::tiny_unet_config(size, channels, static_cast<int>(classes.size()));
  PixelPipeline p;
  p.net = DiffusionNet(UNet2DModel(c));
  p.net.module().eval();
  p.scheduler.beta_schedule = "squaredcos_cap_v2";
  p.scheduler.prediction_type = "v_prediction";
  p.class_names = std::move(classes);
  if (!p.class_names.empty() && null_class) p.null_class = static_cast<int64_t>(p.class_names.size());
  p.source = "tiny-" + std::to_string(seed);
  return p;
}

GenerateOptions options(int n, const std::string& sigmas) {
  GenerateOptions o;
  o.n = n;
  o.sampler = "euler";
  o.sigmas = sigmas;
  o.seed = 7;
  return o;
}

TEST(PixelPipeline, ShardsComputeTheirBatchesOfTheWholeRun) {
  auto p = tiny(1);
  auto o = options(5, "10,3,1,0.3,0");
  o.sampler = "euler_a";  // sampler noise too
  o.classes = {0, 1, 0, 1, 1};
  o.batch_size = 2;
  auto whole = generate(p, o);
  torch::Tensor sum = torch::zeros_like(whole.samples), noise = torch::zeros_like(whole.noise);
  for (int shard = 0; shard < 2; ++shard) {
    o.shard = shard;
    o.shards = 2;
    auto part = generate(p, o);
    // batches 0 and 2 (images 0, 1, 4) on shard 0, batch 1 (images 2, 3) on shard 1
    const std::vector<int64_t> mine = shard == 0 ? std::vector<int64_t>{0, 1, 4} : std::vector<int64_t>{2, 3};
    for (int64_t i = 0; i < 5; ++i) {
      const bool own = std::find(mine.begin(), mine.end(), i) != mine.end();
      EXPECT_EQ(torch::equal(part.samples[i], whole.samples[i]), own) << "shard " << shard << " image " << i;
      if (!own) {
        EXPECT_EQ(part.samples[i].abs().max().item<float>(), 0.0f);
      }
    }
    sum += part.samples;
    noise += part.noise;
  }
  EXPECT_TRUE(torch::equal(sum, whole.samples));
  EXPECT_TRUE(torch::equal(noise, whole.noise));
  o.shard = 2;
  EXPECT_THROW(generate(p, o), Error);
}

TEST(PixelPipeline, AutoguidanceByItselfIsTheUnguidedModel) {
  auto p = tiny(1);
  auto o = options(3, "10,3,1,0.3,0");
  o.classes = {0, 1, 0};
  auto plain = generate(p, o).samples;
  o.guide = std::make_shared<const PixelPipeline>(p);  // the same weights
  o.guidance = 3.0;
  // g + 3 (m - g) with m == g is m, bit for bit.
  EXPECT_TRUE(torch::equal(generate(p, o).samples, plain));
}

TEST(PixelPipeline, AutoguidanceExtrapolatesFromTheGuideModel) {
  // One Euler step to sigma 0 returns the denoiser's x0, so a one-step sample is
  // G + w (M - G) of the two models' own one-step samples from the same noise.
  for (bool conditional : {true, false}) {
    std::vector<std::string> classes = conditional ? std::vector<std::string>{"a", "b"} : std::vector<std::string>{};
    auto p = tiny(1, 8, 1, classes), q = tiny(2, 8, 1, classes);
    auto o = options(4, "4,0");
    if (conditional) o.classes = {0, 1, 1, 0};
    auto m = generate(p, o).samples;
    auto g = generate(q, o).samples;
    ASSERT_FALSE(torch::allclose(m, g));
    o.guide = std::make_shared<const PixelPipeline>(q);
    o.guidance = 2.5;
    auto r = generate(p, o);
    EXPECT_TRUE(torch::allclose(r.samples, g + 2.5 * (m - g), 1e-5, 1e-5)) << "conditional " << conditional;
    // The parameters name the guide instead of a CFG scale.
    auto params = generation_parameters(p, o, 0);
    EXPECT_NE(params.find("Autoguidance scale: 2.5, Guide model: tiny-2"), std::string::npos) << params;
    EXPECT_EQ(params.find("CFG scale"), std::string::npos) << params;
  }
}

TEST(PixelPipeline, UnconditionalGuideIsCfgWithTheWeakerModel) {
  // G(null) + w (M(c) - G(null)) on one Euler step to sigma 0, as above.
  auto p = tiny(1), q = tiny(2);
  auto o = options(3, "4,0");
  o.classes = {0, 1, 1};
  auto m = generate(p, o).samples;
  auto null_o = o;
  null_o.classes.assign(3, q.null_class);
  auto g = generate(q, null_o).samples;
  o.guide = std::make_shared<const PixelPipeline>(q);
  o.guide_unconditional = true;
  o.guidance = 2.0;
  EXPECT_TRUE(torch::allclose(generate(p, o).samples, g + 2.0 * (m - g), 1e-5, 1e-5));
  EXPECT_NE(generation_parameters(p, o, 0).find("Guide model: tiny-2 (unconditional)"), std::string::npos);
  // The guide needs a null class to run unconditionally.
  o.guide = std::make_shared<const PixelPipeline>(tiny(2, 8, 1, {"a", "b"}, /*null_class=*/false));
  EXPECT_THROW(generate(p, o), Error);
}

TEST(PixelPipeline, AutoguidanceKeepsToItsNoiseInterval) {
  auto p = tiny(1), q = tiny(2);
  auto o = options(2, "8,3,1,0.3,0");
  o.classes = {1, 0};
  auto plain = generate(p, o).samples;
  o.guide = std::make_shared<const PixelPipeline>(q);
  o.guidance = 2.0;
  auto everywhere = generate(p, o).samples;
  EXPECT_FALSE(torch::allclose(everywhere, plain));
  o.guidance_sigma_lo = 10;  // no step lies in (10, 20]
  o.guidance_sigma_hi = 20;
  EXPECT_TRUE(torch::equal(generate(p, o).samples, plain));
  o.guidance_sigma_lo = 0;  // every step lies in (0, 20]
  EXPECT_TRUE(torch::equal(generate(p, o).samples, everywhere));
}

TEST(PixelPipeline, GuideModelMustSampleTheSameSpace) {
  auto p = tiny(1);
  auto expect_error = [&](const PixelPipeline& guide, const std::string& what) {
    try {
      check_guide(p, guide);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("guide_model " + guide.source), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(tiny(2, 16), "samples 1x16x16, the model 1x8x8");
  expect_error(tiny(2, 8, 3), "samples 3x8x8, the model 1x8x8");
  expect_error(tiny(2, 8, 1, {"a", "c"}), "classes differ");
  expect_error(tiny(2, 8, 1, {"a", "b", "c"}), "classes differ");
  EXPECT_NO_THROW(check_guide(p, tiny(2)));
  EXPECT_NO_THROW(check_guide(p, tiny(2, 8, 1, {})));  // an unconditional guide
  // An unconditional model needs a guide it can run unconditionally.
  auto u = tiny(3, 8, 1, {});
  EXPECT_NO_THROW(check_guide(u, tiny(2)));
  try {
    check_guide(u, tiny(2, 8, 1, {"a", "b"}, /*null_class=*/false));
    ADD_FAILURE() << "accepted a guide without a null class";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without a null class"), std::string::npos) << e.what();
  }
  // generate() checks too, and CFG-rescale has no meaning with a guide model.
  auto o = options(1, "4,0");
  o.classes = {0};
  o.guidance = 2;
  o.guide = std::make_shared<const PixelPipeline>(tiny(2, 16));
  EXPECT_THROW(generate(p, o), Error);
  o.guide = std::make_shared<const PixelPipeline>(tiny(2));
  o.cfg_rescale = 0.7;
  EXPECT_THROW(generate(p, o), Error);
}

TEST(PixelPipeline, LatentGuideMustShareTheVae) {
  auto latent = [](uint64_t seed) {
    auto p = tiny(seed, 8, 4);
    p.vae = load_autoencoder_kl(test::fixture("sd_pipeline_tiny/vae"));
    return p;
  };
  auto p = latent(1);
  EXPECT_NO_THROW(check_guide(p, latent(2)));  // the same VAE, loaded twice
  auto other = latent(2);
  {
    torch::NoGradGuard ng;
    other.vae->named_parameters().begin()->value().add_(1e-3);
  }
  EXPECT_THROW(
      {
        try {
          check_guide(p, other);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("its VAE differs"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  EXPECT_THROW(check_guide(p, tiny(2, 8, 4)), Error);  // a pixel model with latent-shaped samples
  EXPECT_THROW(check_guide(tiny(2, 8, 4), p), Error);
}

// dtype bf16: the shipped Fashion-MNIST UNet2DModel under bf16 autocast draws finite images close to
// fp32's from the same noise (PSNR about 49 dB measured at 8 steps), and bf16 really ran (they differ).
TEST(PixelPipeline, Bf16AutocastStaysCloseToFp32) {
  auto p = PixelPipeline::load(test::source_path("models/fashion-mnist"));
  GenerateOptions o;
  o.n = 4;
  o.classes = {0, 3, 7, 9};
  o.steps = 8;
  o.seed = 5;
  const auto fp32 = generate(p, o).samples;
  o.dtype = torch::kBFloat16;
  const auto bf16 = generate(p, o).samples;
  ASSERT_EQ(bf16.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(bf16).all().item<bool>());
  const double mse = (bf16.clamp(-1, 1) - fp32.clamp(-1, 1)).pow(2).mean().item<double>();
  const double psnr = 10 * std::log10(4.0 / mse);  // peak-to-peak 2 in [-1, 1]
  EXPECT_GT(psnr, 38.0) << "PSNR " << psnr << " dB";
  EXPECT_GT(mse, 0.0);
  // autocast is off again afterwards: fp32 is reproduced exactly
  o.dtype = torch::kFloat32;
  EXPECT_TRUE(torch::equal(generate(p, o).samples, fp32));
  o.dtype = torch::kFloat16;
  EXPECT_THROW(generate(p, o), Error);
}

}  // namespace
}  // namespace diffuse
