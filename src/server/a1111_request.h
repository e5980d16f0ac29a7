#pragma once
// A1111's txt2img / img2img JSON payloads as GenerationRequests (not part of the public API).
#include <nlohmann/json.hpp>
#include <string>

#include "diffuse/request.h"

namespace diffuse::server {

// `model` receives override_settings.sd_model_checkpoint, and the request's refiner
// refiner_checkpoint, as sent (names or A1111 titles, for the route to resolve). Fields that are absent keep the
// model's defaults; fields diffuse does not have are ignored. Throws RequestError naming a field of the wrong type or a
// missing init image.
GenerationRequest from_a1111(const nlohmann::json& j, std::string& model, bool img2img);

}  // namespace diffuse::server
