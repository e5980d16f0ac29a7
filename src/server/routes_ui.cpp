// The web UI: static files compiled into the binary, served at / (index.html) and /ui/<file>
// with a strict Content-Security-Policy (everything from this server; images also from data:
// and blob: URLs) and ETag revalidation.
#include <cinttypes>
#include <cstdio>

#include "server/routes_common.h"
#include "server/ui_assets.h"

namespace diffuse::server {

namespace {

constexpr const char* kCsp =
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

const UiAsset* find_asset(const std::string& path) {
  for (size_t i = 0; i < kUiAssetCount; ++i)
    if (path == kUiAssets[i].path) return &kUiAssets[i];
  return nullptr;
}

std::string etag(const UiAsset& a) {  // FNV-1a of the bytes
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < a.size; ++i) h = (h ^ a.data[i]) * 1099511628211ULL;
  char buf[24];
  std::snprintf(buf, sizeof buf, "\"%016" PRIx64 "\"", h);
  return buf;
}

void serve(const UiAsset& a, const httplib::Request& req, httplib::Response& res) {
  res.set_header("Content-Security-Policy", kCsp);
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Cache-Control", "no-cache");  // revalidate: the files change with the binary
  const std::string tag = etag(a);
  res.set_header("ETag", tag);
  if (req.get_header_value("If-None-Match") == tag) {
    res.status = 304;
    return;
  }
  res.set_content(reinterpret_cast<const char*>(a.data), a.size, a.type);
}

}  // namespace

bool is_ui_path(const std::string& path) { return path == "/" || path.rfind("/ui/", 0) == 0; }

void add_ui_routes(httplib::Server& http) {
  http.Get("/",
           [](const httplib::Request& req, httplib::Response& res) { serve(*find_asset("index.html"), req, res); });
  http.Get(R"(/ui/(.*))", [](const httplib::Request& req, httplib::Response& res) {
    const UiAsset* a = find_asset(req.matches[1]);
    if (!a) return reply_error(res, 404, "path", "no file " + req.path);
    serve(*a, req, res);
  });
}

}  // namespace diffuse::server
