// A1111-compatible routes (/sdapi/v1/...): synchronous txt2img / img2img, progress with a live
// preview, interrupt, lists, options (model switching) and png-info. Fields A1111 has and
// diffuse does not (scripts, restore_faces, hires fix, ...) are accepted and ignored.
#include <chrono>
#include <filesystem>

#include "core/base64.h"
#include "server/a1111_request.h"
#include "server/routes_common.h"

namespace fs = std::filesystem;

namespace diffuse::server {

namespace {

// A1111 clients send SD-shaped defaults; for class-conditional and unconditional models the
// prompt names the class (or is dropped), and size and negative prompt are ignored.
void fit_to_model(GenerationRequest& r, const ModelInfo& info) {
  if (info.kind == ModelKind::StableDiffusion) return;
  r.negative_prompt.clear();
  r.width = r.height = 0;
  if (info.kind == ModelKind::Unconditional) r.prompt.clear();
}

// A checkpoint as A1111 clients name it: a served model's name, or the title A1111 lists
// ("name.safetensors [hash]"); "" when this server has no such model.
std::string checkpoint(Context& c, std::string name) {
  if (c.models.has(name)) return name;
  const size_t bracket = name.rfind(" [");
  if (bracket != std::string::npos && name.back() == ']') name.erase(bracket);
  if (c.models.has(name)) return name;
  for (const std::string ext : {".safetensors", ".ckpt"})
    if (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0 &&
        c.models.has(name.substr(0, name.size() - ext.size())))
      return name.substr(0, name.size() - ext.size());
  return "";
}

// The model a request names: its checkpoint, else the reply model_name gives for an unknown one.
std::string a1111_model(Context& c, const std::string& requested, httplib::Response& res) {
  const std::string found = requested.empty() ? "" : checkpoint(c, requested);
  return model_name(c, found.empty() ? requested : found, res);
}

// Errors name the A1111 fields: refiner_checkpoint and refiner_switch_at for the library's
// refiner and refiner_switch.
void name_a1111_fields(httplib::Response& res) {
  json j = json::parse(res.body, nullptr, false);
  if (!j.is_object() || !j.contains("error")) return;
  auto rename = [](json& e) {
    if (!e.is_object() || !e.contains("field")) return;
    if (e["field"] == "refiner") e["field"] = "refiner_checkpoint";
    if (e["field"] == "refiner_switch") e["field"] = "refiner_switch_at";
  };
  rename(j["error"]);
  if (j.contains("errors") && j["errors"].is_array())
    for (auto& e : j["errors"]) rename(e);
  reply_json(res, j, res.status);
}

void run_sync(Context& c, const httplib::Request& req, httplib::Response& res, bool img2img) {
  json j;
  if (!parse_body(req, res, j)) return;
  std::string requested;
  GenerationRequest r = from_a1111(j, requested, img2img);
  const std::string model = a1111_model(c, requested, res);
  if (model.empty()) return;
  if (!r.refiner.empty()) {
    const std::string refiner = checkpoint(c, r.refiner);
    if (refiner.empty()) {
      std::string names;
      for (const auto& e : c.models.entries()) names += (names.empty() ? "" : ", ") + e.name;
      return reply_error(res, 400, "refiner_checkpoint", "no model named '" + r.refiner + "' (models: " + names + ")");
    }
    r.refiner = refiner;
  }
  fit_to_model(r, c.models.get(model)->info());
  if (!admit(c, model, r, res)) return name_a1111_fields(res);
  auto job = submit(c, model, r, res);
  if (!job) return;
  const Job done = c.jobs.wait(job);
  if (reply_unfinished(done, res)) return name_a1111_fields(res);
  json images = json::array();
  for (const auto& im : done.images) images.push_back(base64_encode(im));
  const GenerationRequest& ran = done.ran;
  json info = {{"prompt", ran.prompt},
               {"negative_prompt", ran.negative_prompt},
               {"seed", ran.seed},
               {"all_seeds", done.seeds},
               {"subseed", -1},
               {"all_subseeds", json::array()},
               {"sampler_name", ran.sampler},
               {"scheduler", ran.schedule},
               {"cfg_scale", ran.guidance.value_or(0)},
               {"steps", ran.steps.value_or(0)},
               {"width", done.images.empty() ? 0 : ran.width},
               {"height", done.images.empty() ? 0 : ran.height},
               {"sd_model_name", model},
               {"batch_size", ran.batch_size.value_or(1)},
               {"infotexts", done.infotexts},
               {"job_timestamp", std::to_string(std::time(nullptr))}};
  j.erase("init_images");
  j.erase("mask");
  reply_json(res, {{"images", images}, {"parameters", j}, {"info", info.dump()}});
}

}  // namespace

void add_a1111_routes(httplib::Server& http, Context& c) {
  http.Post("/sdapi/v1/txt2img",
            [&c](const httplib::Request& req, httplib::Response& res) { run_sync(c, req, res, false); });
  http.Post("/sdapi/v1/img2img",
            [&c](const httplib::Request& req, httplib::Response& res) { run_sync(c, req, res, true); });
  http.Get("/sdapi/v1/progress", [&c](const httplib::Request&, httplib::Response& res) {
    auto job = c.jobs.running();
    json state = {{"skipped", false},   {"interrupted", false}, {"job", ""}, {"job_count", c.jobs.queued()},
                  {"sampling_step", 0}, {"sampling_steps", 0}};
    json out = {{"progress", 0.0}, {"eta_relative", 0.0}, {"current_image", nullptr}, {"textinfo", nullptr}};
    if (job) {
      const Job j = c.jobs.snapshot(*job);
      state["job"] = j.id;
      state["job_count"] = c.jobs.queued() + 1;
      state["sampling_step"] = j.step;
      state["sampling_steps"] = j.total;
      state["interrupted"] = j.cancel.cancelled();
      out["progress"] = j.total > 0 ? static_cast<double>(j.step) / j.total : 0.0;
      out["eta_relative"] = j.eta_s;
      if (!j.preview_png.empty()) out["current_image"] = base64_encode(j.preview_png);
    }
    out["state"] = state;
    reply_json(res, out);
  });
  http.Post("/sdapi/v1/interrupt", [&c](const httplib::Request&, httplib::Response& res) {
    c.jobs.cancel_running();
    reply_json(res, json::object());
  });
  http.Post("/sdapi/v1/skip", [&c](const httplib::Request&, httplib::Response& res) {
    c.jobs.cancel_running();
    reply_json(res, json::object());
  });
  http.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& s : list_samplers()) {
      json aliases = json::array({s.name});
      list.push_back({{"name", s.a1111.empty() ? s.name : s.a1111}, {"aliases", aliases}, {"options", json::object()}});
    }
    reply_json(res, list);
  });
  http.Get("/sdapi/v1/schedulers", [](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& s : list_schedules())
      list.push_back({{"name", s.name}, {"label", s.name}, {"aliases", nullptr}, {"need_inner_model", false}});
    reply_json(res, list);
  });
  http.Get("/sdapi/v1/sd-models", [&c](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& e : c.models.entries())
      list.push_back({{"title", e.name},
                      {"model_name", e.name},
                      {"hash", nullptr},
                      {"sha256", nullptr},
                      {"filename", e.name},
                      {"config", nullptr}});
    reply_json(res, list);
  });
  http.Get("/sdapi/v1/loras", [&c](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    const std::string& dir = c.options.load.lora_dir;
    std::vector<std::string> names;
    if (!dir.empty() && fs::is_directory(dir))
      for (const auto& d : fs::directory_iterator(dir))
        if (d.path().extension() == ".safetensors") names.push_back(d.path().stem().string());
    std::sort(names.begin(), names.end());
    for (const auto& n : names) list.push_back({{"name", n}, {"alias", n}, {"metadata", json::object()}});
    reply_json(res, list);
  });
  http.Get("/sdapi/v1/options", [&c](const httplib::Request&, httplib::Response& res) {
    reply_json(res, {{"sd_model_checkpoint", c.models.current()}, {"CLIP_stop_at_last_layers", 1}});
  });
  http.Post("/sdapi/v1/options", [&c](const httplib::Request& req, httplib::Response& res) {
    json j;
    if (!parse_body(req, res, j)) return;
    if (j.contains("sd_model_checkpoint")) {
      if (!j["sd_model_checkpoint"].is_string())
        return reply_error(res, 400, "sd_model_checkpoint", "must be a string");
      const std::string name = a1111_model(c, j["sd_model_checkpoint"].get<std::string>(), res);
      if (name.empty()) return;
      c.models.get(name);  // load now, as A1111 does
      c.models.set_current(name);
    }
    reply_json(res, json::object());
  });
  http.Post("/sdapi/v1/png-info", [](const httplib::Request& req, httplib::Response& res) {
    json j;
    if (!parse_body(req, res, j)) return;
    if (!j.contains("image") || !j["image"].is_string())
      return reply_error(res, 400, "image", "needs image: base64 PNG");
    std::string text;
    try {
      text = png_parameters(base64_decode(j["image"].get<std::string>(), "image"));
    } catch (const Error& e) {
      return reply_error(res, 400, "image", e.what());
    }
    reply_json(res, {{"info", text}, {"items", {{"parameters", text}}}, {"parameters", infotext_request(text)}});
  });
}

}  // namespace diffuse::server
