#include "models/dit.h"

#include <cmath>

#include "core/error.h"
#include "models/model_io.h"
#include "models/size_bounds.h"
#include "nn/gelu.h"
#include "nn/layer_norm.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"

namespace diffuse {

using nlohmann::json;

namespace {
constexpr const char* kDiTClass = "DiTTransformer2DModel";
constexpr const char* kLegacyClassName = "Transformer2DModel";
}  // namespace

// ---------------------------------------------------------------- config

DiTConfig DiTConfig::from_json(const json& j) {
  if (!j.is_object()) throw Error("DiTTransformer2DModel config: expected a JSON object");
  std::string cls = kDiTClass;
  if (j.contains("_class_name")) {
    model_io::ConfigReader{j, kDiTClass}.read("_class_name", cls);
    if (cls != kDiTClass && cls != kLegacyClassName)
      throw Error("DiTTransformer2DModel config: _class_name is '" + cls +
                  "', expected DiTTransformer2DModel or Transformer2DModel");
  }
  const bool legacy = cls == kLegacyClassName;
  model_io::ConfigReader r{j, cls};
  DiTConfig c;
  if (legacy) {
    // Transformer2DModel defaults differ; only its patched DiT form is supported.
    c.num_layers = 1;
    c.attention_head_dim = 88;
    c.norm_type = "layer_norm";
    c.norm_elementwise_affine = true;
    c.activation_fn = "geglu";
    c.attention_bias = false;
    c.num_embeds_ada_norm = -1;
    c.sample_size = -1;
    c.patch_size = -1;
    auto must_be_null = [&](const char* key) {
      if (j.contains(key) && !j.at(key).is_null())
        throw Error("Transformer2DModel config: only the DiT form is supported, but '" + std::string(key) + "' is " +
                    j.at(key).dump());
    };
    must_be_null("cross_attention_dim");
    must_be_null("num_vector_embeds");
    must_be_null("caption_channels");
    for (const char* key : {"use_additional_conditions", "only_cross_attention", "double_self_attention"})
      if (j.contains(key) && j.at(key).is_boolean() && j.at(key).get<bool>())
        throw Error("Transformer2DModel config: only the DiT form is supported, but '" + std::string(key) +
                    "' is true");
    if (j.contains("attention_type") && j.at("attention_type") != "default")
      throw Error("Transformer2DModel config: attention_type " + j.at("attention_type").dump() + " is not supported");
    std::optional<int64_t> v;
    r.read("num_embeds_ada_norm", v);
    c.num_embeds_ada_norm = v ? *v : -1;
    v.reset();
    r.read("sample_size", v);
    c.sample_size = v ? *v : -1;
    v.reset();
    r.read("patch_size", v);
    c.patch_size = v ? *v : -1;
    if (!j.contains("in_channels") || j.at("in_channels").is_null())
      throw Error("Transformer2DModel config: in_channels is required for the patched (DiT) form");
    r.read("interpolation_scale", c.interpolation_scale);
  } else {
    r.read("num_embeds_ada_norm", c.num_embeds_ada_norm);
    r.read("sample_size", c.sample_size);
    r.read("patch_size", c.patch_size);
    c.interpolation_scale = 1.0;  // DiTTransformer2DModel's PatchEmbed uses the default scale
    if (j.contains("interpolation_scale")) r.read("interpolation_scale", c.interpolation_scale);
    if (!c.interpolation_scale) c.interpolation_scale = 1.0;
  }
  r.read("num_attention_heads", c.num_attention_heads);
  r.read("attention_head_dim", c.attention_head_dim);
  r.read("in_channels", c.in_channels);
  r.read("out_channels", c.out_channels);
  r.read("num_layers", c.num_layers);
  r.read("dropout", c.dropout);
  r.read("norm_num_groups", c.norm_num_groups);
  r.read("attention_bias", c.attention_bias);
  r.read("activation_fn", c.activation_fn);
  r.read("upcast_attention", c.upcast_attention);
  r.read("norm_type", c.norm_type);
  r.read("norm_elementwise_affine", c.norm_elementwise_affine);
  r.read("norm_eps", c.norm_eps);
  return c;
}

json DiTConfig::to_json() const {
  json j = json::object();
  j["_class_name"] = kDiTClass;
  j["_diffusers_version"] = model_io::kDiffusersVersion;
  j["activation_fn"] = activation_fn;
  j["attention_bias"] = attention_bias;
  j["attention_head_dim"] = attention_head_dim;
  j["dropout"] = model_io::number(dropout);
  j["in_channels"] = in_channels;
  j["norm_elementwise_affine"] = norm_elementwise_affine;
  j["norm_eps"] = norm_eps;
  j["norm_num_groups"] = norm_num_groups;
  j["norm_type"] = norm_type;
  j["num_attention_heads"] = num_attention_heads;
  j["num_embeds_ada_norm"] = num_embeds_ada_norm;
  j["num_layers"] = num_layers;
  j["out_channels"] = out_channels ? json(*out_channels) : json(nullptr);
  j["patch_size"] = patch_size;
  j["sample_size"] = sample_size;
  j["upcast_attention"] = upcast_attention;
  // Not a DiTTransformer2DModel key (diffusers ignores it there); kept for our own reload.
  if (pos_interpolation_scale() != 1.0) j["interpolation_scale"] = pos_interpolation_scale();
  return j;
}

void DiTConfig::validate() const {
  auto fail = [](const std::string& m) { throw Error("DiTTransformer2DModel config: " + m); };
  if (norm_type != "ada_norm_zero")
    fail("norm_type '" + norm_type + "' is not supported (only ada_norm_zero, the DiT form)");
  if (patch_size <= 0) fail("patch_size must be a positive integer");
  if (sample_size <= 0) fail("sample_size must be a positive integer");
  if (num_embeds_ada_norm <= 0) fail("num_embeds_ada_norm must be a positive integer (number of classes)");
  if (num_attention_heads <= 0 || attention_head_dim <= 0) fail("attention heads and head dim must be positive");
  if (in_channels <= 0 || output_channels() <= 0) fail("in_channels and out_channels must be positive");
  if (num_layers < 1) fail("num_layers must be >= 1");
  if (activation_fn != "gelu-approximate" && activation_fn != "gelu")
    fail("activation_fn '" + activation_fn + "' is not supported (expected gelu-approximate or gelu)");
  if (inner_dim() % 4 != 0) fail("inner dim (heads * head dim) must be divisible by 4 for sin-cos positions");
}

// ---------------------------------------------------------------- positions

torch::Tensor get_2d_sincos_pos_embed(int64_t embed_dim, int64_t grid_h, int64_t grid_w, double base_size,
                                      double interpolation_scale) {
  if (embed_dim % 4 != 0) throw Error("get_2d_sincos_pos_embed: embed_dim must be divisible by 4");
  // numpy computes the grid in float32, the frequencies and products in float64.
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto gh = torch::arange(grid_h, f32) / static_cast<float>(grid_h / base_size);
  gh = gh / static_cast<float>(interpolation_scale);
  auto gw = torch::arange(grid_w, f32) / static_cast<float>(grid_w / base_size);
  gw = gw / static_cast<float>(interpolation_scale);
  const int64_t half = embed_dim / 2, quarter = embed_dim / 4;
  auto omega = torch::arange(quarter, torch::kFloat64) / (half / 2.0);
  omega = 1.0 / torch::pow(10000.0, omega);
  auto one_d = [&](const torch::Tensor& pos) {  // [N] -> [N, half]
    auto out = pos.to(torch::kFloat64).unsqueeze(1) * omega.unsqueeze(0);
    return torch::cat({torch::sin(out), torch::cos(out)}, 1);
  };
  // Token (h, w) at index h * grid_w + w: first half from the w coordinate, second from h.
  auto w_coord = gw.unsqueeze(0).expand({grid_h, grid_w}).reshape({-1});
  auto h_coord = gh.unsqueeze(1).expand({grid_h, grid_w}).reshape({-1});
  return torch::cat({one_d(w_coord), one_d(h_coord)}, 1).to(torch::kFloat32);
}

namespace nn {

PatchEmbedImpl::PatchEmbedImpl(int64_t sample_size, int64_t patch_size, int64_t in_channels, int64_t embed_dim,
                               double interpolation_scale)
    : patch_size_(patch_size),
      embed_dim_(embed_dim),
      base_size_(static_cast<double>(sample_size / patch_size)),
      interpolation_scale_(interpolation_scale) {
  proj = register_module(
      "proj",
      torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, embed_dim, patch_size).stride(patch_size).bias(true)));
}

