// GenerationRequest: defaults, validation, limits and JSON.
#include "diffuse/request.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/base64.h"
#include "diffusion/sampler.h"
#include "diffusion/sigmas.h"

namespace diffuse {

using json = nlohmann::json;

GenerationRequest::GenerationRequest() : guidance_interval{0.0, std::numeric_limits<double>::infinity()} {}

bool GenerationRequest::operator==(const GenerationRequest& o) const {
  auto loras_eq = [&] {
    if (loras.size() != o.loras.size()) return false;
    for (size_t i = 0; i < loras.size(); ++i)
      if (loras[i].name != o.loras[i].name || loras[i].weight != o.loras[i].weight) return false;
    return true;
  };
  return model == o.model && prompt == o.prompt && negative_prompt == o.negative_prompt &&
         class_label == o.class_label && sampler == o.sampler && schedule == o.schedule && sigmas == o.sigmas &&
         steps == o.steps && guidance == o.guidance && guidance_rescale == o.guidance_rescale &&
         guidance_interval == o.guidance_interval && guide_model == o.guide_model &&
         guide_unconditional == o.guide_unconditional && seed == o.seed && rng == o.rng && eta == o.eta &&
         s_noise == o.s_noise && width == o.width && height == o.height && n == o.n && batch_size == o.batch_size &&
         init_image == o.init_image && strength == o.strength && mask == o.mask && mask_blur == o.mask_blur &&
         mask_invert == o.mask_invert && inpaint_only_masked == o.inpaint_only_masked &&
         inpaint_only_masked_padding == o.inpaint_only_masked_padding && outpaint == o.outpaint &&
         inpaint_method == o.inpaint_method && jump_length == o.jump_length && jump_n_sample == o.jump_n_sample &&
         invert_from == o.invert_from && loras_eq() && clip_skip == o.clip_skip && dtype == o.dtype &&
         weights == o.weights && vae_tiling == o.vae_tiling && vae_tile_size == o.vae_tile_size &&
         output_format == o.output_format && original_size == o.original_size && crop_coords == o.crop_coords &&
         target_size == o.target_size && negative_original_size == o.negative_original_size &&
         negative_crop_coords == o.negative_crop_coords && negative_target_size == o.negative_target_size &&
         aesthetic_score == o.aesthetic_score && negative_aesthetic_score == o.negative_aesthetic_score &&
         refiner == o.refiner && refiner_switch == o.refiner_switch;
}

namespace {

bool finite(double v) { return std::isfinite(v); }

}  // namespace

std::vector<FieldError> GenerationRequest::validate() const {
  std::vector<FieldError> e;
  auto bad = [&](const char* field, const std::string& msg) { e.push_back({field, msg}); };
  if (!sampler.empty()) {
    try {
      find_sampler(sampler);
    } catch (const Error& err) {
      bad("sampler", err.what());
    }
  }
  if (!schedule.empty()) {
    bool known = false;
    std::string names;
    for (const auto& [name, summary, fn] : sigma_schedules()) {
      known |= name == schedule;
      names += (names.empty() ? "" : ", ") + name;
    }
    if (!known) bad("schedule", "unknown schedule '" + schedule + "' (one of: " + names + ")");
  }
  if (!sigmas.empty()) {
    bool ok = true;
    for (size_t i = 0; i < sigmas.size(); ++i) {
      if (!finite(sigmas[i]) || sigmas[i] < 0 || (i > 0 && !(sigmas[i] < sigmas[i - 1]))) ok = false;
    }
    if (!ok || sigmas[0] <= 0) bad("sigmas", "must be finite, >= 0 and strictly descending, the first > 0");
  }
  if (steps && *steps < 1) bad("steps", "must be at least 1");
  if (guidance && (!finite(*guidance) || *guidance < 0)) bad("guidance", "must be a finite number >= 0");
  if (!finite(guidance_rescale) || guidance_rescale < 0 || guidance_rescale > 1)
    bad("guidance_rescale", "must be in [0, 1]");
  if (!(guidance_interval[0] >= 0) || !(guidance_interval[0] < guidance_interval[1]) ||
      std::isnan(guidance_interval[1]))
    bad("guidance_interval", "must be [lo, hi] with 0 <= lo < hi");
  if (seed < -1) bad("seed", "must be >= 0, or -1 for a random seed");
  if (rng != "cpu" && rng != "philox") bad("rng", "must be cpu or philox");
  if (eta && (!finite(*eta) || *eta < 0)) bad("eta", "must be a finite number >= 0");
  if (!finite(s_noise) || s_noise < 0) bad("s_noise", "must be a finite number >= 0");
  if (width < 0) bad("width", "must be > 0 (or 0 for the model's size)");
  if (height < 0) bad("height", "must be > 0 (or 0 for the model's size)");
  if (n && *n < 1) bad("n", "must be at least 1");
  if (batch_size && *batch_size < 1) bad("batch_size", "must be at least 1");
  if (!finite(strength) || strength < 0 || strength > 1) bad("strength", "must be in [0, 1]");
  if (!mask.empty() && init_image.empty()) bad("mask", "needs init_image");
  if (!finite(mask_blur) || mask_blur < 0) bad("mask_blur", "must be >= 0");
  if (inpaint_only_masked_padding < 0) bad("inpaint_only_masked_padding", "must be >= 0");
  const bool outpainting = outpaint != std::array<int, 4>{0, 0, 0, 0};
  for (int v : outpaint)
    if (v < 0 || v > 4096) {
      bad("outpaint", "pixel counts must be in [0, 4096]");
      break;
    }
  if (outpainting && init_image.empty()) bad("outpaint", "needs init_image");
  if (outpainting && !mask.empty()) bad("outpaint", "makes its own mask: leave mask empty");
  if (!inpaint_method.empty() && inpaint_method != "repaint" && inpaint_method != "blend")
    bad("inpaint_method", "must be repaint or blend");
  if (jump_length < 1 || jump_length > 1000) bad("jump_length", "must be in [1, 1000]");
  if (jump_n_sample < 1 || jump_n_sample > 100) bad("jump_n_sample", "must be in [1, 100]");
  if (!invert_from.empty() && init_image.empty()) bad("invert_from", "needs init_image (the image to invert)");
  if (!invert_from.empty() && (!mask.empty() || outpainting))
    bad("invert_from", "inverts a whole image: not with a mask or outpaint");
  for (const auto& l : loras) {
    if (l.name.empty()) bad("loras", "a LoRA needs a name");
    if (!finite(l.weight)) bad("loras", "weight of '" + l.name + "' must be finite");
  }
  if (clip_skip < 0) bad("clip_skip", "must be >= 0");
  if (dtype != "auto" && dtype != "fp32" && dtype != "fp16" && dtype != "bf16")
    bad("dtype", "must be auto, fp32, fp16 or bf16");
  if (!weights.empty() && weights != "int8") bad("weights", "must be int8, or empty for the weights as stored");
  if (vae_tile_size < 0) bad("vae_tile_size", "must be >= 0");
  if (output_format != "png" && output_format != "jpeg") bad("output_format", "must be png or jpeg");
  for (auto [field, v] : {std::pair<const char*, const std::array<int, 2>*>{"original_size", &original_size},
                          {"target_size", &target_size},
                          {"negative_original_size", &negative_original_size},
                          {"negative_target_size", &negative_target_size}})
    if ((*v)[0] < 0 || (*v)[1] < 0 || (*v)[0] > 65536 || (*v)[1] > 65536 || (((*v)[0] == 0) != ((*v)[1] == 0)))
      bad(field, "must be [height, width] in [1, 65536], or [0, 0] for the output size");
  for (auto [field, v] : {std::pair<const char*, const std::array<int, 2>*>{"crop_coords", &crop_coords},
                          {"negative_crop_coords", &negative_crop_coords}})
    if ((*v)[0] < 0 || (*v)[1] < 0 || (*v)[0] > 65536 || (*v)[1] > 65536)
      bad(field, "must be [top, left] in [0, 65536]");
  if (!finite(refiner_switch) || refiner_switch <= 0 || refiner_switch >= 1)
    bad("refiner_switch", "must lie strictly between 0 and 1");
  if (aesthetic_score && (!finite(*aesthetic_score) || *aesthetic_score < 0 || *aesthetic_score > 100))
    bad("aesthetic_score", "must be in [0, 100]");
  if (negative_aesthetic_score &&
      (!finite(*negative_aesthetic_score) || *negative_aesthetic_score < 0 || *negative_aesthetic_score > 100))
    bad("negative_aesthetic_score", "must be in [0, 100]");
  return e;
}

void GenerationRequest::check() const {
  auto e = validate();
  if (!e.empty()) throw RequestError(std::move(e));
}

std::vector<FieldError> check_limits(const GenerationRequest& r, const RequestLimits& l) {
  std::vector<FieldError> e;
  auto over = [&](const char* field, int64_t v, int64_t max) {
    if (v > max) e.push_back({field, std::to_string(v) + " is over the limit of " + std::to_string(max)});
  };
  over("width", r.width, l.max_side);
  over("height", r.height, l.max_side);
  if (r.steps) over("steps", *r.steps, l.max_steps);
  if (!r.sigmas.empty()) over("sigmas", static_cast<int64_t>(r.sigmas.size()) - 1, l.max_steps);
  if (r.n) over("n", *r.n, l.max_n);
  if (r.batch_size) over("batch_size", *r.batch_size, l.max_batch);
  if (r.n && r.width > 0 && r.height > 0 &&
      static_cast<double>(*r.n) * r.width * r.height > static_cast<double>(l.max_pixels))  // no overflow
    e.push_back({"n", std::to_string(*r.n) + " images of " + std::to_string(r.width) + "x" + std::to_string(r.height) +
                          " are over the limit of " + std::to_string(l.max_pixels) + " pixels"});
  over("prompt", static_cast<int64_t>(r.prompt.size()), static_cast<int64_t>(l.max_prompt_bytes));
  over("negative_prompt", static_cast<int64_t>(r.negative_prompt.size()), static_cast<int64_t>(l.max_prompt_bytes));
  return e;
}

// ---- JSON -------------------------------------------------------------------------------

std::string GenerationRequest::to_json() const {
  json j;
  if (!model.empty()) j["model"] = model;
  j["prompt"] = prompt;
  j["negative_prompt"] = negative_prompt;
  j["class"] = class_label;
  j["sampler"] = sampler;
  j["schedule"] = schedule;
  j["sigmas"] = sigmas;
  if (steps) j["steps"] = *steps;
  if (guidance) j["guidance"] = *guidance;
  j["guidance_rescale"] = guidance_rescale;
  j["guidance_interval"] = {guidance_interval[0],
                            std::isfinite(guidance_interval[1]) ? json(guidance_interval[1]) : json(nullptr)};
  j["guide_model"] = guide_model;
  if (guide_unconditional) j["guide_unconditional"] = *guide_unconditional;
  j["seed"] = seed;
  j["rng"] = rng;
  if (eta) j["eta"] = *eta;
  j["s_noise"] = s_noise;
  j["width"] = width;
  j["height"] = height;
  if (n) j["n"] = *n;
  if (batch_size) j["batch_size"] = *batch_size;
  j["init_image"] = init_image.empty() ? "" : base64_encode(init_image);
  j["strength"] = strength;
  j["mask"] = mask.empty() ? "" : base64_encode(mask);
  j["mask_blur"] = mask_blur;
  j["mask_invert"] = mask_invert;
  j["inpaint_only_masked"] = inpaint_only_masked;
  j["inpaint_only_masked_padding"] = inpaint_only_masked_padding;
  j["outpaint"] = outpaint;
  j["inpaint_method"] = inpaint_method;
  j["jump_length"] = jump_length;
  j["jump_n_sample"] = jump_n_sample;
  j["invert_from"] = invert_from;
  j["loras"] = json::array();
  for (const auto& l : loras) j["loras"].push_back({{"name", l.name}, {"weight", l.weight}});
  j["clip_skip"] = clip_skip;
  j["dtype"] = dtype;
  j["weights"] = weights;
  j["vae_tiling"] = vae_tiling;
  j["vae_tile_size"] = vae_tile_size;
  j["output_format"] = output_format;
  j["original_size"] = original_size;
  j["crop_coords"] = crop_coords;
  j["target_size"] = target_size;
  j["negative_original_size"] = negative_original_size;
  j["negative_crop_coords"] = negative_crop_coords;
  j["negative_target_size"] = negative_target_size;
  j["refiner"] = refiner;
  j["refiner_switch"] = refiner_switch;
  if (aesthetic_score) j["aesthetic_score"] = *aesthetic_score;
  if (negative_aesthetic_score) j["negative_aesthetic_score"] = *negative_aesthetic_score;
  return j.dump();
}

namespace {

// Reads JSON values into fields, collecting one error per bad field.
struct Reader {
  std::vector<FieldError> errors;
  void fail(const std::string& field, const std::string& msg) { errors.push_back({field, msg}); }

