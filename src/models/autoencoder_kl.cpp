#include "models/autoencoder_kl.h"

#include "core/error.h"
#include "models/model_io.h"
#include "models/size_bounds.h"
#include "nn/activations.h"
#include "nn/attention.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"

namespace diffuse {

using nlohmann::json;

namespace {
constexpr const char* kAutoencoderKLClass = "AutoencoderKL";
}  // namespace

// ---------------------------------------------------------------- config

AutoencoderKLConfig AutoencoderKLConfig::from_json(const json& j) {
  if (!j.is_object()) throw Error("AutoencoderKL config: expected a JSON object");
  model_io::ConfigReader r{j, kAutoencoderKLClass};
  if (j.contains("_class_name")) {
    std::string cls;
    r.read("_class_name", cls);
    if (cls != kAutoencoderKLClass)
      throw Error("AutoencoderKL config: _class_name is '" + cls + "', expected AutoencoderKL");
  }
  AutoencoderKLConfig c;
  r.read("in_channels", c.in_channels);
  r.read("out_channels", c.out_channels);
  r.read("down_block_types", c.down_block_types);
  r.read("up_block_types", c.up_block_types);
  r.read("block_out_channels", c.block_out_channels);
  r.read("layers_per_block", c.layers_per_block);
  r.read("act_fn", c.act_fn);
  r.read("latent_channels", c.latent_channels);
  r.read("norm_num_groups", c.norm_num_groups);
  if (j.contains("sample_size")) {
    const auto& v = j.at("sample_size");
    if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[0] == v[1])
      c.sample_size = v[0].get<int64_t>();
    else
      r.read("sample_size", c.sample_size);
  }
  r.read("scaling_factor", c.scaling_factor);
  r.read("shift_factor", c.shift_factor);
  r.read("latents_mean", c.latents_mean);
  r.read("latents_std", c.latents_std);
  r.read("force_upcast", c.force_upcast);
  r.read("use_quant_conv", c.use_quant_conv);
  r.read("use_post_quant_conv", c.use_post_quant_conv);
  r.read("mid_block_add_attention", c.mid_block_add_attention);
  return c;
}

json AutoencoderKLConfig::to_json() const {
  json j = json::object();
  j["_class_name"] = kAutoencoderKLClass;
  j["_diffusers_version"] = model_io::kDiffusersVersion;
  j["act_fn"] = act_fn;
  j["block_out_channels"] = block_out_channels;
  j["down_block_types"] = down_block_types;
  j["force_upcast"] = force_upcast;
  j["in_channels"] = in_channels;
  j["latent_channels"] = latent_channels;
  j["latents_mean"] = latents_mean ? json(*latents_mean) : json(nullptr);
  j["latents_std"] = latents_std ? json(*latents_std) : json(nullptr);
  j["layers_per_block"] = layers_per_block;
  j["norm_num_groups"] = norm_num_groups;
  j["out_channels"] = out_channels;
  j["sample_size"] = sample_size;
  j["scaling_factor"] = model_io::number(scaling_factor);
  j["up_block_types"] = up_block_types;
  // Keys newer than diffusers 0.28.2: written only when they differ from the old behaviour.
  if (shift_factor) j["shift_factor"] = *shift_factor;
  if (!use_quant_conv) j["use_quant_conv"] = false;
  if (!use_post_quant_conv) j["use_post_quant_conv"] = false;
  if (!mid_block_add_attention) j["mid_block_add_attention"] = false;
  return j;
}

void AutoencoderKLConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("AutoencoderKL config: " + m); };
  if (block_out_channels.empty()) fail("block_out_channels must not be empty");
  if (down_block_types.size() != block_out_channels.size())
    fail("down_block_types has " + std::to_string(down_block_types.size()) + " entries but block_out_channels has " +
         std::to_string(block_out_channels.size()));
  if (up_block_types.size() != block_out_channels.size())
    fail("up_block_types has " + std::to_string(up_block_types.size()) + " entries but block_out_channels has " +
         std::to_string(block_out_channels.size()));
  for (const auto& t : down_block_types)
    if (t != "DownEncoderBlock2D") fail("unsupported down block type '" + t + "' (expected DownEncoderBlock2D)");
  for (const auto& t : up_block_types)
    if (t != "UpDecoderBlock2D") fail("unsupported up block type '" + t + "' (expected UpDecoderBlock2D)");
  if (in_channels <= 0 || out_channels <= 0 || latent_channels <= 0)
    fail("in_channels, out_channels and latent_channels must be positive");
  if (layers_per_block < 1) fail("layers_per_block must be >= 1");
  if (norm_num_groups <= 0) fail("norm_num_groups must be positive");
  for (auto ch : block_out_channels)
    if (ch <= 0 || ch % norm_num_groups != 0)
      fail("block_out_channels must be positive multiples of norm_num_groups " + std::to_string(norm_num_groups));
  nn::parse_activation(act_fn);
  if (latents_mean && static_cast<int64_t>(latents_mean->size()) != latent_channels)
    fail("latents_mean must have latent_channels entries");
  if (latents_std && static_cast<int64_t>(latents_std->size()) != latent_channels)
    fail("latents_std must have latent_channels entries");
}

