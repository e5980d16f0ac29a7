#include "train/train_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/memory.h"
#include "core/progress.h"
#include "train/distributed.h"
#include "train/run_helpers.h"

namespace fs = std::filesystem;

namespace diffuse {

std::atomic<bool>& train_stop_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {

bool every(int64_t step, int64_t period, int64_t last) { return period > 0 && (step % period == 0 || step == last); }

}  // namespace

LoopResult run_training_loop(const LoopOptions& opt, LoopState& state, const LoopCallbacks& cb) {
  if (!cb.step || !cb.metrics_row || !cb.save) throw Error("training loop: step, metrics_row and save are required");
  if (opt.eval_every > 0 && !cb.evaluate) throw Error("training loop: eval_every needs an evaluate function");
  const std::string csv_path = opt.out + "/metrics.csv";
  const bool is_main = !opt.dist || opt.dist->main();
  auto wait_for_main = [&](const std::string& what) {
    if (opt.dist) opt.dist->barrier(what);
  };
  auto flush = [&](std::string& rows) {
    if (rows.empty()) return;
    std::ofstream(csv_path, std::ios::app) << rows;
    rows.clear();
  };
  auto save = [&] {
    cb.save();
    if (cb.plots) cb.plots();
  };
  Progress progress(opt.steps, opt.label, "step", !opt.quiet && is_main);
  LoopResult result;
  const auto t0 = std::chrono::steady_clock::now();
  auto t_last = t0;
  int64_t images = 0;
  std::string rows;
  train_stop_flag() = false;
  while (state.step < opt.steps) {
    bool stop = train_stop_flag();
    if (opt.dist) stop = opt.dist->any(stop, "agreeing to stop before step " + std::to_string(state.step + 1));
    if (stop) {
      result.interrupted = true;
      break;
    }
    cb.step(state.step);
    const int64_t step = ++state.step;
    images += opt.images_per_step;
    const auto now = std::chrono::steady_clock::now();
    state.trained_seconds += std::chrono::duration<double>(now - t_last).count();
    t_last = now;
    progress.update(step, cb.progress_text ? cb.progress_text() : std::string(),
                    static_cast<double>(opt.images_per_step), "img");

    const bool save_now = every(step, opt.save_every, opt.steps) || step == opt.steps;
    const bool eval_now = every(step, opt.eval_every, opt.steps);
    const bool sample_now = cb.sample && every(step, opt.sample_every, opt.steps);
    if (!is_main) {
      if (save_now || eval_now || sample_now) wait_for_main("step " + std::to_string(step) + " (rank 0 writing)");
      continue;
    }
    double eval = NAN;
    if (eval_now) {
      flush(rows);
      cb.save();  // the evaluation reads the model folder
      eval = cb.evaluate(step);
    }
    if (eval_now || save_now || every(step, opt.log_every, opt.steps)) {
      const double elapsed = std::chrono::duration<double>(now - t0).count();
      rows +=
          cb.metrics_row(step, elapsed > 0 ? static_cast<double>(images) / elapsed : 0.0, state.trained_seconds, eval);
    }
    if (save_now) {
      flush(rows);
      if (eval_now) {
        if (cb.plots) cb.plots();  // saved just before the evaluation
      } else {
        save();
      }
    }
    if (sample_now) cb.sample(step);
    if (save_now || eval_now || sample_now) wait_for_main("step " + std::to_string(step) + " (rank 0 writing)");
  }
  if (is_main) {
    flush(rows);
    if (result.interrupted) {
      save();
      if (!opt.quiet)
        std::fprintf(stderr, "\ninterrupted: checkpoint written at step %lld\n", static_cast<long long>(state.step));
    } else {
      progress.finish(cb.finish_text ? cb.finish_text() : std::string());
    }
  }
  if (result.interrupted) wait_for_main("the checkpoint of the interruption");
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

void set_loss_callbacks(LoopCallbacks& cb, const LossReport& report) {
  if (!report.loss || !report.lr) throw Error("loss report: loss and lr are required");
  const double* loss = report.loss;
  const double* lr = report.lr;
  cb.progress_text = [loss, lr, detail = report.progress_detail] {
    char text[96];
    std::snprintf(text, sizeof text, "loss %.4f%s lr %.2e", *loss, detail ? detail().c_str() : "", *lr);
    return std::string(text);
  };
  cb.metrics_row = [loss, lr, digits = report.loss_digits, extra = report.extra_columns](int64_t step, double ips,
                                                                                         double seconds, double eval) {
    char row[192];
    std::snprintf(row, sizeof row, "%lld,%.*g,%.6g,%.1f,%.1f", static_cast<long long>(step), digits, *loss, *lr, ips,
                  seconds);
    return std::string(row) + (extra ? extra(eval) : std::string()) + "\n";
  };
  cb.finish_text = [loss] { return "loss " + std::to_string(*loss); };
}

void trim_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  bool header = true;
  while (std::getline(in, line)) {
    if (!header && (line.empty() || std::stoll(line.substr(0, line.find(','))) > step)) continue;
    kept += line + "\n";
    header = false;
  }
  write_file_atomically(path, kept);
}

namespace {

std::optional<CheckpointState> open_run_alone(const std::string& out, const nlohmann::json& options,
                                              const std::vector<std::string>& resume_keys, bool resume, bool quiet) {
  const std::string ckpt_dir = out + "/checkpoint";
  if (resume && has_checkpoint(ckpt_dir)) {
    CheckpointState st = read_checkpoint_state(ckpt_dir);
    if (!st.options.contains("global_batch") && st.options.contains("batch"))
      st.options["global_batch"] = st.options["batch"];
    check_resume_options(st.options, options, resume_keys, ckpt_dir);
    trim_metrics(out + "/metrics.csv", st.step);  // rows logged after the checkpoint are logged again
    return st;
  }
  if (resume) {
    // A job preempted before its first checkpoint is relaunched with the same command.
    if (!quiet) std::fprintf(stderr, "no checkpoint in %s yet: starting from scratch\n", ckpt_dir.c_str());
  } else if (fs::exists(ckpt_dir) || fs::exists(out + "/metrics.csv")) {
    throw Error(out + ": already holds a training run (use --resume to continue it, or another --out)");
  }
  return std::nullopt;
}

}  // namespace

std::optional<CheckpointState> open_run(const std::string& out, const nlohmann::json& options,
                                        const std::vector<std::string>& resume_keys, bool resume, bool quiet,
                                        Distributed* dist) {
  keep_freed_blocks_for_reuse();  // every step's activations in the pages of the step before
  if (!dist || dist->world_size() <= 1) return open_run_alone(out, options, resume_keys, resume, quiet);
  std::optional<CheckpointState> st;
  std::string error;
  if (dist->main()) {
    try {
      st = open_run_alone(out, options, resume_keys, resume, quiet);
    } catch (const Error& e) {
      error = e.what();
    }
  }
  // Rank 0's outcome: -2 failed, -1 a fresh run, else the step it resumes from.
  auto outcome = torch::tensor({!error.empty() ? int64_t{-2} : st ? st->step : int64_t{-1}}, torch::kInt64);
  dist->broadcast({outcome}, "the outcome of opening " + out);
  if (!error.empty()) throw Error(error);
  const int64_t step = outcome.item<int64_t>();
  const std::string who = "rank " + std::to_string(dist->rank()) + ": ";
  if (step == -2) throw Error(who + "rank 0 could not open the run in " + out + " (see its message)");
  if (dist->main() || step == -1) return st;
  try {
    st = read_checkpoint_state(out + "/checkpoint");
  } catch (const Error&) {
    throw Error(who + "rank 0 resumes " + out + " from step " + std::to_string(step) +
                " but this rank finds no checkpoint there: --out must be on a filesystem every rank shares");
  }
  if (st->step != step)
    throw Error(who + "rank 0 resumes " + out + " from step " + std::to_string(step) + " but this rank reads step " +
                std::to_string(st->step) + " there: --out must be on a filesystem every rank shares");
  return st;
}

void print_run_layout(int batch, const Distributed* dist, int accumulation, bool resumed, int64_t step) {
  const int world = dist ? dist->world_size() : 1;
  const long long global = static_cast<long long>(batch) * world * std::max(accumulation, 1);
  std::fprintf(stderr, "global batch %lld = %d per process x %d process%s", global, batch, world,
               world > 1 ? "es" : "");
  if (accumulation > 0) std::fprintf(stderr, " x %d accumulation", accumulation);
  std::fprintf(stderr, "\n");
  if (dist)
    std::fprintf(stderr, "data parallel: %d processes (%s), rendezvous %s:%d\n", world, dist->backend().c_str(),
                 dist->env().master_addr.c_str(), dist->env().master_port);
  if (resumed) std::fprintf(stderr, "resuming at step %lld\n", static_cast<long long>(step));
}

void start_run_files(const std::string& out, const nlohmann::json& options, const std::string& csv_header, bool fresh) {
  fs::create_directories(out + "/samples");
  write_file_atomically(out + "/train_config.json", options.dump(2) + "\n");
  if (fresh) write_file_atomically(out + "/metrics.csv", csv_header + "\n");
}

}  // namespace diffuse
