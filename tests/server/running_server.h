#pragma once
// Test helper: a diffuse server on a free loopback port, served from a thread until destroyed.
#include <httplib.h>

#include <memory>
#include <thread>

#include "server/server.h"

namespace diffuse::test {

struct RunningServer {
  std::unique_ptr<server::Server> srv;
  std::thread thread;
  int port = 0;

  explicit RunningServer(server::ServerOptions o) {
    o.port = 0;
    o.max_body_bytes = 1 << 20;
    o.load.allow_paths = false;
    srv = std::make_unique<server::Server>(o);
    port = srv->bind();
    thread = std::thread([this] { srv->run(); });
  }
  ~RunningServer() {
    srv->stop();
    thread.join();
  }
  RunningServer(const RunningServer&) = delete;
  RunningServer& operator=(const RunningServer&) = delete;
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return c;
  }
};

}  // namespace diffuse::test
