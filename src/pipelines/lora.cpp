#include "pipelines/lora.h"

#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "core/strings.h"
#include "nn/int8_weights.h"
#include "pipelines/ldm_convert.h"
#include "pipelines/sd_pipeline.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {

std::string underscored(std::string s) {
  for (char& c : s)
    if (c == '.') c = '_';
  return s;
}

bool parse_number(const std::string& s, double& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

struct Target {
  torch::Tensor weight;
  bool text = false;
  torch::Tensor scale;  // int8 weights: their per-output-channel scales
};

// The scale buffer of an int8 parameter `name` of `m` ("x.weight" -> "x.weight_scale").
torch::Tensor scale_of(const torch::OrderedDict<std::string, torch::Tensor>& buffers, const std::string& name,
                       const torch::Tensor& weight) {
  if (weight.scalar_type() != torch::kInt8) return {};
  const auto* s = buffers.find(name + "_scale");
  return s ? *s : torch::Tensor();
}

// Every name a LoRA file may use for a layer's weight -> that weight.
std::map<std::string, Target> lora_targets(const SDPipeline& pipe) {
  std::vector<std::string> unet_names, text_names;
  std::map<std::string, torch::Tensor> unet_params, text_params;
  for (const auto& p : pipe.unet->named_parameters()) {
    unet_names.push_back(p.key());
    unet_params[p.key()] = p.value();
  }
  // SD 1.x / 2.x: lora_te_*, text_encoder.* (in the key table)
  if (pipe.text && !pipe.is_xl())
    for (const auto& p : pipe.text->model->named_parameters()) {
      text_names.push_back(p.key());
      text_params[p.key()] = p.value();
    }
  const auto unet_buffers = pipe.unet->named_buffers();
  const auto text_buffers =
      pipe.text ? pipe.text->model->named_buffers() : torch::OrderedDict<std::string, torch::Tensor>();
  std::map<std::string, Target> t;
  for (const auto& [name, k] : lora_key_table(pipe.unet->config(), unet_names, pipe.vae->config(), text_names)) {
    const auto& w = (k.text ? text_params : unet_params).at(k.weight);
    t[name] = {w, k.text, scale_of(k.text ? text_buffers : unet_buffers, k.weight, w)};
  }
  // SDXL (kohya): lora_te1_* (CLIP ViT-L), lora_te2_* (OpenCLIP bigG); diffusers: text_encoder.*,
  // text_encoder_2.*
  auto add_text = [&](const SDTextEncoder* te, const std::string& kohya, const std::string& diffusers) {
    if (!te) return;
    const auto buffers = te->model->named_buffers();
    for (const auto& p : te->model->named_parameters()) {
      if (!ends_with(p.key(), ".weight")) continue;
      const std::string m = p.key().substr(0, p.key().size() - 7);
      const auto scale = scale_of(buffers, p.key(), p.value());
      t[kohya + underscored(m)] = {p.value(), true, scale};
      t[diffusers + "." + m] = {p.value(), true, scale};
    }
  };
  if (pipe.is_xl()) {
    add_text(pipe.text.get(), "lora_te1_", "text_encoder");
    add_text(pipe.text_2.get(), "lora_te2_", "text_encoder_2");
  }
  return t;
}

struct LoraLayer {
  torch::Tensor down, up, alpha;
};

// Splits a LoRA key into the layer name and its part ("down", "up", "alpha"); false for others.
bool split_key(const std::string& key, std::string& base, std::string& part) {
  static const std::pair<const char*, const char*> kSuffixes[] = {
      {".lora_down.weight", "down"}, {".lora_up.weight", "up"}, {".lora_A.weight", "down"},
      {".lora_B.weight", "up"},      {".alpha", "alpha"},
  };
  for (const auto& [suf, p] : kSuffixes)
    if (ends_with(key, suf)) {
      base = key.substr(0, key.size() - std::string(suf).size());
      part = p;
      return true;
    }
  return false;
}

std::string list_some(const std::vector<std::string>& names) {
  std::ostringstream o;
  for (size_t i = 0; i < names.size() && i < 12; ++i) o << "\n  " << names[i];
  if (names.size() > 12) o << "\n  ... and " << names.size() - 12 << " more";
  return o.str();
}

}  // namespace

