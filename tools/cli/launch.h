#pragma once
// Data-parallel launches of the training commands: `--nproc-per-node N` runs the command again as
// N processes on this machine (as torchrun does: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT set for each, the threads split between them), and every process joins
// the job its environment describes (torchrun's or Slurm's variables).
#include <CLI/CLI.hpp>
#include <memory>
#include <string>

namespace diffuse {
class Distributed;
}

namespace diffuse::cli {

struct DistFlags {
  int nproc_per_node = 1;
  double timeout_s = 60;
};

// --nproc-per-node and --dist-timeout.
void add_dist_options(CLI::App* cmd, DistFlags* flags);

// With flags.nproc_per_node > 1 (and not already inside a launched job): starts the processes,
// waits for them and returns true; a failed process makes this throw CLI::RuntimeError with its
// exit status after the others have stopped (they stop by themselves within the timeout; any left
// after it are killed). False: this process should train itself.
bool launch_local(const DistFlags& flags, int threads);

// The job this process belongs to (null: a single process). `device` "cuda" becomes
// "cuda:<LOCAL_RANK>".
std::shared_ptr<Distributed> join_job(const DistFlags& flags, std::string& device);

}  // namespace diffuse::cli
