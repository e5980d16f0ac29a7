#include "models/unet2d.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "nn/state_dict.h"

namespace diffuse {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------- config

namespace {

constexpr const char* kClassName = "UNet2DModel";
constexpr const char* kDiffusersVersion = "0.28.2";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kWeightsFile = "diffusion_pytorch_model.safetensors";

[[noreturn]] void type_error(const std::string& key, const std::string& expected, const json& v) {
  throw Error("UNet2DModel config: key '" + key + "' must be " + expected + ", got " + v.dump());
}

bool is_integral(const json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15;
}

int64_t to_int(const std::string& key, const json& v) {
  if (!is_integral(v)) type_error(key, "an integer", v);
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(v.get<double>());
}

void read(const json& j, const char* key, int64_t& out) {
  if (j.contains(key)) out = to_int(key, j.at(key));
}
void read(const json& j, const char* key, double& out) {
  if (!j.contains(key)) return;
  if (!j.at(key).is_number()) type_error(key, "a number", j.at(key));
  out = j.at(key).get<double>();
}
void read(const json& j, const char* key, bool& out) {
  if (!j.contains(key)) return;
  if (!j.at(key).is_boolean()) type_error(key, "a boolean", j.at(key));
  out = j.at(key).get<bool>();
}
void read(const json& j, const char* key, std::string& out) {
  if (!j.contains(key)) return;
  if (!j.at(key).is_string()) type_error(key, "a string", j.at(key));
  out = j.at(key).get<std::string>();
}
void read(const json& j, const char* key, std::optional<int64_t>& out) {
  if (!j.contains(key)) return;
  if (j.at(key).is_null())
    out.reset();
  else
    out = to_int(key, j.at(key));
}
void read(const json& j, const char* key, std::optional<std::string>& out) {
  if (!j.contains(key)) return;
  const auto& v = j.at(key);
  if (v.is_null())
    out.reset();
  else if (v.is_string())
    out = v.get<std::string>();
  else
    type_error(key, "a string or null", v);
}
void read(const json& j, const char* key, std::vector<int64_t>& out) {
  if (!j.contains(key)) return;
  const auto& v = j.at(key);
  if (!v.is_array()) type_error(key, "a list of integers", v);
  out.clear();
  for (const auto& e : v) {
    if (!is_integral(e)) type_error(key, "a list of integers", v);
    out.push_back(to_int(key, e));
  }
}
void read(const json& j, const char* key, std::vector<std::string>& out) {
  if (!j.contains(key)) return;
  const auto& v = j.at(key);
  if (!v.is_array()) type_error(key, "a list of strings", v);
  out.clear();
  for (const auto& e : v) {
    if (!e.is_string()) type_error(key, "a list of strings", v);
    out.push_back(e.get<std::string>());
  }
}

// Integral values are written as JSON integers, like Python's defaults (`1`, not `1.0`).
json number(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9.0e15) return static_cast<int64_t>(d);
  return d;
}

template <typename T>
json nullable(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream o;
  for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  return o.str();
}

}  // namespace

