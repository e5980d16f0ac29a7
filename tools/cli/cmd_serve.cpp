// diffuse serve: the HTTP server (src/server) over the models given on the command line.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <thread>

#include "commands.h"
#include "core/error.h"
#include "server/server.h"

namespace cmd_serve {

struct Args {
  std::vector<std::string> models;
  std::string models_dir, device = "cpu", dtype = "auto", weights;
  diffuse::server::ServerOptions o;
  int threads = 0;
};

void run(Args& a) {
  diffuse::cli::apply_threads(a.threads);
  a.o.models = diffuse::server::find_models(a.models, a.models_dir);
  a.o.load.device = a.device;
  a.o.load.dtype = a.dtype;
  a.o.load.weights = a.weights;
  a.o.load.allow_paths = false;  // clients name models, guides, refiners and LoRAs; never files
  // SIGTERM / SIGINT: stop accepting, cancel the running job, exit 0. Blocked in every thread;
  // one thread waits for them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  diffuse::server::Server server(a.o);
  const int port = server.bind();
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&set, &sig);
    std::fprintf(stderr, "diffuse serve: signal %d, stopping\n", sig);
    server.stop();
  });
  std::printf("diffuse serve: http://%s:%d (%zu model%s)\n", a.o.host.c_str(), port, a.o.models.size(),
              a.o.models.size() == 1 ? "" : "s");
  std::fflush(stdout);
  server.run();
  server.stop();
  pthread_kill(waiter.native_handle(), SIGTERM);  // wake the waiter when run() ended otherwise
  waiter.join();
}

void register_cmd(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("serve", "Serve models over HTTP (A1111, OpenAI and native job routes)");
  cmd->add_option("--model", a->models, "Model folder or Stable Diffusion file (repeatable; name = its file name)");
  cmd->add_option("--models-dir", a->models_dir, "Serve every model folder / .safetensors file in this folder");
  cmd->add_option("--host", a->o.host, "Address to bind (default loopback only)")->capture_default_str();
  cmd->add_option("--port", a->o.port, "Port (0 = any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--token", a->o.token, "Require 'Authorization: Bearer TOKEN' on every route but /health");
  cmd->add_option("--max-queue", a->o.max_queue, "Jobs waiting at most (429 beyond)")->capture_default_str();
  cmd->add_option("--memory-budget", a->o.memory_budget_gb,
                  "GB of loaded weights before least-recently-used "
                  "models are unloaded (0 = no limit)")
      ->capture_default_str();
  cmd->add_option("--max-body", a->o.max_body_bytes, "Largest request body in bytes")->capture_default_str();
  cmd->add_option("--max-side", a->o.limits.max_side, "Largest width / height")->capture_default_str();
  cmd->add_option("--max-steps", a->o.limits.max_steps, "Most sampling steps")->capture_default_str();
  cmd->add_option("--max-n", a->o.limits.max_n, "Most images per request")->capture_default_str();
  cmd->add_option("--max-batch", a->o.limits.max_batch, "Largest batch")->capture_default_str();
  cmd->add_option("--preview-every", a->o.preview_every, "Live preview every N steps (0 = none)")
      ->capture_default_str();
  cmd->add_option("--lora-dir", a->o.load.lora_dir, "Folder of LoRAs clients may name");
  cmd->add_option("--embeddings-dir", a->o.load.embeddings_dir, "Folder of textual-inversion embeddings");
  cmd->add_option("--device", a->device, "cpu, cuda, cuda:N or auto")->capture_default_str();
  cmd->add_option(
         "--dtype", a->dtype,
         "Default compute dtype: auto (bf16 on CPUs with AVX-512 BF16 / AMX, else fp32), fp32, bf16 or fp16 (SD only)")
      ->capture_default_str();
  cmd->add_option("--weights", a->weights,
                  "Stable Diffusion weight storage: int8 (8-bit UNet / text-encoder weights); default: as stored");
  diffuse::cli::add_threads_option(cmd, &a->threads);
  cmd->callback([a] { run(*a); });
}

DIFFUSE_COMMAND(25, "serve", register_cmd);

}  // namespace cmd_serve
