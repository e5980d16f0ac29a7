// Data-parallel training through the CLI, as jobs are launched: `--nproc-per-node` and
// torchrun-style environment variables. N processes with batch B/N train what one process with
// batch B trains (same data order, parameters within 1e-5), resume across world sizes, and stop
// with a clear message when a rank dies or never arrives.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/atomic_file.h"
#include "core/image.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "processes.h"
#include "sd_tiny_text.h"
#include "train/two_class_data.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;
using test::free_port;
using test::spawn_cli;
using test::TempDir;
using test::torchrun_env;
using test::wait_for_exit;
using test::with_args;

// One process, stopped after 120 s.
test::CliRun dist_run(const std::vector<std::string>& args, const std::string& log) {
  return test::run_cli_logged(args, log, 120);
}

// A class-conditional UNet without attention. Attention's key biases get no gradient at all (softmax
// ignores a shift shared by all keys), so Adam turns the rounding of their ~0 gradients into steps
// of +-lr, and no two summation orders (one batch of 16, two of 8) agree on them.
void write_dist_unet(const TempDir& dir) {
  nlohmann::json j = {{"_class_name", "UNet2DModel"},
                      {"in_channels", 1},
                      {"out_channels", 1},
                      {"sample_size", 16},
                      {"num_class_embeds", 3},
                      {"block_out_channels", {16, 32}},
                      {"layers_per_block", 1},
                      {"norm_num_groups", 8},
                      {"down_block_types", {"DownBlock2D", "DownBlock2D"}},
                      {"up_block_types", {"UpBlock2D", "UpBlock2D"}},
                      {"add_attention", false}};
  write_file_atomically(dir / "unet.json", j.dump());
}

std::vector<std::string> diffusion_args(const TempDir& dir, const std::string& out, int batch, int steps,
                                        int save_every = 10) {
  return {"train",
          "--data",
          dir / "data",
          "--out",
          dir / out,
          "--config",
          dir / "unet.json",
          "--batch",
          std::to_string(batch),
          "--steps",
          std::to_string(steps),
          "--lr",
          "5e-4",
          "--warmup",
          "10",
          "--ema",
          "0.9",
          "--save-every",
          std::to_string(save_every),
          "--sample-every",
          "0",
          "--seed",
          "3",
          "--batch-log",
          dir / (out + ".batches")};
}

// Lines "micro-batch rows..." of a batch log; with `ranks` > 1 the ranks' files joined line by line.
std::vector<std::string> batch_lines(const std::string& path, int ranks) {
  std::vector<std::vector<std::string>> per_rank;
  for (int r = 0; r < ranks; ++r) {
    std::ifstream f(ranks > 1 ? path + ".rank" + std::to_string(r) : path);
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(f, line)) lines.push_back(line);
    per_rank.push_back(lines);
  }
  std::vector<std::string> joined;
  for (size_t i = 0; i < per_rank[0].size(); ++i) {
    std::string line = per_rank[0][i];
    for (int r = 1; r < ranks; ++r) {
      if (i >= per_rank[r].size()) return {};
      std::istringstream ss(per_rank[r][i]);
      std::string step, rest;
      ss >> step;
      if (step != line.substr(0, line.find(' '))) return {};
      std::getline(ss, rest);
      line += rest;
    }
    joined.push_back(line);
  }
  return joined;
}

// Largest absolute difference over the tensors of the checkpoint files `files` of two runs.
double max_checkpoint_difference(const std::string& a, const std::string& b, const std::vector<std::string>& files) {
  double worst = 0;
  for (const auto& f : files) {
    auto ta = safetensors::load(a + "/checkpoint/" + f), tb = safetensors::load(b + "/checkpoint/" + f);
    EXPECT_EQ(ta.size(), tb.size()) << f;
    for (const auto& [k, v] : ta) {
      auto it = tb.find(k);
      if (it == tb.end()) {
        ADD_FAILURE() << f << ": " << k << " missing";
        continue;
      }
      worst = std::max(worst, (v.to(torch::kFloat64) - it->second.to(torch::kFloat64)).abs().max().item<double>());
    }
  }
  return worst;
}

// How far the weights moved from their slow EMA: shows that training changed them.
double max_model_ema_gap(const std::string& run) {
  auto m = safetensors::load(run + "/checkpoint/model.safetensors");
  auto e = safetensors::load(run + "/checkpoint/ema.safetensors");
  double gap = 0;
  for (const auto& [k, v] : m) gap = std::max(gap, (v - e.at(k)).abs().max().item<double>());
  return gap;
}

