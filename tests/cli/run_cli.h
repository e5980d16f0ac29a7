#pragma once
// Runs the `diffuse` binary (or any command line) in tests: exit code and stdout+stderr together.
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace diffuse::test {

struct CliRun {
  int code = -1;
  std::string output;
};

// Runs a shell command line as it is (add "2>&1" for its stderr).
inline CliRun run_command(const std::string& cmd) {
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// `env` is prepended to the command line (e.g. "DIFFUSE_EMOJI_FONT=/x").
inline CliRun run_cli(const std::string& args, const std::string& env = "") {
  return run_command((env.empty() ? "" : env + " ") + std::string(DIFFUSE_CLI) + " " + args + " 2>&1");
}

}  // namespace diffuse::test
