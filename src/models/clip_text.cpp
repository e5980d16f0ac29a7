#include "models/clip_text.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "models/model_io.h"
#include "models/size_bounds.h"
#include "nn/attention.h"
#include "nn/compute_dtype.h"
#include "nn/skip_init.h"
#include "nn/state_dict.h"

namespace diffuse {

namespace {

constexpr const char* kCLIPTextClass = "CLIPTextModel";
constexpr const char* kCLIPWeightsFile = "model.safetensors";

torch::Tensor clip_activate(const std::string& act, const torch::Tensor& x) {
  if (act == "quick_gelu") return x * torch::sigmoid(1.702 * x);
  if (act == "gelu") return torch::gelu(x);
  if (act == "gelu_new" || act == "gelu_pytorch_tanh") return torch::gelu(x, "tanh");
  if (act == "relu") return torch::relu(x);
  throw Error("CLIPTextModel: unknown hidden_act '" + act + "'");
}

}  // namespace

CLIPTextConfig CLIPTextConfig::from_json(const nlohmann::json& jin) {
  if (!jin.is_object()) throw Error("CLIPTextModel config: expected a JSON object");
  // A CLIPModel config nests the text tower under "text_config".
  const nlohmann::json& j =
      (jin.contains("text_config") && jin.at("text_config").is_object() && !jin.contains("hidden_size"))
          ? jin.at("text_config")
          : jin;
  if (j.contains("_class_name"))
    throw Error("CLIPTextModel config: this is a diffusers config (_class_name " + j.at("_class_name").dump() +
                "), not a transformers CLIPTextModel config");
  if (j.contains("architectures") && j.at("architectures").is_array()) {
    bool ok = false;
    for (const auto& a : j.at("architectures"))
      if (a.is_string() && (a == "CLIPTextModel" || a == "CLIPTextModelWithProjection" || a == "CLIPModel")) ok = true;
    if (!ok)
      throw Error("CLIPTextModel config: architectures " + j.at("architectures").dump() + " is not CLIPTextModel");
  }
  if (j.contains("model_type") && j.at("model_type").is_string()) {
    const auto t = j.at("model_type").get<std::string>();
    if (t != "clip_text_model" && t != "clip")
      throw Error("CLIPTextModel config: model_type '" + t + "' is not clip_text_model");
  }
  model_io::ConfigReader r{j, kCLIPTextClass};
  CLIPTextConfig c;
  r.read("vocab_size", c.vocab_size);
  r.read("hidden_size", c.hidden_size);
  r.read("intermediate_size", c.intermediate_size);
  r.read("num_hidden_layers", c.num_hidden_layers);
  r.read("num_attention_heads", c.num_attention_heads);
  r.read("max_position_embeddings", c.max_position_embeddings);
  r.read("hidden_act", c.hidden_act);
  r.read("layer_norm_eps", c.layer_norm_eps);
  r.read("pad_token_id", c.pad_token_id);
  r.read("bos_token_id", c.bos_token_id);
  r.read("eos_token_id", c.eos_token_id);
  r.read("projection_dim", c.projection_dim);
  if (j.contains("architectures") && j.at("architectures").is_array())
    for (const auto& a : j.at("architectures"))
      if (a == "CLIPTextModelWithProjection") c.with_projection = true;
  return c;
}

nlohmann::json CLIPTextConfig::to_json() const {
  return {{"architectures", {with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", num_hidden_layers},
          {"num_attention_heads", num_attention_heads},
          {"max_position_embeddings", max_position_embeddings},
          {"hidden_act", hidden_act},
          {"layer_norm_eps", layer_norm_eps},
          {"pad_token_id", pad_token_id},
          {"bos_token_id", bos_token_id},
          {"eos_token_id", eos_token_id},
          {"projection_dim", projection_dim},
          {"torch_dtype", "float32"}};
}

void CLIPTextConfig::validate() const {
  auto positive = [](const char* k, int64_t v) {
    if (v <= 0) throw Error(std::string("CLIPTextModel config: ") + k + " must be positive, got " + std::to_string(v));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("max_position_embeddings", max_position_embeddings);
  if (with_projection) positive("projection_dim", projection_dim);
  if (hidden_size % num_attention_heads != 0)
    throw Error("CLIPTextModel config: hidden_size " + std::to_string(hidden_size) +
                " is not divisible by num_attention_heads " + std::to_string(num_attention_heads));
  if (hidden_act != "quick_gelu" && hidden_act != "gelu" && hidden_act != "gelu_new" &&
      hidden_act != "gelu_pytorch_tanh" && hidden_act != "relu")
    throw Error("CLIPTextModel config: hidden_act '" + hidden_act +
                "' is not one of quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu");
  if (!(layer_norm_eps > 0)) throw Error("CLIPTextModel config: layer_norm_eps must be positive");
}

namespace nn {

CLIPAttentionImpl::CLIPAttentionImpl(int64_t hidden, int64_t heads) : heads_(heads) {
  q_proj = register_module("q_proj", nn::Linear(hidden, hidden));
  k_proj = register_module("k_proj", nn::Linear(hidden, hidden));
  v_proj = register_module("v_proj", nn::Linear(hidden, hidden));
  out_proj = register_module("out_proj", nn::Linear(hidden, hidden));
}

torch::Tensor CLIPAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const auto B = x.size(0), T = x.size(1), C = x.size(2);
  const int64_t d = C / heads_;
  auto split = [&](const torch::Tensor& t) { return t.view({B, T, heads_, d}).transpose(1, 2); };
  // transformers scales the queries before the product.
  auto q = split(q_proj->forward(x) * std::pow(static_cast<double>(d), -0.5));
  auto k = split(k_proj->forward(x));
  auto v = split(v_proj->forward(x));
  auto o = dot_product_attention(q, k, v, 1.0, mask);
  return out_proj->forward(o.transpose(1, 2).reshape({B, T, C}));
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPTextConfig& c) : act_(c.hidden_act) {
  self_attn = register_module("self_attn", CLIPAttention(c.hidden_size, c.num_attention_heads));
  auto ln = [&](int64_t n) { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({n}).eps(c.layer_norm_eps)); };
  layer_norm1 = register_module("layer_norm1", ln(c.hidden_size));
  mlp = register_module("mlp", std::make_shared<torch::nn::Module>());
  fc1 = mlp->register_module("fc1", nn::Linear(c.hidden_size, c.intermediate_size));
  fc2 = mlp->register_module("fc2", nn::Linear(c.intermediate_size, c.hidden_size));
  layer_norm2 = register_module("layer_norm2", ln(c.hidden_size));
}

torch::Tensor CLIPEncoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  LayerUpcast wide({this});  // 16-bit weights in a compute-dtype scope: one layer at a time
  auto h = x + self_attn->forward(layer_norm1->forward(x), mask);
  return h + fc2->forward(clip_activate(act_, fc1->forward(layer_norm2->forward(h))));
}

}  // namespace nn

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config) : config_(config) {
  config_.validate();
  text_model = register_module("text_model", std::make_shared<torch::nn::Module>());
  embeddings = text_model->register_module("embeddings", std::make_shared<torch::nn::Module>());
  token_embedding =
      embeddings->register_module("token_embedding", torch::nn::Embedding(config_.vocab_size, config_.hidden_size));
  position_embedding = embeddings->register_module(
      "position_embedding", torch::nn::Embedding(config_.max_position_embeddings, config_.hidden_size));
  encoder = text_model->register_module("encoder", std::make_shared<torch::nn::Module>());
  layers = encoder->register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    layer_list.emplace_back(config_);
    layers->push_back(layer_list.back());
  }
  final_layer_norm = text_model->register_module(
      "final_layer_norm",
      torch::nn::LayerNorm(torch::nn::LayerNormOptions({config_.hidden_size}).eps(config_.layer_norm_eps)));
  if (config_.with_projection)
    text_projection =
        register_module("text_projection",
                        nn::Linear(torch::nn::LinearOptions(config_.hidden_size, config_.projection_dim).bias(false)));
}