const std::vector<std::string> kDiffusionFiles = {"model.safetensors", "ema.safetensors"};

TEST(TrainDistributed, TwoProcessesTrainWhatOneProcessTrains) {
  TempDir dir;
  test::write_two_class_set(dir / "data", 24);
  write_dist_unet(dir);
  auto one = dist_run(with_args(diffusion_args(dir, "one", 16, 30), {"--threads", "1"}), dir / "one.log");
  ASSERT_EQ(one.code, 0) << one.output;
  auto two = dist_run(with_args(diffusion_args(dir, "two", 8, 30), {"--nproc-per-node", "2", "--threads", "2"}),
                      dir / "two.log");
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("global batch 16 = 8 per process x 2 processes x 1 accumulation"), std::string::npos)
      << two.output;
  EXPECT_NE(two.output.find("data parallel: 2 processes (gloo)"), std::string::npos) << two.output;

  const auto order_one = batch_lines(dir / "one.batches", 1), order_two = batch_lines(dir / "two.batches", 2);
  ASSERT_EQ(order_one.size(), 30u);
  EXPECT_EQ(order_one, order_two);  // the same 16 rows per step, in the same order
  const double diff = max_checkpoint_difference(dir / "one", dir / "two", kDiffusionFiles);
  std::printf("train: max |difference| of weights and EMA after 30 steps: %.3g\n", diff);
  EXPECT_LT(diff, 1e-5);
  EXPECT_GT(max_model_ema_gap(dir / "one"), 100 * 1e-5);  // the weights did move, far beyond the tolerance
  // Rank 0 alone wrote the run's files (one metrics.csv, one model folder).
  EXPECT_EQ(read_file(dir / "two/metrics.csv").substr(0, 5), "step,");
  EXPECT_TRUE(fs::exists(dir / "two/unet/diffusion_pytorch_model.safetensors"));
  auto cfg = nlohmann::json::parse(read_file(dir / "two/train_config.json"));
  EXPECT_EQ(cfg.at("global_batch"), 16);
  EXPECT_EQ(cfg.at("processes"), 2);
}

TEST(TrainDistributed, TwoProcessVaeTrainsWhatOneProcessTrains) {
  TempDir dir;
  test::write_two_class_set(dir / "data", 20, 3);
  nlohmann::json cfg = {{"_class_name", "AutoencoderKL"},
                        {"in_channels", 3},
                        {"out_channels", 3},
                        {"block_out_channels", {16, 32}},
                        {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                        {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}},
                        {"layers_per_block", 1},
                        {"latent_channels", 4},
                        {"norm_num_groups", 8}};
  write_file_atomically(dir / "vae.json", cfg.dump());
  auto args = [&](const std::string& out, int batch) {
    return std::vector<std::string>{"train-vae",
                                    "--data",
                                    dir / "data",
                                    "--out",
                                    dir / out,
                                    "--config",
                                    dir / "vae.json",
                                    "--batch",
                                    std::to_string(batch),
                                    "--steps",
                                    "30",
                                    "--lr",
                                    "1e-4",
                                    "--warmup",
                                    "30",
                                    "--ema",
                                    "0.9",
                                    "--save-every",
                                    "0",
                                    "--sample-every",
                                    "0",
                                    "--scale-batches",
                                    "2",
                                    "--seed",
                                    "4",
                                    "--batch-log",
                                    dir / (out + ".batches")};
  };
  auto one = dist_run(with_args(args("one", 16), {"--threads", "1"}), dir / "one.log");
  ASSERT_EQ(one.code, 0) << one.output;
  auto two = dist_run(with_args(args("two", 8), {"--nproc-per-node", "2", "--threads", "2"}), dir / "two.log");
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("global batch 16 = 8 per process x 2 processes"), std::string::npos) << two.output;
  const auto order_one = batch_lines(dir / "one.batches", 1), order_two = batch_lines(dir / "two.batches", 2);
  ASSERT_EQ(order_one.size(), 30u);
  EXPECT_EQ(order_one, order_two);
  const double diff = max_checkpoint_difference(dir / "one", dir / "two", kDiffusionFiles);
  std::printf("train-vae: max |difference| of weights and EMA after 30 steps: %.3g\n", diff);
  EXPECT_LT(diff, 1e-5);
  EXPECT_GT(max_model_ema_gap(dir / "one"), 10 * 1e-5);
  // The scaling factor is measured on global batches: the same number of latents either way.
  auto ca = nlohmann::json::parse(read_file(dir / "one/config.json"));
  auto cb = nlohmann::json::parse(read_file(dir / "two/config.json"));
  EXPECT_NEAR(ca.at("scaling_factor").get<double>(), cb.at("scaling_factor").get<double>(), 1e-4);
}