torch::Tensor PatchEmbedImpl::forward(const torch::Tensor& x) {
  const int64_t gh = x.size(2) / patch_size_, gw = x.size(3) / patch_size_;
  auto h = proj->forward(x).flatten(2).transpose(1, 2);
  auto pos = get_2d_sincos_pos_embed(embed_dim_, gh, gw, base_size_, interpolation_scale_);
  return h + pos.to(h.device(), h.scalar_type()).unsqueeze(0);
}

CombinedTimestepLabelEmbeddingsImpl::CombinedTimestepLabelEmbeddingsImpl(int64_t num_classes, int64_t embedding_dim) {
  time_proj = register_module("time_proj", Timesteps(256, /*flip_sin_to_cos=*/true, /*downscale_freq_shift=*/1));
  timestep_embedder = register_module("timestep_embedder", TimestepEmbedding(256, embedding_dim));
  class_embedder = register_module("class_embedder", std::make_shared<torch::nn::Module>());
  embedding_table =
      class_embedder->register_module("embedding_table", torch::nn::Embedding(num_classes + 1, embedding_dim));
}

torch::Tensor CombinedTimestepLabelEmbeddingsImpl::forward(const torch::Tensor& timestep,
                                                           const torch::Tensor& class_labels, torch::Dtype dtype) {
  auto t = timestep_embedder->forward(time_proj->forward(timestep).to(dtype));
  const int64_t n = embedding_table->weight.size(0);
  if (class_labels.is_floating_point())  // weights over the rows (soft classes)
    return t + label_embedding(embedding_table, class_labels, "DiT").to(dtype);
  auto labels = class_labels.to(embedding_table->weight.device(), torch::kLong);
  if (labels.numel() > 0 && (labels.min().item<int64_t>() < 0 || labels.max().item<int64_t>() >= n))
    throw Error("DiT: class_labels must be in [0, " + std::to_string(n - 1) + "] (" + std::to_string(n - 1) +
                " = unconditional)");
  return t + embedding_table->forward(labels).to(dtype);
}

