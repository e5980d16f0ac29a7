#include "models/unet2d_condition.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "core/error.h"
#include "models/model_io.h"
#include "models/size_bounds.h"
#include "nn/checkpoint.h"
#include "nn/compute_dtype.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"

namespace diffuse {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kUNet2DConditionClass = "UNet2DConditionModel";

using model_io::nullable;
using model_io::number;

PerBlockInt to_per_block(const model_io::ConfigReader& r, const char* key) {
  const auto& v = r.j.at(key);
  PerBlockInt p;
  if (v.is_array()) {
    p.list = true;
    p.values.clear();
    for (const auto& e : v) {
      if (!model_io::is_integral(e)) r.type_error(key, "an integer or a list of integers");
      p.values.push_back(model_io::as_int(e));
    }
  } else if (model_io::is_integral(v)) {
    p.values = {model_io::as_int(v)};
  } else {
    r.type_error(key, "an integer or a list of integers");
  }
  return p;
}
template <typename T>
void read(const model_io::ConfigReader& r, const char* key, T& out) {
  r.read(key, out);
}
void read(const model_io::ConfigReader& r, const char* key, PerBlockInt& out) {
  if (r.has(key)) out = to_per_block(r, key);
}
void read(const model_io::ConfigReader& r, const char* key, std::optional<PerBlockInt>& out) {
  if (!r.has(key)) return;
  if (r.j.at(key).is_null())
    out.reset();
  else
    out = to_per_block(r, key);
}

}  // namespace

json PerBlockInt::to_json() const { return list ? json(values) : json(values.at(0)); }

UNet2DConditionConfig UNet2DConditionConfig::from_json(const json& j) {
  if (!j.is_object()) throw Error(std::string(kUNet2DConditionClass) + " config: expected a JSON object");
  const model_io::ConfigReader r{j, kUNet2DConditionClass};
  r.check_class_name();
  UNet2DConditionConfig c;
  r.read_size("sample_size", c.sample_size);
  read(r, "in_channels", c.in_channels);
  read(r, "out_channels", c.out_channels);
  read(r, "center_input_sample", c.center_input_sample);
  read(r, "flip_sin_to_cos", c.flip_sin_to_cos);
  read(r, "freq_shift", c.freq_shift);
  read(r, "down_block_types", c.down_block_types);
  read(r, "mid_block_type", c.mid_block_type);
  read(r, "up_block_types", c.up_block_types);
  if (j.contains("only_cross_attention")) {
    const auto& v = j.at("only_cross_attention");
    c.only_cross_attention.clear();
    if (v.is_boolean()) {
      c.only_cross_attention_list = false;
      c.only_cross_attention.push_back(v.get<bool>());
    } else if (v.is_array()) {
      c.only_cross_attention_list = true;
      for (const auto& e : v) {
        if (!e.is_boolean()) r.type_error("only_cross_attention", "a boolean or a list of booleans");
        c.only_cross_attention.push_back(e.get<bool>());
      }
    } else {
      r.type_error("only_cross_attention", "a boolean or a list of booleans");
    }
  }
  read(r, "block_out_channels", c.block_out_channels);
  read(r, "layers_per_block", c.layers_per_block);
  read(r, "downsample_padding", c.downsample_padding);
  read(r, "mid_block_scale_factor", c.mid_block_scale_factor);
  read(r, "dropout", c.dropout);
  read(r, "act_fn", c.act_fn);
  read(r, "norm_num_groups", c.norm_num_groups);
  read(r, "norm_eps", c.norm_eps);
  read(r, "cross_attention_dim", c.cross_attention_dim);
  read(r, "transformer_layers_per_block", c.transformer_layers_per_block);
  if (j.contains("reverse_transformer_layers_per_block"))
    c.reverse_transformer_layers_per_block = j.at("reverse_transformer_layers_per_block");
  read(r, "encoder_hid_dim", c.encoder_hid_dim);
  read(r, "encoder_hid_dim_type", c.encoder_hid_dim_type);
  read(r, "attention_head_dim", c.attention_head_dim);
  read(r, "num_attention_heads", c.num_attention_heads);
  read(r, "dual_cross_attention", c.dual_cross_attention);
  read(r, "use_linear_projection", c.use_linear_projection);
  read(r, "class_embed_type", c.class_embed_type);
  read(r, "addition_embed_type", c.addition_embed_type);
  read(r, "addition_time_embed_dim", c.addition_time_embed_dim);
  read(r, "num_class_embeds", c.num_class_embeds);
  read(r, "upcast_attention", c.upcast_attention);
  read(r, "resnet_time_scale_shift", c.resnet_time_scale_shift);
  read(r, "resnet_skip_time_act", c.resnet_skip_time_act);
  read(r, "resnet_out_scale_factor", c.resnet_out_scale_factor);
  read(r, "time_embedding_type", c.time_embedding_type);
  read(r, "time_embedding_dim", c.time_embedding_dim);
  read(r, "time_embedding_act_fn", c.time_embedding_act_fn);
  read(r, "timestep_post_act", c.timestep_post_act);
  read(r, "time_cond_proj_dim", c.time_cond_proj_dim);
  read(r, "conv_in_kernel", c.conv_in_kernel);
  read(r, "conv_out_kernel", c.conv_out_kernel);
  read(r, "projection_class_embeddings_input_dim", c.projection_class_embeddings_input_dim);
  read(r, "attention_type", c.attention_type);
  read(r, "class_embeddings_concat", c.class_embeddings_concat);
  read(r, "mid_block_only_cross_attention", c.mid_block_only_cross_attention);
  read(r, "cross_attention_norm", c.cross_attention_norm);
  read(r, "addition_embed_type_num_heads", c.addition_embed_type_num_heads);
  return c;
}