std::map<std::string, LoraKeyTarget> lora_key_table(const UNet2DConditionConfig& unet_config,
                                                    const std::vector<std::string>& unet_weights,
                                                    const AutoencoderKLConfig& vae_config,
                                                    const std::vector<std::string>& text_weights) {
  std::map<std::string, LoraKeyTarget> t;
  std::vector<std::string> unet_names;
  for (const auto& w : unet_weights) {
    if (!ends_with(w, ".weight")) continue;
    const std::string m = w.substr(0, w.size() - 7);
    t["lora_unet_" + underscored(m)] = {w, false};
    t["unet." + m] = {w, false};
    unet_names.push_back(w);
  }
  // kohya's LDM-named UNet keys, through the checkpoint converter's name table: converting
  // marker tensors (value = index) tells which LDM name each diffusers weight gets.
  try {
    TensorMap markers;
    for (size_t i = 0; i < unet_names.size(); ++i)
      markers[unet_names[i]] = torch::full({1}, static_cast<double>(i), torch::kFloat64);
    const std::string prefix = "model.diffusion_model.";
    for (const auto& [ldm, v] : to_ldm(unet_config, markers, vae_config, {}, {})) {
      if (ldm.compare(0, prefix.size(), prefix) != 0 || !ends_with(ldm, ".weight")) continue;
      const auto i = static_cast<size_t>(v.item<double>());
      const std::string m = ldm.substr(prefix.size(), ldm.size() - prefix.size() - 7);
      t.emplace("lora_unet_" + underscored(m), LoraKeyTarget{unet_names[i], false});
    }
  } catch (const Error&) {
    // A UNet layout the LDM table does not cover: only diffusers-named keys match.
  }
  for (const auto& w : text_weights) {
    if (!ends_with(w, ".weight")) continue;
    const std::string m = w.substr(0, w.size() - 7);
    t["lora_te_" + underscored(m)] = {w, true};
    t["text_encoder." + m] = {w, true};
  }
  return t;
}

LoraSpec parse_lora_arg(const std::string& arg) {
  LoraSpec s{arg, 1.0};
  const auto colon = arg.rfind(':');
  double w;
  if (colon != std::string::npos && parse_number(arg.substr(colon + 1), w)) {
    s.path = arg.substr(0, colon);
    s.weight = w;
  }
  if (s.path.empty()) throw Error("loras " + arg + ": expected FILE[:weight]");
  return s;
}

std::vector<LoraSpec> extract_prompt_loras(std::string& prompt, const std::string& lora_dir) {
  std::vector<LoraSpec> out;
  size_t pos = 0;
  while ((pos = prompt.find("<lora:", pos)) != std::string::npos) {
    const size_t end = prompt.find('>', pos);
    if (end == std::string::npos) break;
    const std::string inner = prompt.substr(pos + 6, end - pos - 6);  // name[:weight[:...]]
    const std::string tag = prompt.substr(pos, end + 1 - pos);
    std::vector<std::string> fields;
    std::stringstream ss(inner);
    for (std::string f; std::getline(ss, f, ':');) fields.push_back(f);
    if (fields.empty() || fields[0].empty()) throw Error("prompt: " + tag + " names no LoRA");
    LoraSpec s;
    if (fields.size() > 1 && !parse_number(fields[1], s.weight))
      throw Error("prompt: " + tag + ": weight '" + fields[1] + "' is not a number");
    if (lora_dir.empty()) throw Error("prompt: " + tag + " needs lora_dir (the folder of NAME.safetensors files)");
    s.path =
        (fs::path(lora_dir) / (ends_with(fields[0], ".safetensors") ? fields[0] : fields[0] + ".safetensors")).string();
    if (!fs::is_regular_file(s.path)) throw Error("prompt: " + tag + ": no file " + s.path);
    out.push_back(s);
    prompt.erase(pos, end + 1 - pos);
  }
  return out;
}

