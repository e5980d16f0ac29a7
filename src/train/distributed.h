#pragma once
// Data-parallel training across processes and machines on libtorch's c10d: rendezvous through a
// TCPStore hosted by rank 0, collectives through ProcessGroupGloo (CPU) or ProcessGroupNCCL (CUDA,
// when libtorch was built with it; Gloo otherwise). Processes are placed the way PyTorch jobs are:
// torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT) or Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, first host of
// SLURM_JOB_NODELIST).
//
// Failures: every process keeps a heartbeat in the store; a collective that fails (a peer's
// connection closed, or no progress within the timeout) is reported with the ranks whose
// heartbeat stopped. A rendezvous that does not complete within the timeout names the ranks that
// never arrived.
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace diffuse {

// Where this process sits in a job.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source;  // "torchrun" (also `--nproc-per-node`), "slurm", or "" for a single process
  // Launched by torchrun itself (TORCHELASTIC_USE_AGENT_STORE=True): its agent already hosts the
  // store at MASTER_ADDR:MASTER_PORT, so every rank connects to it, under the prefix
  // /worker/attempt_<TORCHELASTIC_RESTART_COUNT>.
  bool agent_store = false;
  int restart_count = 0;
};

// From torchrun's variables when RANK is set, else Slurm's when SLURM_PROCID is set (MASTER_ADDR
// and MASTER_PORT still win when given), else a single process. diffuse::Error naming the variable
// for a malformed value. `getenv` is the environment (std::getenv by default).
LaunchEnv launch_env(const std::function<const char*(const char*)>& getenv = nullptr);

// Slurm's compact host lists: "node[01-03,07],gpu5" -> node01 node02 node03 node07 gpu5.
std::vector<std::string> expand_nodelist(const std::string& list);

// Whether this build has c10d's Gloo backend (false: only single-process training).
bool distributed_available();

class Distributed {
 public:
  // A job of one process: every collective is the identity.
  Distributed();
  // Joins the job described by `env` (rank 0 hosts the store): waits up to `timeout` for every
  // rank, then creates the process group on `device` (NCCL for CUDA when available, else Gloo).
  Distributed(const LaunchEnv& env, std::chrono::milliseconds timeout, torch::Device device);
  ~Distributed();
  Distributed(const Distributed&) = delete;
  Distributed& operator=(const Distributed&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  bool main() const { return env_.rank == 0; }
  const LaunchEnv& env() const { return env_; }
  std::string backend() const;  // "gloo", "nccl" or "none"

  // Rank 0's values into every rank's tensors (in place).
  void broadcast(const std::vector<torch::Tensor>& tensors, const std::string& what);
  // Every rank's tensors replaced by their mean over the ranks (flattened into buckets of at
  // most `bucket_bytes`). Tensors of one dtype and device.
  void all_reduce_mean(const std::vector<torch::Tensor>& tensors, const std::string& what,
                       int64_t bucket_bytes = 25 << 20);
  // Whether `flag` is true on any rank.
  bool any(bool flag, const std::string& what);
  // All ranks wait here for each other; rank 0 may take as long as it needs (e.g. writing a
  // checkpoint or samples) while its heartbeat goes on.
  void barrier(const std::string& what);

  // An asynchronous sum over the ranks (in place); wait() may throw like the others.
  struct Pending {
    std::function<void()> wait;
  };
  Pending all_reduce_sum_async(torch::Tensor flat, const std::string& what);

  // Rethrows a failure of a collective as a diffuse::Error naming the ranks that stopped.
  [[noreturn]] void fail(const std::string& what, const std::string& cause);

  struct Impl;

 private:
  LaunchEnv env_;
  std::unique_ptr<Impl> impl_;
};

// Gradient all-reduce overlapped with backward: parameters are grouped in buckets (in reverse
// order, the order in which backward produces their gradients); a bucket is reduced as soon as
// every gradient in it has arrived, in bucket order on every rank. After finish(), every
// parameter's .grad holds the mean over the ranks of its accumulated gradient.
class GradientSync {
 public:
  GradientSync(std::shared_ptr<Distributed> dist, std::vector<torch::Tensor> params, int64_t bucket_bytes = 25 << 20);
  ~GradientSync();
  // The next backward pass is the last before the update: its gradients are reduced as they come.
  // `what` names them in errors (e.g. "gradients at step 12").
  void arm(const std::string& what);
  // Waits for the reductions (reducing what no backward reached) and writes the means into .grad.
  void finish(const std::string& what);
  int buckets() const;
  // Buckets of the last finish() whose reduction began during backward (the overlap).
  int overlapped() const;

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace diffuse