json UNet2DConditionConfig::to_json() const {
  json j = json::object();
  j["_class_name"] = kUNet2DConditionClass;
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
  j["flip_sin_to_cos"] = flip_sin_to_cos;
  j["freq_shift"] = number(freq_shift);
  j["down_block_types"] = down_block_types;
  j["mid_block_type"] = nullable(mid_block_type);
  j["up_block_types"] = up_block_types;
  if (only_cross_attention_list) {
    json a = json::array();
    for (bool b : only_cross_attention) a.push_back(b);
    j["only_cross_attention"] = a;
  } else {
    j["only_cross_attention"] = static_cast<bool>(only_cross_attention.at(0));
  }
  j["block_out_channels"] = block_out_channels;
  j["layers_per_block"] = layers_per_block.to_json();
  j["downsample_padding"] = downsample_padding;
  j["mid_block_scale_factor"] = number(mid_block_scale_factor);
  j["dropout"] = dropout;
  j["act_fn"] = act_fn;
  j["norm_num_groups"] = nullable(norm_num_groups);
  j["norm_eps"] = norm_eps;
  j["cross_attention_dim"] = cross_attention_dim.to_json();
  j["transformer_layers_per_block"] = transformer_layers_per_block.to_json();
  j["reverse_transformer_layers_per_block"] = reverse_transformer_layers_per_block;
  j["encoder_hid_dim"] = nullable(encoder_hid_dim);
  j["encoder_hid_dim_type"] = nullable(encoder_hid_dim_type);
  j["attention_head_dim"] = attention_head_dim ? attention_head_dim->to_json() : json(nullptr);
  j["num_attention_heads"] = num_attention_heads ? num_attention_heads->to_json() : json(nullptr);
  j["dual_cross_attention"] = dual_cross_attention;
  j["use_linear_projection"] = use_linear_projection;
  j["class_embed_type"] = nullable(class_embed_type);
  j["addition_embed_type"] = nullable(addition_embed_type);
  j["addition_time_embed_dim"] = nullable(addition_time_embed_dim);
  j["num_class_embeds"] = nullable(num_class_embeds);
  j["upcast_attention"] = upcast_attention;
  j["resnet_time_scale_shift"] = resnet_time_scale_shift;
  j["resnet_skip_time_act"] = resnet_skip_time_act;
  j["resnet_out_scale_factor"] = resnet_out_scale_factor;
  j["time_embedding_type"] = time_embedding_type;
  j["time_embedding_dim"] = nullable(time_embedding_dim);
  j["time_embedding_act_fn"] = nullable(time_embedding_act_fn);
  j["timestep_post_act"] = nullable(timestep_post_act);
  j["time_cond_proj_dim"] = nullable(time_cond_proj_dim);
  j["conv_in_kernel"] = conv_in_kernel;
  j["conv_out_kernel"] = conv_out_kernel;
  j["projection_class_embeddings_input_dim"] = nullable(projection_class_embeddings_input_dim);
  j["attention_type"] = attention_type;
  j["class_embeddings_concat"] = class_embeddings_concat;
  j["mid_block_only_cross_attention"] = nullable(mid_block_only_cross_attention);
  j["cross_attention_norm"] = nullable(cross_attention_norm);
  j["addition_embed_type_num_heads"] = addition_embed_type_num_heads;
  return j;
}