// ---------------------------------------------------------------- blocks

namespace nn {

namespace {
ResnetBlock2DOptions vae_resnet(int64_t in, int64_t out, int64_t groups, const std::string& act, double eps) {
  ResnetBlock2DOptions r(in, out, /*temb=*/0);
  r.groups = groups;
  r.eps = eps;
  r.non_linearity = act;
  return r;
}

MidBlock2DOptions vae_mid(const AutoencoderKLConfig& c) {
  MidBlock2DOptions m;
  m.in_channels = c.block_out_channels.back();
  m.temb_channels = 0;
  m.resnet_eps = 1e-6;
  m.resnet_act_fn = c.act_fn;
  m.resnet_groups = c.norm_num_groups;
  m.attention_head_dim = c.block_out_channels.back();
  m.add_attention = c.mid_block_add_attention;
  return m;
}
}  // namespace

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(int64_t in_channels, int64_t out_channels, int64_t num_layers,
                                           bool add_upsample, int64_t groups, const std::string& act_fn, double eps) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i) {
    resnet_blocks.emplace_back(vae_resnet(i == 0 ? in_channels : out_channels, out_channels, groups, act_fn, eps));
    resnets->push_back(resnet_blocks.back());
  }
  if (add_upsample) {
    upsamplers = register_module("upsamplers", torch::nn::ModuleList());
    upsample = Upsample2D(out_channels, /*use_conv=*/true, out_channels);
    upsamplers->push_back(upsample);
  }
}

torch::Tensor UpDecoderBlock2DImpl::forward(const torch::Tensor& x) {
  auto h = x;
  for (auto& r : resnet_blocks) h = r->forward(h);
  if (upsample) h = upsample->forward(h);
  return h;
}

VAEEncoderImpl::VAEEncoderImpl(const AutoencoderKLConfig& c) {
  const auto& boc = c.block_out_channels;
  const int64_t n = static_cast<int64_t>(boc.size());
  conv_in = register_module("conv_in", nn::Conv2d(torch::nn::Conv2dOptions(c.in_channels, boc[0], 3).padding(1)));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t out = boc[0];
  for (int64_t i = 0; i < n; ++i) {
    DownBlock2DOptions o;
    o.type = DownBlockType::DownBlock2D;
    o.num_layers = c.layers_per_block;
    o.in_channels = out;
    out = boc[i];
    o.out_channels = out;
    o.temb_channels = 0;
    o.add_downsample = i != n - 1;
    o.resnet_eps = 1e-6;
    o.resnet_act_fn = c.act_fn;
    o.resnet_groups = c.norm_num_groups;
    o.downsample_padding = 0;
    down.emplace_back(o);
    down_blocks->push_back(down.back());
  }
  mid_block = register_module("mid_block", UNetMidBlock2D(vae_mid(c)));
  conv_norm_out = register_module(
      "conv_norm_out", torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, boc.back()).eps(1e-6)));
  conv_out = register_module("conv_out",
                             nn::Conv2d(torch::nn::Conv2dOptions(boc.back(), 2 * c.latent_channels, 3).padding(1)));
}

torch::Tensor VAEEncoderImpl::forward(const torch::Tensor& x) {
  auto h = conv_in->forward(x);
  for (auto& b : down) h = b->forward(h, {}).hidden_states;
  h = mid_block->forward(h);
  return conv_out->forward(nn::activate_temporary(nn::Activation::SiLU, conv_norm_out->forward(h)));
}

VAEDecoderImpl::VAEDecoderImpl(const AutoencoderKLConfig& c) {
  const auto& boc = c.block_out_channels;
  const int64_t n = static_cast<int64_t>(boc.size());
  conv_in =
      register_module("conv_in", nn::Conv2d(torch::nn::Conv2dOptions(c.latent_channels, boc.back(), 3).padding(1)));
  mid_block = register_module("mid_block", UNetMidBlock2D(vae_mid(c)));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  std::vector<int64_t> rev(boc.rbegin(), boc.rend());
  int64_t out = rev[0];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t prev = out;
    out = rev[i];
    up.emplace_back(prev, out, c.layers_per_block + 1, i != n - 1, c.norm_num_groups, c.act_fn);
    up_blocks->push_back(up.back());
  }
  conv_norm_out = register_module(
      "conv_norm_out", torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, boc[0]).eps(1e-6)));
  conv_out = register_module("conv_out", nn::Conv2d(torch::nn::Conv2dOptions(boc[0], c.out_channels, 3).padding(1)));
}