AdaLayerNormZeroImpl::AdaLayerNormZeroImpl(int64_t dim, int64_t num_embeddings) {
  emb = register_module("emb", CombinedTimestepLabelEmbeddings(num_embeddings, dim));
  linear = register_module("linear", nn::Linear(dim, 6 * dim));
}

std::vector<torch::Tensor> AdaLayerNormZeroImpl::forward(const torch::Tensor& x, const torch::Tensor& timestep,
                                                         const torch::Tensor& class_labels) {
  auto e = linear->forward(torch::silu(emb->forward(timestep, class_labels, x.scalar_type())));
  auto c = e.chunk(6, 1);  // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
  auto normed = nn::layer_norm(x, 1e-6);
  normed = normed * (1 + c[1].unsqueeze(1)) + c[0].unsqueeze(1);
  return {normed, c[2], c[3], c[4], c[5]};
}

DiTBlockImpl::DiTBlockImpl(const DiTConfig& c) : gelu_tanh_(c.activation_fn == "gelu-approximate") {
  const int64_t dim = c.inner_dim();
  norm1 = register_module("norm1", AdaLayerNormZero(dim, c.num_embeds_ada_norm));
  AttentionOptions a(dim, c.num_attention_heads, c.attention_head_dim);
  a.bias = c.attention_bias;
  a.upcast_attention = c.upcast_attention;
  a.dropout = c.dropout;
  attn1 = register_module("attn1", Attention(a));
  norm3 = register_module(
      "norm3", torch::nn::LayerNorm(
                   torch::nn::LayerNormOptions({dim}).eps(c.norm_eps).elementwise_affine(c.norm_elementwise_affine)));
  // ff.net.0 (GELU with .proj), ff.net.1 (Dropout), ff.net.2 (Linear)
  auto net = torch::nn::ModuleList();
  auto gelu = std::make_shared<torch::nn::Module>();
  ff_proj = gelu->register_module("proj", nn::Linear(dim, 4 * dim));
  net->push_back(gelu);
  net->push_back(torch::nn::Dropout(c.dropout));
  ff_out = nn::Linear(4 * dim, dim);
  net->push_back(ff_out);
  ff = register_module("ff", std::make_shared<torch::nn::Module>());
  ff->register_module("net", net);
}

