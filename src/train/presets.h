#pragma once
// Named model configurations for `diffuse train --config NAME`: UNet2DModel presets and the DiT
// paper's DiTTransformer2DModel sizes (S, B, L, XL with patch 2, 4 or 8, e.g. "DiT-S/2").
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace diffuse {

// A diffusers UNet2DModel config.json for preset `name` at the given image size and channels.
// `num_class_embeds` 0 = unconditional. Throws diffuse::Error listing the presets.
nlohmann::json unet_preset(const std::string& name, int image_size, int channels, int num_class_embeds);
const std::vector<std::pair<std::string, std::string>>& unet_presets();  // name, description

// Whether `name` names a DiT preset ("DiT-S/2", case-insensitive; also "dit-tiny/2" for tests).
bool is_dit_preset(const std::string& name);
// A diffusers DiTTransformer2DModel config.json: `sample_size` and `channels` of the (latent)
// input, `num_classes` class labels (0 = unconditional: a single label, used as the null class).
// Learned sigma is off (out_channels = channels): the loss trains the mean prediction only.
// Throws diffuse::Error listing the sizes for an unknown name or a sample size not divisible by the patch.
nlohmann::json dit_preset(const std::string& name, int sample_size, int channels, int num_classes);
const std::vector<std::pair<std::string, std::string>>& dit_presets();  // size, description

// unet_preset or dit_preset, by name.
nlohmann::json model_preset(const std::string& name, int sample_size, int channels, int num_classes);

}  // namespace diffuse
