#include "models/size_bounds.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;

namespace diffuse {
namespace {

// Anything beyond this is no model this program can hold (SDXL's UNet is 2.6e9).
constexpr double kMaxParameters = 2e10;
constexpr double kMaxBufferElements = 1e9;

double d(int64_t v) { return static_cast<double>(v > 0 ? v : 0); }

// ResnetBlock2D's conv2 is out x out x 3 x 3 in every variant.
double conv3(int64_t in, int64_t out) { return 9 * d(in) * d(out); }

std::string human(double n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", n);
  return buf;
}

}  // namespace

double min_parameters(const UNet2DConfig& c) {
  if (c.block_out_channels.empty()) return 0;
  const int64_t c0 = c.block_out_channels.front();
  double n = conv3(c.in_channels, c0) + conv3(c0, c.out_channels) + 16 * d(c0) * d(c0);
  // down blocks: layers_per_block resnets; up blocks: layers_per_block + 1
  for (const auto ch : c.block_out_channels) n += (2 * d(c.layers_per_block) + 1) * conv3(ch, ch);
  if (c.num_class_embeds) n += d(*c.num_class_embeds) * 4 * d(c0);
  if (c.time_embedding_type == "learned" && c.num_train_timesteps) n += d(*c.num_train_timesteps) * d(c0);
  return n;
}

double min_parameters(const UNet2DConditionConfig& c) {
  if (c.block_out_channels.empty()) return 0;
  const int64_t c0 = c.block_out_channels.front();
  double n = conv3(c.in_channels, c0) + conv3(c0, c.out_channels) + 16 * d(c0) * d(c0);
  const size_t blocks = c.block_out_channels.size();
  for (size_t i = 0; i < blocks; ++i) {
    const int64_t ch = c.block_out_channels[i];
    const double layers = d(c.layers_per_block.at(i));
    n += (2 * layers + 1) * conv3(ch, ch);
    const bool cross = i < c.down_block_types.size() && c.down_block_types[i].find("CrossAttn") != std::string::npos;
    // every down-block transformer layer projects the text to keys and values (to_k, to_v)
    if (cross) n += layers * d(c.transformer_layers_per_block.at(i)) * 2 * d(c.cross_attention_dim.at(i)) * d(ch);
  }
  if (c.num_class_embeds) n += d(*c.num_class_embeds) * 4 * d(c0);
  if (c.projection_class_embeddings_input_dim) n += d(*c.projection_class_embeddings_input_dim) * 4 * d(c0);
  return n;
}

double min_parameters(const AutoencoderKLConfig& c) {
  if (c.block_out_channels.empty()) return 0;
  const int64_t c0 = c.block_out_channels.front();
  const int64_t last = c.block_out_channels.back();
  double n = conv3(c.in_channels, c0) + conv3(c0, c.out_channels) + conv3(last, c.latent_channels);
  // encoder: layers_per_block resnets per level, decoder: layers_per_block + 1; two mid blocks
  for (const auto ch : c.block_out_channels) n += (2 * d(c.layers_per_block) + 1) * conv3(ch, ch);
  n += 4 * conv3(last, last);
  return n;
}

double min_parameters(const DiTConfig& c) {
  const double dim = d(c.num_attention_heads) * d(c.attention_head_dim);
  const double patch = d(c.patch_size) * d(c.patch_size);
  const int64_t out = c.out_channels.value_or(c.in_channels);
  // per layer: attention q, k, v, out and a feed-forward at least as wide as the model; patch
  // embedding in and out
  double n = d(c.num_layers) * 6 * dim * dim + patch * (d(c.in_channels) + d(out)) * dim;
  // adaLN-Zero: six modulation vectors per layer from the conditioning, and the label table
  if (c.norm_type == "ada_norm_zero") n += d(c.num_layers) * 6 * dim * dim + d(c.num_embeds_ada_norm) * dim;
  return n;
}

double min_buffer_elements(const DiTConfig& c) {
  if (c.patch_size <= 0) return 0;
  const double side = d(c.sample_size) / d(c.patch_size);
  return side * side * d(c.num_attention_heads) * d(c.attention_head_dim);
}

double min_parameters(const CLIPTextConfig& c) {
  const double h = d(c.hidden_size);
  return (d(c.vocab_size) + d(c.max_position_embeddings)) * h +
         d(c.num_hidden_layers) * (4 * h * h + 2 * h * d(c.intermediate_size));
}

namespace model_io {

double stored_elements(const std::string& dir, const std::string& weights_file) {
  std::vector<std::string> files;
  const auto single = (fs::path(dir) / weights_file).string();
  if (fs::exists(single)) {
    files.push_back(single);
  } else if (fs::exists(single + ".index.json")) {
    std::set<std::string> shards;
    try {
      std::ifstream in(single + ".index.json", std::ios::binary);
      for (const auto& [name, file] : nlohmann::json::parse(in).at("weight_map").items())
        shards.insert((fs::path(dir) / file.get<std::string>()).string());
    } catch (const std::exception&) {
      return -1;  // load_weights reports a bad index
    }
    for (const auto& s : shards)
      if (!fs::exists(s)) return -1;
    files.assign(shards.begin(), shards.end());
  } else {
    return -1;
  }
  double n = 0;
  for (const auto& f : files) {
    const auto file = safetensors::File::open(f);
    for (const auto& [name, info] : file.tensors()) {
      double e = 1;
      for (const auto s : info.shape) e *= d(s);
      n += e;
    }
  }
  return n;
}

void check_config_size(const std::string& dir, const std::string& weights_file, double min_params, double min_buffers) {
  const auto config = (fs::path(dir) / "config.json").string();
  if (min_params > kMaxParameters)
    throw Error(config + ": the configured sizes imply at least " + human(min_params) + " parameters (limit " +
                human(kMaxParameters) + ")");
  if (min_buffers > kMaxBufferElements)
    throw Error(config + ": the configured sizes imply position tables of at least " + human(min_buffers) +
                " values (limit " + human(kMaxBufferElements) + ")");
  const double stored = stored_elements(dir, weights_file);
  if (stored >= 0 && min_params > stored)
    throw Error(config + ": the configured sizes imply at least " + human(min_params) + " parameters but " +
                (fs::path(dir) / weights_file).string() + " holds " + human(stored) +
                " values; config and weights do not belong together");
}

}  // namespace model_io
}  // namespace diffuse
