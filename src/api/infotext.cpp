// GenerationRequest <-> A1111 "parameters" text.
//
//   a photo of a cat
//   Negative prompt: blurry
//   Steps: 20, Sampler: dpm++2m, Schedule type: karras, CFG scale: 7, Seed: 1, Size: 512x512, Model: sd15
//
// The last line holds "Key: value" pairs separated by ", "; values with commas are JSON-quoted.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "diffuse/request.h"
#include "diffusion/sampler.h"

namespace diffuse {

namespace {

std::string num(double v) {
  std::ostringstream o;
  o.precision(std::numeric_limits<double>::max_digits10);
  o << v;
  std::string s = o.str();
  // shortest form that reads back exactly
  for (int p = 1; p <= 17; ++p) {
    std::ostringstream t;
    t.precision(p);
    t << v;
    if (std::stod(t.str()) == v) return t.str();
  }
  return s;
}

std::string quote_if_needed(const std::string& v) {
  if (v.find_first_of(",:\"\n") == std::string::npos) return v;
  return nlohmann::json(v).dump();
}

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r"), e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// "Key: value, Key: "quoted, value", ..." -> pairs (A1111's re_param).
std::vector<std::pair<std::string, std::string>> parse_pairs(const std::string& line) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == ',')) ++i;
    const size_t colon = line.find(':', i);
    if (colon == std::string::npos) break;
    std::string key = trim(line.substr(i, colon - i));
    i = colon + 1;
    while (i < line.size() && line[i] == ' ') ++i;
    std::string value;
    if (i < line.size() && line[i] == '"') {
      size_t j = i + 1;
      while (j < line.size() && line[j] != '"') j += line[j] == '\\' ? 2 : 1;
      const std::string quoted = line.substr(i, std::min(j + 1, line.size()) - i);
      try {
        value = nlohmann::json::parse(quoted).get<std::string>();
      } catch (const std::exception&) {
        value = quoted;
      }
      i = j + 1;
    } else {
      const size_t comma = line.find(',', i);
      value = trim(line.substr(i, comma == std::string::npos ? std::string::npos : comma - i));
      i = comma == std::string::npos ? line.size() : comma + 1;
    }
    out.emplace_back(key, value);
  }
  return out;
}

bool to_double(const std::string& s, double& out) {
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end && end != s.c_str() && *end == 0;
}
// Integers within int's range (steps, sizes, clip skip) or, for seeds, int64's.
bool to_int(const std::string& s, int64_t& out) {
  char* end = nullptr;
  errno = 0;
  out = std::strtoll(s.c_str(), &end, 10);
  return end && end != s.c_str() && *end == 0 && errno != ERANGE;
}
bool to_small_int(const std::string& s, int64_t& out) {
  return to_int(s, out) && out >= std::numeric_limits<int>::min() && out <= std::numeric_limits<int>::max();
}

// A line of "Key: value" pairs with at least "Steps:" or three pairs.
bool is_params_line(const std::string& line) {
  if (line.rfind("Steps: ", 0) == 0) return true;
  return parse_pairs(line).size() >= 3 && line.find("Negative prompt:") != 0;
}

}  // namespace