int64_t UNet2DConditionConfig::heads(size_t i) const {
  if (num_attention_heads) return num_attention_heads->at(i);
  if (attention_head_dim) return attention_head_dim->at(i);
  return block_out_channels.at(i);  // unreachable after validate()
}

int64_t UNet2DConditionConfig::num_time_ids(int64_t pooled_dim) const {
  if (!text_time() || !addition_time_embed_dim || !projection_class_embeddings_input_dim ||
      *addition_time_embed_dim <= 0)
    return -1;
  const int64_t rest = *projection_class_embeddings_input_dim - pooled_dim;
  if (rest <= 0 || rest % *addition_time_embed_dim != 0) return -1;
  return rest / *addition_time_embed_dim;
}

void UNet2DConditionConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error(std::string(kUNet2DConditionClass) + " config: " + m); };
  const size_t n = block_out_channels.size();
  if (n == 0) fail("block_out_channels must not be empty");
  for (auto ch : block_out_channels)
    if (ch <= 0) fail("block_out_channels must be positive");
  if (down_block_types.size() != n)
    fail("down_block_types has " + std::to_string(down_block_types.size()) + " entries but block_out_channels has " +
         std::to_string(n));
  if (up_block_types.size() != n)
    fail("up_block_types has " + std::to_string(up_block_types.size()) + " entries but block_out_channels has " +
         std::to_string(n));
  for (const auto& t : down_block_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      fail("unsupported down block type '" + t + "' (supported: CrossAttnDownBlock2D, DownBlock2D)");
  for (const auto& t : up_block_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      fail("unsupported up block type '" + t + "' (supported: CrossAttnUpBlock2D, UpBlock2D)");
  if (mid_block_type && *mid_block_type != "UNetMidBlock2DCrossAttn")
    fail("unsupported mid_block_type '" + *mid_block_type + "' (supported: UNetMidBlock2DCrossAttn, null)");
  auto check_list = [&](const PerBlockInt& p, const char* key) {
    if (p.values.empty()) fail(std::string(key) + " must not be empty");
    if (p.list && p.values.size() != n)
      fail(std::string(key) + " has " + std::to_string(p.values.size()) + " entries but there are " +
           std::to_string(n) + " blocks");
    for (auto v : p.values)
      if (v <= 0) fail(std::string(key) + " must be positive");
  };
  check_list(layers_per_block, "layers_per_block");
  check_list(cross_attention_dim, "cross_attention_dim");
  check_list(transformer_layers_per_block, "transformer_layers_per_block");
  if (!attention_head_dim && !num_attention_heads) fail("attention_head_dim and num_attention_heads are both null");
  if (attention_head_dim) check_list(*attention_head_dim, "attention_head_dim");
  if (num_attention_heads) check_list(*num_attention_heads, "num_attention_heads");
  if (only_cross_attention.empty() || (only_cross_attention_list && only_cross_attention.size() != n))
    fail("only_cross_attention must be a boolean or one boolean per block");
  if (in_channels <= 0 || out_channels <= 0) fail("in_channels and out_channels must be positive");
  if (norm_num_groups) {
    if (*norm_num_groups <= 0) fail("norm_num_groups must be positive");
    for (auto ch : block_out_channels)
      if (ch % *norm_num_groups != 0)
        fail("block_out_channels must be divisible by norm_num_groups " + std::to_string(*norm_num_groups));
  } else {
    fail("norm_num_groups null is not supported");
  }
  for (size_t i = 0; i < n; ++i) {
    const bool cross_down = down_block_types[i] == "CrossAttnDownBlock2D";
    if (cross_down && block_out_channels[i] % heads(i) != 0)
      fail("block_out_channels[" + std::to_string(i) + "] = " + std::to_string(block_out_channels[i]) +
           " is not divisible by its " + std::to_string(heads(i)) + " attention heads");
  }
  if (conv_in_kernel <= 0 || conv_in_kernel % 2 == 0 || conv_out_kernel <= 0 || conv_out_kernel % 2 == 0)
    fail("conv_in_kernel and conv_out_kernel must be odd and positive");
  if (time_embedding_type != "positional")
    fail("unsupported time_embedding_type '" + time_embedding_type + "' (supported: positional)");
  if (addition_embed_type && *addition_embed_type != "text_time")
    fail("addition_embed_type '" + *addition_embed_type + "' is not supported (supported: null, text_time)");
  if (text_time()) {
    if (!addition_time_embed_dim || *addition_time_embed_dim <= 0)
      fail("addition_embed_type 'text_time' requires a positive addition_time_embed_dim");
    if (!projection_class_embeddings_input_dim || *projection_class_embeddings_input_dim <= 0)
      fail("addition_embed_type 'text_time' requires a positive projection_class_embeddings_input_dim");
    if (class_embed_type && *class_embed_type == "projection")
      fail("class_embed_type 'projection' and addition_embed_type 'text_time' cannot be combined");
  }
  if (encoder_hid_dim || encoder_hid_dim_type) fail("encoder_hid_dim / encoder_hid_dim_type are not supported");
  if (time_cond_proj_dim) fail("time_cond_proj_dim is not supported");
  if (timestep_post_act) fail("timestep_post_act is not supported");
  if (class_embeddings_concat) fail("class_embeddings_concat is not supported");
  if (dual_cross_attention) fail("dual_cross_attention is not supported");
  if (attention_type != "default") fail("attention_type '" + attention_type + "' is not supported");
  if (cross_attention_norm) fail("cross_attention_norm is not supported");
  if (!reverse_transformer_layers_per_block.is_null()) fail("reverse_transformer_layers_per_block is not supported");
  if (resnet_time_scale_shift != "default" && resnet_time_scale_shift != "scale_shift")
    fail("unsupported resnet_time_scale_shift '" + resnet_time_scale_shift + "'");
  if (class_embed_type && *class_embed_type != "timestep" && *class_embed_type != "identity" &&
      *class_embed_type != "projection")
    fail("unsupported class_embed_type '" + *class_embed_type + "' (supported: null, timestep, identity, projection)");
  if (class_embed_type && *class_embed_type == "projection" && !projection_class_embeddings_input_dim)
    fail("class_embed_type 'projection' requires projection_class_embeddings_input_dim");
  if (num_class_embeds && *num_class_embeds <= 0) fail("num_class_embeds must be positive");
  nn::parse_activation(act_fn);
  if (time_embedding_act_fn) nn::parse_activation(*time_embedding_act_fn);
}

// ---------------------------------------------------------------- model

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& cfg) : config_(cfg) {
  cfg.validate();
  const auto& boc = cfg.block_out_channels;
  const size_t n = boc.size();
  const int64_t temb = cfg.time_embed_dim();
  const int64_t groups = *cfg.norm_num_groups;

  conv_in = register_module(
      "conv_in",
      nn::Conv2d(
          torch::nn::Conv2dOptions(cfg.in_channels, boc[0], cfg.conv_in_kernel).padding((cfg.conv_in_kernel - 1) / 2)));
  time_proj = register_module("time_proj", nn::Timesteps(boc[0], cfg.flip_sin_to_cos, cfg.freq_shift));
  time_embedding = register_module("time_embedding", nn::TimestepEmbedding(boc[0], temb, cfg.act_fn));
  if (!cfg.class_embed_type && cfg.num_class_embeds) {
    class_embedding_table = register_module("class_embedding", torch::nn::Embedding(*cfg.num_class_embeds, temb));
  } else if (cfg.class_embed_type && *cfg.class_embed_type == "timestep") {
    class_embedding_mlp = register_module("class_embedding", nn::TimestepEmbedding(boc[0], temb, cfg.act_fn));
  } else if (cfg.class_embed_type && *cfg.class_embed_type == "projection") {
    class_embedding_mlp = register_module(
        "class_embedding", nn::TimestepEmbedding(*cfg.projection_class_embeddings_input_dim, temb, cfg.act_fn));
  }
  if (cfg.text_time()) {
    // diffusers builds these with TimestepEmbedding's default activation (silu), not act_fn
    add_time_proj = register_module("add_time_proj",
                                    nn::Timesteps(*cfg.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift));
    add_embedding =
        register_module("add_embedding", nn::TimestepEmbedding(*cfg.projection_class_embeddings_input_dim, temb));
  }

  // Options shared by the cross-attention down, mid and up blocks at (un-reversed) block index b.
  const auto cross_options = [&](size_t b, int64_t num_layers) {
    nn::CrossAttnBlockOptions o;
    o.num_layers = num_layers;
    o.transformer_layers_per_block = cfg.transformer_layers_per_block.at(b);
    o.temb_channels = temb;
    o.dropout = cfg.dropout;
    o.resnet_eps = cfg.norm_eps;
    o.resnet_time_scale_shift = cfg.resnet_time_scale_shift;
    o.resnet_act_fn = cfg.act_fn;
    o.resnet_groups = groups;
    o.num_attention_heads = cfg.heads(b);
    o.cross_attention_dim = cfg.cross_attention_dim.at(b);
    o.use_linear_projection = cfg.use_linear_projection;
    o.upcast_attention = cfg.upcast_attention;
    return o;
  };

  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = boc[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t input_channel = output_channel;
    output_channel = boc[i];
    const bool final_block = i == n - 1;
    if (cfg.down_block_types[i] == "CrossAttnDownBlock2D") {
      auto o = cross_options(i, cfg.layers_per_block.at(i));
      o.only_cross_attention = cfg.only_cross(i);
      down_cross.emplace_back(input_channel, output_channel, o, !final_block, cfg.downsample_padding);
      down_plain.emplace_back(nullptr);
      down_blocks->push_back(down_cross.back());
    } else {
      nn::DownBlock2DOptions o;
      o.type = nn::DownBlockType::DownBlock2D;
      o.num_layers = cfg.layers_per_block.at(i);
      o.in_channels = input_channel;
      o.out_channels = output_channel;
      o.temb_channels = temb;
      o.add_downsample = !final_block;
      o.resnet_eps = cfg.norm_eps;
      o.resnet_act_fn = cfg.act_fn;
      o.resnet_groups = groups;
      o.downsample_padding = cfg.downsample_padding;
      o.resnet_time_scale_shift = cfg.resnet_time_scale_shift;
      o.dropout = cfg.dropout;
      down_plain.emplace_back(o);
      down_cross.emplace_back(nullptr);
      down_blocks->push_back(down_plain.back());
    }
  }

  if (cfg.mid_block_type) {
    auto o = cross_options(n - 1, 1);
    o.output_scale_factor = cfg.mid_block_scale_factor;
    // diffusers' UNetMidBlock2DCrossAttn ignores only_cross_attention.
    mid_block = register_module("mid_block", nn::UNetMidBlock2DCrossAttn(boc[n - 1], o));
  }

  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  output_channel = boc[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;  // index into the (un-reversed) per-block lists
    const int64_t prev_output_channel = output_channel;
    output_channel = boc[r];
    const int64_t input_channel = boc[r == 0 ? 0 : r - 1];
    const bool final_block = i == n - 1;
    if (cfg.up_block_types[i] == "CrossAttnUpBlock2D") {
      if (output_channel % cfg.heads(r) != 0)
        throw Error(std::string(kUNet2DConditionClass) + " config: up block " + std::to_string(i) + " has " +
                    std::to_string(output_channel) + " channels, not divisible by " + std::to_string(cfg.heads(r)) +
                    " attention heads");
      auto o = cross_options(r, cfg.layers_per_block.at(r) + 1);
      o.only_cross_attention = cfg.only_cross(r);
      up_cross.emplace_back(input_channel, output_channel, prev_output_channel, o, !final_block);
      up_plain.emplace_back(nullptr);
      up_blocks->push_back(up_cross.back());
    } else {
      nn::UpBlock2DOptions o;
      o.type = nn::UpBlockType::UpBlock2D;
      o.num_layers = cfg.layers_per_block.at(r) + 1;
      o.prev_output_channel = prev_output_channel;
      o.in_channels = input_channel;
      o.out_channels = output_channel;
      o.temb_channels = temb;
      o.add_upsample = !final_block;
      o.resnet_eps = cfg.norm_eps;
      o.resnet_act_fn = cfg.act_fn;
      o.resnet_groups = groups;
      o.resnet_time_scale_shift = cfg.resnet_time_scale_shift;
      o.dropout = cfg.dropout;
      up_plain.emplace_back(o);
      up_cross.emplace_back(nullptr);
      up_blocks->push_back(up_plain.back());
    }
  }

  conv_norm_out = register_module("conv_norm_out",
                                  torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, boc[0]).eps(cfg.norm_eps)));
  conv_out =
      register_module("conv_out", nn::Conv2d(torch::nn::Conv2dOptions(boc[0], cfg.out_channels, cfg.conv_out_kernel)
                                                 .padding((cfg.conv_out_kernel - 1) / 2)));
}

