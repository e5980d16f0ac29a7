#include "pipelines/forward.h"

#include <nlohmann/json.hpp>

#include "core/atomic_file.h"
#include "core/error.h"
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
  throw Error(dir + "/config.json: _class_name '" + cls + "' is not supported by forward");
}

}  // namespace diffuse