int64_t CLIPTextModelImpl::add_token_embeddings(const torch::Tensor& rows) {
  if (rows.dim() != 2 || rows.size(1) != config_.hidden_size)
    throw Error("CLIPTextModel: token embeddings must be [n, " + std::to_string(config_.hidden_size) + "], got " +
                c10::str(rows.sizes()));
  torch::NoGradGuard ng;
  const int64_t first = token_embedding->weight.size(0);
  auto& w = token_embedding->weight;
  w.set_data(torch::cat({w.detach(), rows.to(w.device(), w.scalar_type())}, 0));
  config_.vocab_size = w.size(0);
  token_embedding->options.num_embeddings(config_.vocab_size);
  return first;
}

void CLIPTextModelImpl::keep_token_embeddings(const std::vector<int64_t>& old_ids) {
  const int64_t n = config_.vocab_size;
  if (old_ids.empty()) throw Error("CLIPTextModel: an empty vocabulary");
  auto find = [&](int64_t old) {
    for (size_t i = 0; i < old_ids.size(); ++i)
      if (old_ids[i] == old) return static_cast<int64_t>(i);
    return int64_t{-1};
  };
  auto new_id = [&](int64_t old, const char* what) {
    if (const auto i = find(old); i >= 0) return i;
    throw Error(std::string("CLIPTextModel: the reduced vocabulary drops the ") + what + " token (id " +
                std::to_string(old) + ")");
  };
  for (const auto id : old_ids)
    if (id < 0 || id >= n)
      throw Error("CLIPTextModel: token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                  std::to_string(n) + ")");
  CLIPTextConfig c = config_;
  c.bos_token_id = new_id(config_.bos_token_id, "bos");
  if (config_.eos_token_id != 2) c.eos_token_id = new_id(config_.eos_token_id, "eos");  // 2: argmax pooling
  const auto pad = find(config_.pad_token_id);  // informational: the tokenizer pads
  c.pad_token_id = pad >= 0 ? pad : find(config_.eos_token_id);
  torch::NoGradGuard ng;
  auto& w = token_embedding->weight;
  w.set_data(w.detach().index_select(0, torch::tensor(old_ids, torch::kInt64).to(w.device())).contiguous());
  c.vocab_size = w.size(0);
  config_ = c;
  token_embedding->options.num_embeddings(config_.vocab_size);
}