torch::Dtype UNet2DConditionModelImpl::dtype() const {
  return compute_dtype_ ? *compute_dtype_ : conv_in->weight.scalar_type();
}

namespace {
template <class Holder>
torch::nn::Module* module_of(const Holder& h) {
  return h.is_empty() ? nullptr : h.ptr().get();
}
}  // namespace
torch::Device UNet2DConditionModelImpl::device() const { return conv_in->weight.device(); }
void UNet2DConditionModelImpl::set_attention_chunk_size(int64_t n) { nn::set_attention_query_chunk_size(*this, n); }

torch::Tensor UNet2DConditionModelImpl::added_embedding(const torch::Tensor& text_embeds, const torch::Tensor& time_ids,
                                                        int64_t batch) {
  const std::string cls = kUNet2DConditionClass;
  if (!add_embedding) throw Error(cls + ": text_embeds / time_ids given but the model has no text_time embedding");
  if (!text_embeds.defined() || !time_ids.defined())
    throw Error(cls +
                ": addition_embed_type 'text_time' requires text_embeds and time_ids (SDXL's pooled prompt "
                "embeddings and micro-conditioning)");
  const int64_t d = *config_.addition_time_embed_dim, in = *config_.projection_class_embeddings_input_dim;
  if (text_embeds.dim() != 2 || text_embeds.size(0) != batch || time_ids.dim() != 2 || time_ids.size(0) != batch ||
      text_embeds.size(1) + time_ids.size(1) * d != in)
    throw Error(cls + ": expected text_embeds [" + std::to_string(batch) + ", P] and time_ids [" +
                std::to_string(batch) + ", K] with P + K * " + std::to_string(d) + " = " + std::to_string(in) +
                ", got " + c10::str(text_embeds.sizes()) + " and " + c10::str(time_ids.sizes()));
  const auto dt = dtype();
  nn::ComputeDtypeGuard wide({add_embedding.ptr().get()}, dt, compute_dtype_.has_value());
  auto time_embeds = add_time_proj->forward(time_ids.to(device()).reshape({-1})).reshape({batch, -1});
  auto add_embeds = torch::cat({text_embeds.to(device(), torch::kFloat32), time_embeds}, -1);
  return add_embedding->forward(add_embeds.to(dt));
}

