// `diffuse generate` with the Stable Diffusion add-ons, through the real binary: A1111 prompt
// weights, --lora / <lora:name:w> with --lora-dir, unmatched LoRA keys, --embedding and
// --embeddings-dir, --vae-tiling.
#include <gtest/gtest.h>

#include "core/safetensors.h"
#include "fixtures.h"
#include "run_cli.h"
#include "sd_tiny_text.h"

namespace diffuse {
namespace {

using TensorMap = std::map<std::string, torch::Tensor>;

struct SdExtrasCli : ::testing::Test {
  test::TempDir dir;
  std::string model = test::tiny_sd_folder(dir / "pipe");

  // Runs a 2-step 16x16 generation and returns the samples (undefined on failure, output in `log`).
  torch::Tensor run(const std::string& args, std::string* log = nullptr, int size = 16) {
    const std::string out = dir / "o.safetensors";
    std::filesystem::remove(out);
    auto r = test::run_cli("generate --model " + model + " --steps 2 --width " + std::to_string(size) + " --height " +
                           std::to_string(size) + " --threads 1 --out " + out + " " + args);
    if (log) *log = r.output;
    EXPECT_EQ(r.code, 0) << r.output;
    if (r.code != 0) return {};
    return safetensors::load(out).at("samples");
  }
};

TEST_F(SdExtrasCli, PromptWeightsChangeTheImage) {
  auto plain = run("--prompt 'a photo'");
  auto same = run("--prompt 'a photo:1'");  // ':' without brackets is text, unlike (a photo:1)
  auto weighted = run("--prompt '(a:1.5) photo'");
  ASSERT_TRUE(plain.defined() && weighted.defined() && same.defined());
  EXPECT_TRUE(torch::equal(run("--prompt '(a photo:1)'"), plain));
  EXPECT_FALSE(torch::equal(weighted, plain));
}

TEST_F(SdExtrasCli, LoraFromFlagAndPromptTag) {
  torch::manual_seed(0);
  TensorMap lora;
  const std::string k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_v";
  lora[k + ".lora_down.weight"] = torch::randn({2, 32});
  lora[k + ".lora_up.weight"] = torch::randn({32, 2});
  lora[k + ".alpha"] = torch::tensor(2.0);
  std::filesystem::create_directories(dir / "loras");
  safetensors::save(dir / "loras/style.safetensors", lora);

  auto plain = run("--prompt 'a photo'");
  std::string log;
  auto zero = run("--prompt 'a photo' --lora " + (dir / "loras/style.safetensors") + ":0");
  auto flag = run("--prompt 'a photo' --lora " + (dir / "loras/style.safetensors") + ":0.8", &log);
  EXPECT_NE(log.find("1 UNet and 0 text-encoder layers"), std::string::npos) << log;
  auto tag = run("--prompt 'a photo<lora:style:0.8>' --lora-dir " + (dir / "loras"));
  ASSERT_TRUE(plain.defined() && zero.defined() && flag.defined() && tag.defined());
  EXPECT_TRUE(torch::equal(zero, plain));
  EXPECT_FALSE(torch::equal(flag, plain));
  EXPECT_TRUE(torch::equal(tag, flag));

  TensorMap other;
  other["lora_unet_mid_block_attentions_0_transformer_blocks_9_attn1_to_q.lora_down.weight"] = torch::ones({1, 32});
  other["lora_unet_mid_block_attentions_0_transformer_blocks_9_attn1_to_q.lora_up.weight"] = torch::ones({32, 1});
  safetensors::save(dir / "other.safetensors", other);
  auto r = test::run_cli("generate --model " + model + " --steps 1 --width 16 --height 16 --prompt x --out " +
                         (dir / "x.png") + " --lora " + (dir / "other.safetensors"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("match no layer"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("transformer_blocks_9_attn1_to_q"), std::string::npos) << r.output;
  r = test::run_cli("generate --model " + model + " --steps 1 --width 16 --height 16 --prompt 'x <lora:style>' --out " +
                    (dir / "x.png"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--lora-dir"), std::string::npos) << r.output;
}

TEST_F(SdExtrasCli, EmbeddingsAndVaeTiling) {
  torch::manual_seed(1);
  std::filesystem::create_directories(dir / "emb");
  safetensors::save(dir / "emb/mystyle.safetensors", TensorMap{{"emb_params", torch::randn({2, 32})}});
  safetensors::save(dir / "toy.safetensors", TensorMap{{"<toy>", torch::randn({32})}});
  std::string log;
  auto plain = run("--prompt 'a photo'");
  auto with = run("--prompt 'a <toy> mystyle photo' --embedding " + (dir / "toy.safetensors") + " --embeddings-dir " +
                      (dir / "emb"),
                  &log);
  EXPECT_NE(log.find("embedding <toy>"), std::string::npos) << log;
  EXPECT_NE(log.find("embedding mystyle"), std::string::npos) << log;
  ASSERT_TRUE(with.defined() && plain.defined());
  EXPECT_FALSE(torch::equal(with, plain));

  auto untiled = run("--prompt 'a photo'", nullptr, 32);
  auto one_tile = run("--prompt 'a photo' --vae-tiling --vae-tile-size 32", nullptr, 32);
  auto tiled = run("--prompt 'a photo' --vae-tile-size 16", nullptr, 32);
  ASSERT_TRUE(untiled.defined() && one_tile.defined() && tiled.defined());
  EXPECT_TRUE(torch::equal(one_tile, untiled));
  EXPECT_EQ(tiled.sizes(), untiled.sizes());
  EXPECT_FALSE(torch::equal(tiled, untiled));
}

}  // namespace
}  // namespace diffuse