torch::Dtype CLIPTextModelImpl::dtype() const { return torch::typeMetaToScalarType(token_embedding->weight.dtype()); }
torch::Device CLIPTextModelImpl::device() const { return token_embedding->weight.device(); }

torch::Tensor CLIPTextModelImpl::eos_positions(const torch::Tensor& input_ids) const {
  auto ids = input_ids.to(torch::kLong);
  if (config_.eos_token_id == 2) return ids.argmax(-1);
  return ids.eq(config_.eos_token_id).to(torch::kInt).argmax(-1);
}

CLIPTextOutput CLIPTextModelImpl::forward(const torch::Tensor& input_ids, bool output_hidden_states,
                                          const torch::Tensor& attention_mask) {
  if (input_ids.dim() != 2)
    throw Error("CLIPTextModel: input_ids must be [batch, tokens], got " + std::to_string(input_ids.dim()) + " dims");
  const auto B = input_ids.size(0), T = input_ids.size(1);
  if (T > config_.max_position_embeddings)
    throw Error("CLIPTextModel: " + std::to_string(T) + " tokens exceed max_position_embeddings " +
                std::to_string(config_.max_position_embeddings));
  auto ids = input_ids.to(device(), torch::kLong);
  const auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  if (lo < 0 || hi >= config_.vocab_size)
    throw Error("CLIPTextModel: token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                std::to_string(config_.vocab_size) + ")");
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(device()));
  torch::Tensor h;
  {
    nn::LayerUpcast wide({embeddings.get()});
    h = token_embedding->forward(ids) + position_embedding->forward(pos).unsqueeze(0);
  }

  const auto opts = torch::TensorOptions().dtype(h.scalar_type()).device(h.device());
  const double neg = h.scalar_type() == torch::kHalf       ? -65504.0
                     : h.scalar_type() == torch::kBFloat16 ? -3.3895313892515355e38
                     : h.scalar_type() == torch::kDouble   ? std::numeric_limits<double>::lowest()
                                                           : static_cast<double>(std::numeric_limits<float>::lowest());
  auto blocked = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(h.device())).triu(1);
  auto keep = blocked.logical_not().view({1, 1, T, T});
  if (attention_mask.defined()) keep = keep.logical_and(attention_mask.to(h.device()).ne(0).view({B, 1, 1, T}));
  auto mask = torch::zeros(keep.sizes(), opts).masked_fill(keep.logical_not(), neg);

  CLIPTextOutput out;
  if (output_hidden_states) out.hidden_states.push_back(h);
  for (auto& layer : layer_list) {
    h = layer->forward(h, mask);
    if (output_hidden_states) out.hidden_states.push_back(h);
  }
  nn::LayerUpcast wide(
      {final_layer_norm.ptr().get(), text_projection.is_empty() ? nullptr : text_projection.ptr().get()});
  out.last_hidden_state = final_layer_norm->forward(h);
  auto idx = eos_positions(ids);
  out.pooler_output = out.last_hidden_state.index({torch::arange(B, idx.options()), idx});
  if (text_projection) out.text_embeds = text_projection->forward(out.pooler_output);
  return out;
}

torch::Tensor CLIPTextModelImpl::final_norm(const torch::Tensor& x) {
  nn::LayerUpcast wide({final_layer_norm.ptr().get()});
  return final_layer_norm->forward(x);
}

CLIPTextModel clip_text_model_from_state_dict(const CLIPTextConfig& config,
                                              const std::map<std::string, torch::Tensor>& sd_in,
                                              const std::string& source, torch::Dtype dtype) {
  CLIPTextModel model{nullptr};
  {
    nn::SkipInitGuard every_weight_is_loaded;
    model = CLIPTextModel(config);
  }
  // Converted before loading: the uninitialised fp32 storage is never touched, and the weights
  // are copied once, straight into the target dtype (what converting afterwards gives, exactly).
  model->to(dtype);
  nn::StateDict sd(sd_in.begin(), sd_in.end());
  sd.erase("text_model.embeddings.position_ids");  // a buffer in files from transformers < 4.31
  nn::load_state_dict(*model, sd, source);
  model->eval();
  return model;
}

CLIPTextModel load_clip_text_model(const std::string& dir, torch::Dtype dtype) {
  const auto j = model_io::read_config(dir, kCLIPTextClass);
  CLIPTextConfig cfg;
  try {
    cfg = CLIPTextConfig::from_json(j);
    cfg.validate();
  } catch (const Error& e) {
    throw Error(dir + "/config.json: " + e.what());
  }
  model_io::check_config_size(dir, kCLIPWeightsFile, min_parameters(cfg));
  const auto sd = model_io::load_weights(dir, kCLIPTextClass, kCLIPWeightsFile);
  return clip_text_model_from_state_dict(cfg, sd, dir + "/" + kCLIPWeightsFile, dtype);
}

}  // namespace diffuse
