#include "launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>
#include <vector>

#include "commands.h"
#include "core/error.h"
#include "train/distributed.h"

extern char** environ;

namespace diffuse::cli {

namespace launch_detail {

std::vector<std::string> own_command_line() {
  std::ifstream f("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::string> args;
  size_t pos = 0;
  while (pos < all.size()) {
    size_t end = all.find('\0', pos);
    if (end == std::string::npos) end = all.size();
    args.push_back(all.substr(pos, end - pos));
    pos = end + 1;
  }
  if (args.empty()) throw Error("--nproc-per-node: cannot read this process's command line");
  return args;
}

// The command line without `flag VALUE` / `flag=VALUE`.
std::vector<std::string> drop_flag(const std::vector<std::string>& args, const std::string& flag) {
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag) {
      ++i;
      continue;
    }
    if (args[i].rfind(flag + "=", 0) == 0) continue;
    out.push_back(args[i]);
  }
  return out;
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error("--nproc-per-node: cannot open a socket to find a free port");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw Error("--nproc-per-node: cannot find a free port (set MASTER_PORT)");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string describe(int status) {
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + std::to_string(WTERMSIG(status));
  return "exited with status " + std::to_string(WEXITSTATUS(status));
}

volatile sig_atomic_t forwarded_signal = 0;
extern "C" void remember_signal(int sig) { forwarded_signal = sig; }

}  // namespace launch_detail

void add_dist_options(CLI::App* cmd, DistFlags* flags) {
  cmd->add_option("--nproc-per-node", flags->nproc_per_node,
                  "Data-parallel: run as N processes on this machine (threads split between them; --batch is per "
                  "process). Several machines: launch one process per rank with torchrun's or Slurm's variables "
                  "(docs/distributed.md)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--dist-timeout", flags->timeout_s,
                  "Data-parallel: seconds to wait for a rank (rendezvous, collectives) before stopping with an error")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

bool launch_local(const DistFlags& flags, int threads) {
  using namespace launch_detail;
  if (flags.nproc_per_node <= 1) return false;
  if (std::getenv("RANK") || std::getenv("SLURM_PROCID")) {
    const char* ws = std::getenv("WORLD_SIZE");
    if (!ws) ws = std::getenv("SLURM_NTASKS");
    if (ws && std::atoi(ws) > 1) return false;  // already one process of a launched job
  }
  if (!distributed_available())
    throw Error(
        "--nproc-per-node: this build has no distributed backend (c10d Gloo; install libgloo-dev and "
        "rebuild)");
  const int n = flags.nproc_per_node;
  auto args = drop_flag(drop_flag(own_command_line(), "--nproc-per-node"), "--threads");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int per = std::max(1, (threads > 0 ? threads : cores) / n);
  args.push_back("--threads");
  args.push_back(std::to_string(per));
  const char* port_env = std::getenv("MASTER_PORT");
  const int port = port_env && *port_env ? std::atoi(port_env) : free_port();

  // Every child's argv and environment, built before fork (only exec happens in the child).
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::vector<std::string> ours = {"RANK",        "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                         "MASTER_ADDR", "MASTER_PORT"};
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    bool drop = key == "OMP_NUM_THREADS" || key.rfind("SLURM_", 0) == 0;
    for (const auto& k : ours) drop = drop || key == k;
    if (!drop) base.push_back(kv);
  }
  std::vector<std::vector<std::string>> envs(static_cast<size_t>(n), base);
  std::vector<std::vector<char*>> envps(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    auto& e = envs[static_cast<size_t>(r)];
    e.push_back("RANK=" + std::to_string(r));
    e.push_back("WORLD_SIZE=" + std::to_string(n));
    e.push_back("LOCAL_RANK=" + std::to_string(r));
    e.push_back("LOCAL_WORLD_SIZE=" + std::to_string(n));
    e.push_back("MASTER_ADDR=127.0.0.1");
    e.push_back("MASTER_PORT=" + std::to_string(port));
    e.push_back("OMP_NUM_THREADS=" + std::to_string(per));
    for (auto& kv : e) envps[static_cast<size_t>(r)].push_back(kv.data());
    envps[static_cast<size_t>(r)].push_back(nullptr);
  }
  std::fprintf(stderr, "diffuse: %d processes on this machine, %d thread%s each, rendezvous 127.0.0.1:%d\n", n, per,
               per > 1 ? "s" : "", port);
  std::fflush(stderr);
  // Ctrl-C reaches the children through the terminal; SIGTERM is passed on. Either way the
  // launcher waits for them to write their checkpoint.
  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::vector<pid_t> pids(static_cast<size_t>(n), -1);
  for (int r = 0; r < n; ++r) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::execve("/proc/self/exe", argv.data(), envps[static_cast<size_t>(r)].data());
      std::_Exit(127);
    }
    if (pid < 0) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      throw Error("--nproc-per-node: fork failed: " + std::string(std::strerror(errno)));
    }
    pids[static_cast<size_t>(r)] = pid;
  }
  int running = n, first_rank = -1, first_status = 0;
  bool deadline_set = false, term_sent = false;
  auto deadline = std::chrono::steady_clock::now();
  while (running > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int r = 0;
      while (r < n && pids[static_cast<size_t>(r)] != pid) ++r;
      if (r == n) continue;
      pids[static_cast<size_t>(r)] = -1;
      --running;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && first_rank < 0) {
        first_rank = r;
        first_status = status;
        if (running > 0) {
          std::fprintf(stderr, "diffuse: rank %d (pid %d) %s; waiting up to %g s for the other ranks to stop\n", r,
                       static_cast<int>(pid), describe(status).c_str(), flags.timeout_s + 10);
          deadline = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>((flags.timeout_s + 10) * 1000));
          deadline_set = true;
        }
      }
      continue;
    }
    if (forwarded_signal == SIGTERM && !term_sent) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGTERM);
      term_sent = true;
    }
    if (deadline_set && std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < n; ++r)
        if (pids[static_cast<size_t>(r)] > 0) {
          std::fprintf(stderr, "diffuse: rank %d did not stop: killed\n", r);
          ::kill(pids[static_cast<size_t>(r)], SIGKILL);
        }
      deadline_set = false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (first_rank >= 0) {
    const int code = WIFSIGNALED(first_status) ? 128 + WTERMSIG(first_status) : WEXITSTATUS(first_status);
    throw CLI::RuntimeError(code);
  }
  return true;
}

std::shared_ptr<Distributed> join_job(const DistFlags& flags, std::string& device) {
  const LaunchEnv env = launch_env();
  if (env.world_size <= 1) return nullptr;
  if (device == "cuda") device = "cuda:" + std::to_string(env.local_rank);
  return std::make_shared<Distributed>(env, std::chrono::milliseconds(static_cast<int64_t>(flags.timeout_s * 1000)),
                                       parse_device(device));
}

}  // namespace diffuse::cli
