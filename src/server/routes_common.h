#pragma once
// Helpers shared by the route files of the server (not part of the public API).
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <string>

#include "server/jobs.h"
#include "server/server.h"

namespace diffuse::server {

using json = nlohmann::json;

struct Context {
  ServerOptions& options;
  ModelRegistry& models;
  JobQueue& jobs;
};

// {"error": {"field": F, "message": M}} with `status`.
void reply_error(httplib::Response& res, int status, const std::string& field, const std::string& message);
void reply_json(httplib::Response& res, const json& j, int status = 200);
// Parses a JSON object body into `out`; replies 400 naming the body and returns false otherwise.
bool parse_body(const httplib::Request& req, httplib::Response& res, json& out);
// Resolves the model a request names ("" = the current one); replies 400 and returns "" when unknown.
std::string model_name(Context& c, const std::string& requested, httplib::Response& res);
// Checks limits and the model's own validation; replies 400 (first problem's field) and returns
// false on a problem. Also replies 400 for a model that fails to load.
bool admit(Context& c, const std::string& model, const GenerationRequest& r, httplib::Response& res);
// Submits; replies 429 with Retry-After when the queue is full, 503 while stopping.
std::shared_ptr<Job> submit(Context& c, const std::string& model, const GenerationRequest& r, httplib::Response& res);
// Replies with the error of a failed job (400 for request problems, 500 otherwise), or 409 for a
// cancelled one; returns false when the job is done.
bool reply_unfinished(const Job& j, httplib::Response& res);

// The request fields of A1111 parameters text, as native request JSON (images left out).
json infotext_request(const std::string& text);

// The web UI's paths (/ and /ui/...): served without the token, they hold no data.
bool is_ui_path(const std::string& path);
void add_ui_routes(httplib::Server& http);
void add_native_routes(httplib::Server& http, Context& c);
// POST /api/v1/upscale, /api/v1/denoise and /api/v1/animate (routes_edit.cpp).
void add_edit_routes(httplib::Server& http, Context& c);
void add_a1111_routes(httplib::Server& http, Context& c);
void add_openai_routes(httplib::Server& http, Context& c);

}  // namespace diffuse::server