std::string GenerationRequest::to_infotext() const {
  std::ostringstream o;
  if (!prompt.empty()) o << prompt << "\n";
  if (!negative_prompt.empty()) o << "Negative prompt: " << negative_prompt << "\n";
  std::vector<std::pair<std::string, std::string>> kv;
  if (steps) kv.emplace_back("Steps", std::to_string(*steps));
  if (!sampler.empty()) kv.emplace_back("Sampler", sampler);
  if (!schedule.empty()) kv.emplace_back("Schedule type", schedule);
  if (!sigmas.empty()) {
    std::string s;
    for (double v : sigmas) s += (s.empty() ? "" : ", ") + num(v);
    kv.emplace_back("Sigmas", s);
  }
  if (guidance) kv.emplace_back("CFG scale", num(*guidance));
  if (guidance_rescale != 0) kv.emplace_back("CFG rescale", num(guidance_rescale));
  if (guidance_interval[0] > 0 || std::isfinite(guidance_interval[1]))
    kv.emplace_back("Guidance interval", num(guidance_interval[0]) + ", " + num(guidance_interval[1]));
  if (!guide_model.empty()) kv.emplace_back("Guide model", guide_model);
  if (guide_unconditional) kv.emplace_back("Guide unconditional", *guide_unconditional ? "True" : "False");
  if (eta) kv.emplace_back("Eta", num(*eta));
  if (s_noise != 1.0) kv.emplace_back("S noise", num(s_noise));
  if (rng != "cpu") kv.emplace_back("RNG", rng);
  if (seed >= 0) kv.emplace_back("Seed", std::to_string(seed));
  if (width > 0 && height > 0) kv.emplace_back("Size", std::to_string(width) + "x" + std::to_string(height));
  if (!model.empty()) kv.emplace_back("Model", model);
  if (!class_label.empty()) kv.emplace_back("Class", class_label);
  if (!init_image.empty()) kv.emplace_back("Denoising strength", num(strength));
  if (mask_blur > 0) kv.emplace_back("Mask blur", num(mask_blur));
  if (mask_invert) kv.emplace_back("Mask mode", "Inpaint not masked");
  if (inpaint_only_masked) {
    kv.emplace_back("Inpaint area", "Only masked");
    kv.emplace_back("Masked area padding", std::to_string(inpaint_only_masked_padding));
  }
  if (outpaint != std::array<int, 4>{0, 0, 0, 0})
    kv.emplace_back("Outpaint", std::to_string(outpaint[0]) + ", " + std::to_string(outpaint[1]) + ", " +
                                    std::to_string(outpaint[2]) + ", " + std::to_string(outpaint[3]));
  if (!inpaint_method.empty()) kv.emplace_back("Inpaint method", inpaint_method);
  if (inpaint_method == "repaint" || jump_length != 10 || jump_n_sample != 10)
    kv.emplace_back("RePaint jumps", std::to_string(jump_length) + "x" + std::to_string(jump_n_sample));
  if (!invert_from.empty()) kv.emplace_back("Invert from", invert_from);
  if (!loras.empty()) {
    std::string s;
    for (const auto& l : loras) s += (s.empty() ? "" : ", ") + l.name + ": " + num(l.weight);
    kv.emplace_back("Lora weights", s);
  }
  if (clip_skip > 0) kv.emplace_back("Clip skip", std::to_string(clip_skip + 1));  // A1111 counts from 1
  // as run (results carry fp32, bf16 or fp16); an unresolved request's auto is left out
  if (dtype != "auto") kv.emplace_back("Dtype", dtype);
  if (!weights.empty()) kv.emplace_back("Weights", weights);
  if (vae_tiling || vae_tile_size > 0) kv.emplace_back("Tiled VAE", std::to_string(vae_tile_size));
  // SDXL micro-conditioning, in the order of the request fields ({height, width}, {top, left})
  auto pair = [](const std::array<int, 2>& a) { return std::to_string(a[0]) + ", " + std::to_string(a[1]); };
  if (original_size != std::array<int, 2>{0, 0}) kv.emplace_back("Original size", pair(original_size));
  if (crop_coords != std::array<int, 2>{0, 0}) kv.emplace_back("Crop coords", pair(crop_coords));
  if (target_size != std::array<int, 2>{0, 0}) kv.emplace_back("Target size", pair(target_size));
  if (negative_original_size != std::array<int, 2>{0, 0})
    kv.emplace_back("Negative original size", pair(negative_original_size));
  if (negative_crop_coords != std::array<int, 2>{0, 0})
    kv.emplace_back("Negative crop coords", pair(negative_crop_coords));
  if (negative_target_size != std::array<int, 2>{0, 0})
    kv.emplace_back("Negative target size", pair(negative_target_size));
  if (!refiner.empty()) {  // A1111's keys
    kv.emplace_back("Refiner", refiner);
    kv.emplace_back("Refiner switch at", num(refiner_switch));
  }
  if (aesthetic_score) kv.emplace_back("Aesthetic score", num(*aesthetic_score));
  if (negative_aesthetic_score) kv.emplace_back("Negative aesthetic score", num(*negative_aesthetic_score));
  kv.emplace_back("Version", "diffuse 0.1.0");
  for (size_t i = 0; i < kv.size(); ++i) o << (i ? ", " : "") << kv[i].first << ": " << quote_if_needed(kv[i].second);
  return o.str();
}

