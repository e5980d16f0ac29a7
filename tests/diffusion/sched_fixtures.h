#pragma once
// Access to the diffusers scheduler fixtures (tests/fixtures/schedulers, see its README).
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "core/safetensors.h"
#include "diffusion/schedule.h"
#include "fixtures.h"

namespace diffuse::test {

inline nlohmann::json load_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  return nlohmann::json::parse(f);
}

// JSON number that may be written as "NaN" / "Infinity".
inline double jnum(const nlohmann::json& j) {
  if (j.is_string()) {
    auto s = j.get<std::string>();
    if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (s == "Infinity") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
    throw std::runtime_error("not a number: " + s);
  }
  return j.get<double>();
}

inline std::vector<double> jvec(const nlohmann::json& j) {
  std::vector<double> v;
  for (const auto& e : j) v.push_back(jnum(e));
  return v;
}

struct SchedVariant {
  std::string name;
  nlohmann::json doc;
  std::map<std::string, torch::Tensor> tensors;
};

inline SchedVariant load_variant(const std::string& name) {
  SchedVariant v;
  v.name = name;
  v.doc = load_json(fixture("schedulers/" + name + ".json"));
  v.tensors = safetensors::load(fixture("schedulers/" + name + ".safetensors"));
  return v;
}

// NoiseScheduleConfig from a diffusers scheduler_config.json (class defaults where absent).
inline NoiseScheduleConfig config_from(const nlohmann::json& c) {
  NoiseScheduleConfig cfg;
  cfg.num_train_timesteps = c.value("num_train_timesteps", 1000);
  cfg.beta_start = c.value("beta_start", 0.0001);
  cfg.beta_end = c.value("beta_end", 0.02);
  cfg.beta_schedule = c.value("beta_schedule", std::string("linear"));
  cfg.prediction_type = c.value("prediction_type", std::string("epsilon"));
  cfg.timestep_spacing = c.value("timestep_spacing", std::string("leading"));
  cfg.steps_offset = c.value("steps_offset", 0);
  cfg.clip_sample = c.value("clip_sample", false);
  cfg.clip_sample_range = c.value("clip_sample_range", 1.0);
  cfg.set_alpha_to_one = c.value("set_alpha_to_one", false);
  return cfg;
}

}  // namespace diffuse::test