UNet2DConfig UNet2DConfig::from_json(const json& j) {
  if (!j.is_object()) throw Error("UNet2DModel config: expected a JSON object");
  if (j.contains("_class_name")) {
    const auto& c = j.at("_class_name");
    if (!c.is_string()) type_error("_class_name", "a string", c);
    if (c.get<std::string>() != kClassName)
      throw Error("UNet2DModel config: _class_name is '" + c.get<std::string>() + "', expected UNet2DModel");
  }
  UNet2DConfig c;
  if (j.contains("sample_size")) {
    const auto& v = j.at("sample_size");
    if (v.is_null()) {
      c.sample_size.clear();
    } else if (is_integral(v)) {
      c.sample_size = {to_int("sample_size", v)};
    } else if (v.is_array() && v.size() == 2 && is_integral(v[0]) && is_integral(v[1])) {
      c.sample_size = {to_int("sample_size", v[0]), to_int("sample_size", v[1])};
    } else {
      type_error("sample_size", "an integer, a [height, width] pair or null", v);
    }
  }
  read(j, "in_channels", c.in_channels);
  read(j, "out_channels", c.out_channels);
  read(j, "center_input_sample", c.center_input_sample);
  read(j, "time_embedding_type", c.time_embedding_type);
  read(j, "freq_shift", c.freq_shift);
  read(j, "flip_sin_to_cos", c.flip_sin_to_cos);
  read(j, "down_block_types", c.down_block_types);
  read(j, "up_block_types", c.up_block_types);
  read(j, "block_out_channels", c.block_out_channels);
  read(j, "layers_per_block", c.layers_per_block);
  read(j, "mid_block_scale_factor", c.mid_block_scale_factor);
  read(j, "downsample_padding", c.downsample_padding);
  read(j, "downsample_type", c.downsample_type);
  read(j, "upsample_type", c.upsample_type);
  read(j, "dropout", c.dropout);
  read(j, "act_fn", c.act_fn);
  read(j, "attention_head_dim", c.attention_head_dim);
  read(j, "norm_num_groups", c.norm_num_groups);
  read(j, "attn_norm_num_groups", c.attn_norm_num_groups);
  read(j, "norm_eps", c.norm_eps);
  read(j, "resnet_time_scale_shift", c.resnet_time_scale_shift);
  read(j, "add_attention", c.add_attention);
  read(j, "class_embed_type", c.class_embed_type);
  read(j, "num_class_embeds", c.num_class_embeds);
  read(j, "num_train_timesteps", c.num_train_timesteps);
  return c;
}

json UNet2DConfig::to_json() const {
  json j = json::object();
  j["_class_name"] = kClassName;
  j["_diffusers_version"] = kDiffusersVersion;
  if (sample_size.empty())
    j["sample_size"] = nullptr;
  else if (sample_size.size() == 1)
    j["sample_size"] = sample_size[0];
  else
    j["sample_size"] = sample_size;
  j["in_channels"] = in_channels;
  j["out_channels"] = out_channels;
  j["center_input_sample"] = center_input_sample;
  j["time_embedding_type"] = time_embedding_type;
  j["freq_shift"] = number(freq_shift);
  j["flip_sin_to_cos"] = flip_sin_to_cos;
  j["down_block_types"] = down_block_types;
  j["up_block_types"] = up_block_types;
  j["block_out_channels"] = block_out_channels;
  j["layers_per_block"] = layers_per_block;
  j["mid_block_scale_factor"] = number(mid_block_scale_factor);
  j["downsample_padding"] = downsample_padding;
  j["downsample_type"] = downsample_type;
  j["upsample_type"] = upsample_type;
  j["dropout"] = dropout;
  j["act_fn"] = act_fn;
  j["attention_head_dim"] = nullable(attention_head_dim);
  j["norm_num_groups"] = norm_num_groups;
  j["attn_norm_num_groups"] = nullable(attn_norm_num_groups);
  j["norm_eps"] = norm_eps;
  j["resnet_time_scale_shift"] = resnet_time_scale_shift;
  j["add_attention"] = add_attention;
  j["class_embed_type"] = nullable(class_embed_type);
  j["num_class_embeds"] = nullable(num_class_embeds);
  j["num_train_timesteps"] = nullable(num_train_timesteps);
  return j;
}

