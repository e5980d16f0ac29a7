// Native image routes over the library's Upscaler, denoise() and animate(): synchronous requests
// that answer with the encoded image or animation (parameters in its metadata and in headers).
#include <algorithm>
#include <initializer_list>
#include <optional>
#include <sstream>

#include "core/base64.h"
#include "core/image.h"
#include "server/routes_common.h"

namespace diffuse::server {

namespace {

// Strict field readers: an unknown field or a wrong type throws RequestError naming the field.
void only_fields(const json& j, std::initializer_list<const char*> known) {
  for (const auto& item : j.items())
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return item.key() == k; }))
      throw RequestError(item.key(), "unknown field");
}

bool present(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

std::optional<std::string> text_field(const json& j, const char* key) {
  if (!present(j, key)) return std::nullopt;
  if (!j[key].is_string()) throw RequestError(key, "must be a string");
  return j[key].get<std::string>();
}

std::optional<int64_t> int_field(const json& j, const char* key) {
  if (!present(j, key)) return std::nullopt;
  if (!j[key].is_number_integer()) throw RequestError(key, "must be an integer");
  return j[key].get<int64_t>();
}

std::optional<int> small_int_field(const json& j, const char* key) {
  auto v = int_field(j, key);
  if (!v) return std::nullopt;
  if (*v < -1000000000LL || *v > 1000000000LL) throw RequestError(key, "out of range");
  return static_cast<int>(*v);
}

std::optional<double> number_field(const json& j, const char* key) {
  if (!present(j, key)) return std::nullopt;
  if (!j[key].is_number()) throw RequestError(key, "must be a number");
  return j[key].get<double>();
}

std::optional<bool> bool_field(const json& j, const char* key) {
  if (!present(j, key)) return std::nullopt;
  if (!j[key].is_boolean()) throw RequestError(key, "must be true or false");
  return j[key].get<bool>();
}

void at_most(const char* field, int64_t value, int64_t limit) {
  if (value > limit)
    throw RequestError(field, std::to_string(value) + " is over this server's limit of " + std::to_string(limit));
}

// The "image" field (base64 or a data URL): its bytes, decoded once to check the server's limits.
std::string image_field(const json& j, const RequestLimits& limits, Image* decoded = nullptr) {
  auto text = text_field(j, "image");
  if (!text) throw RequestError("image", "needs image: PNG or JPEG bytes as base64 or a data URL");
  std::string bytes = base64_decode(*text, "image");
  Image im = decode_image(bytes, "image");
  at_most("image", std::max(im.width, im.height), limits.max_side);
  at_most("image", static_cast<int64_t>(im.width) * im.height, limits.max_pixels);
  if (decoded) *decoded = std::move(im);
  return bytes;
}

std::string format_number(double x) {
  std::ostringstream o;
  o << x;
  return o.str();
}

// Resolves the model a request names ("" = `fallback`); replies 400 and returns "" when unknown.
std::string edit_model(Context& c, const json& j, const std::string& fallback, httplib::Response& res) {
  auto name = text_field(j, "model");
  return model_name(c, name && !name->empty() ? *name : fallback, res);
}

void upscale_route(Context& c, const httplib::Request& req, httplib::Response& res) {
  json j;
  if (!parse_body(req, res, j)) return;
  only_fields(j, {"model", "image", "scale", "sampler", "schedule", "steps", "seed", "rng", "eta", "s_noise",
                  "tile_overlap", "convert_channels"});
  std::string first_superres;
  for (const auto& e : c.models.entries())
    if (first_superres.empty() && c.models.is_superres(e.name)) first_superres = e.name;
  const std::string model = edit_model(c, j, first_superres, res);
  if (model.empty()) return;
  auto up = c.models.upscaler(model);  // RequestError for other models -> 400

  const RequestLimits& limits = c.options.limits;
  UpscaleRequest r;
  Image im;
  image_field(j, limits, &im);
  r.image = to_tensor(im);
  r.convert_channels = bool_field(j, "convert_channels").value_or(false);
  r.scale = small_int_field(j, "scale").value_or(0);
  r.sampler = text_field(j, "sampler").value_or(r.sampler);
  r.schedule = text_field(j, "schedule").value_or("");
  r.steps = small_int_field(j, "steps").value_or(r.steps);
  r.seed = int_field(j, "seed").value_or(r.seed);
  r.rng = text_field(j, "rng").value_or(r.rng);
  r.eta = number_field(j, "eta");
  r.s_noise = number_field(j, "s_noise").value_or(r.s_noise);
  r.tile_overlap = small_int_field(j, "tile_overlap").value_or(r.tile_overlap);
  at_most("steps", r.steps, limits.max_steps);
  const int scale = up->info().scale;
  at_most("image", static_cast<int64_t>(std::max(im.width, im.height)) * scale, limits.max_side);
  at_most("image", static_cast<int64_t>(im.width) * im.height * scale * scale, limits.max_pixels);

  UpscaleResult out = up->upscale(r);  // RequestError -> 400 naming the field
  res.set_header("X-Diffuse-Seed", std::to_string(out.request.seed));
  res.set_header("X-Diffuse-Scale", std::to_string(out.request.scale));
  res.set_content(encode_image(out.image, "png", out.infotext), "image/png");
}

void denoise_route(Context& c, const httplib::Request& req, httplib::Response& res) {
  json j;
  if (!parse_body(req, res, j)) return;
  only_fields(
      j, {"model", "image", "sigma", "mode", "class", "sampler", "schedule", "steps", "seed", "rng", "eta", "s_noise"});
  const std::string model = edit_model(c, j, "", res);
  if (model.empty()) return;
  const RequestLimits& limits = c.options.limits;
  DenoiseRequest r;
  r.image = image_field(j, limits);
  if (present(j, "sigma")) {
    const json& s = j["sigma"];
    if (s.is_number())
      r.sigma = s.get<double>();
    else if (!(s.is_string() && s.get<std::string>() == "auto"))
      throw RequestError("sigma", "must be a number or \"auto\"");
  }
  r.mode = text_field(j, "mode").value_or(r.mode);
  r.class_label = text_field(j, "class").value_or("");
  r.sampler = text_field(j, "sampler").value_or("");
  r.schedule = text_field(j, "schedule").value_or("");
  r.steps = small_int_field(j, "steps");
  r.seed = int_field(j, "seed").value_or(r.seed);
  r.rng = text_field(j, "rng").value_or(r.rng);
  r.eta = number_field(j, "eta");
  r.s_noise = number_field(j, "s_noise").value_or(r.s_noise);
  if (r.steps) at_most("steps", *r.steps, limits.max_steps);

  auto m = c.models.get(model);  // RequestError for super-resolution models -> 400
  DenoiseResult out = denoise(*m, r);
  res.set_header("X-Diffuse-Sigma", format_number(out.sigma));
  res.set_header("X-Diffuse-Estimated-Sigma", format_number(out.estimated_sigma));
  res.set_header("X-Diffuse-Sigma-Estimated", out.sigma_estimated ? "true" : "false");
  res.set_header("X-Diffuse-Seed", std::to_string(out.request.seed));
  res.set_content(encode_image(out.image, "png", out.infotext), "image/png");
}

void animate_route(Context& c, const httplib::Request& req, httplib::Response& res) {
  json j;
  if (!parse_body(req, res, j)) return;
  // The animation's own fields; the sampling fields go through GenerationRequest's strict parser.
  static const char* const kSampling[] = {"class", "sampler", "schedule", "sigmas",  "steps",
                                          "seed",  "rng",     "eta",      "s_noise", "guidance"};
  json generation = json::object();
  for (const char* k : kSampling)
    if (j.contains(k)) generation[k] = j[k];
  only_fields(j, {"model", "mode", "frames", "fps", "format", "frame_size", "captions", "to_class", "to_seed", "class",
                  "sampler", "schedule", "sigmas", "steps", "seed", "rng", "eta", "s_noise", "guidance"});
  const std::string model = edit_model(c, j, "", res);
  if (model.empty()) return;
  const RequestLimits& limits = c.options.limits;
  AnimationRequest r;
  r.generation = GenerationRequest::from_json(generation.dump());
  r.mode = text_field(j, "mode").value_or(r.mode);
  r.frames = small_int_field(j, "frames");
  r.fps = number_field(j, "fps").value_or(r.fps);
  r.format = text_field(j, "format").value_or(r.format);
  r.frame_size = small_int_field(j, "frame_size").value_or(r.frame_size);
  r.captions = bool_field(j, "captions").value_or(r.captions);
  r.to_class = text_field(j, "to_class").value_or("");
  r.to_seed = int_field(j, "to_seed");
  auto limit_errors = check_limits(r.generation, limits);
  if (!limit_errors.empty()) throw RequestError(limit_errors);
  if (r.frames) at_most("frames", *r.frames, limits.max_n);
  at_most("frame_size", r.frame_size, limits.max_side);

  auto m = c.models.get(model);  // RequestError for super-resolution models -> 400
  AnimationResult out = animate(*m, r);
  res.set_header("X-Diffuse-Frames", std::to_string(out.frames));
  res.set_header("X-Diffuse-Seed", std::to_string(out.request.generation.seed));
  res.set_content(out.bytes, out.request.format == "webp" ? "image/webp" : "image/gif");
}

}  // namespace

void add_edit_routes(httplib::Server& http, Context& c) {
  http.Post("/api/v1/upscale",
            [&c](const httplib::Request& req, httplib::Response& res) { upscale_route(c, req, res); });
  http.Post("/api/v1/denoise",
            [&c](const httplib::Request& req, httplib::Response& res) { denoise_route(c, req, res); });
  http.Post("/api/v1/animate",
            [&c](const httplib::Request& req, httplib::Response& res) { animate_route(c, req, res); });
}

}  // namespace diffuse::server
