#include "train/presets.h"

#include <algorithm>
#include <cctype>

#include "core/error.h"

namespace diffuse {

const std::vector<std::pair<std::string, std::string>>& unet_presets() {
  static const std::vector<std::pair<std::string, std::string>> p = {
      {"tiny", "2 levels (16, 32), 1 layer per block: tests and smoke runs (~0.1M parameters)"},
      {"sr", "2 levels (32, 64), 1 layer per block, attention only in the middle block: super-resolution (~0.65M)"},
      {"xs", "small at half width (16, 32, 64): a guide model for autoguidance (~1M)"},
      {"small", "3 levels (32, 64, 128), 2 layers per block, attention at the two lower levels (~4M)"},
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
  } else if (name == "sr") {
    j["block_out_channels"] = {32, 64};
    j["layers_per_block"] = 1;
    j["norm_num_groups"] = 16;
    j["attention_head_dim"] = 32;
    j["down_block_types"] = {"DownBlock2D", "DownBlock2D"};
    j["up_block_types"] = {"UpBlock2D", "UpBlock2D"};
  } else if (name == "xs" || name == "small" || name == "medium") {
    int c = name == "xs" ? 16 : name == "small" ? 32 : 64;
    j["block_out_channels"] = {c, 2 * c, 4 * c};
    j["layers_per_block"] = 2;
    j["norm_num_groups"] = c / 2;
    j["attention_head_dim"] = name == "xs" ? 16 : 32;
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

namespace {

struct DiTSize {
  const char* name;
  int depth, hidden, heads;
  const char* note;
};

// Peebles & Xie 2023, Table 1; "tiny" (tests, smoke runs) and "XS" (CPU training) are this
// project's own sizes.
const DiTSize kDiTSizes[] = {
    {"tiny", 2, 64, 2, "2 blocks, width 64, 2 heads: tests and smoke runs"},
    {"XS", 6, 256, 4, "6 blocks, width 256, 4 heads: CPU-sized (~8M with 100 classes)"},
    {"S", 12, 384, 6, "12 blocks, width 384, 6 heads (~33M)"},
    {"B", 12, 768, 12, "12 blocks, width 768, 12 heads (~130M)"},
    {"L", 24, 1024, 16, "24 blocks, width 1024, 16 heads (~458M)"},
    {"XL", 28, 1152, 16, "28 blocks, width 1152, 16 heads (~675M)"},
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// "dit-s/2" -> (size, patch); false when the name has not the DiT-<size>/<patch> shape.
bool parse_dit_name(const std::string& name, const DiTSize** size, int* patch) {
  const std::string n = lower(name);
  if (n.rfind("dit-", 0) != 0) return false;
  const auto slash = n.find('/');
  if (slash == std::string::npos) return false;
  const std::string sz = n.substr(4, slash - 4), p = n.substr(slash + 1);
  *size = nullptr;
  for (const auto& d : kDiTSizes)
    if (lower(d.name) == sz) *size = &d;
  *patch = (p == "2" || p == "4" || p == "8") ? std::stoi(p) : 0;
  return true;
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& dit_presets() {
  static const std::vector<std::pair<std::string, std::string>> p = [] {
    std::vector<std::pair<std::string, std::string>> v;
    for (const auto& d : kDiTSizes) v.emplace_back(std::string("DiT-") + d.name + "/{2,4,8}", d.note);
    return v;
  }();
  return p;
}

bool is_dit_preset(const std::string& name) {
  const DiTSize* size = nullptr;
  int patch = 0;
  return parse_dit_name(name, &size, &patch);
}

nlohmann::json dit_preset(const std::string& name, int sample_size, int channels, int num_classes) {
  const DiTSize* size = nullptr;
  int patch = 0;
  if (!parse_dit_name(name, &size, &patch) || !size || !patch) {
    std::string names;
    for (const auto& [n, d] : dit_presets()) names += (names.empty() ? "" : ", ") + n;
    throw Error("--config " + name + ": not a DiT preset (" + names + ")");
  }
  if (sample_size % patch != 0)
    throw Error("--config " + name + ": the " + std::to_string(sample_size) + "x" + std::to_string(sample_size) +
                " input is not divisible by the patch size " + std::to_string(patch));
  return {{"_class_name", "DiTTransformer2DModel"},
          {"activation_fn", "gelu-approximate"},
          {"attention_bias", true},
          {"attention_head_dim", size->hidden / size->heads},
          {"dropout", 0.0},
          {"in_channels", channels},
          {"norm_elementwise_affine", false},
          {"norm_eps", 1e-5},
          {"norm_num_groups", 32},
          {"norm_type", "ada_norm_zero"},
          {"num_attention_heads", size->heads},
          {"num_embeds_ada_norm", std::max(1, num_classes)},
          {"num_layers", size->depth},
          {"out_channels", channels},
          {"patch_size", patch},
          {"sample_size", sample_size},
          {"upcast_attention", false}};
}

nlohmann::json model_preset(const std::string& name, int sample_size, int channels, int num_classes) {
  if (is_dit_preset(name)) return dit_preset(name, sample_size, channels, num_classes);
  return unet_preset(name, sample_size, channels, num_classes > 0 ? num_classes + 1 : 0);
}

}  // namespace diffuse