torch::Tensor DiTBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& timestep,
                                    const torch::Tensor& class_labels) {
  auto n = norm1->forward(x, timestep, class_labels);
  auto h = x + n[1].unsqueeze(1) * attn1->forward(n[0]);
  const auto& o3 = norm3->options;
  auto normed = o3.elementwise_affine() ? norm3->forward(h) : nn::layer_norm(h, o3.eps());
  auto m = normed * (1 + n[3].unsqueeze(1)) + n[2].unsqueeze(1);
  auto f = ff_proj->forward(m);
  f = nn::gelu(f, gelu_tanh_);
  f = ff_out->forward(f);
  return h + n[4].unsqueeze(1) * f;
}

}  // namespace nn

// ---------------------------------------------------------------- model

DiTTransformer2DModelImpl::DiTTransformer2DModelImpl(const DiTConfig& cfg) : config_(cfg) {
  cfg.validate();
  const int64_t dim = cfg.inner_dim();
  pos_embed = register_module("pos_embed", nn::PatchEmbed(cfg.sample_size, cfg.patch_size, cfg.in_channels, dim,
                                                          cfg.pos_interpolation_scale()));
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    blocks.emplace_back(cfg);
    transformer_blocks->push_back(blocks.back());
  }
  norm_out = register_module(
      "norm_out", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(1e-6).elementwise_affine(false)));
  proj_out_1 = register_module("proj_out_1", nn::Linear(dim, 2 * dim));
  proj_out_2 = register_module("proj_out_2", nn::Linear(dim, cfg.patch_size * cfg.patch_size * cfg.output_channels()));
}

torch::Dtype DiTTransformer2DModelImpl::dtype() const { return proj_out_1->weight.scalar_type(); }
torch::Device DiTTransformer2DModelImpl::device() const { return proj_out_1->weight.device(); }
void DiTTransformer2DModelImpl::set_attention_chunk_size(int64_t n) { nn::set_attention_query_chunk_size(*this, n); }

