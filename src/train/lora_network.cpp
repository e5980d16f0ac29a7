#include "train/lora_network.h"

#include <cmath>

#include "core/error.h"
#include "core/strings.h"

namespace diffuse {

namespace {

bool ends(const std::string& s, std::initializer_list<const char*> suffixes) {
  for (const char* x : suffixes)
    if (ends_with(s, x)) return true;
  return false;
}

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

std::string underscored(std::string s) {
  for (char& c : s)
    if (c == '.') c = '_';
  return s;
}

enum class Kind { None, Plain, Conv3x3 };

Kind unet_kind(const std::string& m, const std::vector<int64_t>& shape, const LoraNetworkOptions& o) {
  const bool in_transformer = has(m, ".transformer_blocks.");
  if (in_transformer && ends(m, {".to_q", ".to_k", ".to_v", ".to_out.0"})) return Kind::Plain;
  if (o.unet_layers == "transformer") {
    if (has(m, ".attentions.") && ends(m, {".proj_in", ".proj_out"})) return Kind::Plain;
    if (in_transformer && ends(m, {".ff.net.0.proj", ".ff.net.2"})) return Kind::Plain;
  }
  if (o.conv) {
    const bool resnet = has(m, ".resnets.") && ends(m, {".conv1", ".conv2", ".conv_shortcut", ".time_emb_proj"});
    const bool sampler = (has(m, ".downsamplers.") || has(m, ".upsamplers.")) && ends(m, {".conv"});
    if (resnet || sampler) return shape.size() == 4 && shape[2] * shape[3] > 1 ? Kind::Conv3x3 : Kind::Plain;
  }
  return Kind::None;
}

bool text_targeted(const std::string& m) {
  return ends(m, {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj", ".mlp.fc1",
                  ".mlp.fc2"});
}

void add_target(std::vector<LoraTarget>& out, const std::string& weight, const std::vector<int64_t>& shape, int rank,
                double alpha, bool text, const char* rank_field) {
  if (shape.size() != 2 && shape.size() != 4) return;
  const std::string m = weight.substr(0, weight.size() - 7);
  int64_t fan_in = shape[1];
  if (shape.size() == 4) fan_in *= shape[2] * shape[3];
  const int64_t width = std::min(shape[0], fan_in);
  if (rank > width)
    throw Error(std::string(rank_field) + " " + std::to_string(rank) + ": larger than the width of layer " + m + " (" +
                std::to_string(shape[0]) + " out, " + std::to_string(fan_in) + " in; at most " + std::to_string(width) +
                ")");
  LoraTarget t;
  t.weight = weight;
  t.key = (text ? "lora_te_" : "lora_unet_") + underscored(m);
  t.shape = shape;
  t.rank = rank;
  t.alpha = alpha;
  t.text = text;
  out.push_back(std::move(t));
}

}  // namespace

std::vector<LoraTarget> lora_targets_for(const std::vector<std::pair<std::string, std::vector<int64_t>>>& unet,
                                         const std::vector<std::pair<std::string, std::vector<int64_t>>>& text,
                                         const LoraNetworkOptions& opt) {
  if (opt.rank < 1) throw Error("rank " + std::to_string(opt.rank) + ": must be at least 1");
  if (!(opt.alpha > 0)) throw Error("alpha: must be positive");
  if (opt.unet_layers != "attention" && opt.unet_layers != "transformer")
    throw Error("unet_layers '" + opt.unet_layers + "': expected attention or transformer");
  if (opt.conv_rank < 0) throw Error("conv_rank " + std::to_string(opt.conv_rank) + ": must be >= 0");
  if (opt.conv_alpha < 0) throw Error("conv_alpha: must be >= 0");
  const int conv_rank = opt.conv_rank > 0 ? opt.conv_rank : opt.rank;
  const double conv_alpha = opt.conv_alpha > 0 ? opt.conv_alpha : opt.alpha;
  std::vector<LoraTarget> out;
  for (const auto& [name, shape] : unet) {
    if (!ends_with(name, ".weight")) continue;
    const Kind k = unet_kind(name.substr(0, name.size() - 7), shape, opt);
    if (k == Kind::Plain) add_target(out, name, shape, opt.rank, opt.alpha, false, "rank");
    if (k == Kind::Conv3x3) add_target(out, name, shape, conv_rank, conv_alpha, false, "conv_rank");
  }
  if (opt.text_encoder)
    for (const auto& [name, shape] : text)
      if (ends_with(name, ".weight") && text_targeted(name.substr(0, name.size() - 7)))
        add_target(out, name, shape, opt.rank, opt.alpha, true, "rank");
  if (out.empty()) throw Error("LoRA: no layer of the model matches the targeted layer types");
  return out;
}

LoraNetworkImpl::LoraNetworkImpl(torch::nn::Module& unet, torch::nn::Module* text, const LoraNetworkOptions& opt,
                                 uint64_t seed) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> un, tn;
  for (const auto& p : unet.named_parameters()) un.emplace_back(p.key(), p.value().sizes().vec());
  if (text)
    for (const auto& p : text->named_parameters()) tn.emplace_back(p.key(), p.value().sizes().vec());
  LoraNetworkOptions o = opt;
  o.text_encoder = opt.text_encoder && text;
  targets_ = lora_targets_for(un, tn, o);
  std::map<std::string, torch::nn::Module*> modules;
  for (const auto& m : unet.named_modules("", false)) modules["u:" + m.key()] = m.value().get();
  if (text)
    for (const auto& m : text->named_modules("", false)) modules["t:" + m.key()] = m.value().get();
  auto unet_params = unet.named_parameters();
  auto gen = at::detail::createCPUGenerator(seed);
  torch::NoGradGuard ng;
  for (const auto& t : targets_) {
    const std::string m = t.weight.substr(0, t.weight.size() - 7);
    auto it = modules.find((t.text ? "t:" : "u:") + m);
    Layer l;
    torch::nn::Module* module = it == modules.end() ? nullptr : it->second;
    if ((l.linear = dynamic_cast<torch::nn::LinearImpl*>(module))) {
      l.base = l.linear->weight;
    } else if ((l.conv = dynamic_cast<torch::nn::Conv2dImpl*>(module))) {
      l.base = l.conv->weight;
    } else {
      throw Error("LoRA: " + m + " is not a Linear or Conv2d layer");
    }
    const int64_t out_ch = t.shape[0], in_ch = t.shape[1];
    const int64_t kh = l.conv ? t.shape[2] : 1, kw = l.conv ? t.shape[3] : 1;
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_ch * kh * kw));
    std::vector<int64_t> down_shape{t.rank, in_ch}, up_shape{out_ch, t.rank};
    if (l.conv) {
      down_shape = {t.rank, in_ch, kh, kw};
      up_shape = {out_ch, t.rank, 1, 1};
    }
    auto fopt = torch::TensorOptions().dtype(torch::kFloat32);
    l.down = torch::empty(down_shape, fopt).uniform_(-bound, bound, gen).to(l.base.device());
    l.up = torch::zeros(up_shape, fopt.device(l.base.device()));
    l.down = register_parameter(t.key + "_lora_down", l.down);
    l.up = register_parameter(t.key + "_lora_up", l.up);
    layers_.push_back(std::move(l));
  }
}