void UNet2DConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("UNet2DModel config: " + m); };
  if (block_out_channels.empty()) fail("block_out_channels must not be empty");
  for (auto ch : block_out_channels)
    if (ch <= 0) fail("block_out_channels must be positive, got [" + join(block_out_channels) + "]");
  if (down_block_types.size() != block_out_channels.size())
    fail("down_block_types has " + std::to_string(down_block_types.size()) + " entries but block_out_channels has " +
         std::to_string(block_out_channels.size()));
  if (up_block_types.size() != down_block_types.size())
    fail("up_block_types has " + std::to_string(up_block_types.size()) + " entries but down_block_types has " +
         std::to_string(down_block_types.size()));
  for (const auto& t : down_block_types) nn::parse_down_block_type(t);
  for (const auto& t : up_block_types) nn::parse_up_block_type(t);
  if (in_channels <= 0 || out_channels <= 0) fail("in_channels and out_channels must be positive");
  if (layers_per_block < 1) fail("layers_per_block must be >= 1");
  if (norm_num_groups <= 0) fail("norm_num_groups must be positive");
  for (auto ch : block_out_channels)
    if (ch % norm_num_groups != 0)
      fail("block_out_channels [" + join(block_out_channels) + "] must be divisible by norm_num_groups " +
           std::to_string(norm_num_groups));
  if (time_embedding_type != "positional" && time_embedding_type != "fourier" && time_embedding_type != "learned")
    fail("unknown time_embedding_type '" + time_embedding_type + "' (expected positional, fourier or learned)");
  if (time_embedding_type == "learned" && (!num_train_timesteps || *num_train_timesteps <= 0))
    fail("time_embedding_type 'learned' requires num_train_timesteps");
  if (class_embed_type && *class_embed_type != "timestep" && *class_embed_type != "identity")
    fail("unknown class_embed_type '" + *class_embed_type + "' (expected null, timestep or identity)");
  if (num_class_embeds && *num_class_embeds <= 0) fail("num_class_embeds must be positive");
  if (downsample_type != "conv" && downsample_type != "resnet")
    fail("unknown downsample_type '" + downsample_type + "' (expected conv or resnet)");
  if (upsample_type != "conv" && upsample_type != "resnet")
    fail("unknown upsample_type '" + upsample_type + "' (expected conv or resnet)");
  if (resnet_time_scale_shift != "default" && resnet_time_scale_shift != "scale_shift")
    fail("unsupported resnet_time_scale_shift '" + resnet_time_scale_shift + "' (expected default or scale_shift)");
  nn::parse_activation(act_fn);
  if (attention_head_dim && *attention_head_dim <= 0) fail("attention_head_dim must be positive");
  if (sample_size.size() > 2) fail("sample_size must be an integer or a [height, width] pair");
}

// ---------------------------------------------------------------- model

