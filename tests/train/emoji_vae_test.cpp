// The shipped models/emoji-vae: its held-out reconstruction quality on the emoji dataset.
#include <gtest/gtest.h>

#include "fixtures.h"
#include "models/autoencoder_kl.h"
#include "train/dataset.h"
#include "train/vae_trainer.h"

namespace diffuse {
namespace {

// encode -> posterior mean -> decode of the first 64 held-out emoji (every 10th emoji; never seen
// in training). models/emoji-vae/README.md records 21.7 dB over all 364 held-out images.
TEST(EmojiVae, ShippedModelReconstructsHeldOutEmoji) {
  auto vae = load_autoencoder_kl(test::source_path("models/emoji-vae"));
  EXPECT_EQ(vae->config().downsample_factor(), 4);
  EXPECT_EQ(vae->config().latent_channels, 4);
  Dataset held_out = load_dataset("emoji", "test", 64);
  ASSERT_GE(held_out.size(), 64);
  const double psnr = reconstruction_psnr(vae, held_out.images.slice(0, 0, 64), 32);
  EXPECT_GE(psnr, 20.5) << "held-out PSNR " << psnr << " dB";
}

}  // namespace
}  // namespace diffuse
