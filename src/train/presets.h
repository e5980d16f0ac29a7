#pragma once
// Named UNet2DModel configurations for `diffuse train --config NAME`.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace diffuse {

// A diffusers UNet2DModel config.json for preset `name` at the given image size and channels.
// `num_class_embeds` 0 = unconditional. Throws diffuse::Error listing the presets.
nlohmann::json unet_preset(const std::string& name, int image_size, int channels, int num_class_embeds);
const std::vector<std::pair<std::string, std::string>>& unet_presets();  // name, description

}  // namespace diffuse
