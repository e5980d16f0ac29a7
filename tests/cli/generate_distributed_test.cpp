// Sharded generation through the CLI: `diffuse generate` and `diffuse eval --model` split their
// batches across processes (`--nproc-per-node`, or torchrun's variables) and rank 0 writes what one
// process writes: the same PNG bytes, the same metrics. A rank that dies stops the others with its name.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/atomic_file.h"
#include "fixtures.h"
#include "processes.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;
using test::free_port;
using test::log_text;
using test::spawn_cli;
using test::TempDir;
using test::torchrun_env;
using test::wait_for_exit;
using test::with_args;

// One process, stopped after 60 s.
test::CliRun shard_run(const std::vector<std::string>& args, const std::string& log) {
  return test::run_cli_logged(args, log, 60);
}

std::string shard_model(const std::string& name) { return std::string(DIFFUSE_SOURCE_DIR) + "/models/" + name; }

// Every file under `dir` (relative path -> bytes).
std::map<std::string, std::string> shard_files(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  return files;
}

// 7 images in batches of 2: rank 0 draws batches 0 and 2, rank 1 batches 1 and 3 (the last one short).
std::vector<std::string> shard_generate_args(const std::string& out) {
  return {"generate", "--model", shard_model("fashion-mnist"),
          "-n",       "7",       "--batch-size",
          "2",        "--steps", "3",
          "--seed",   "11",      "--out",
          out};
}

TEST(ShardedGeneration, TwoProcessesWriteTheSamePngsAsOne) {
  TempDir dir;
  auto one = shard_run(with_args(shard_generate_args(dir / "one/"), {"--threads", "1"}), dir / "one.log");
  ASSERT_EQ(one.code, 0) << one.output;
  auto two = shard_run(with_args(shard_generate_args(dir / "two/"), {"--nproc-per-node", "2", "--threads", "2"}),
                       dir / "two.log");
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("2 processes on this machine, 1 thread each"), std::string::npos) << two.output;
  const auto a = shard_files(dir / "one"), b = shard_files(dir / "two");
  ASSERT_EQ(a.size(), 7u);
  ASSERT_EQ(b.size(), 7u);
  for (const auto& [name, bytes] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(b.at(name) == bytes) << name << " differs";
  }
  EXPECT_TRUE(a.count("00006-17.png"));
  // Every image is its own (none is a blank row of the other rank's share).
  EXPECT_NE(a.at("00002-13.png"), a.at("00003-14.png"));
  EXPECT_NE(b.at("00000-11.png"), b.at("00006-17.png"));

  // A grid, launched as torchrun launches: one process per rank from the environment.
  auto grid_one = shard_run(with_args(shard_generate_args(dir / "grid1.png"), {"--threads", "1"}), dir / "g1.log");
  ASSERT_EQ(grid_one.code, 0) << grid_one.output;
  const std::string port = std::to_string(free_port());
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn_cli(with_args(shard_generate_args(dir / "grid2.png"), {"--threads", "1"}),
                             torchrun_env(r, 2, port), dir / ("grid-rank" + std::to_string(r) + ".log")));
  EXPECT_EQ(wait_for_exit(pids[0], 60), 0) << read_file(dir / "grid-rank0.log");
  EXPECT_EQ(wait_for_exit(pids[1], 60), 0) << read_file(dir / "grid-rank1.log");
  ASSERT_TRUE(fs::exists(dir / "grid2.png"));
  EXPECT_TRUE(read_file(dir / "grid1.png") == read_file(dir / "grid2.png"));
  EXPECT_EQ(read_file(dir / "grid-rank1.log").find("wrote"), std::string::npos) << "only rank 0 writes";
}

TEST(ShardedGeneration, EvalScoresTwoProcessesSamplesAsOneProcessDoes) {
  TempDir dir;
  // A small reference set (generated images as a flat folder), so no 60000-image embedding.
  auto ref = shard_run({"generate", "--model", shard_model("fashion-mnist"), "-n", "16", "--steps", "2", "--seed",
                        "100", "--threads", "1", "--out", dir / "ref/"},
                       dir / "ref.log");
  ASSERT_EQ(ref.code, 0) << ref.output;
  auto eval_args = [&](const std::string& name) {
    return std::vector<std::string>{"eval",
                                    "--model",
                                    shard_model("fashion-mnist"),
                                    "--classifier",
                                    shard_model("fashion-mnist-classifier"),
                                    "--data",
                                    dir / "ref",
                                    "--n",
                                    "7",
                                    "--steps",
                                    "3",
                                    "--batch-size",
                                    "2",
                                    "--no-floor",
                                    "--per-class",
                                    "--quiet",
                                    "--cache-dir",
                                    "",
                                    "--json-out",
                                    dir / (name + ".json"),
                                    "--save-samples",
                                    dir / name};
  };
  auto one = shard_run(with_args(eval_args("one"), {"--threads", "1"}), dir / "one.log");
  ASSERT_EQ(one.code, 0) << one.output;
  auto two = shard_run(with_args(eval_args("two"), {"--nproc-per-node", "2", "--threads", "2"}), dir / "two.log");
  ASSERT_EQ(two.code, 0) << two.output;
  const auto ja = nlohmann::json::parse(read_file(dir / "one.json"));
  const auto jb = nlohmann::json::parse(read_file(dir / "two.json"));
  std::printf("one process: %s\ntwo processes: %s\n", ja.at("samples").dump().c_str(), jb.at("samples").dump().c_str());
  EXPECT_EQ(ja.at("samples").at("n"), 7);
  EXPECT_TRUE(ja.at("samples").at("fid").is_number());
  EXPECT_EQ(ja.at("samples"), jb.at("samples"));
  EXPECT_EQ(ja.at("per_class"), jb.at("per_class"));
  const auto a = shard_files(dir / "one"), b = shard_files(dir / "two");
  EXPECT_EQ(a.size(), 7u);
  EXPECT_TRUE(a == b) << "the saved samples differ";
}

TEST(ShardedGeneration, AKilledRankStopsTheOthersWithItsName) {
  TempDir dir;
  const std::string port = std::to_string(free_port());
  // Long enough that rank 1 is killed while generating, with a short timeout.
  const std::vector<std::string> args = {"generate",
                                         "--model",
                                         shard_model("fashion-mnist"),
                                         "-n",
                                         "2",
                                         "--batch-size",
                                         "1",
                                         "--steps",
                                         "100",
                                         "--seed",
                                         "1",
                                         "--threads",
                                         "1",
                                         "--dist-timeout",
                                         "3",
                                         "--out",
                                         dir / "out/"};
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn_cli(args, torchrun_env(r, 2, port), dir / ("rank" + std::to_string(r) + ".log")));
  // Once rank 1 reports sampling steps (after the rendezvous), it dies.
  const auto start = std::chrono::steady_clock::now();
  while (log_text(dir / "rank1.log").find("generate") == std::string::npos &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_NE(read_file(dir / "rank1.log").find("generate"), std::string::npos) << read_file(dir / "rank1.log");
  kill(pids[1], SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_EQ(wait_for_exit(pids[1], 10), 128 + SIGKILL);
  const int code = wait_for_exit(pids[0], 60);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  const std::string log = read_file(dir / "rank0.log");
  std::printf("rank 0 stopped %.1f s after rank 1 was killed\n", took);
  EXPECT_NE(code, -1) << "rank 0 did not stop";
  EXPECT_NE(code, 0);
  EXPECT_NE(log.find("rank 1 stopped"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir / "out")) << "nothing is written without every rank's images";
}

}  // namespace
}  // namespace diffuse
