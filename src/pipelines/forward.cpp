#include "pipelines/forward.h"

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text.h"
#include "models/dit.h"
#include "models/unet2d.h"
#include "models/unet2d_condition.h"

namespace diffuse {

namespace {

torch::Tensor need_input(const TensorMap& in, const std::string& name, const std::string& cls) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("inputs: " + cls + " needs a tensor named '" + name + "'");
  return it->second;
}

torch::Tensor optional(const TensorMap& in, const std::string& name) {
  auto it = in.find(name);
  return it == in.end() ? torch::Tensor() : it->second;
}

}  // namespace

std::string network_class(const std::string& dir) {
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(dir + "/config.json: invalid JSON: " + e.what());
  }
  if (!cfg.is_object()) throw Error(dir + "/config.json: not a JSON object");
  std::string cls = cfg.contains("_class_name") && cfg["_class_name"].is_string()
                        ? cfg["_class_name"].get<std::string>()
                        : std::string();
  // transformers configs name their class in "architectures".
  if (cls.empty() && cfg.contains("architectures") && cfg.at("architectures").is_array())
    for (const auto& a : cfg.at("architectures"))
      if (a.is_string() && cls.empty()) cls = a.get<std::string>();
  if (cls.empty()) throw Error(dir + "/config.json: no _class_name (diffusers) or architectures (transformers) key");
  return cls;
}

std::string check_network_folder(const std::string& dir) {
  const std::string cls = network_class(dir);
  std::shared_ptr<torch::nn::Module> m;
  if (cls == "UNet2DModel")
    m = load_unet2d(dir).ptr();
  else if (cls == "UNet2DConditionModel")
    m = load_unet2d_condition(dir).ptr();
  else if (cls == "AutoencoderKL")
    m = load_autoencoder_kl(dir).ptr();
  else if (cls == "DiTTransformer2DModel" || cls == "Transformer2DModel")
    m = load_dit(dir).ptr();
  else if (cls == "CLIPTextModel" || cls == "CLIPTextModelWithProjection")
    m = load_clip_text_model(dir).ptr();
  else
    throw Error(dir + "/config.json: _class_name '" + cls + "' is not a network diffuse knows");
  int64_t n = 0;
  for (const auto& p : m->parameters()) n += p.numel();
  return cls + ", " + std::to_string(n) + " parameters";
}

TensorMap run_forward(const std::string& dir, const TensorMap& in, torch::Device device) {
  const std::string cls = network_class(dir);
  torch::NoGradGuard ng;
  if (cls == "UNet2DModel") {
    auto m = load_unet2d(dir);
    m->eval();
    m->to(device);
    auto sample = need_input(in, "sample", cls).to(device, torch::kFloat32);
    auto t = need_input(in, "timestep", cls).to(device, torch::kFloat32);
    auto labels = optional(in, "class_labels");
    if (labels.defined()) labels = labels.to(device, torch::kInt64);
    return {{"out", m->forward(sample, t, labels).to(torch::kCPU)}};
  }
  if (cls == "UNet2DConditionModel") {
    auto m = load_unet2d_condition(dir);
    m->to(device);
    auto sample = need_input(in, "sample", cls).to(device, torch::kFloat32);
    auto t = need_input(in, "timestep", cls).to(device, torch::kFloat32);
    auto ehs = need_input(in, "encoder_hidden_states", cls).to(device, torch::kFloat32);
    auto labels = optional(in, "class_labels");
    if (labels.defined()) labels = labels.to(device);
    auto mask = optional(in, "encoder_attention_mask");
    // SDXL's added conditioning (diffusers' added_cond_kwargs)
    auto text_embeds = optional(in, "text_embeds"), time_ids = optional(in, "time_ids");
    if (m->config().text_time()) {
      text_embeds = need_input(in, "text_embeds", cls + " (addition_embed_type text_time)");
      time_ids = need_input(in, "time_ids", cls + " (addition_embed_type text_time)");
    }
    if (text_embeds.defined()) text_embeds = text_embeds.to(device, torch::kFloat32);
    if (time_ids.defined()) time_ids = time_ids.to(device, torch::kFloat32);
    return {{"out", m->forward(sample, t, ehs, labels, mask, text_embeds, time_ids).to(torch::kCPU)}};
  }
  if (cls == "AutoencoderKL") {
    auto m = load_autoencoder_kl(dir);
    m->to(device);
    auto sample = optional(in, "sample");
    auto latents = optional(in, "latents");
    if (!sample.defined() && !latents.defined())
      throw Error("inputs: AutoencoderKL needs a tensor named 'sample' (to encode) or 'latents' (to decode)");
    TensorMap out;
    if (sample.defined()) {
      auto post = m->encode(sample.to(device, torch::kFloat32));
      out["latent_mean"] = post.mean.to(torch::kCPU);
      out["latent_logvar"] = post.logvar.to(torch::kCPU);
      out["latent_std"] = post.std().to(torch::kCPU);
      out["recon"] = m->decode(post.mean).to(torch::kCPU);
    }
    if (latents.defined()) out["decoded"] = m->decode(latents.to(device, torch::kFloat32)).to(torch::kCPU);
    return out;
  }
  if (cls == "DiTTransformer2DModel" || cls == "Transformer2DModel") {
    auto m = load_dit(dir);
    m->to(device);
    auto sample = need_input(in, "sample", cls).to(device, torch::kFloat32);
    auto t = need_input(in, "timestep", cls).to(device, torch::kFloat32);
    auto labels = need_input(in, "class_labels", cls).to(device, torch::kInt64);
    return {{"out", m->forward(sample, t, labels).to(torch::kCPU)}};
  }
  if (cls == "CLIPTextModel" || cls == "CLIPTextModelWithProjection") {
    auto m = load_clip_text_model(dir);
    m->to(device);
    auto ids = need_input(in, "input_ids", cls).to(device, torch::kInt64);
    auto mask = optional(in, "attention_mask");
    if (mask.defined()) mask = mask.to(device);
    auto r = m->forward(ids, true, mask);
    TensorMap out{{"last_hidden_state", r.last_hidden_state.to(torch::kCPU)}};
    // transformers' CLIPTextModelWithProjection returns text_embeds instead of pooler_output
    if (r.text_embeds.defined())
      out["text_embeds"] = r.text_embeds.to(torch::kCPU);
    else
      out["pooler_output"] = r.pooler_output.to(torch::kCPU);
    for (size_t i = 0; i < r.hidden_states.size(); ++i)
      out["hidden_states." + std::to_string(i)] = r.hidden_states[i].to(torch::kCPU);
    return out;
  }
  throw Error(dir + "/config.json: _class_name '" + cls + "' is not supported by forward");
}

}  // namespace diffuse
