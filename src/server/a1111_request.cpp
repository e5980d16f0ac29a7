// A1111 txt2img / img2img payloads -> GenerationRequest.
#include "server/a1111_request.h"

#include <cmath>
#include <limits>
#include <type_traits>

#include "core/base64.h"

namespace diffuse::server {

using json = nlohmann::json;

namespace {

// Reads a field of an A1111 payload when present and of the right type; a wrong type is a 400.
template <class T>
void take(const json& j, const char* key, T& out) {
  if (!j.contains(key) || j[key].is_null()) return;
  const json& v = j[key];
  if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) throw RequestError(key, "must be a string");
    out = v.get<std::string>();
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw RequestError(key, "must be true or false");
    out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    // integers, also written as 512.0; anything outside T's range is refused before converting
    const double d = v.is_number() ? v.get<double>() : 0.5;
    if (!v.is_number() || d != std::floor(d) || d < static_cast<double>(std::numeric_limits<T>::min()) ||
        d > static_cast<double>(std::numeric_limits<T>::max()))
      throw RequestError(key, "must be an integer in range");
    out = v.is_number_integer() ? v.get<T>() : static_cast<T>(d);
  } else {
    if (!v.is_number()) throw RequestError(key, "must be a number");
    out = v.get<T>();
  }
}

}  // namespace

GenerationRequest from_a1111(const json& j, std::string& model, bool img2img) {
  if (!j.is_object()) throw RequestError("body", "must be a JSON object");
  GenerationRequest r;
  take(j, "prompt", r.prompt);
  take(j, "negative_prompt", r.negative_prompt);
  int batch = 1, iters = 1;
  if (j.contains("steps")) {
    int steps = 0;
    take(j, "steps", steps);
    r.steps = steps;
  }
  if (j.contains("cfg_scale")) {
    double cfg = 0;
    take(j, "cfg_scale", cfg);
    r.guidance = cfg;
  }
  take(j, "batch_size", batch);
  take(j, "n_iter", iters);
  if (j.contains("batch_size") || j.contains("n_iter")) {
    if (batch < 1 || iters < 1 || static_cast<int64_t>(batch) * iters > 1000000)
      throw RequestError("batch_size", "batch_size and n_iter must be positive, and their product at most 10^6");
    r.batch_size = batch;
    r.n = batch * iters;
  }
  take(j, "width", r.width);
  take(j, "height", r.height);
  take(j, "seed", r.seed);
  if (r.seed < -1) r.seed = -1;
  std::string sampler;
  take(j, "sampler_name", sampler);
  if (sampler.empty()) take(j, "sampler_index", sampler);
  r.sampler = sampler;
  std::string scheduler;
  take(j, "scheduler", scheduler);
  for (auto& ch : scheduler) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (auto& ch : scheduler)
    if (ch == ' ') ch = '_';
  if (scheduler == "automatic") scheduler.clear();
  r.schedule = scheduler;
  double eta = -1;
  take(j, "eta", eta);
  if (eta >= 0) r.eta = eta;
  take(j, "s_noise", r.s_noise);
  if (j.contains("override_settings") && j["override_settings"].is_object()) {
    const json& o = j["override_settings"];
    take(o, "sd_model_checkpoint", model);
    int clip_skip = 0;
    take(o, "CLIP_stop_at_last_layers", clip_skip);
    if (clip_skip > 1) r.clip_skip = clip_skip - 1;
  }
  // SDXL base -> refiner handoff: the refiner's name ("None", as A1111's picker says, or "" = none)
  // is resolved by the route, which names refiner_checkpoint in its errors
  std::string refiner;
  take(j, "refiner_checkpoint", refiner);
  if (refiner != "None") r.refiner = refiner;
  if (j.contains("refiner_switch_at") && !j["refiner_switch_at"].is_null()) {
    take(j, "refiner_switch_at", r.refiner_switch);
    if (!(r.refiner_switch > 0 && r.refiner_switch < 1))
      throw RequestError("refiner_switch_at", "must lie strictly between 0 and 1");
  }
  if (img2img) {
    if (!j.contains("init_images") || !j["init_images"].is_array() || j["init_images"].empty() ||
        !j["init_images"][0].is_string())
      throw RequestError("init_images", "img2img needs init_images: [base64 image]");
    r.init_image = base64_decode(j["init_images"][0].get<std::string>(), "init_images");
    take(j, "denoising_strength", r.strength);
    std::string mask;
    take(j, "mask", mask);
    if (!mask.empty()) r.mask = base64_decode(mask, "mask");
    take(j, "mask_blur", r.mask_blur);
    if (j.contains("inpainting_mask_invert")) {
      const json& v = j["inpainting_mask_invert"];
      r.mask_invert = v.is_boolean() ? v.get<bool>() : v.is_number() && v.get<double>() != 0;
    }
    if (j.contains("inpaint_full_res")) {
      const json& v = j["inpaint_full_res"];
      r.inpaint_only_masked = v.is_boolean() ? v.get<bool>() : v.is_number() && v.get<double>() != 0;
    }
    take(j, "inpaint_full_res_padding", r.inpaint_only_masked_padding);
  }
  return r;
}

}  // namespace diffuse::server
