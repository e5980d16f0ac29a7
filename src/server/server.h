#pragma once
// `diffuse serve`: an HTTP server over the library API with A1111-compatible, OpenAI-compatible
// and native job routes (see docs/server.md).
#include <memory>
#include <string>
#include <vector>

#include "diffuse/diffuse.h"
#include "server/jobs.h"

namespace diffuse::server {

struct ServerOptions {
  std::vector<ModelEntry> models;  // the only models clients may name
  std::string host = "127.0.0.1";
  int port = 7860;    // 0 = any free port
  std::string token;  // with a token, every route but /health needs "Authorization: Bearer T"
  size_t max_queue = 16;
  double memory_budget_gb = 0;  // 0 = no limit
  size_t max_body_bytes = 32 << 20;
  RequestLimits limits;
  int preview_every = 1;
  LoadOptions load;  // resolve_guide unset: guide models and refiners are named as `models` name them
};

// Models named by --model paths (name: folder or file name) and the models in --models-dir
// (sub-folders with model_index.json, config.json or superres.json, and .safetensors files).
std::vector<ModelEntry> find_models(const std::vector<std::string>& paths, const std::string& models_dir);

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  // Binds (throws diffuse::Error when it cannot) and returns the port.
  int bind();
  // Serves until stop().
  void run();
  // Stops accepting, cancels the running jobs and returns from run(). Safe from any thread.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuse::server
