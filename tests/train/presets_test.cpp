#include "train/presets.h"

#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "models/diffusion_net.h"

namespace diffuse {
namespace {

int64_t parameters_of(const std::string& preset) {
  return DiffusionNet::from_config(unet_preset(preset, 28, 1, 11)).num_parameters();
}

// The UNet presets at Fashion-MNIST's shape (28 px, 1 channel, 10 classes + null): the sizes
// their descriptions and the shipped models' READMEs give.
TEST(Presets, UNetPresetsHaveTheirDocumentedSizes) {
  EXPECT_EQ(parameters_of("small"), 4024641);  // models/fashion-mnist: 4.02 M
  EXPECT_EQ(parameters_of("xs"), 1011361);     // models/fashion-mnist-guide: 1.01 M
  // xs is small at half the width: the same blocks and levels, a quarter of the weights or so.
  auto xs = unet_preset("xs", 28, 1, 11), small = unet_preset("small", 28, 1, 11);
  EXPECT_EQ(xs["down_block_types"], small["down_block_types"]);
  EXPECT_EQ(xs["up_block_types"], small["up_block_types"]);
  EXPECT_EQ(xs["layers_per_block"], small["layers_per_block"]);
  EXPECT_EQ(xs["block_out_channels"], nlohmann::json({16, 32, 64}));
  EXPECT_LT(parameters_of("tiny"), parameters_of("xs"));
  EXPECT_LT(parameters_of("small"), parameters_of("medium"));
  for (const auto& [name, description] : unet_presets()) EXPECT_NO_THROW(unet_preset(name, 32, 3, 0)) << name;
  try {
    unet_preset("huge", 28, 1, 0);
    ADD_FAILURE() << "accepted an unknown preset";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("xs"), std::string::npos) << e.what();  // the valid names are listed
  }
}

}  // namespace
}  // namespace diffuse