UNet2DModelImpl::UNet2DModelImpl(const UNet2DConfig& cfg) : config_(cfg) {
  cfg.validate();
  const auto& boc = cfg.block_out_channels;
  const int64_t n = static_cast<int64_t>(boc.size());
  const int64_t temb = cfg.time_embed_dim();

  conv_in =
      register_module("conv_in", torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.in_channels, boc[0], 3).padding(1)));

  int64_t time_input_dim = boc[0];
  if (cfg.time_embedding_type == "fourier") {
    time_proj_fourier = register_module("time_proj", nn::GaussianFourierProjection(boc[0], /*scale=*/16.0));
    time_input_dim = 2 * boc[0];
  } else if (cfg.time_embedding_type == "learned") {
    time_proj_learned = register_module("time_proj", torch::nn::Embedding(*cfg.num_train_timesteps, boc[0]));
  } else {
    time_proj_positional = register_module("time_proj", nn::Timesteps(boc[0], cfg.flip_sin_to_cos, cfg.freq_shift));
  }
  time_embedding = register_module("time_embedding", nn::TimestepEmbedding(time_input_dim, temb));

  if (!cfg.class_embed_type && cfg.num_class_embeds) {
    class_embedding_table = register_module("class_embedding", torch::nn::Embedding(*cfg.num_class_embeds, temb));
  } else if (cfg.class_embed_type && *cfg.class_embed_type == "timestep") {
    class_embedding_timestep = register_module("class_embedding", nn::TimestepEmbedding(time_input_dim, temb));
  }

  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = boc[0];
  for (int64_t i = 0; i < n; ++i) {
    nn::DownBlock2DOptions o;
    o.type = nn::parse_down_block_type(cfg.down_block_types[i]);
    o.num_layers = cfg.layers_per_block;
    o.in_channels = output_channel;
    output_channel = boc[i];
    o.out_channels = output_channel;
    o.temb_channels = temb;
    o.add_downsample = i != n - 1;
    o.resnet_eps = cfg.norm_eps;
    o.resnet_act_fn = cfg.act_fn;
    o.resnet_groups = cfg.norm_num_groups;
    o.attention_head_dim = cfg.attention_head_dim ? *cfg.attention_head_dim : output_channel;
    o.downsample_padding = cfg.downsample_padding;
    o.resnet_time_scale_shift = cfg.resnet_time_scale_shift;
    o.downsample_type = cfg.downsample_type;
    o.dropout = cfg.dropout;
    down.emplace_back(o);
    down_blocks->push_back(down.back());
  }

  nn::MidBlock2DOptions m;
  m.in_channels = boc.back();
  m.temb_channels = temb;
  m.dropout = cfg.dropout;
  m.resnet_eps = cfg.norm_eps;
  m.resnet_act_fn = cfg.act_fn;
  m.output_scale_factor = cfg.mid_block_scale_factor;
  m.resnet_time_scale_shift = cfg.resnet_time_scale_shift;
  m.attention_head_dim = cfg.attention_head_dim ? *cfg.attention_head_dim : boc.back();
  m.resnet_groups = cfg.norm_num_groups;
  m.attn_groups = cfg.attn_norm_num_groups;
  m.add_attention = cfg.add_attention;
  mid_block = register_module("mid_block", nn::UNetMidBlock2D(m));

  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  std::vector<int64_t> rev(boc.rbegin(), boc.rend());
  output_channel = rev[0];
  for (int64_t i = 0; i < n; ++i) {
    nn::UpBlock2DOptions o;
    o.type = nn::parse_up_block_type(cfg.up_block_types[i]);
    o.num_layers = cfg.layers_per_block + 1;
    o.prev_output_channel = output_channel;
    output_channel = rev[i];
    o.in_channels = rev[std::min(i + 1, n - 1)];
    o.out_channels = output_channel;
    o.temb_channels = temb;
    o.add_upsample = i != n - 1;
    o.resnet_eps = cfg.norm_eps;
    o.resnet_act_fn = cfg.act_fn;
    o.resnet_groups = cfg.norm_num_groups;
    o.attention_head_dim = cfg.attention_head_dim ? *cfg.attention_head_dim : output_channel;
    o.resnet_time_scale_shift = cfg.resnet_time_scale_shift;
    o.upsample_type = cfg.upsample_type;
    o.dropout = cfg.dropout;
    up.emplace_back(o);
    up_blocks->push_back(up.back());
  }

  conv_norm_out =
      register_module("conv_norm_out",
                      torch::nn::GroupNorm(torch::nn::GroupNormOptions(cfg.norm_num_groups, boc[0]).eps(cfg.norm_eps)));
  conv_out =
      register_module("conv_out", torch::nn::Conv2d(torch::nn::Conv2dOptions(boc[0], cfg.out_channels, 3).padding(1)));
}

torch::Dtype UNet2DModelImpl::dtype() const { return conv_in->weight.scalar_type(); }
torch::Device UNet2DModelImpl::device() const { return conv_in->weight.device(); }

void UNet2DModelImpl::set_attention_chunk_size(int64_t n) { nn::set_attention_query_chunk_size(*this, n); }

torch::Tensor UNet2DModelImpl::broadcast_timesteps(const torch::Tensor& timestep, int64_t batch) const {
  if (!timestep.defined()) throw Error("UNet2DModel: timestep is required");
  auto t = timestep.reshape({-1}).to(device());
  if (t.size(0) == 1 && batch != 1) return t.expand({batch}).contiguous();
  if (t.size(0) != batch)
    throw Error("UNet2DModel: got " + std::to_string(t.size(0)) + " timesteps for a batch of " + std::to_string(batch));
  return t;
}

