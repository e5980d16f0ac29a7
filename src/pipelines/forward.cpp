#include "pipelines/forward.h"

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
#include "models/autoencoder_kl.h"
#include "models/dit.h"
#include "models/unet2d.h"
#include "models/unet2d_condition.h"

namespace diffuse {

namespace {

torch::Tensor need(const TensorMap& in, const std::string& name, const std::string& cls) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("inputs: " + cls + " needs a tensor named '" + name + "'");
  return it->second;
}

torch::Tensor optional(const TensorMap& in, const std::string& name) {
  auto it = in.find(name);
  return it == in.end() ? torch::Tensor() : it->second;
}

}  // namespace

TensorMap run_forward(const std::string& dir, const TensorMap& in, torch::Device device) {
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(dir + "/config.json: invalid JSON: " + e.what());
  }
  std::string cls = cfg.value("_class_name", "");
  torch::NoGradGuard ng;
  if (cls == "UNet2DModel") {
    auto m = load_unet2d(dir);
    m->eval();
    m->to(device);
    auto sample = need(in, "sample", cls).to(device, torch::kFloat32);
    auto t = need(in, "timestep", cls).to(device, torch::kFloat32);
    auto labels = optional(in, "class_labels");
    if (labels.defined()) labels = labels.to(device, torch::kInt64);
    return {{"out", m->forward(sample, t, labels).to(torch::kCPU)}};
  }
  if (cls == "UNet2DConditionModel") {
    auto m = load_unet2d_condition(dir);
    m->to(device);
    auto sample = need(in, "sample", cls).to(device, torch::kFloat32);
    auto t = need(in, "timestep", cls).to(device, torch::kFloat32);
    auto ehs = need(in, "encoder_hidden_states", cls).to(device, torch::kFloat32);
    auto labels = optional(in, "class_labels");
    if (labels.defined()) labels = labels.to(device);
    auto mask = optional(in, "encoder_attention_mask");
    return {{"out", m->forward(sample, t, ehs, labels, mask).to(torch::kCPU)}};
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
    auto sample = need(in, "sample", cls).to(device, torch::kFloat32);
    auto t = need(in, "timestep", cls).to(device, torch::kFloat32);
    auto labels = need(in, "class_labels", cls).to(device, torch::kInt64);
    return {{"out", m->forward(sample, t, labels).to(torch::kCPU)}};
  }
  throw Error(dir + "/config.json: _class_name '" + cls + "' is not supported by forward");
}

}  // namespace diffuse