// Nine captioned images of `size` pixels (a coloured band each): with a global batch of 4 an epoch
// ends in a batch of one row, which leaves rank 0 nothing to train on that step.
void write_nine_captioned(const std::string& folder, int size) {
  fs::create_directories(folder);
  const char* colours[] = {"red", "green", "blue"};
  for (int i = 0; i < 9; ++i) {
    auto img = torch::full({3, size, size}, -1.0);
    img[i % 3].slice(0, size / 4 * (i / 3), size / 4 * (i / 3) + size / 2).fill_(1.0);
    write_png(folder + "/" + std::to_string(i) + ".png", to_image(img));
    std::ofstream(folder + "/" + std::to_string(i) + ".txt") << colours[i % 3] << " band " << i / 3;
  }
}

// The largest difference of two runs' checkpointed weights (model and EMA), skipping keys that
// contain `skip`, and how far the first run's weights moved from their EMA.
std::pair<double, double> checkpoint_gap(const std::string& a, const std::string& b, const std::string& skip) {
  double worst = 0, moved = 0;
  for (const std::string f : {"model.safetensors", "ema.safetensors"}) {
    const auto ta = safetensors::load(a + "/checkpoint/" + f), tb = safetensors::load(b + "/checkpoint/" + f);
    EXPECT_EQ(ta.size(), tb.size()) << f;
    for (const auto& [k, v] : ta)
      if (skip.empty() || k.find(skip) == std::string::npos)
        worst = std::max(worst, (v - tb.at(k)).abs().max().item<double>());
  }
  const auto m = safetensors::load(a + "/checkpoint/model.safetensors");
  const auto e = safetensors::load(a + "/checkpoint/ema.safetensors");
  for (const auto& [k, v] : m) moved = std::max(moved, (v - e.at(k)).abs().max().item<double>());
  return {worst, moved};
}

// The (smoothed) loss of the last row of a run's metrics.csv.
double last_loss(const std::string& run) {
  std::istringstream csv(read_file(run + "/metrics.csv"));
  std::string line, last;
  while (std::getline(csv, line))
    if (!line.empty()) last = line;
  const auto a = last.find(',') + 1;
  return std::stod(last.substr(a, last.find(',', a) - a));
}

// Runs `args("one", 4)` as one process and `args("two", 2)` as two (global batch 4 both); whether
// both succeeded and the second announced its global batch and data parallelism.
bool one_then_two_processes(const std::function<std::vector<std::string>(const std::string&, int)>& args,
                            const TempDir& dir) {
  auto one = dist_run(with_args(args("one", 4), {"--threads", "1"}), dir / "one.log");
  if (one.code != 0) return false;
  auto two = dist_run(with_args(args("two", 2), {"--nproc-per-node", "2", "--threads", "2"}), dir / "two.log");
  return two.code == 0 && two.output.find("global batch 4 = 2 per process x 2 processes") != std::string::npos &&
         two.output.find("data parallel: 2 processes (gloo)") != std::string::npos;
}