torch::Tensor UNet2DModelImpl::time_features(const torch::Tensor& timestep, int64_t batch) {
  auto t = broadcast_timesteps(timestep, batch);
  if (time_proj_fourier) return time_proj_fourier->forward(t);
  if (time_proj_learned) return time_proj_learned->forward(t.to(torch::kLong));
  return time_proj_positional->forward(t);
}

torch::Tensor UNet2DModelImpl::embed(const torch::Tensor& timestep, int64_t batch, const torch::Tensor& class_labels) {
  const auto dt = dtype();
  auto emb = time_embedding->forward(time_features(timestep, batch).to(dt));
  const bool has_class = class_embedding_table || class_embedding_timestep ||
                         (config_.class_embed_type && *config_.class_embed_type == "identity");
  if (has_class) {
    if (!class_labels.defined()) throw Error("UNet2DModel: class_labels are required for class conditioning");
    auto labels = class_labels.to(device());
    torch::Tensor class_emb;
    if (class_embedding_table) {
      class_emb = class_embedding_table->forward(labels.to(torch::kLong));
    } else if (class_embedding_timestep) {
      torch::Tensor feats;
      if (time_proj_fourier)
        feats = time_proj_fourier->forward(labels);
      else if (time_proj_learned)
        feats = time_proj_learned->forward(labels.to(torch::kLong));
      else
        feats = time_proj_positional->forward(labels);
      class_emb = class_embedding_timestep->forward(feats.to(dt));
    } else {
      class_emb = labels;
    }
    emb = emb + class_emb.to(dt);
  } else if (class_labels.defined()) {
    throw Error("UNet2DModel: class_labels given but the model has no class embedding (num_class_embeds is null)");
  }
  return emb;
}

torch::Tensor UNet2DModelImpl::forward(torch::Tensor sample, torch::Tensor timestep, torch::Tensor class_labels) {
  if (sample.dim() != 4 || sample.size(1) != config_.in_channels)
    throw Error("UNet2DModel: expected sample [B, " + std::to_string(config_.in_channels) + ", H, W], got " +
                std::to_string(sample.dim()) + "-D input" +
                (sample.dim() == 4 ? " with " + std::to_string(sample.size(1)) + " channels" : std::string()));
  const int64_t batch = sample.size(0);
  const int64_t factor = int64_t{1} << (config_.block_out_channels.size() - 1);
  if (sample.size(2) % factor != 0 || sample.size(3) % factor != 0)
    throw Error("UNet2DModel: height and width must be multiples of " + std::to_string(factor) + ", got " +
                std::to_string(sample.size(2)) + "x" + std::to_string(sample.size(3)));
  if (config_.center_input_sample) sample = 2 * sample - 1.0;

  auto emb = embed(timestep, batch, class_labels);

  auto h = conv_in->forward(sample);
  std::vector<torch::Tensor> res{h};
  for (auto& block : down) {
    auto out = block->forward(h, emb);
    h = out.hidden_states;
    res.insert(res.end(), out.res_samples.begin(), out.res_samples.end());
  }
  h = mid_block->forward(h, emb);
  for (auto& block : up) {
    const auto k = static_cast<size_t>(block->num_resnets());
    std::vector<torch::Tensor> skips(res.end() - k, res.end());
    res.resize(res.size() - k);
    h = block->forward(h, std::move(skips), emb);
  }
  h = conv_out->forward(torch::silu(conv_norm_out->forward(h)));

  if (config_.time_embedding_type == "fourier") {
    auto t = broadcast_timesteps(timestep, batch).to(h.scalar_type());
    h = h / t.view({batch, 1, 1, 1});
  }
  return h;
}

// ---------------------------------------------------------------- folder I/O