void LoraNetworkImpl::attach(double multiplier, std::optional<torch::Dtype> dtype) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& l = layers_[i];
    const auto& t = targets_[i];
    const double scale = multiplier * t.alpha / t.rank;
    auto delta = torch::mm(l.up.reshape({l.up.size(0), t.rank}), l.down.reshape({t.rank, -1})) * scale;
    const auto dt = dtype ? *dtype : l.base.scalar_type();
    auto merged = l.base.to(dt) + delta.reshape(l.base.sizes()).to(dt);
    (l.conv ? l.conv->weight : l.linear->weight) = merged;
  }
}

void LoraNetworkImpl::detach() {
  for (auto& l : layers_) {
    (l.conv ? l.conv->weight : l.linear->weight) = l.base;
  }
}

std::vector<std::pair<std::string, torch::Tensor>> LoraNetworkImpl::named_lora_parameters(bool text) const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (targets_[i].text != text) continue;
    out.emplace_back(targets_[i].key + ".lora_down.weight", layers_[i].down);
    out.emplace_back(targets_[i].key + ".lora_up.weight", layers_[i].up);
  }
  return out;
}

std::map<std::string, torch::Tensor> LoraNetworkImpl::kohya_state_dict(torch::Dtype dtype) const {
  std::map<std::string, torch::Tensor> sd;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& k = targets_[i].key;
    sd[k + ".lora_down.weight"] = layers_[i].down.detach().to(torch::kCPU, dtype).contiguous();
    sd[k + ".lora_up.weight"] = layers_[i].up.detach().to(torch::kCPU, dtype).contiguous();
    sd[k + ".alpha"] = torch::tensor(targets_[i].alpha, torch::kFloat64).to(dtype);
  }
  return sd;
}

void LoraNetworkImpl::load_kohya_state_dict(const std::map<std::string, torch::Tensor>& sd, const std::string& source) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const auto& t = targets_[i];
    for (auto [suffix, dst] : {std::pair<const char*, torch::Tensor*>{".lora_down.weight", &layers_[i].down},
                               {".lora_up.weight", &layers_[i].up}}) {
      auto it = sd.find(t.key + suffix);
      if (it == sd.end())
        throw Error(source + ": no " + t.key + suffix + " (a LoRA for other layers or another model?)");
      if (it->second.sizes() != dst->sizes())
        throw Error(source + ": " + it->first + " has shape " + c10::str(it->second.sizes()) + ", expected " +
                    c10::str(dst->sizes()) + " (another rank?)");
      dst->copy_(it->second);
    }
    auto a = sd.find(t.key + ".alpha");
    if (a != sd.end() && std::abs(a->second.to(torch::kFloat64).item<double>() - t.alpha) > 1e-3 * t.alpha)
      throw Error(source + ": " + a->first + " is " + c10::str(a->second.item<double>()) +
                  " but this network has alpha " + c10::str(t.alpha));
  }
}

}  // namespace diffuse