torch::Tensor DiTTransformer2DModelImpl::forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                                                 const torch::Tensor& class_labels) {
  const int64_t p = config_.patch_size;
  if (sample.dim() != 4 || sample.size(1) != config_.in_channels)
    throw Error("DiTTransformer2DModel: expected sample [B, " + std::to_string(config_.in_channels) +
                ", H, W], got shape " + c10::str(sample.sizes()));
  if (sample.size(2) % p != 0 || sample.size(3) % p != 0)
    throw Error("DiTTransformer2DModel: height and width must be divisible by patch_size " + std::to_string(p) +
                ", got " + std::to_string(sample.size(2)) + "x" + std::to_string(sample.size(3)));
  const int64_t batch = sample.size(0);
  if (!timestep.defined()) throw Error("DiTTransformer2DModel: timestep is required");
  if (!class_labels.defined())
    throw Error("DiTTransformer2DModel: class_labels are required (use " + std::to_string(config_.num_embeds_ada_norm) +
                " for unconditional)");
  auto t = timestep.reshape({-1}).to(device());
  if (t.size(0) == 1 && batch != 1) t = t.expand({batch}).contiguous();
  if (t.size(0) != batch)
    throw Error("DiTTransformer2DModel: got " + std::to_string(t.size(0)) + " timesteps for a batch of " +
                std::to_string(batch));
  // int64 ids [B], or float weights [B, num_embeds_ada_norm + 1] over the label embeddings
  auto labels = class_labels.is_floating_point() && class_labels.dim() == 2 ? class_labels.to(device())
                                                                            : class_labels.reshape({-1}).to(device());
  if (labels.size(0) == 1 && batch != 1) {
    auto shape = labels.sizes().vec();
    shape[0] = batch;
    labels = labels.expand(shape).contiguous();
  }
  if (labels.size(0) != batch)
    throw Error("DiTTransformer2DModel: got " + std::to_string(labels.size(0)) + " class labels for a batch of " +
                std::to_string(batch));

  const int64_t gh = sample.size(2) / p, gw = sample.size(3) / p;
  auto h = pos_embed->forward(sample.to(device(), dtype()));
  for (auto& b : blocks) h = b->forward(h, t, labels);

  auto cond = blocks[0]->norm1->emb->forward(t, labels, h.scalar_type());
  auto ss = proj_out_1->forward(torch::silu(cond)).chunk(2, 1);                 // shift, scale
  h = nn::layer_norm(h, 1e-6) * (1 + ss[1].unsqueeze(1)) + ss[0].unsqueeze(1);  // norm_out: no affine
  h = proj_out_2->forward(h);
  const int64_t c = config_.output_channels();
  h = h.reshape({batch, gh, gw, p, p, c}).permute({0, 5, 1, 3, 2, 4});  // nhwpqc -> nchpwq
  return h.reshape({batch, c, gh * p, gw * p});
}

// ---------------------------------------------------------------- folder I/O

DiTTransformer2DModel load_dit(const std::string& dir) {
  const auto j = model_io::read_config(dir, kDiTClass);
  DiTConfig cfg;
  try {
    cfg = DiTConfig::from_json(j);
    cfg.validate();
  } catch (const Error& e) {
    throw Error(dir + "/config.json: " + e.what());
  }
  model_io::check_config_size(dir, "diffusion_pytorch_model.safetensors", min_parameters(cfg),
                              min_buffer_elements(cfg));
  DiTTransformer2DModel model{nullptr};
  {
    nn::SkipInitGuard every_weight_is_loaded;
    model = DiTTransformer2DModel(cfg);
  }
  auto sd = model_io::load_weights(dir, kDiTClass);
  // Older BasicTransformerBlock checkpoints name the feed-forward norm `norm2`.
  std::vector<std::pair<std::string, std::string>> renames;
  for (const auto& [k, v] : sd) {
    const auto pos = k.find(".norm2.");
    if (k.rfind("transformer_blocks.", 0) == 0 && pos != std::string::npos)
      renames.emplace_back(k, k.substr(0, pos) + ".norm3." + k.substr(pos + 7));
  }
  for (const auto& [from, to] : renames) {
    sd[to] = sd.at(from);
    sd.erase(from);
  }
  nn::load_state_dict(*model, nn::StateDict(sd.begin(), sd.end()), dir + "/diffusion_pytorch_model.safetensors");
  model->eval();
  return model;
}

void save_dit(const DiTTransformer2DModel& model, const std::string& dir) {
  auto sd = nn::state_dict(*model);
  model_io::save_folder(dir, model->config().to_json(), std::map<std::string, torch::Tensor>(sd.begin(), sd.end()));
}

}  // namespace diffuse
