// A1111-compatible routes (/sdapi/v1/...): synchronous txt2img / img2img, progress with a live
// preview, interrupt, lists, options (model switching) and png-info. Fields A1111 has and
// diffuse does not (scripts, restore_faces, hires fix, ...) are accepted and ignored.
#include <chrono>
#include <filesystem>

#include "core/base64.h"
#include "server/routes_common.h"

namespace fs = std::filesystem;

namespace diffuse::server {

namespace {

// Reads a field of an A1111 payload when present and of the right type; a wrong type is a 400.
template <class T>
void take(const json& j, const char* key, T& out) {
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    out = j[key].get<T>();
  } catch (const json::exception&) {
    throw RequestError(key, "has the wrong type");
  }
}

// An A1111 txt2img / img2img payload -> GenerationRequest; `model` receives
// override_settings.sd_model_checkpoint. Fields that are absent keep the model's defaults.
GenerationRequest from_a1111(const json& j, std::string& model, bool img2img) {
  if (!j.is_object()) throw RequestError("body", "must be a JSON object");
  GenerationRequest r;
  take(j, "prompt", r.prompt);
  take(j, "negative_prompt", r.negative_prompt);
  int batch = 1, iters = 1;
  if (j.contains("steps")) r.steps = j["steps"].is_number_integer() ? j["steps"].get<int>() : -1;
  if (j.contains("cfg_scale")) {
    double cfg = 0;
    take(j, "cfg_scale", cfg);
    r.guidance = cfg;
  }
  take(j, "batch_size", batch);
  take(j, "n_iter", iters);
  if (j.contains("batch_size") || j.contains("n_iter")) {
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

// A1111 clients send SD-shaped defaults; for class-conditional and unconditional models the
// prompt names the class (or is dropped), and size and negative prompt are ignored.
void fit_to_model(GenerationRequest& r, const ModelInfo& info) {
  if (info.kind == ModelKind::StableDiffusion) return;
  r.negative_prompt.clear();
  r.width = r.height = 0;
  if (info.kind == ModelKind::Unconditional) r.prompt.clear();
}

void run_sync(Context& c, const httplib::Request& req, httplib::Response& res, bool img2img) {
  json j;
  try {
    j = json::parse(req.body);
  } catch (const json::exception& e) {
    return reply_error(res, 400, "body", std::string("malformed JSON: ") + e.what());
  }
  std::string requested;
  GenerationRequest r = from_a1111(j, requested, img2img);
  const std::string model = model_name(c, requested, res);
  if (model.empty()) return;
  fit_to_model(r, c.models.get(model)->info());
  if (!admit(c, model, r, res)) return;
  auto job = submit(c, model, r, res);
  if (!job) return;
  const Job done = c.jobs.wait(job);
  if (reply_unfinished(done, res)) return;
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
    try {
      j = json::parse(req.body);
    } catch (const json::exception& e) {
      return reply_error(res, 400, "body", std::string("malformed JSON: ") + e.what());
    }
    if (!j.is_object()) return reply_error(res, 400, "body", "must be a JSON object");
    if (j.contains("sd_model_checkpoint")) {
      if (!j["sd_model_checkpoint"].is_string())
        return reply_error(res, 400, "sd_model_checkpoint", "must be a string");
      const std::string name = model_name(c, j["sd_model_checkpoint"].get<std::string>(), res);
      if (name.empty()) return;
      c.models.get(name);  // load now, as A1111 does
      c.models.set_current(name);
    }
    reply_json(res, json::object());
  });
  http.Post("/sdapi/v1/png-info", [](const httplib::Request& req, httplib::Response& res) {
    json j;
    try {
      j = json::parse(req.body);
    } catch (const json::exception& e) {
      return reply_error(res, 400, "body", std::string("malformed JSON: ") + e.what());
    }
    if (!j.is_object() || !j.contains("image") || !j["image"].is_string())
      return reply_error(res, 400, "image", "needs image: base64 PNG");
    std::string text;
    try {
      text = png_parameters(base64_decode(j["image"].get<std::string>(), "image"));
    } catch (const Error& e) {
      return reply_error(res, 400, "image", e.what());
    }
    json parsed = json::object();
    if (!text.empty()) parsed = json::parse(GenerationRequest::from_infotext(text).to_json());
    parsed.erase("init_image");
    parsed.erase("mask");
    reply_json(res, {{"info", text}, {"items", {{"parameters", text}}}, {"parameters", parsed}});
  });
}

}  // namespace diffuse::server