TEST(TrainDistributed, TwoProcessesTrainTextToImageAsOneProcess) {
  TempDir dir;
  write_nine_captioned(dir / "data", 16);
  auto args = [&](const std::string& out, int batch) {
    return std::vector<std::string>{"train",
                                    "--data",
                                    dir / "data",
                                    "--text-encoder",
                                    "clip-tiny",
                                    "--latent",
                                    test::source_path("models/emoji-vae"),
                                    "--config",
                                    "t2i-tiny",
                                    "--image-size",
                                    "16",
                                    "--out",
                                    dir / out,
                                    "--batch",
                                    std::to_string(batch),
                                    "--steps",
                                    "12",
                                    "--lr",
                                    "1e-3",
                                    "--warmup",
                                    "2",
                                    "--caption-dropout",
                                    "0.3",
                                    "--seed",
                                    "5",
                                    "--save-every",
                                    "0",
                                    "--sample-every",
                                    "0"};
  };
  ASSERT_TRUE(one_then_two_processes(args, dir)) << read_file(dir / "one.log") << read_file(dir / "two.log");
  // The weights and their EMA, but CLIP's attention key biases: softmax ignores them, their
  // gradients are rounding noise, and Adam turns that into steps of +-lr in either run. Attention
  // makes more such near-zero gradients than the UNet without it above, so the bound is relative:
  // a wrong share of the batch or of its random draws moves the weights as far as training does.
  // The fp32 convolutions' Winograd transforms round at about 1e-6 of the scale (two images per
  // process are other tiles than four in one), which Adam turns into differences of 4-12 % of the
  // distance moved, depending on which layers take them (below 2 % with the direct algorithm).
  // The losses agree to the digits metrics.csv keeps.
  const auto [worst, moved] = checkpoint_gap(dir / "one", dir / "two", "k_proj.bias");
  std::printf("train --text-encoder: max |difference| of weights and EMA after 12 steps: %.3g (moved %.3g)\n", worst,
              moved);
  EXPECT_LT(worst, 0.3 * moved);
  EXPECT_GT(moved, 100 * 1e-5);
  EXPECT_NEAR(last_loss(dir / "one"), last_loss(dir / "two"), 2e-5 * last_loss(dir / "one"));
  EXPECT_EQ(nlohmann::json::parse(read_file(dir / "two/train_config.json")).at("global_batch"), 4);
  EXPECT_TRUE(fs::exists(dir / "two/model_index.json"));
}

TEST(TrainDistributed, TwoProcessesTrainALoraAsOneProcess) {
  TempDir dir;
  const std::string model = test::tiny_sd_folder(dir / "sd");
  write_nine_captioned(dir / "data", 32);
  auto args = [&](const std::string& out, int batch) {
    return std::vector<std::string>{"train-lora",
                                    "--model",
                                    model,
                                    "--data",
                                    dir / "data",
                                    "--out",
                                    dir / (out + ".safetensors"),
                                    "--rank",
                                    "2",
                                    "--text-encoder-lr",
                                    "5e-4",
                                    "--batch",
                                    std::to_string(batch),
                                    "--steps",
                                    "10",
                                    "--lr",
                                    "1e-3",
                                    "--caption-dropout",
                                    "0.3",
                                    "--seed",
                                    "2",
                                    "--eval-images",
                                    "0",
                                    "--save-every",
                                    "0"};
  };
  ASSERT_TRUE(one_then_two_processes(args, dir)) << read_file(dir / "one.log") << read_file(dir / "two.log");
  // LoRA keeps no EMA (the network is saved as both); its up weights start at zero, so their size
  // is how far training moved them.
  const auto [worst, unused] = checkpoint_gap(dir / "one-train", dir / "two-train", "");
  double moved = 0;
  for (const auto& [k, v] : safetensors::load(dir / "one-train/checkpoint/model.safetensors"))
    if (k.find("lora_up") != std::string::npos) moved = std::max(moved, v.abs().max().item<double>());
  std::printf("train-lora: max |difference| of the adapters after 10 steps: %.3g (lora_up moved %.3g)\n", worst, moved);
  EXPECT_LT(worst, 0.05 * moved);
  EXPECT_GT(moved, 100 * 1e-5);
  EXPECT_NEAR(last_loss(dir / "one-train"), last_loss(dir / "two-train"), 1e-6 * last_loss(dir / "one-train"));
  const auto meta = safetensors::File::open(dir / "two.safetensors").metadata();
  EXPECT_EQ(meta.at("ss_total_batch_size"), "4");
  EXPECT_EQ(meta.at("ss_batch_size_per_device"), "2");
}