  void str(const json& v, const std::string& f, std::string& out) {
    if (v.is_string())
      out = v.get<std::string>();
    else if (!v.is_null())
      fail(f, "must be a string");
  }
  void integer(const json& v, const std::string& f, int& out) {
    int64_t x = 0;
    if (int64(v, f, x)) {
      if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
        fail(f, "is out of range");
      else
        out = static_cast<int>(x);
    }
  }
  bool int64(const json& v, const std::string& f, int64_t& out) {
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(f, "is out of range");
        return false;
      }
      out = v.get<int64_t>();
      return true;
    }
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 9e15) {
      out = static_cast<int64_t>(v.get<double>());
      return true;
    }
    fail(f, "must be an integer");
    return false;
  }
  bool number(const json& v, const std::string& f, double& out) {
    if (v.is_number()) {
      out = v.get<double>();
      return true;
    }
    fail(f, "must be a number");
    return false;
  }
  void boolean(const json& v, const std::string& f, bool& out) {
    if (v.is_boolean())
      out = v.get<bool>();
    else
      fail(f, "must be true or false");
  }
  void image(const json& v, const std::string& f, std::string& out) {
    std::string s;
    str(v, f, s);
    if (s.empty()) return;
    try {
      out = base64_decode(s, f);
    } catch (const Error& e) {
      fail(f, "must be base64 or a data URL of a PNG or JPEG image");
    }
  }
};

}  // namespace

