#pragma once
// Processes in tests of data-parallel runs: a free loopback port for the rendezvous, the `diffuse`
// binary started as one rank (output into a log file) and waited for with a time limit.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "cli/run_cli.h"
#include "core/atomic_file.h"

namespace diffuse::test {

// A TCP port on 127.0.0.1 that was free a moment ago (MASTER_PORT of a job started by the test).
inline int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// The variables torchrun sets for rank `rank` of `world` processes meeting at 127.0.0.1:`port`.
inline std::map<std::string, std::string> torchrun_env(int rank, int world, const std::string& port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", port}};
}

// `diffuse ARGS...` with extra environment variables, stdout and stderr into `log`.
inline pid_t spawn_cli(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
                       const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    for (const auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<char*> argv{const_cast<char*>("diffuse")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!freopen(log.c_str(), "w", stdout) || dup2(fileno(stdout), 2) < 0) _exit(126);
    execv(DIFFUSE_CLI, argv.data());
    _exit(127);
  }
  return pid;
}

// Exit status (128 + signal when killed); a process still running after `limit_s` is killed and
// reported as -1, so no test waits forever.
inline int wait_for_exit(pid_t pid, double limit_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int>(limit_s * 1000));
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// What a process has written to `log` so far ("" before it exists).
inline std::string log_text(const std::string& log) { return std::filesystem::exists(log) ? read_file(log) : ""; }

// `diffuse ARGS...` in one process, run to its end (killed after `limit_s`); the output from `log`.
inline CliRun run_cli_logged(const std::vector<std::string>& args, const std::string& log, double limit_s) {
  const int code = wait_for_exit(spawn_cli(args, {}, log), limit_s);
  return {code, log_text(log)};
}

// `args` followed by `more`.
inline std::vector<std::string> with_args(std::vector<std::string> args, const std::vector<std::string>& more) {
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

}  // namespace diffuse::test
