// Crash-safe training: `diffuse train` SIGKILLed at 20 random moments (checkpoint writes
// included), relaunched each time with the same command, ends with the same bits as a run that
// was never interrupted.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "cli/run_cli.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

// Starts `diffuse ARGS...` with output discarded; returns its pid.
pid_t spawn(const std::vector<std::string>& args) {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>("diffuse")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stdout);
    freopen("/dev/null", "w", stderr);
    execv(DIFFUSE_CLI, argv.data());
    _exit(127);
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(CrashResume, KilledTwentyTimesEndsBitIdentical) {
  TempDir t;
  for (const char* cls : {"a", "b"}) {
    fs::create_directories(t / ("data/" + std::string(cls)));
    for (int i = 0; i < 4; ++i)
      write_png(t / ("data/" + std::string(cls) + "/" + std::to_string(i) + ".png"),
                to_image(torch::full({1, 8, 8}, cls[0] == 'a' ? -0.5 : 0.5)));
  }
  auto args = [&](const std::string& out) {
    return std::vector<std::string>{"train",   "--data",         t / "data", "--out",     out, "--config",
                                    "tiny",    "--steps",        "200",      "--batch",   "4", "--save-every",
                                    "3",       "--sample-every", "0",        "--threads", "1", "--quiet",
                                    "--resume"};
  };
  auto timed = [&](const std::string& out) {
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(wait_exit(spawn(args(out))), 0);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  const double run_s = timed(t / "straight");    // --resume on a new folder starts from scratch
  const double start_s = timed(t / "straight");  // relaunched when finished: start, load, write the model
  const double train_s = std::max(0.05, run_s - start_s);
  // Each launch is killed a little after it started training, so the 20 kills spread over the run.
  std::mt19937 rng(20261206);
  std::uniform_real_distribution<double> when(0.5 * start_s, start_s + train_s / 20);
  int killed = 0;
  for (int i = 0; i < 20; ++i) {
    const pid_t pid = spawn(args(t / "killed"));
    std::this_thread::sleep_for(std::chrono::duration<double>(when(rng)));
    if (kill(pid, SIGKILL) == 0 && wait_exit(pid) == 128 + SIGKILL) ++killed;
  }
  EXPECT_GE(killed, 15) << "most launches should have been killed mid-run (start " << start_s << " s, training "
                        << train_s << " s)";
  ASSERT_EQ(wait_exit(spawn(args(t / "killed"))), 0);  // the same command finishes the run

  for (const char* f : {"unet/diffusion_pytorch_model.safetensors", "checkpoint/model.safetensors",
                        "checkpoint/optimizer.safetensors"}) {
    const auto a = safetensors::load(t / ("straight/" + std::string(f)));
    const auto b = safetensors::load(t / ("killed/" + std::string(f)));
    ASSERT_EQ(a.size(), b.size()) << f;
    for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << f << " " << k;
  }
}

}  // namespace
}  // namespace diffuse