namespace {

// Renames weights saved by older diffusers versions to the current names.
void convert_legacy_keys(nn::StateDict& sd) {
  static const std::pair<const char*, const char*> kAttn[] = {
      {".query.", ".to_q."}, {".key.", ".to_k."}, {".value.", ".to_v."}, {".proj_attn.", ".to_out.0."}};
  std::vector<std::pair<std::string, std::string>> renames;
  for (const auto& [k, v] : sd) {
    if (k.find(".attentions.") == std::string::npos) continue;
    for (const auto& [from, to] : kAttn) {
      const auto pos = k.rfind(from);
      if (pos == std::string::npos) continue;
      auto nk = k.substr(0, pos) + to + k.substr(pos + std::string(from).size());
      if (!sd.count(nk)) renames.emplace_back(k, nk);
      break;
    }
  }
  for (const auto& [from, to] : renames) {
    sd[to] = sd.at(from);
    sd.erase(from);
  }
  // GaussianFourierProjection(set_W_to_weight=True) registers its weight twice, as W and weight.
  if (sd.count("time_proj.W")) {
    if (!sd.count("time_proj.weight")) sd["time_proj.weight"] = sd.at("time_proj.W");
    sd.erase("time_proj.W");
  }
}

nn::StateDict load_weights(const std::string& dir) {
  const auto single = (fs::path(dir) / kWeightsFile).string();
  if (fs::exists(single)) {
    auto sd = safetensors::load(single);
    return nn::StateDict(sd.begin(), sd.end());
  }
  const auto index = single + ".index.json";
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_file(index));
    } catch (const json::exception& e) {
      throw Error(index + ": invalid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j.at("weight_map").is_object())
      throw Error(index + ": missing \"weight_map\" object");
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [name, file] : j.at("weight_map").items()) {
      if (!file.is_string()) throw Error(index + ": weight_map entry '" + name + "' is not a file name");
      by_file[file.get<std::string>()].push_back(name);
    }
    nn::StateDict sd;
    for (const auto& [file, names] : by_file) {
      const auto path = (fs::path(dir) / file).string();
      if (!fs::exists(path)) throw Error(index + ": shard " + path + " does not exist");
      auto f = safetensors::File::open(path);
      for (const auto& name : names) {
        if (!f.contains(name)) throw Error(path + ": tensor '" + name + "' listed in " + index + " is missing");
        sd[name] = f.get(name);
      }
    }
    return sd;
  }
  const auto bin = (fs::path(dir) / "diffusion_pytorch_model.bin").string();
  if (fs::exists(bin))
    throw Error(bin + ": PyTorch pickle weights are not supported; convert them to " + std::string(kWeightsFile));
  throw Error("no UNet2DModel weights in " + dir + ": expected " + single);
}

}  // namespace

UNet2DModel load_unet2d(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error("UNet2DModel folder " + dir + " does not exist or is not a directory");
  const auto config_path = (fs::path(dir) / kConfigFile).string();
  if (!fs::exists(config_path)) throw Error("UNet2DModel config " + config_path + " does not exist");
  json j;
  try {
    j = json::parse(read_file(config_path));
  } catch (const json::exception& e) {
    throw Error(config_path + ": invalid JSON: " + e.what());
  }
  UNet2DConfig cfg;
  try {
    cfg = UNet2DConfig::from_json(j);
    cfg.validate();
  } catch (const Error& e) {
    throw Error(config_path + ": " + e.what());
  }
  UNet2DModel model(cfg);
  auto sd = load_weights(dir);
  convert_legacy_keys(sd);
  nn::load_state_dict(*model, sd, (fs::path(dir) / kWeightsFile).string());
  model->eval();
  return model;
}

void save_unet2d(const UNet2DModel& model, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create " + dir + ": " + ec.message());
  write_file_atomically((fs::path(dir) / kConfigFile).string(), model->config().to_json().dump(2) + "\n");
  auto sd = nn::state_dict(*model);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& [k, v] : sd) tensors[k] = v.detach();
  // diffusers' GaussianFourierProjection also registers its weight as `W`; without that key
  // diffusers (low_cpu_mem_usage loading) rejects the file, so it is written under both names.
  if (model->time_proj_fourier) tensors["time_proj.W"] = tensors.at("time_proj.weight");
  safetensors::save((fs::path(dir) / kWeightsFile).string(), tensors, {{"format", "pt"}});
}

}  // namespace diffuse
