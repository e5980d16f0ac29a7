#pragma once
// The training loop every trainer shares (`train` for UNets and DiTs, `train-vae`): the stop flag
// (Ctrl-C), progress line, clocks, metrics.csv rows, save, sample and evaluation cadence, and the
// checkpoint on interruption. A trainer supplies what one optimizer step is and what its rows,
// checkpoints and samples hold; it also opens its run folder here (resume check, metrics header).
#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "train/checkpoint.h"

namespace diffuse {

class Distributed;

// Set to true (e.g. from a SIGINT handler) to stop at the next step boundary.
std::atomic<bool>& train_stop_flag();

struct LoopOptions {
  std::string label = "train";  // of the progress line
  std::string out;              // run folder: rows are appended to out/metrics.csv
  int64_t steps = 0;            // optimizer steps in total
  int64_t save_every = 0;       // checkpoint cadence (0 = only at the end and on interruption)
  int64_t sample_every = 0;     // sample cadence (0 = never)
  int64_t eval_every = 0;       // evaluation cadence (0 = never; needs LoopCallbacks::evaluate)
  int64_t log_every = 50;       // metrics.csv cadence (also at saves, evaluations and the end)
  int64_t images_per_step = 0;  // for the rate (img/s) of the progress line and metrics.csv
  bool quiet = false;
  // Data-parallel job (null: one process): the ranks agree on stopping, rank 0 alone shows
  // progress and calls metrics_row, save, plots, sample and evaluate while the others wait.
  Distributed* dist = nullptr;
};

// What the loop advances; trainers read it for their checkpoints.
struct LoopState {
  int64_t step = 0;              // optimizer steps done
  double trained_seconds = 0.0;  // training time over all runs of this folder
};

struct LoopCallbacks {
  // One optimizer step, the `step`-th (0-based): batches, forward, backward, update. Required.
  std::function<void(int64_t step)> step;
  // Free text of the progress line after a step (e.g. the smoothed loss).
  std::function<std::string()> progress_text;
  // One metrics.csv line (newline included) for `step`: img/s since the run began, training time,
  // and the evaluation's value at this step (NaN when none). Required.
  std::function<std::string(int64_t step, double img_per_s, double trained_seconds, double eval)> metrics_row;
  // Writes the checkpoint and the model folder. Required.
  std::function<void()> save;
  // Optional: redraws the plots of metrics.csv (after each save, once the rows are written).
  std::function<void()> plots;
  // Optional: writes the samples of `step`.
  std::function<void(int64_t step)> sample;
  // Optional: a metric of the model folder just saved (e.g. FID), at eval_every steps.
  std::function<double(int64_t step)> evaluate;
  // Optional: text of the final progress line.
  std::function<std::string()> finish_text;
};

struct LoopResult {
  double seconds = 0;        // wall time of this run of the loop
  bool interrupted = false;  // stopped by train_stop_flag(); a checkpoint was written
};

// The loss report of a trainer that keeps a smoothed loss and the learning rate of the last step:
// the progress line "loss L lr R", the final line "loss L" and metrics.csv rows that begin
// step,loss,lr,img_per_s,elapsed_s. `loss` and `lr` are read each time the loop asks.
struct LossReport {
  const double* loss = nullptr;
  const double* lr = nullptr;
  int loss_digits = 6;  // significant digits of the loss in metrics.csv
  // Optional: text right after the loss on the progress line.
  std::function<std::string()> progress_detail;
  // Optional: the trainer's further metrics.csv columns, each with its leading comma, given the
  // evaluation's value at the row's step (NaN when none).
  std::function<std::string(double eval)> extra_columns;
};

// Sets cb.progress_text, cb.metrics_row and cb.finish_text from `report`.
void set_loss_callbacks(LoopCallbacks& cb, const LossReport& report);

// Runs steps state.step .. opt.steps - 1 (resets train_stop_flag() first).
LoopResult run_training_loop(const LoopOptions& opt, LoopState& state, const LoopCallbacks& cb);

// Opens a run folder: with `resume`, reads and checks its checkpoint (diffuse::Error naming the
// option whose value differs, for `resume_keys`), and drops metrics.csv rows logged after it;
// without, refuses a folder that already holds a run. Returns the checkpoint's state, or nothing
// for a fresh run (also a resumed one whose first checkpoint was never written).
// A checkpoint without "global_batch" (written before data parallelism) reads its "batch" as it.
// In a data-parallel job rank 0 opens the folder and the other ranks read the checkpoint rank 0
// resumes from (the folder must be on a filesystem every rank sees).
// Every trainer opens its run before loading anything, so this also sets the process's memory
// policy for training (keep_freed_blocks_for_reuse() in core/memory.h).
std::optional<CheckpointState> open_run(const std::string& out, const nlohmann::json& options,
                                        const std::vector<std::string>& resume_keys, bool resume, bool quiet,
                                        Distributed* dist = nullptr);

// Prints a run's layout to stderr: "global batch G = B per process x W process(es)" (with
// " x A accumulation" when `accumulation` > 0), the rendezvous of a data-parallel job, and the
// step a resumed run starts at.
void print_run_layout(int batch, const Distributed* dist, int accumulation, bool resumed, int64_t step);

// Writes out/train_config.json and, for a fresh run, out/metrics.csv with its header line.
void start_run_files(const std::string& out, const nlohmann::json& options, const std::string& csv_header, bool fresh);

// Drops the rows of a metrics.csv after `step` (logged by a run killed after its checkpoint).
void trim_metrics(const std::string& path, int64_t step);

}  // namespace diffuse
