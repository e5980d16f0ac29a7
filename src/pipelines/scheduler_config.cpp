#include "pipelines/scheduler_config.h"

#include <cmath>
#include <limits>
#include <type_traits>

#include "core/atomic_file.h"
#include "core/error.h"

namespace diffuse {

NoiseScheduleConfig scheduler_config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object");
  NoiseScheduleConfig c;
  auto get = [&](const char* key, auto& out) {
    if (!j.contains(key) || j[key].is_null()) return;
    const auto& v = j[key];
    using T = std::decay_t<decltype(out)>;
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      // integers (also written as 1000.0) within T's range, checked before converting
      const double d = v.is_number() ? v.get<double>() : 0.5;
      if (!v.is_number() || d != std::floor(d) || d < static_cast<double>(std::numeric_limits<T>::min()) ||
          d > static_cast<double>(std::numeric_limits<T>::max()))
        throw Error(source + ": key '" + key + "' must be an integer");
      out = v.is_number_integer() ? v.get<T>() : static_cast<T>(d);
      return;
    }
    try {
      v.get_to(out);
    } catch (const nlohmann::json::exception&) {
      throw Error(source + ": key '" + key + "' has the wrong type");
    }
  };
  get("num_train_timesteps", c.num_train_timesteps);
  get("beta_start", c.beta_start);
  get("beta_end", c.beta_end);
  get("beta_schedule", c.beta_schedule);
  get("prediction_type", c.prediction_type);
  get("timestep_spacing", c.timestep_spacing);
  get("steps_offset", c.steps_offset);
  get("clip_sample", c.clip_sample);
  get("clip_sample_range", c.clip_sample_range);
  get("set_alpha_to_one", c.set_alpha_to_one);
  if (c.num_train_timesteps < 2 || c.num_train_timesteps > 100000)
    throw Error(source + ": num_train_timesteps must lie in [2, 100000]");
  if (c.beta_schedule != "linear" && c.beta_schedule != "scaled_linear" && c.beta_schedule != "squaredcos_cap_v2")
    throw Error(source + ": beta_schedule '" + c.beta_schedule +
                "' is not supported (linear, scaled_linear, squaredcos_cap_v2)");
  parse_prediction(c.prediction_type);
  return c;
}

NoiseScheduleConfig load_scheduler_config(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": invalid JSON: " + e.what());
  }
  return scheduler_config_from_json(j, path);
}

nlohmann::json scheduler_config_json(const NoiseScheduleConfig& c, const std::string& class_name) {
  return {{"_class_name", class_name},
          {"_diffusers_version", "0.28.2"},
          {"beta_end", c.beta_end},
          {"beta_schedule", c.beta_schedule},
          {"beta_start", c.beta_start},
          {"clip_sample", c.clip_sample},
          {"clip_sample_range", c.clip_sample_range},
          {"dynamic_thresholding_ratio", 0.995},
          {"num_train_timesteps", c.num_train_timesteps},
          {"prediction_type", c.prediction_type},
          {"rescale_betas_zero_snr", false},
          {"sample_max_value", 1.0},
          {"steps_offset", c.steps_offset},
          {"thresholding", false},
          {"timestep_spacing", c.timestep_spacing},
          {"trained_betas", nullptr},
          {"variance_type", "fixed_small"}};
}

}  // namespace diffuse