TEST(TrainDistributed, ResumesWithAnotherNumberOfProcesses) {
  TempDir dir;
  test::write_two_class_set(dir / "data", 24);
  write_dist_unet(dir);
  auto whole = dist_run(with_args(diffusion_args(dir, "whole", 16, 20), {"--threads", "1"}), dir / "whole.log");
  ASSERT_EQ(whole.code, 0) << whole.output;
  // 2 processes for 10 steps, then 1 process to 20; and the reverse.
  auto a1 =
      dist_run(with_args(diffusion_args(dir, "a", 8, 10), {"--nproc-per-node", "2", "--threads", "2"}), dir / "a1.log");
  ASSERT_EQ(a1.code, 0) << a1.output;
  auto a2 = dist_run(with_args(diffusion_args(dir, "a", 16, 20), {"--resume", "--threads", "1"}), dir / "a2.log");
  ASSERT_EQ(a2.code, 0) << a2.output;
  EXPECT_NE(a2.output.find("resuming at step 10"), std::string::npos) << a2.output;
  auto b1 = dist_run(with_args(diffusion_args(dir, "b", 16, 10), {"--threads", "1"}), dir / "b1.log");
  ASSERT_EQ(b1.code, 0) << b1.output;
  auto b2 =
      dist_run(with_args(diffusion_args(dir, "b", 8, 20), {"--resume", "--nproc-per-node", "2", "--threads", "2"}),
               dir / "b2.log");
  ASSERT_EQ(b2.code, 0) << b2.output;
  const double da = max_checkpoint_difference(dir / "whole", dir / "a", kDiffusionFiles);
  const double db = max_checkpoint_difference(dir / "whole", dir / "b", kDiffusionFiles);
  std::printf("resumed 2 -> 1 processes: max |difference| %.3g; 1 -> 2: %.3g\n", da, db);
  EXPECT_LT(da, 1e-5);
  EXPECT_LT(db, 1e-5);
  EXPECT_EQ(batch_lines(dir / "whole.batches", 1).size(), 20u);
  // Another global batch cannot continue the run.
  auto bad =
      dist_run(with_args(diffusion_args(dir, "b", 4, 30), {"--resume", "--nproc-per-node", "2", "--threads", "2"}),
               dir / "bad.log");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.output.find("different global batch (--batch x processes) (checkpoint has 16, now 8)"),
            std::string::npos)
      << bad.output;
}

TEST(TrainDistributed, AKilledRankStopsTheOthersWithItsName) {
  TempDir dir;
  test::write_two_class_set(dir / "data", 24);
  write_dist_unet(dir);
  const std::string port = std::to_string(free_port());
  auto args = with_args(diffusion_args(dir, "run", 8, 100000, 5), {"--dist-timeout", "10"});
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r)
    pids.push_back(spawn_cli(args, torchrun_env(r, 2, port), dir / ("rank" + std::to_string(r) + ".log")));
  // Soon after the first checkpoint is written, rank 1 dies.
  const auto start = std::chrono::steady_clock::now();
  while (!fs::exists(dir / "run/checkpoint/state.json") &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(90))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(fs::exists(dir / "run/checkpoint/state.json"));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // back in training steps (collectives)
  kill(pids[1], SIGKILL);
  const auto killed = std::chrono::steady_clock::now();
  EXPECT_EQ(wait_for_exit(pids[1], 10), 128 + SIGKILL);
  const int code = wait_for_exit(pids[0], 30);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  const std::string log = read_file(dir / "rank0.log");
  std::printf("rank 0 stopped %.1f s after rank 1 was killed: %s\n", took,
              log.substr(log.rfind("rank 0:") == std::string::npos ? 0 : log.rfind("rank 0:")).c_str());
  EXPECT_NE(code, -1) << "rank 0 did not stop";
  EXPECT_NE(code, 0);
  EXPECT_LT(took, 12.0);
  EXPECT_NE(log.find("rank 1 stopped"), std::string::npos) << log;
  // The last checkpoint is complete: it resumes (here with one process of the same global batch).
  const auto state = nlohmann::json::parse(read_file(dir / "run/checkpoint/state.json"));
  const int64_t step = state.at("step").get<int64_t>();
  EXPECT_GE(step, 5);
  auto resumed =
      dist_run(with_args(diffusion_args(dir, "run", 16, static_cast<int>(step) + 2), {"--resume"}), dir / "resume.log");
  EXPECT_EQ(resumed.code, 0) << resumed.output;
}

TEST(TrainDistributed, RendezvousWithAMissingRankTimesOut) {
  TempDir dir;
  test::write_two_class_set(dir / "data", 4);
  write_dist_unet(dir);
  const std::string port = std::to_string(free_port());
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = spawn_cli(with_args(diffusion_args(dir, "run", 8, 10), {"--dist-timeout", "3"}),
                              torchrun_env(0, 2, port), dir / "rank0.log");
  const int code = wait_for_exit(pid, 30);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string log = read_file(dir / "rank0.log");
  EXPECT_NE(code, -1) << "the rendezvous did not time out";
  EXPECT_NE(code, 0);
  EXPECT_LT(took, 15.0);
  EXPECT_NE(log.find("timed out after 3 s: rank 1 of 2 never arrived"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(dir / "run/checkpoint"));
}

}  // namespace
}  // namespace diffuse
