#include "models/unet2d.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "models/model_io.h"
#include "models/size_bounds.h"
#include "nn/autocast.h"
#include "nn/group_norm.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"

namespace diffuse {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------- config

namespace {

constexpr const char* kUNet2DClass = "UNet2DModel";

using model_io::nullable;
using model_io::number;

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream o;
  for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  return o.str();
}

}  // namespace

UNet2DConfig UNet2DConfig::from_json(const json& j) {
  if (!j.is_object()) throw Error("UNet2DModel config: expected a JSON object");
  const model_io::ConfigReader r{j, kUNet2DClass};
  r.check_class_name();
  UNet2DConfig c;
  r.read_size("sample_size", c.sample_size);
  r.read("in_channels", c.in_channels);
  r.read("out_channels", c.out_channels);
  r.read("center_input_sample", c.center_input_sample);
  r.read("time_embedding_type", c.time_embedding_type);
  r.read("freq_shift", c.freq_shift);
  r.read("flip_sin_to_cos", c.flip_sin_to_cos);
  r.read("down_block_types", c.down_block_types);
  r.read("up_block_types", c.up_block_types);
  r.read("block_out_channels", c.block_out_channels);
  r.read("layers_per_block", c.layers_per_block);
  r.read("mid_block_scale_factor", c.mid_block_scale_factor);
  r.read("downsample_padding", c.downsample_padding);
  r.read("downsample_type", c.downsample_type);
  r.read("upsample_type", c.upsample_type);
  r.read("dropout", c.dropout);
  r.read("act_fn", c.act_fn);
  r.read("attention_head_dim", c.attention_head_dim);
  r.read("norm_num_groups", c.norm_num_groups);
  r.read("attn_norm_num_groups", c.attn_norm_num_groups);
  r.read("norm_eps", c.norm_eps);
  r.read("resnet_time_scale_shift", c.resnet_time_scale_shift);
  r.read("add_attention", c.add_attention);
  r.read("class_embed_type", c.class_embed_type);
  r.read("num_class_embeds", c.num_class_embeds);
  r.read("num_train_timesteps", c.num_train_timesteps);
  return c;
}

json UNet2DConfig::to_json() const {
  json j = json::object();
  j["_class_name"] = kUNet2DClass;
  j["_diffusers_version"] = model_io::kDiffusersVersion;
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

  conv_in = register_module("conv_in", nn::Conv2d(torch::nn::Conv2dOptions(cfg.in_channels, boc[0], 3).padding(1)));

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
  conv_out = register_module("conv_out", nn::Conv2d(torch::nn::Conv2dOptions(boc[0], cfg.out_channels, 3).padding(1)));
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
      class_emb = nn::label_embedding(class_embedding_table, labels, "UNet2DModel");
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

  // Under bf16 autocast on the CPU the network runs in channels-last (NHWC), the layout oneDNN's
  // bf16 convolutions compute in: in NCHW each of them would transpose its input and output.
  const bool channels_last = sample.is_cpu() && nn::autocast_enabled(sample.device());
  auto h = conv_in->forward(channels_last ? sample.contiguous(torch::MemoryFormat::ChannelsLast) : sample);
  // (A one-channel input is both layouts at once, and the convolution then keeps NCHW.)
  if (channels_last) h = h.contiguous(torch::MemoryFormat::ChannelsLast);
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
  h = conv_out->forward(nn::group_norm_act(*conv_norm_out, h, nn::Activation::SiLU));

  if (config_.time_embedding_type == "fourier") {
    auto t = broadcast_timesteps(timestep, batch).to(h.scalar_type());
    h = h / t.view({batch, 1, 1, 1});
  }
  return channels_last ? h.contiguous() : h;
}

// ---------------------------------------------------------------- folder I/O

namespace {

// Renames weights saved by older diffusers versions to the current names.
void convert_legacy_keys(nn::StateDict& sd) {
  model_io::convert_legacy_attention_keys(sd);
  // GaussianFourierProjection(set_W_to_weight=True) registers its weight twice, as W and weight.
  if (sd.count("time_proj.W")) {
    if (!sd.count("time_proj.weight")) sd["time_proj.weight"] = sd.at("time_proj.W");
    sd.erase("time_proj.W");
  }
}

}  // namespace

UNet2DModel load_unet2d(const std::string& dir) {
  const auto j = model_io::read_config(dir, kUNet2DClass);
  UNet2DConfig cfg;
  try {
    cfg = UNet2DConfig::from_json(j);
    cfg.validate();
  } catch (const Error& e) {
    throw Error((fs::path(dir) / "config.json").string() + ": " + e.what());
  }
  model_io::check_config_size(dir, "diffusion_pytorch_model.safetensors", min_parameters(cfg));
  UNet2DModel model{nullptr};
  {
    nn::SkipInitGuard every_weight_is_loaded;
    model = UNet2DModel(cfg);
  }
  auto sd = model_io::load_weights(dir, kUNet2DClass);
  convert_legacy_keys(sd);
  nn::load_state_dict(*model, sd, (fs::path(dir) / "diffusion_pytorch_model.safetensors").string());
  model->eval();
  return model;
}

void save_unet2d(const UNet2DModel& model, const std::string& dir) {
  auto tensors = nn::state_dict(*model);
  // diffusers' GaussianFourierProjection also registers its weight as `W`; without that key
  // diffusers (low_cpu_mem_usage loading) rejects the file, so it is written under both names.
  if (model->time_proj_fourier) tensors["time_proj.W"] = tensors.at("time_proj.weight");
  model_io::save_folder(dir, model->config().to_json(), tensors);
}

}  // namespace diffuse
