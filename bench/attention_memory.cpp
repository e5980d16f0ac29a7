// Peak memory and time of self-attention over the 64x64 latents of a 512x512 image (4096 tokens),
// unchunked vs the automatic query chunking of nn::dot_product_attention vs fixed chunk sizes.
//
// Each configuration runs in its own forked process, so the peak resident set size (VmHWM) it
// reports belongs to that configuration alone: peak = VmHWM after the forward pass minus VmRSS
// before it. The layer is SD 1.x's first-level attention (320 channels, 8 heads of 40) on a
// CFG batch of 2; `--tokens`, `--channels`, `--heads`, `--batch` change the shape.
// Usage: attention_memory [--tokens 4096] [--channels 320] [--heads 8] [--batch 2] [--threads 0]
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/runtime.h"
#include "nn/attention.h"

using namespace diffuse;

namespace {

// A field of /proc/self/status in KiB.
long status_kib(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(f, line))
    if (line.compare(0, n, field) == 0) return std::stol(line.substr(n + 1));
  return -1;
}

struct Shape {
  int64_t tokens = 4096, channels = 320, heads = 8, batch = 2;
};

// Runs in the child: prints "<peak MiB> <median ms>".
void measure(const Shape& s, int64_t chunk, int fd) {
  torch::NoGradGuard ng;
  nn::Attention attn(nn::AttentionOptions(s.channels, s.heads, s.channels / s.heads));
  attn->eval();
  attn->set_query_chunk_size(chunk);
  auto x = torch::randn({s.batch, s.tokens, s.channels});
  const long before = status_kib("VmRSS:");
  std::vector<double> ms;
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto y = attn(x);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const long peak = status_kib("VmHWM:");
  std::sort(ms.begin(), ms.end());
  char buf[64];
  const int len = std::snprintf(buf, sizeof buf, "%.0f %.1f", (peak - before) / 1024.0, ms[1]);
  if (write(fd, buf, static_cast<size_t>(len)) != len) _exit(2);
}

std::string run_child(const Shape& s, int64_t chunk) {
  int p[2];
  if (pipe(p) != 0) return "pipe failed";
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    measure(s, chunk, p[1]);
    _exit(0);
  }
  close(p[1]);
  char buf[64] = {0};
  ssize_t got = read(p[0], buf, sizeof buf - 1);
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return got > 0 ? std::string(buf, static_cast<size_t>(got)) : "failed";
}

}  // namespace

int main(int argc, char** argv) {
  Shape s;
  int threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    long v = std::stol(argv[i + 1]);
    if (k == "--tokens")
      s.tokens = v;
    else if (k == "--channels")
      s.channels = v;
    else if (k == "--heads")
      s.heads = v;
    else if (k == "--batch")
      s.batch = v;
    else if (k == "--threads")
      threads = static_cast<int>(v);
  }
  set_threads(threads);
  const double score_mib = static_cast<double>(s.batch * s.heads) * s.tokens * s.tokens * 4 / (1 << 20);
  std::printf("self-attention: batch %lld, %lld tokens, %lld channels, %lld heads (score matrix %.0f MiB fp32)\n",
              static_cast<long long>(s.batch), static_cast<long long>(s.tokens), static_cast<long long>(s.channels),
              static_cast<long long>(s.heads), score_mib);
  std::printf("%-28s %14s %12s\n", "query chunk", "peak MiB", "ms/forward");
  struct Config {
    const char* name;
    int64_t chunk;
  };
  const Config configs[] = {
      {"off (whole matrix)", -1}, {"automatic (128 MiB budget)", 0}, {"1024", 1024}, {"256", 256}};
  for (const auto& c : configs) {
    std::string r = run_child(s, c.chunk);
    double mib = 0, ms = 0;
    if (std::sscanf(r.c_str(), "%lf %lf", &mib, &ms) == 2)
      std::printf("%-28s %14.0f %12.1f\n", c.name, mib, ms);
    else
      std::printf("%-28s %s\n", c.name, r.c_str());
  }
  return 0;
}
