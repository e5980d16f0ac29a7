// The single-file path at full size: a random-weight checkpoint with exactly the names, shapes
// and dtypes of a real SD1.5 file (tests/fixtures/sd15_keys.tsv, fp16, 2.1 GB) loads with
// every tensor used and none missing, and runs one 64x64 step end to end.
#include <gtest/gtest.h>

#include <filesystem>

#include "fixtures.h"
#include "pipelines/random_checkpoint.h"
#include "pipelines/sd_pipeline.h"

namespace diffuse {
namespace {

TEST(Sd15SingleFile, RandomCheckpointWithTheFullKeyListRunsOneStep) {
  ::setenv("DIFFUSE_CLIP_VOCAB", test::source_path("models/clip/bpe_simple_vocab_16e6.txt.gz").c_str(), 1);
  test::TempDir dir;
  const std::string ckpt = dir / "sd15.safetensors";
  const uint64_t bytes = write_random_checkpoint(test::fixture("sd15_keys.tsv"), ckpt, 0);
  EXPECT_GT(bytes, 2000000000u);  // 1.07 G parameters in fp16
  // bf16 compute keeps this test's memory near 3 GB (the loader is strict: an unused or missing
  // tensor is an error).
  auto pipe = load_sd(ckpt, torch::kCPU, torch::kBFloat16);
  EXPECT_EQ(pipe.unet->config().cross_attention_dim.at(0), 768);
  EXPECT_EQ(pipe.unet->config().in_channels, 4);
  SDOptions o;
  o.prompt = "a photo of a cat";
  o.width = o.height = 64;
  o.steps = 1;
  auto r = generate(pipe, o);
  ASSERT_EQ(r.samples.sizes(), (std::vector<int64_t>{1, 3, 64, 64}));
  EXPECT_TRUE(torch::isfinite(r.samples).all().item<bool>());
  EXPECT_EQ(r.latents.sizes(), (std::vector<int64_t>{1, 4, 8, 8}));
}

}  // namespace
}  // namespace diffuse