LoraMergeReport apply_lora(SDPipeline& pipe, const std::map<std::string, torch::Tensor>& lora, double weight,
                           const std::string& source) {
  std::map<std::string, LoraLayer> layers;
  std::vector<std::string> unknown;
  for (const auto& [key, v] : lora) {
    std::string base, part;
    if (!split_key(key, base, part)) {
      unknown.push_back(key);
      continue;
    }
    auto& l = layers[base];
    (part == "down" ? l.down : part == "up" ? l.up : l.alpha) = v;
  }
  const auto targets = lora_targets(pipe);
  std::vector<std::string> unmatched = unknown;
  std::vector<std::string> bad;
  for (const auto& [base, l] : layers) {
    auto it = targets.find(base);
    if (it == targets.end()) {
      // Text-encoder layers of a pipeline loaded without one are skipped, not unmatched.
      const bool te = base.rfind("lora_te", 0) == 0 || base.rfind("text_encoder", 0) == 0;
      if (!(te && !pipe.has_text_encoder())) unmatched.push_back(base);
      continue;
    }
    if (!l.down.defined() || !l.up.defined()) {
      bad.push_back(base + ": needs both the down (A) and up (B) matrices");
      continue;
    }
    const auto& w = it->second.weight;
    const int64_t rank = l.down.size(0);
    if (l.up.dim() < 2 || l.up.size(1) != rank || l.up.size(0) != w.size(0) || l.up.numel() / l.up.size(0) != rank ||
        l.down.numel() / rank * l.up.size(0) != w.numel())
      bad.push_back(base + ": up " + c10::str(l.up.sizes()) + " x down " + c10::str(l.down.sizes()) +
                    " does not fit weight " + c10::str(w.sizes()));
  }
  if (!unmatched.empty())
    throw Error(source + ": " + std::to_string(unmatched.size()) +
                " LoRA keys match no layer of this model (a LoRA for another architecture?):" + list_some(unmatched));
  if (!bad.empty()) throw Error(source + ": LoRA layers that do not fit the model:" + list_some(bad));

  torch::NoGradGuard ng;
  LoraMergeReport rep;
  for (const auto& [base, l] : layers) {
    auto it = targets.find(base);
    if (it == targets.end()) continue;
    auto w = it->second.weight;
    const int64_t rank = l.down.size(0);
    const double scale =
        l.alpha.defined() ? l.alpha.to(torch::kFloat64).item<double>() / static_cast<double>(rank) : 1.0;
    ++(it->second.text ? rep.text_layers : rep.unet_layers);
    if (weight == 0) continue;
    auto up = l.up.to(w.device(), torch::kFloat32).reshape({l.up.size(0), rank});
    auto down = l.down.to(w.device(), torch::kFloat32).reshape({rank, -1});
    auto delta = torch::mm(up, down) * (weight * scale);
    if (w.scalar_type() == torch::kInt8) {
      // int8 weights: merged into the dequantised weights, then quantised again.
      auto s = it->second.scale;
      if (!s.defined()) throw Error(source + ": " + base + ": int8 weight without its scales");
      const auto merged = nn::quantize_int8(nn::dequantize_int8(w, s) + delta.reshape(w.sizes()));
      w.set_data(merged.q);
      s.set_data(merged.scale);
      continue;
    }
    // Weights kept 16-bit for fp32 compute: the merged layer becomes fp32, as if upcast at load.
    if (pipe.dtype == torch::kFloat32 && w.scalar_type() != torch::kFloat32) w.set_data(w.to(torch::kFloat32));
    w.add_(delta.reshape(w.sizes()).to(w.scalar_type()));
  }
  return rep;
}

LoraMergeReport apply_lora_file(SDPipeline& pipe, const LoraSpec& spec) {
  if (!ends_with(spec.path, ".safetensors"))
    throw Error("loras " + spec.path + ": only .safetensors LoRA files are read");
  if (!fs::is_regular_file(spec.path)) throw Error("loras " + spec.path + ": no such file");
  return apply_lora(pipe, safetensors::load(spec.path), spec.weight, spec.path);
}

}  // namespace diffuse