GenerationRequest GenerationRequest::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // syntax errors, and numbers that overflow a double
    throw RequestError("body", std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) throw RequestError("body", "must be a JSON object");
  GenerationRequest r;
  Reader rd;
  for (const auto& [key, v] : j.items()) {
    if (key == "model")
      rd.str(v, key, r.model);
    else if (key == "prompt")
      rd.str(v, key, r.prompt);
    else if (key == "negative_prompt")
      rd.str(v, key, r.negative_prompt);
    else if (key == "class") {
      if (v.is_number_integer())
        r.class_label = std::to_string(v.get<int64_t>());
      else
        rd.str(v, key, r.class_label);
    } else if (key == "sampler")
      rd.str(v, key, r.sampler);
    else if (key == "schedule")
      rd.str(v, key, r.schedule);
    else if (key == "sigmas") {
      if (!v.is_array())
        rd.fail(key, "must be an array of numbers");
      else {
        r.sigmas.clear();
        for (const auto& x : v) {
          double d = 0;
          if (!rd.number(x, key, d)) break;
          r.sigmas.push_back(d);
        }
      }
    } else if (key == "steps") {
      if (!v.is_null()) {
        int x = 0;
        size_t before = rd.errors.size();
        rd.integer(v, key, x);
        if (rd.errors.size() == before) r.steps = x;
      }
    } else if (key == "guidance") {
      double x = 0;
      if (!v.is_null() && rd.number(v, key, x)) r.guidance = x;
    } else if (key == "guidance_rescale")
      rd.number(v, key, r.guidance_rescale);
    else if (key == "guidance_interval") {
      if (!v.is_array() || v.size() != 2 || !v[0].is_number() || !(v[1].is_number() || v[1].is_null()))
        rd.fail(key, "must be [lo, hi] (hi may be null for no upper bound)");
      else
        r.guidance_interval = {v[0].get<double>(),
                               v[1].is_null() ? std::numeric_limits<double>::infinity() : v[1].get<double>()};
    } else if (key == "guide_model")
      rd.str(v, key, r.guide_model);
    else if (key == "guide_unconditional") {
      bool b = false;
      if (!v.is_null()) {
        size_t before = rd.errors.size();
        rd.boolean(v, key, b);
        if (rd.errors.size() == before) r.guide_unconditional = b;
      }
    } else if (key == "seed") {
      if (!v.is_null()) rd.int64(v, key, r.seed);
    } else if (key == "rng")
      rd.str(v, key, r.rng);
    else if (key == "eta") {
      double x = 0;
      if (!v.is_null() && rd.number(v, key, x)) r.eta = x;
    } else if (key == "s_noise")
      rd.number(v, key, r.s_noise);
    else if (key == "width")
      rd.integer(v, key, r.width);
    else if (key == "height")
      rd.integer(v, key, r.height);
    else if (key == "n" || key == "batch_size") {
      if (!v.is_null()) {
        int x = 0;
        size_t before = rd.errors.size();
        rd.integer(v, key, x);
        if (rd.errors.size() == before) (key == "n" ? r.n : r.batch_size) = x;
      }
    } else if (key == "init_image")
      rd.image(v, key, r.init_image);
    else if (key == "strength")
      rd.number(v, key, r.strength);
    else if (key == "mask")
      rd.image(v, key, r.mask);
    else if (key == "mask_blur")
      rd.number(v, key, r.mask_blur);
    else if (key == "mask_invert")
      rd.boolean(v, key, r.mask_invert);
    else if (key == "inpaint_only_masked")
      rd.boolean(v, key, r.inpaint_only_masked);
    else if (key == "inpaint_only_masked_padding")
      rd.integer(v, key, r.inpaint_only_masked_padding);
    else if (key == "outpaint") {
      if (!v.is_array() || v.size() != 4)
        rd.fail(key, "must be [left, top, right, bottom]");
      else
        for (size_t i = 0; i < 4; ++i) rd.integer(v[i], key, r.outpaint[i]);
    } else if (key == "inpaint_method")
      rd.str(v, key, r.inpaint_method);
    else if (key == "jump_length")
      rd.integer(v, key, r.jump_length);
    else if (key == "jump_n_sample")
      rd.integer(v, key, r.jump_n_sample);
    else if (key == "invert_from") {
      if (v.is_number_integer())
        r.invert_from = std::to_string(v.get<int64_t>());
      else
        rd.str(v, key, r.invert_from);
    } else if (key == "loras") {
      if (!v.is_array())
        rd.fail(key, "must be an array of {name, weight}");
      else
        for (const auto& l : v) {
          LoraWeight w;
          if (l.is_string())
            w.name = l.get<std::string>();
          else if (l.is_object() && l.contains("name")) {
            rd.str(l["name"], key, w.name);
            if (l.contains("weight")) rd.number(l["weight"], key, w.weight);
          } else {
            rd.fail(key, "must be an array of {name, weight}");
            break;
          }
          r.loras.push_back(w);
        }
    } else if (key == "clip_skip")
      rd.integer(v, key, r.clip_skip);
    else if (key == "dtype")
      rd.str(v, key, r.dtype);
    else if (key == "weights")
      rd.str(v, key, r.weights);
    else if (key == "vae_tiling")
      rd.boolean(v, key, r.vae_tiling);
    else if (key == "vae_tile_size")
      rd.integer(v, key, r.vae_tile_size);
    else if (key == "original_size" || key == "crop_coords" || key == "target_size" ||
             key == "negative_original_size" || key == "negative_crop_coords" || key == "negative_target_size") {
      auto& dst = key == "original_size"            ? r.original_size
                  : key == "crop_coords"            ? r.crop_coords
                  : key == "target_size"            ? r.target_size
                  : key == "negative_original_size" ? r.negative_original_size
                  : key == "negative_crop_coords"   ? r.negative_crop_coords
                                                    : r.negative_target_size;
      const bool crop = key.find("crop") != std::string::npos;
      if (!v.is_array() || v.size() != 2)
        rd.fail(key, crop ? "must be [top, left]" : "must be [height, width]");
      else
        for (size_t i = 0; i < 2; ++i) rd.integer(v[i], key, dst[i]);
    } else if (key == "refiner") {
      rd.str(v, key, r.refiner);
    } else if (key == "refiner_switch") {
      rd.number(v, key, r.refiner_switch);
    } else if (key == "aesthetic_score" || key == "negative_aesthetic_score") {
      double x = 0;
      if (!v.is_null() && rd.number(v, key, x))
        (key == "aesthetic_score" ? r.aesthetic_score : r.negative_aesthetic_score) = x;
    } else if (key == "output_format") {
      rd.str(v, key, r.output_format);
      if (r.output_format == "jpg") r.output_format = "jpeg";
    } else
      rd.fail(key, "unknown field");
  }
  if (!rd.errors.empty()) throw RequestError(std::move(rd.errors));
  return r;
}

}  // namespace diffuse