torch::Tensor UNet2DConditionModelImpl::embed(const torch::Tensor& timestep, int64_t batch,
                                              const torch::Tensor& class_labels, const torch::Tensor& text_embeds,
                                              const torch::Tensor& time_ids) {
  if (!timestep.defined()) throw Error(std::string(kUNet2DConditionClass) + ": timestep is required");
  auto t = timestep.reshape({-1}).to(device());
  if (t.size(0) == 1 && batch != 1) t = t.expand({batch}).contiguous();
  if (t.size(0) != batch)
    throw Error(std::string(kUNet2DConditionClass) + ": got " + std::to_string(t.size(0)) +
                " timesteps for a batch of " + std::to_string(batch));
  const auto dt = dtype();
  nn::ComputeDtypeGuard wide(
      {module_of(time_embedding), module_of(class_embedding_table), module_of(class_embedding_mlp)}, dt,
      compute_dtype_.has_value());
  auto emb = time_embedding->forward(time_proj->forward(t).to(dt));
  const bool has_class = class_embedding_table || class_embedding_mlp ||
                         (config_.class_embed_type && *config_.class_embed_type == "identity");
  if (has_class) {
    if (!class_labels.defined())
      throw Error(std::string(kUNet2DConditionClass) + ": class_labels are required for class conditioning");
    auto labels = class_labels.to(device());
    torch::Tensor class_emb;
    if (class_embedding_table)
      class_emb = class_embedding_table->forward(labels.to(torch::kLong));
    else if (class_embedding_mlp && *config_.class_embed_type == "timestep")
      class_emb = class_embedding_mlp->forward(time_proj->forward(labels.reshape({-1})).to(dt));
    else if (class_embedding_mlp)
      class_emb = class_embedding_mlp->forward(labels.to(dt));
    else
      class_emb = labels;
    emb = emb + class_emb.to(dt);
  } else if (class_labels.defined()) {
    throw Error(std::string(kUNet2DConditionClass) + ": class_labels given but the model has no class embedding");
  }
  if (add_embedding || text_embeds.defined() || time_ids.defined())
    emb = emb + added_embedding(text_embeds, time_ids, batch);
  if (config_.time_embedding_act_fn) emb = nn::activate(nn::parse_activation(*config_.time_embedding_act_fn), emb);
  return emb;
}

