#include "train/distributed.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "core/error.h"
#include "models/error_of.h"
#include "processes.h"

namespace diffuse {
namespace {

LaunchEnv env_of(const std::map<std::string, std::string>& vars) {
  return launch_env([&](const char* key) -> const char* {
    auto it = vars.find(key);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnv, ReadsTorchrunSlurmOrNothing) {
  auto none = env_of({});
  EXPECT_EQ(none.world_size, 1);
  EXPECT_EQ(none.rank, 0);
  EXPECT_EQ(none.source, "");

  auto tr = env_of({{"RANK", "5"},
                    {"WORLD_SIZE", "8"},
                    {"LOCAL_RANK", "1"},
                    {"LOCAL_WORLD_SIZE", "4"},
                    {"MASTER_ADDR", "10.0.0.7"},
                    {"MASTER_PORT", "29611"},
                    {"SLURM_PROCID", "3"}});  // torchrun's variables win
  EXPECT_EQ(tr.source, "torchrun");
  EXPECT_EQ(tr.rank, 5);
  EXPECT_EQ(tr.world_size, 8);
  EXPECT_EQ(tr.local_rank, 1);
  EXPECT_EQ(tr.local_world_size, 4);
  EXPECT_EQ(tr.master_addr, "10.0.0.7");
  EXPECT_EQ(tr.master_port, 29611);
  EXPECT_FALSE(tr.agent_store);
  auto agent = env_of({{"RANK", "1"},
                       {"WORLD_SIZE", "2"},
                       {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                       {"TORCHELASTIC_RESTART_COUNT", "3"}});
  EXPECT_TRUE(agent.agent_store);  // torchrun's agent hosts the store
  EXPECT_EQ(agent.restart_count, 3);

  auto sl = env_of({{"SLURM_PROCID", "6"},
                    {"SLURM_NTASKS", "8"},
                    {"SLURM_LOCALID", "2"},
                    {"SLURM_TASKS_PER_NODE", "4(x2)"},
                    {"SLURM_JOB_NODELIST", "gpu[07-08],login1"}});
  EXPECT_EQ(sl.source, "slurm");
  EXPECT_EQ(sl.rank, 6);
  EXPECT_EQ(sl.world_size, 8);
  EXPECT_EQ(sl.local_rank, 2);
  EXPECT_EQ(sl.local_world_size, 4);
  EXPECT_EQ(sl.master_addr, "gpu07");
  EXPECT_EQ(sl.master_port, 29500);

  std::string msg = test::error_of([&] { env_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}}); });
  EXPECT_NE(msg.find("RANK=x"), std::string::npos) << msg;
  msg = test::error_of([&] { env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}}); });
  EXPECT_NE(msg.find("not below the world size 2"), std::string::npos) << msg;
  msg = test::error_of([&] { env_of({{"RANK", "0"}}); });
  EXPECT_NE(msg.find("WORLD_SIZE is not set"), std::string::npos) << msg;
}

TEST(LaunchEnv, ExpandsSlurmNodeLists) {
  EXPECT_EQ(expand_nodelist("node[01-04]"), (std::vector<std::string>{"node01", "node02", "node03", "node04"}));
  EXPECT_EQ(expand_nodelist("a[8-10,12],b7,c[1-2]-ib"),
            (std::vector<std::string>{"a8", "a9", "a10", "a12", "b7", "c1-ib", "c2-ib"}));
  EXPECT_EQ(expand_nodelist("single"), (std::vector<std::string>{"single"}));
  EXPECT_THROW(expand_nodelist("n[3-1]"), Error);
  EXPECT_THROW(expand_nodelist("n[1-2"), Error);
}

LaunchEnv rank_env(int rank, int world, int port) {
  LaunchEnv e;
  e.rank = e.local_rank = rank;
  e.world_size = e.local_world_size = world;
  e.master_port = port;
  e.source = "torchrun";
  return e;
}

