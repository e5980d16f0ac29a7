// config.json into every model config and the scheduler config: parsed or refused with
// diffuse::Error, never another exception or a crash; a config that validates gets its size
// bound (models/size_bounds.h) computed as every folder loader does before building.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "fuzz_util.h"
#include "models/autoencoder_kl.h"
#include "models/clip_text.h"
#include "models/dit.h"
#include "models/size_bounds.h"
#include "models/unet2d.h"
#include "models/unet2d_condition.h"
#include "pipelines/scheduler_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(diffuse::fuzz::as_string(data, size));
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  auto attempt = [&](auto&& parse) {
    try {
      parse();
    } catch (const diffuse::Error&) {
    }
  };
  attempt([&] {
    auto c = diffuse::UNet2DConfig::from_json(j);
    c.validate();
    diffuse::min_parameters(c);
  });
  attempt([&] {
    auto c = diffuse::UNet2DConditionConfig::from_json(j);
    c.validate();
    diffuse::min_parameters(c);
  });
  attempt([&] {
    auto c = diffuse::AutoencoderKLConfig::from_json(j);
    c.validate();
    diffuse::min_parameters(c);
  });
  attempt([&] {
    auto c = diffuse::DiTConfig::from_json(j);
    c.validate();
    diffuse::min_parameters(c);
    diffuse::min_buffer_elements(c);
  });
  attempt([&] {
    auto c = diffuse::CLIPTextConfig::from_json(j);
    c.validate();
    diffuse::min_parameters(c);
  });
  attempt([&] { diffuse::scheduler_config_from_json(j, "fuzz/scheduler_config.json"); });
  return 0;
}
