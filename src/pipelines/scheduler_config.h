#pragma once
// diffusers' scheduler_config.json <-> NoiseScheduleConfig.
#include <nlohmann/json.hpp>
#include <string>

#include "diffusion/denoiser.h"
#include "diffusion/schedule.h"

namespace diffuse {

// Reads a diffusers scheduler_config.json (any scheduler class); unknown keys are ignored,
// keys of the wrong type raise diffuse::Error naming the file and key.
NoiseScheduleConfig load_scheduler_config(const std::string& path);
NoiseScheduleConfig scheduler_config_from_json(const nlohmann::json& j, const std::string& source);
// A DDPMScheduler config as diffusers writes it.
nlohmann::json scheduler_config_json(const NoiseScheduleConfig& cfg, const std::string& class_name = "DDPMScheduler");

}  // namespace diffuse