torch::Tensor UNet2DConditionModelImpl::forward(torch::Tensor sample, const torch::Tensor& timestep,
                                                const torch::Tensor& encoder_hidden_states,
                                                const torch::Tensor& class_labels,
                                                const torch::Tensor& encoder_attention_mask,
                                                const torch::Tensor& text_embeds, const torch::Tensor& time_ids) {
  const std::string cls = kUNet2DConditionClass;
  if (sample.dim() != 4 || sample.size(1) != config_.in_channels)
    throw Error(cls + ": expected sample [B, " + std::to_string(config_.in_channels) + ", H, W], got shape " +
                c10::str(sample.sizes()));
  const int64_t batch = sample.size(0);
  if (!encoder_hidden_states.defined() || encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != batch)
    throw Error(cls + ": expected encoder_hidden_states [" + std::to_string(batch) + ", M, " +
                std::to_string(config_.cross_attention_dim.at(0)) + "]" +
                (encoder_hidden_states.defined() ? ", got shape " + c10::str(encoder_hidden_states.sizes())
                                                 : std::string(", got none")));
  const auto dt = dtype();
  auto ehs = encoder_hidden_states.to(device(), dt);
  torch::Tensor mask;
  if (encoder_attention_mask.defined()) {
    // 1 = keep, 0 = discard -> additive bias [B, 1, M].
    mask = ((1 - encoder_attention_mask.to(device(), dt)) * -10000.0).unsqueeze(1);
  }
  const size_t n = config_.num_blocks();
  const int64_t factor = int64_t{1} << (n - 1);
  const bool forward_upsample_size = sample.size(2) % factor != 0 || sample.size(3) % factor != 0;
  if (config_.center_input_sample) sample = 2 * sample - 1.0;

  const bool upcast = compute_dtype_.has_value();
  auto emb = embed(timestep, batch, class_labels, text_embeds, time_ids);
  nn::ComputeDtypeGuard ends({module_of(conv_in), module_of(conv_norm_out), module_of(conv_out)}, dt, upcast);
  auto h = conv_in->forward(sample.to(dt));
  std::vector<torch::Tensor> res{h};
  // The blocks' resnets, transformers and samplers upcast one layer at a time.
  nn::ComputeDtypeScope layer_by_layer(compute_dtype_);
  // With gradient checkpointing the blocks' resnets and transformers keep only their inputs.
  nn::CheckpointScope checkpointing(gradient_checkpointing_);
  for (size_t i = 0; i < n; ++i) {
    nn::DownBlockOutput out =
        down_cross[i] ? down_cross[i]->forward(h, emb, ehs, mask) : down_plain[i]->forward(h, emb);
    h = out.hidden_states;
    res.insert(res.end(), out.res_samples.begin(), out.res_samples.end());
  }
  if (mid_block) {
    h = mid_block->forward(h, emb, ehs, mask);
  }
  for (size_t i = 0; i < n; ++i) {
    const auto k = static_cast<size_t>(up_cross[i] ? up_cross[i]->num_resnets() : up_plain[i]->num_resnets());
    std::vector<torch::Tensor> skips(res.end() - k, res.end());
    res.resize(res.size() - k);
    std::vector<int64_t> upsample_size;
    if (i != n - 1 && forward_upsample_size) upsample_size = {res.back().size(2), res.back().size(3)};
    if (up_cross[i])
      h = up_cross[i]->forward(h, std::move(skips), emb, ehs, upsample_size, mask);
    else
      h = up_plain[i]->forward(h, std::move(skips), emb, upsample_size);
  }
  // The output layers, checkpointed too: their weights are wide only inside the `ends` guard.
  auto norm_out = conv_norm_out;
  auto out_conv = conv_out;
  const auto act = nn::parse_activation(config_.act_fn);
  auto tail = [norm_out, out_conv, act](const std::vector<torch::Tensor>& in) mutable {
    return std::vector<torch::Tensor>{out_conv->forward(nn::activate(act, norm_out->forward(in[0])))};
  };
  return nn::maybe_checkpoint({module_of(conv_norm_out), module_of(conv_out)}, tail, {h}).at(0);
}

