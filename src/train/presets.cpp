#include "train/presets.h"

#include "core/error.h"

namespace diffuse {

const std::vector<std::pair<std::string, std::string>>& unet_presets() {
  static const std::vector<std::pair<std::string, std::string>> p = {
      {"tiny", "2 levels (16, 32), 1 layer per block: tests and smoke runs (~0.1M parameters)"},
      {"small", "3 levels (32, 64, 128), 2 layers per block, attention at the two lower levels (~3M)"},
      {"medium", "3 levels (64, 128, 256), 2 layers per block, attention at the two lower levels (~12M)"},
      {"ddpm-cifar10", "the DDPM paper's CIFAR-10 UNet (128, 256, 256, 256), attention at 16x16 (~36M)"},
  };
  return p;
}

nlohmann::json unet_preset(const std::string& name, int image_size, int channels, int num_class_embeds) {
  nlohmann::json j = {{"_class_name", "UNet2DModel"},
                      {"act_fn", "silu"},
                      {"attention_head_dim", 8},
                      {"center_input_sample", false},
                      {"downsample_padding", 1},
                      {"flip_sin_to_cos", true},
                      {"freq_shift", 0},
                      {"in_channels", channels},
                      {"out_channels", channels},
                      {"mid_block_scale_factor", 1},
                      {"norm_eps", 1e-5},
                      {"resnet_time_scale_shift", "default"},
                      {"sample_size", image_size},
                      {"time_embedding_type", "positional"}};
  if (num_class_embeds > 0) j["num_class_embeds"] = num_class_embeds;
  if (name == "tiny") {
    j["block_out_channels"] = {16, 32};
    j["layers_per_block"] = 1;
    j["norm_num_groups"] = 8;
    j["down_block_types"] = {"DownBlock2D", "AttnDownBlock2D"};
    j["up_block_types"] = {"AttnUpBlock2D", "UpBlock2D"};
  } else if (name == "small" || name == "medium") {
    int c = name == "small" ? 32 : 64;
    j["block_out_channels"] = {c, 2 * c, 4 * c};
    j["layers_per_block"] = 2;
    j["norm_num_groups"] = name == "small" ? 16 : 32;
    j["attention_head_dim"] = 32;
    j["down_block_types"] = {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"};
    j["up_block_types"] = {"AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  } else if (name == "ddpm-cifar10") {
    j["block_out_channels"] = {128, 256, 256, 256};
    j["layers_per_block"] = 2;
    j["norm_num_groups"] = 32;
    j["attention_head_dim"] = nullptr;
    j["down_block_types"] = {"DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"};
    j["up_block_types"] = {"UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  } else {
    std::string names;
    for (const auto& [n, d] : unet_presets()) names += (names.empty() ? "" : ", ") + n;
    throw Error("--config " + name + ": not a preset (" + names + ") or a config.json file");
  }
  return j;
}

}  // namespace diffuse
