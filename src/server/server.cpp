#include "server/server.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <sstream>

#include "core/base64.h"
#include "server/routes_common.h"

namespace fs = std::filesystem;

namespace diffuse::server {

void reply_json(httplib::Response& res, const json& j, int status) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void reply_error(httplib::Response& res, int status, const std::string& field, const std::string& message) {
  reply_json(res, {{"error", {{"field", field}, {"message", message}}}}, status);
}

bool parse_body(const httplib::Request& req, httplib::Response& res, json& out) {
  try {
    out = json::parse(req.body);
  } catch (const json::exception& e) {
    reply_error(res, 400, "body", std::string("malformed JSON: ") + e.what());
    return false;
  }
  if (out.is_object()) return true;
  reply_error(res, 400, "body", "must be a JSON object");
  return false;
}

std::string model_name(Context& c, const std::string& requested, httplib::Response& res) {
  const std::string name = requested.empty() ? c.models.current() : requested;
  if (!c.models.has(name)) {
    std::string names;
    for (const auto& e : c.models.entries()) names += (names.empty() ? "" : ", ") + e.name;
    reply_error(res, 400, "model", "no model named '" + name + "' (models: " + names + ")");
    return "";
  }
  return name;
}

bool admit(Context& c, const std::string& model, const GenerationRequest& r, httplib::Response& res) {
  auto errors = check_limits(r, c.options.limits);
  if (errors.empty()) errors = r.validate();
  if (errors.empty()) {
    try {
      errors = c.models.get(model)->validate(r);
    } catch (const RequestError& e) {
      errors = e.errors;
    } catch (const std::exception& e) {
      reply_error(res, 500, "model", e.what());
      return false;
    }
  }
  if (errors.empty()) return true;
  json list = json::array();
  for (const auto& e : errors) list.push_back({{"field", e.field}, {"message", e.message}});
  reply_json(res, {{"error", {{"field", errors[0].field}, {"message", errors[0].message}}}, {"errors", list}}, 400);
  return false;
}

std::shared_ptr<Job> submit(Context& c, const std::string& model, const GenerationRequest& r, httplib::Response& res) {
  auto job = c.jobs.submit(model, r);
  if (!job) {
    res.set_header("Retry-After", "5");
    reply_error(res, 429, "queue", "the queue is full; retry later");
  }
  return job;
}

json infotext_request(const std::string& text) {
  json parsed = json::object();
  if (!text.empty()) parsed = json::parse(GenerationRequest::from_infotext(text).to_json());
  parsed.erase("init_image");
  parsed.erase("mask");
  return parsed;
}

bool reply_unfinished(const Job& j, httplib::Response& res) {
  if (j.state == JobState::Done) return false;
  if (j.state == JobState::Cancelled)
    reply_error(res, 409, "job", "cancelled");
  else
    reply_error(res, j.bad_request ? 400 : 500, j.error_field.empty() ? "job" : j.error_field, j.error);
  return true;
}

std::vector<ModelEntry> find_models(const std::vector<std::string>& paths, const std::string& models_dir) {
  std::vector<ModelEntry> out;
  auto add = [&](const fs::path& p) {
    std::string name = p.filename().string();
    if (name.empty()) name = p.parent_path().filename().string();
    if (p.extension() == ".safetensors") name = p.stem().string();
    for (const auto& e : out)
      if (e.name == name) throw Error("models " + p.string() + ": a model named '" + name + "' is already served");
    out.push_back({name, p.string()});
  };
  for (const auto& p : paths) {
    if (!fs::exists(p)) throw Error("models " + p + ": not found");
    add(p);
  }
  if (!models_dir.empty()) {
    if (!fs::is_directory(models_dir)) throw Error("models_dir " + models_dir + ": no such folder");
    std::vector<fs::path> found;
    for (const auto& d : fs::directory_iterator(models_dir)) {
      const fs::path p = d.path();
      const bool folder = d.is_directory() && (fs::exists(p / "model_index.json") || fs::exists(p / "config.json") ||
                                               fs::exists(p / "superres.json"));
      const bool file = d.is_regular_file() && p.extension() == ".safetensors";
      if (folder || file) found.push_back(p);
    }
    std::sort(found.begin(), found.end());
    for (const auto& p : found) add(p);
  }
  if (out.empty()) throw Error("models: give at least one model (or models_dir)");
  return out;
}

namespace {

// Clients name guide models and refiners as they name models: by the names this server lists.
ServerOptions resolve_names(ServerOptions o) {
  if (!o.load.resolve_guide) {
    const auto entries = o.models;
    o.load.resolve_guide = [entries](const std::string& name) {
      for (const auto& e : entries)
        if (e.name == name) return e.path;
      return std::string();
    };
  }
  return o;
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  ModelRegistry models;
  JobQueue jobs;
  Context ctx;
  httplib::Server http;
  std::atomic<bool> stopped{false};

  explicit Impl(ServerOptions o)
      : options(resolve_names(std::move(o))),
        models(options.models, options.memory_budget_gb, options.load),
        jobs(models, options.max_queue, options.preview_every),
        ctx{options, models, jobs} {}

  void routes() {
    http.set_payload_max_length(options.max_body_bytes);
    http.set_read_timeout(30, 0);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      const bool page = (req.method == "GET" || req.method == "HEAD") && is_ui_path(req.path);
      if (options.token.empty() || req.path == "/health" || page) return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") != "Bearer " + options.token) {
        res.set_header("WWW-Authenticate", "Bearer");
        reply_error(res, 401, "Authorization", "missing or wrong bearer token");
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string msg = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const RequestError& e) {
        reply_error(res, 400, e.errors.empty() ? "body" : e.errors[0].field,
                    e.errors.empty() ? e.what() : e.errors[0].message);
        return;
      } catch (const Error& e) {  // bad input found while reading the request
        reply_error(res, 400, field_of(e.what()), e.what());
        return;
      } catch (const std::exception& e) {
        msg = e.what();
      } catch (...) {
      }
      reply_error(res, 500, "server", msg);
    });
    http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404) reply_error(res, 404, "path", "no route " + req.method + " " + req.path);
      if (res.status == 413) reply_error(res, 413, "body", "the request body is too large");
    });
    http.Get("/health", [](const httplib::Request&, httplib::Response& res) { reply_json(res, {{"status", "ok"}}); });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      std::ostringstream o;
      o << "# HELP diffuse_queue_length Jobs waiting to run.\n# TYPE diffuse_queue_length gauge\n"
        << "diffuse_queue_length " << jobs.queued() << "\n";
      o << "# HELP diffuse_jobs Jobs by state.\n# TYPE diffuse_jobs gauge\n";
      for (const auto& [state, n] : jobs.counts()) o << "diffuse_jobs{state=\"" << state << "\"} " << n << "\n";
      o << "# HELP diffuse_model_loaded Models in memory.\n# TYPE diffuse_model_loaded gauge\n";
      const auto loaded = models.loaded();
      for (const auto& e : models.entries())
        o << "diffuse_model_loaded{model=\"" << e.name << "\"} "
          << (std::find(loaded.begin(), loaded.end(), e.name) != loaded.end()) << "\n";
      o << "# HELP diffuse_step_seconds_total Seconds spent in sampling steps.\n"
        << "# TYPE diffuse_step_seconds_total counter\ndiffuse_step_seconds_total " << jobs.step_seconds() << "\n";
      o << "# HELP diffuse_load_seconds_total Seconds spent loading models.\n"
        << "# TYPE diffuse_load_seconds_total counter\ndiffuse_load_seconds_total " << models.load_seconds() << "\n";
      res.set_content(o.str(), "text/plain; version=0.0.4");
    });
    add_ui_routes(http);
    add_native_routes(http, ctx);
    add_edit_routes(http, ctx);
    add_a1111_routes(http, ctx);
    add_openai_routes(http, ctx);
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) { impl_->routes(); }

Server::~Server() { stop(); }

int Server::bind() {
  auto& o = impl_->options;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) throw Error("host " + o.host + ": cannot bind");
  } else if (!impl_->http.bind_to_port(o.host, port)) {
    throw Error("port " + std::to_string(port) + ": cannot bind " + o.host + ":" + std::to_string(port));
  }
  return port;
}

void Server::run() { impl_->http.listen_after_bind(); }

void Server::stop() {
  if (impl_->stopped.exchange(true)) return;
  impl_->jobs.shutdown();
  impl_->http.stop();
}

}  // namespace diffuse::server