// ---------------------------------------------------------------- folder I/O

UNet2DConditionConfig read_unet2d_condition_config(const std::string& dir) {
  const auto j = model_io::read_config(dir, kUNet2DConditionClass);
  UNet2DConditionConfig cfg;
  try {
    cfg = UNet2DConditionConfig::from_json(j);
    cfg.validate();
  } catch (const Error& e) {
    throw Error((fs::path(dir) / "config.json").string() + ": " + e.what());
  }
  return cfg;
}

UNet2DConditionModel load_unet2d_condition(const std::string& dir) {
  const UNet2DConditionConfig cfg = read_unet2d_condition_config(dir);
  model_io::check_config_size(dir, "diffusion_pytorch_model.safetensors", min_parameters(cfg));
  UNet2DConditionModel model{nullptr};
  {
    nn::SkipInitGuard every_weight_is_loaded;
    model = UNet2DConditionModel(cfg);
  }
  auto sd = model_io::load_weights(dir, kUNet2DConditionClass);
  nn::load_state_dict(*model, sd, (fs::path(dir) / "diffusion_pytorch_model.safetensors").string());
  model->eval();
  return model;
}

void save_unet2d_condition(const UNet2DConditionModel& model, const std::string& dir) {
  model_io::save_folder(dir, model->config().to_json(), nn::state_dict(*model));
}

}  // namespace diffuse