torch::Tensor VAEDecoderImpl::forward(const torch::Tensor& z) {
  auto h = conv_in->forward(z);
  h = mid_block->forward(h);
  for (auto& b : up) h = b->forward(h);
  return conv_out->forward(nn::activate_temporary(nn::Activation::SiLU, conv_norm_out->forward(h)));
}

}  // namespace nn

// ---------------------------------------------------------------- model

torch::Tensor LatentDistribution::sample(c10::optional<at::Generator> generator) const {
  auto noise = at::randn(mean.sizes(), generator, mean.options());
  return mean + std() * noise;
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& cfg) : config_(cfg) {
  cfg.validate();
  encoder = register_module("encoder", nn::VAEEncoder(cfg));
  decoder = register_module("decoder", nn::VAEDecoder(cfg));
  const int64_t l = cfg.latent_channels;
  if (cfg.use_quant_conv)
    quant_conv = register_module("quant_conv", nn::Conv2d(torch::nn::Conv2dOptions(2 * l, 2 * l, 1)));
  if (cfg.use_post_quant_conv)
    post_quant_conv = register_module("post_quant_conv", nn::Conv2d(torch::nn::Conv2dOptions(l, l, 1)));
}

torch::Dtype AutoencoderKLImpl::dtype() const { return encoder->conv_in->weight.scalar_type(); }
torch::Device AutoencoderKLImpl::device() const { return encoder->conv_in->weight.device(); }
void AutoencoderKLImpl::set_attention_chunk_size(int64_t n) { nn::set_attention_query_chunk_size(*this, n); }

LatentDistribution AutoencoderKLImpl::encode(const torch::Tensor& x) {
  if (x.dim() != 4 || x.size(1) != config_.in_channels)
    throw Error("AutoencoderKL: expected images [B, " + std::to_string(config_.in_channels) + ", H, W], got shape " +
                c10::str(x.sizes()));
  const int64_t f = config_.downsample_factor();
  if (x.size(2) % f != 0 || x.size(3) % f != 0)
    throw Error("AutoencoderKL: image height and width must be multiples of " + std::to_string(f) + ", got " +
                std::to_string(x.size(2)) + "x" + std::to_string(x.size(3)));
  auto h = encoder->forward(x.to(device(), dtype()));
  if (quant_conv) h = quant_conv->forward(h);
  auto parts = h.chunk(2, 1);
  return {parts[0], torch::clamp(parts[1], -30.0, 20.0)};
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& z) {
  if (z.dim() != 4 || z.size(1) != config_.latent_channels)
    throw Error("AutoencoderKL: expected latents [B, " + std::to_string(config_.latent_channels) +
                ", h, w], got shape " + c10::str(z.sizes()));
  auto h = z.to(device(), dtype());
  if (post_quant_conv) h = post_quant_conv->forward(h);
  return decoder->forward(h);
}

torch::Tensor AutoencoderKLImpl::forward(const torch::Tensor& x) { return decode(encode(x).mean); }

// ---------------------------------------------------------------- folder I/O

AutoencoderKLConfig read_autoencoder_kl_config(const std::string& dir) {
  const auto j = model_io::read_config(dir, kAutoencoderKLClass);
  AutoencoderKLConfig cfg;
  try {
    cfg = AutoencoderKLConfig::from_json(j);
    cfg.validate();
  } catch (const Error& e) {
    throw Error(dir + "/config.json: " + e.what());
  }
  return cfg;
}

AutoencoderKL load_autoencoder_kl(const std::string& dir) {
  const AutoencoderKLConfig cfg = read_autoencoder_kl_config(dir);
  model_io::check_config_size(dir, "diffusion_pytorch_model.safetensors", min_parameters(cfg));
  AutoencoderKL model{nullptr};
  {
    nn::SkipInitGuard every_weight_is_loaded;
    model = AutoencoderKL(cfg);
  }
  auto sd = model_io::load_weights(dir, kAutoencoderKLClass);
  model_io::convert_legacy_attention_keys(sd);
  nn::load_state_dict(*model, nn::StateDict(sd.begin(), sd.end()), dir + "/diffusion_pytorch_model.safetensors");
  model->eval();
  return model;
}

void save_autoencoder_kl(const AutoencoderKL& model, const std::string& dir) {
  auto sd = nn::state_dict(*model);
  model_io::save_folder(dir, model->config().to_json(), std::map<std::string, torch::Tensor>(sd.begin(), sd.end()));
}

}  // namespace diffuse