GenerationRequest GenerationRequest::from_infotext(const std::string& text) {
  std::vector<std::string> lines;
  {
    std::istringstream in(text);
    std::string l;
    while (std::getline(in, l)) lines.push_back(l);
  }
  while (!lines.empty() && trim(lines.back()).empty()) lines.pop_back();
  GenerationRequest r;
  std::string params;
  if (!lines.empty() && is_params_line(trim(lines.back()))) {
    params = trim(lines.back());
    lines.pop_back();
  }
  bool in_negative = false;
  std::string pos, neg;
  for (const auto& l : lines) {
    if (l.rfind("Negative prompt:", 0) == 0) {
      in_negative = true;
      neg = trim(l.substr(16));
      continue;
    }
    std::string& dst = in_negative ? neg : pos;
    dst += (dst.empty() ? "" : "\n") + l;
  }
  r.prompt = pos;
  r.negative_prompt = neg;
  auto fail = [](const std::string& key, const std::string& value) {
    throw RequestError("infotext", "cannot read " + key + ": '" + value + "'");
  };
  for (const auto& [key, value] : parse_pairs(params)) {
    double d = 0;
    int64_t i = 0;
    if (key == "Steps") {
      if (!to_small_int(value, i)) fail(key, value);
      r.steps = static_cast<int>(i);
    } else if (key == "Sampler") {
      std::string hint;
      try {
        r.sampler = find_sampler(value, &hint).name;
        if (r.schedule.empty()) r.schedule = hint;
      } catch (const Error&) {
        r.sampler = value;  // validate() names it
      }
    } else if (key == "Schedule type" || key == "Scheduler" || key == "Schedule") {
      std::string s = value;
      for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (s == "automatic") s.clear();
      if (s == "align your steps") s = "align_your_steps";
      if (s == "kl optimal") s = "kl_optimal";
      if (s == "sgm uniform") s = "sgm_uniform";
      r.schedule = s;
    } else if (key == "Sigmas") {
      std::istringstream in(value);
      std::string tok;
      while (std::getline(in, tok, ',')) {
        if (!to_double(trim(tok), d)) fail(key, value);
        r.sigmas.push_back(d);
      }
    } else if (key == "CFG scale" || key == "Autoguidance scale") {
      if (!to_double(value, d)) fail(key, value);
      r.guidance = d;
    } else if (key == "CFG rescale" || key == "CFG Rescale phi") {
      if (!to_double(value, d)) fail(key, value);
      r.guidance_rescale = d;
    } else if (key == "Guidance interval") {
      double lo = 0, hi = 0;
      const size_t comma = value.find(',');
      if (comma == std::string::npos || !to_double(trim(value.substr(0, comma)), lo) ||
          !to_double(trim(value.substr(comma + 1)), hi))
        fail(key, value);
      r.guidance_interval = {lo, hi};
    } else if (key == "Guide model") {
      r.guide_model = value;
    } else if (key == "Guide unconditional") {
      r.guide_unconditional = value == "True" || value == "true";
    } else if (key == "Eta" || key == "Eta DDIM") {
      if (!to_double(value, d)) fail(key, value);
      r.eta = d;
    } else if (key == "S noise") {
      if (!to_double(value, d)) fail(key, value);
      r.s_noise = d;
    } else if (key == "RNG") {
      std::string s = value;
      for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      r.rng = s == "gpu" || s == "nv" ? "philox" : s;  // A1111's GPU / NV noise is Philox
    } else if (key == "Seed") {
      if (!to_int(value, i)) fail(key, value);
      r.seed = i;
    } else if (key == "Size") {
      int w = 0, h = 0;
      char tail = 0;
      if (std::sscanf(value.c_str(), "%dx%d%c", &w, &h, &tail) != 2) fail(key, value);
      r.width = w;
      r.height = h;
    } else if (key == "Model") {
      r.model = value;
    } else if (key == "Class") {
      r.class_label = value;
    } else if (key == "Denoising strength") {
      if (!to_double(value, d)) fail(key, value);
      r.strength = d;
    } else if (key == "Mask blur") {
      if (!to_double(value, d)) fail(key, value);
      r.mask_blur = d;
    } else if (key == "Mask mode") {
      r.mask_invert = value == "Inpaint not masked";
    } else if (key == "Inpaint area") {
      r.inpaint_only_masked = value == "Only masked";
    } else if (key == "Masked area padding") {
      if (!to_small_int(value, i)) fail(key, value);
      r.inpaint_only_masked_padding = static_cast<int>(i);
    } else if (key == "Outpaint") {
      if (std::sscanf(value.c_str(), "%d, %d, %d, %d", &r.outpaint[0], &r.outpaint[1], &r.outpaint[2],
                      &r.outpaint[3]) != 4)
        fail(key, value);
    } else if (key == "Inpaint method") {
      r.inpaint_method = value;
    } else if (key == "RePaint jumps") {
      int a = 0, b = 0;
      char tail = 0;
      if (std::sscanf(value.c_str(), "%dx%d%c", &a, &b, &tail) != 2) fail(key, value);
      r.jump_length = a;
      r.jump_n_sample = b;
    } else if (key == "Invert from") {
      r.invert_from = value;
    } else if (key == "Lora weights") {
      for (const auto& [name, w] : parse_pairs(value)) {
        if (!to_double(w, d)) fail(key, value);
        r.loras.push_back({name, d});
      }
    } else if (key == "Clip skip") {
      if (!to_small_int(value, i)) fail(key, value);
      r.clip_skip = static_cast<int>(std::max<int64_t>(0, i - 1));
    } else if (key == "Dtype") {
      r.dtype = value;
    } else if (key == "Weights") {
      r.weights = value;
    } else if (key == "Original size" || key == "Crop coords" || key == "Target size" ||
               key == "Negative original size" || key == "Negative crop coords" || key == "Negative target size") {
      auto& dst = key == "Original size"            ? r.original_size
                  : key == "Crop coords"            ? r.crop_coords
                  : key == "Target size"            ? r.target_size
                  : key == "Negative original size" ? r.negative_original_size
                  : key == "Negative crop coords"   ? r.negative_crop_coords
                                                    : r.negative_target_size;
      if (std::sscanf(value.c_str(), "%d, %d", &dst[0], &dst[1]) != 2) fail(key, value);
    } else if (key == "Refiner") {
      r.refiner = value;
    } else if (key == "Refiner switch at") {
      if (!to_double(value, d)) fail(key, value);
      r.refiner_switch = d;
    } else if (key == "Aesthetic score" || key == "Negative aesthetic score") {
      if (!to_double(value, d)) fail(key, value);
      (key == "Aesthetic score" ? r.aesthetic_score : r.negative_aesthetic_score) = d;
    } else if (key == "Tiled VAE") {
      if (!to_small_int(value, i)) fail(key, value);
      r.vae_tiling = true;
      r.vae_tile_size = static_cast<int>(i);
    }
  }
  return r;
}

}  // namespace diffuse
