// Native routes: asynchronous jobs over GenerationRequest JSON, with server-sent progress events.
#include "core/base64.h"
#include "server/routes_common.h"

namespace diffuse::server {

namespace {

json job_json(const Job& j, bool with_result) {
  json o = {{"id", j.id},     {"model", j.model}, {"state", to_string(j.state)},
            {"step", j.step}, {"total", j.total}, {"eta_s", j.eta_s}};
  if (!j.error.empty()) o["error"] = {{"field", j.error_field}, {"message", j.error}};
  if (with_result && j.state == JobState::Done) {
    json images = json::array();
    for (const auto& im : j.images) images.push_back(base64_encode(im));
    o["result"] = {
        {"images", images}, {"seeds", j.seeds}, {"infotexts", j.infotexts}, {"request", json::parse(j.ran.to_json())}};
  }
  return o;
}

bool finished(const Job& j) { return j.state != JobState::Queued && j.state != JobState::Running; }

}  // namespace

void add_native_routes(httplib::Server& http, Context& c) {
  http.Post("/api/v1/jobs", [&c](const httplib::Request& req, httplib::Response& res) {
    GenerationRequest r = GenerationRequest::from_json(req.body);  // RequestError -> 400
    const std::string model = model_name(c, r.model, res);
    if (model.empty() || !admit(c, model, r, res)) return;
    auto job = submit(c, model, r, res);
    if (!job) return;
    res.set_header("Location", "/api/v1/jobs/" + job->id);
    reply_json(res, job_json(c.jobs.snapshot(*job), false), 202);
  });
  http.Get(R"(/api/v1/jobs/(\d+))", [&c](const httplib::Request& req, httplib::Response& res) {
    auto job = c.jobs.find(req.matches[1]);
    if (!job) return reply_error(res, 404, "id", "no job " + std::string(req.matches[1]));
    reply_json(res, job_json(c.jobs.snapshot(*job), true));
  });
  http.Delete(R"(/api/v1/jobs/(\d+))", [&c](const httplib::Request& req, httplib::Response& res) {
    auto job = c.jobs.find(req.matches[1]);
    if (!job || !c.jobs.cancel(job->id)) return reply_error(res, 404, "id", "no job " + std::string(req.matches[1]));
    reply_json(res, job_json(c.jobs.snapshot(*job), false));
  });
  http.Get(R"(/api/v1/jobs/(\d+)/events)", [&c](const httplib::Request& req, httplib::Response& res) {
    auto job = c.jobs.find(req.matches[1]);
    if (!job) return reply_error(res, 404, "id", "no job " + std::string(req.matches[1]));
    auto seen = std::make_shared<int>(-1);
    auto preview = std::make_shared<std::string>();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [&c, job, seen, preview](size_t, httplib::DataSink& sink) {
      Job j = c.jobs.snapshot(*job, *seen, 1000);
      if (j.version == *seen) {  // nothing new: a comment keeps the connection alive
        sink.write(": keep-alive\n\n", 14);
        return sink.is_writable();
      }
      *seen = j.version;
      std::string event, data;
      if (!finished(j)) {
        json p = job_json(j, false);
        if (!j.preview_png.empty() && j.preview_png != *preview) {
          *preview = j.preview_png;
          p["preview"] = "data:image/png;base64," + base64_encode(j.preview_png);
        }
        event = "progress";
        data = p.dump();
      } else {
        event = j.state == JobState::Done ? "done" : j.state == JobState::Cancelled ? "cancelled" : "error";
        data = job_json(j, true).dump(-1, ' ', false, json::error_handler_t::replace);
      }
      const std::string msg = "event: " + event + "\ndata: " + data + "\n\n";
      if (!sink.write(msg.data(), msg.size())) return false;
      if (finished(j)) sink.done();
      return true;
    });
  });
  // A1111 parameters text (read from a PNG by the client) -> request fields.
  http.Post("/api/v1/infotext", [](const httplib::Request& req, httplib::Response& res) {
    json j;
    if (!parse_body(req, res, j)) return;
    if (!j.contains("infotext") || !j["infotext"].is_string())
      return reply_error(res, 400, "infotext", "needs infotext: the PNG's parameters text");
    reply_json(res, {{"request", infotext_request(j["infotext"].get<std::string>())}});
  });
  http.Get("/api/v1/models", [&c](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& e : c.models.entries()) {
      json m = {{"name", e.name}, {"current", e.name == c.models.current()}};
      try {
        if (c.models.is_superres(e.name)) {
          const UpscalerInfo& info = c.models.upscaler(e.name)->info();
          m["kind"] = "superres";
          m["scale"] = info.scale;
          m["low_resolution_size"] = info.low_resolution_size;
          m["high_resolution_size"] = info.high_resolution_size;
          m["channels"] = info.channels;
          list.push_back(m);
          continue;
        }
        const ModelInfo& info = c.models.get(e.name)->info();
        m["kind"] = to_string(info.kind);
        m["network"] = info.network;
        if (!info.architecture.empty()) m["architecture"] = info.architecture;  // SD1, SD2, SDXL, ...
        m["latent"] = info.latent;
        m["classes"] = info.classes;
        m["width"] = info.width;
        m["height"] = info.height;
        m["channels"] = info.channels;
        m["size_step"] = info.size_step;
        m["defaults"] = json::parse(info.defaults.to_json());
        m["defaults"].erase("guide_model");  // a path on the server's disk
      } catch (const std::exception& ex) {
        m["error"] = ex.what();
      }
      list.push_back(m);
    }
    json samplers = json::array(), schedules = json::array();
    for (const auto& s : list_samplers()) samplers.push_back({{"name", s.name}, {"summary", s.summary}});
    for (const auto& s : list_schedules()) schedules.push_back({{"name", s.name}, {"summary", s.summary}});
    reply_json(res, {{"models", list}, {"samplers", samplers}, {"schedules", schedules}});
  });
}

}  // namespace diffuse::server