// Runs `body(rank, dist)` on two threads, each a rank of one job.
template <class F>
void two_ranks(F body) {
  const int port = test::free_port();
  std::vector<std::thread> ts;
  std::vector<std::string> errors(2);
  for (int r = 0; r < 2; ++r)
    ts.emplace_back([&, r] {
      try {
        auto d = std::make_shared<Distributed>(rank_env(r, 2, port), std::chrono::seconds(20), torch::kCPU);
        body(r, d);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

TEST(Distributed, CollectivesAverageBroadcastAndAgree) {
  if (!distributed_available()) GTEST_SKIP() << "built without c10d Gloo";
  std::vector<torch::Tensor> got(2), weights(2);
  std::vector<bool> any_false(2), any_true(2);
  two_ranks([&](int r, std::shared_ptr<Distributed> d) {
    EXPECT_EQ(d->backend(), "gloo");
    auto t = torch::full({3}, static_cast<float>(r + 1));
    auto big = torch::full({1000}, static_cast<float>(10 * r));
    d->all_reduce_mean({t, big}, "test tensors", /*bucket_bytes=*/64);  // several buckets
    got[r] = torch::cat({t, big});
    auto w = torch::randn({4, 4});
    d->broadcast({w}, "weights");
    weights[r] = w;
    any_false[r] = d->any(false, "a flag");
    any_true[r] = d->any(r == 1, "a flag");
    d->barrier("the end");
  });
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE(torch::equal(got[r].narrow(0, 0, 3), torch::full({3}, 1.5f)));
    EXPECT_TRUE(torch::equal(got[r].narrow(0, 3, 1000), torch::full({1000}, 5.0f)));
    EXPECT_FALSE(any_false[r]);
    EXPECT_TRUE(any_true[r]);
  }
  EXPECT_TRUE(torch::equal(weights[0], weights[1]));
}

TEST(Distributed, GradientSyncAveragesAccumulatedGradientsDuringBackward) {
  if (!distributed_available()) GTEST_SKIP() << "built without c10d Gloo";
  // Reference: one process, the mean over both ranks' inputs of two accumulated micro-batches.
  torch::manual_seed(4);
  auto make_net = [] {
    torch::manual_seed(4);
    return torch::nn::Sequential(torch::nn::Linear(5, 7), torch::nn::Tanh(), torch::nn::Linear(7, 3));
  };
  auto input = [](int rank, int micro) {
    torch::manual_seed(100 + 10 * rank + micro);
    return torch::randn({4, 5});
  };
  auto ref = make_net();
  for (int micro = 0; micro < 2; ++micro)
    for (int r = 0; r < 2; ++r) (ref->forward(input(r, micro)).pow(2).mean() / 4).backward();
  // The ranks' nets and inputs, made here: the ranks are threads, and the seeded generator is global.
  std::vector<torch::nn::Sequential> nets = {make_net(), make_net()};
  std::vector<std::vector<torch::Tensor>> inputs = {{input(0, 0), input(0, 1)}, {input(1, 0), input(1, 1)}};
  std::vector<std::vector<torch::Tensor>> grads(2);
  std::vector<int> buckets(2), overlapped(2);
  two_ranks([&](int r, std::shared_ptr<Distributed> d) {
    auto net = nets[r];
    std::vector<torch::Tensor> params = net->parameters();
    GradientSync sync(d, params, /*bucket_bytes=*/64);  // a bucket per tensor or so
    buckets[r] = sync.buckets();
    for (int micro = 0; micro < 2; ++micro) {
      if (micro == 1) sync.arm("test gradients");
      (net->forward(inputs[r][micro]).pow(2).mean() / 2).backward();
    }
    sync.finish("test gradients");
    overlapped[r] = sync.overlapped();
    for (auto& p : params) grads[r].push_back(p.grad().clone());
  });
  EXPECT_GE(buckets[0], 3);
  // All but the last bucket (the first layer's, which backward reaches last) began during backward.
  EXPECT_GE(overlapped[0], buckets[0] - 1);
  auto want = ref->parameters();
  ASSERT_EQ(grads[0].size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(torch::equal(grads[0][i], grads[1][i])) << i;
    EXPECT_TRUE(torch::allclose(grads[0][i], want[i].grad(), 1e-5, 1e-6)) << i;
  }
}

TEST(Distributed, RendezvousWithAMissingRankNamesIt) {
  if (!distributed_available()) GTEST_SKIP() << "built without c10d Gloo";
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = test::error_of(
      [&] { Distributed d(rank_env(0, 3, test::free_port()), std::chrono::milliseconds(1500), torch::kCPU); });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(msg.find("ranks 1, 2 of 3 never arrived"), std::string::npos) << msg;
  EXPECT_LT(s, 10.0);
}

}  // namespace
}  // namespace diffuse
