// OpenAI-compatible image routes: /v1/images/generations, /v1/images/edits (multipart, a mask
// whose fully transparent pixels mark the area to repaint) and /v1/models.
#include <ctime>

#include "core/base64.h"
#include "core/image.h"
#include "server/routes_common.h"

namespace diffuse::server {

namespace {

// "WxH" or "auto" (the model's size).
void parse_size(const std::string& size, GenerationRequest& r) {
  if (size.empty() || size == "auto") return;
  int w = 0, h = 0;
  char tail = 0;
  if (std::sscanf(size.c_str(), "%dx%d%c", &w, &h, &tail) != 2 || w <= 0 || h <= 0)
    throw RequestError("size", "'" + size + "': expected WIDTHxHEIGHT or auto");
  r.width = w;
  r.height = h;
}

void reply_images(Context& c, const std::string& model, const GenerationRequest& r, httplib::Response& res) {
  GenerationRequest q = r;
  const ModelInfo& info = c.models.get(model)->info();
  if (info.kind != ModelKind::StableDiffusion) {  // the prompt names the class, or is dropped
    if (info.kind == ModelKind::Unconditional) q.prompt.clear();
    if (q.width == info.width && q.height == info.height) q.width = q.height = 0;
  }
  if (!admit(c, model, q, res)) return;
  auto job = submit(c, model, q, res);
  if (!job) return;
  const Job done = c.jobs.wait(job);
  if (reply_unfinished(done, res)) return;
  json data = json::array();
  for (const auto& im : done.images) data.push_back({{"b64_json", base64_encode(im)}});
  reply_json(res, {{"created", static_cast<int64_t>(std::time(nullptr))}, {"data", data}});
}

void common_fields(const std::string& response_format, const std::string& output_format, GenerationRequest& r) {
  if (!response_format.empty() && response_format != "b64_json")
    throw RequestError("response_format", "only b64_json is supported (the server keeps no image URLs)");
  if (!output_format.empty()) {
    if (output_format != "png" && output_format != "jpeg") throw RequestError("output_format", "must be png or jpeg");
    r.output_format = output_format;
  }
}

}  // namespace

void add_openai_routes(httplib::Server& http, Context& c) {
  http.Post("/v1/images/generations", [&c](const httplib::Request& req, httplib::Response& res) {
    json j;
    if (!parse_body(req, res, j)) return;
    auto str = [&](const char* key) {
      if (!j.contains(key) || j[key].is_null()) return std::string();
      if (!j[key].is_string()) throw RequestError(key, "must be a string");
      return j[key].get<std::string>();
    };
    GenerationRequest r;
    r.prompt = str("prompt");
    if (j.contains("n") && !j["n"].is_null()) {
      if (!j["n"].is_number_integer() || j["n"].get<int64_t>() < 1 || j["n"].get<int64_t>() > 1000000)
        throw RequestError("n", "must be a positive integer");
      r.n = j["n"].get<int>();
    } else {
      r.n = 1;
    }
    parse_size(str("size"), r);
    common_fields(str("response_format"), str("output_format"), r);
    const std::string model = model_name(c, str("model"), res);
    if (model.empty()) return;
    reply_images(c, model, r, res);
  });
  http.Post("/v1/images/edits", [&c](const httplib::Request& req, httplib::Response& res) {
    if (!req.is_multipart_form_data()) return reply_error(res, 400, "body", "must be multipart/form-data");
    auto field = [&](const char* key) { return req.has_file(key) ? req.get_file_value(key).content : std::string(); };
    GenerationRequest r;
    std::string image = field("image");
    if (image.empty()) image = field("image[]");
    if (image.empty()) return reply_error(res, 400, "image", "needs an image file");
    r.prompt = field("prompt");
    const std::string n = field("n");
    if (!n.empty()) {
      char* end = nullptr;
      const long v = std::strtol(n.c_str(), &end, 10);
      if (!end || *end || v < 1 || v > 1000) return reply_error(res, 400, "n", "must be a positive integer");
      r.n = static_cast<int>(v);
    } else {
      r.n = 1;
    }
    parse_size(field("size"), r);
    common_fields(field("response_format"), field("output_format"), r);
    // The image without alpha; the mask (or, without one, the image's own alpha): fully
    // transparent pixels are repainted.
    Image img;
    try {
      img = decode_image(image, "image");
    } catch (const Error& e) {
      return reply_error(res, 400, "image", e.what());
    }
    r.init_image = encode_png(convert_channels(img, 3));
    const std::string mask_file = field("mask");
    Image alpha_src = img;
    if (!mask_file.empty()) {
      try {
        alpha_src = decode_image(mask_file, "mask");
      } catch (const Error& e) {
        return reply_error(res, 400, "mask", e.what());
      }
      if (alpha_src.width != img.width || alpha_src.height != img.height)
        return reply_error(res, 400, "mask", "must have the image's size");
      if (alpha_src.channels != 4) return reply_error(res, 400, "mask", "must be a PNG with an alpha channel");
    }
    if (alpha_src.channels == 4) {
      Image m{img.width, img.height, 1, std::vector<uint8_t>(static_cast<size_t>(img.width) * img.height)};
      for (size_t i = 0; i < m.data.size(); ++i) m.data[i] = alpha_src.data[i * 4 + 3] == 0 ? 255 : 0;
      r.mask = encode_png(m);
      r.strength = 1.0;
    }
    if (r.width == 0) {
      r.width = img.width;
      r.height = img.height;
    }
    const std::string model = model_name(c, field("model"), res);
    if (model.empty()) return;
    reply_images(c, model, r, res);
  });
  http.Get("/v1/models", [&c](const httplib::Request&, httplib::Response& res) {
    json data = json::array();
    for (const auto& e : c.models.entries())
      data.push_back({{"id", e.name}, {"object", "model"}, {"created", 0}, {"owned_by", "diffuse"}});
    reply_json(res, {{"object", "list"}, {"data", data}});
  });
}

}  // namespace diffuse::server
