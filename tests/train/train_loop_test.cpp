#include "train/train_loop.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/atomic_file.h"
#include "core/error.h"
#include "fixtures.h"
#include "models/error_of.h"
#include "train/run_helpers.h"

namespace diffuse {
namespace {

namespace fs = std::filesystem;

// A loop whose callbacks record what was called at which step.
struct LoopRecorder {
  std::vector<int64_t> steps, saves, samples, evals;
  int plots = 0;
  LoopState state;
  LoopCallbacks callbacks(int64_t stop_after = -1) {
    LoopCallbacks cb;
    cb.step = [this, stop_after](int64_t s) {
      steps.push_back(s);
      if (s + 1 == stop_after) train_stop_flag() = true;
    };
    cb.metrics_row = [](int64_t s, double, double, double eval) {
      return std::to_string(s) + "," + (std::isnan(eval) ? std::string() : std::to_string(eval)) + "\n";
    };
    cb.save = [this] { saves.push_back(state.step); };
    cb.plots = [this] { ++plots; };
    cb.sample = [this](int64_t s) { samples.push_back(s); };
    return cb;
  }
};

TEST(TrainLoop, RunsStepsWithSaveSampleEvalAndLogCadence) {
  test::TempDir dir;
  start_run_files(dir.path, {{"a", 1}}, "step,eval", true);
  LoopOptions o;
  o.out = dir.path;
  o.steps = 12;
  o.save_every = 5;
  o.sample_every = 4;
  o.eval_every = 6;
  o.log_every = 3;
  o.images_per_step = 2;
  o.quiet = true;
  LoopRecorder r;
  r.state.step = 2;  // resumed at step 2
  auto cb = r.callbacks();
  cb.evaluate = [&](int64_t s) {
    r.evals.push_back(s);
    return 0.5 * static_cast<double>(s);
  };
  auto res = run_training_loop(o, r.state, cb);
  EXPECT_FALSE(res.interrupted);
  EXPECT_EQ(r.state.step, 12);
  EXPECT_EQ(r.steps, (std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(r.saves, (std::vector<int64_t>{5, 6, 10, 12}));  // save cadence, before each evaluation, the end
  EXPECT_EQ(r.evals, (std::vector<int64_t>{6, 12}));
  EXPECT_EQ(r.samples, (std::vector<int64_t>{4, 8, 12}));
  EXPECT_EQ(r.plots, 3);  // after the rows of each save are written
  EXPECT_EQ(read_file(dir / "metrics.csv"), "step,eval\n3,\n5,\n6,3.000000\n9,\n10,\n12,6.000000\n");
  EXPECT_GT(r.state.trained_seconds, 0.0);
  cb.evaluate = nullptr;
  EXPECT_NE(test::error_of([&] { run_training_loop(o, r.state, cb); }).find("eval_every"), std::string::npos);
}

TEST(TrainLoop, LossReportWritesTheProgressAndMetricsOfTheCurrentLoss) {
  double loss = 0.123456789, lr = 1e-4;
  LossReport report;
  report.loss = &loss;
  report.lr = &lr;
  LoopCallbacks cb;
  set_loss_callbacks(cb, report);
  EXPECT_EQ(cb.progress_text(), "loss 0.1235 lr 1.00e-04");
  EXPECT_EQ(cb.metrics_row(7, 12.34, 5.66, NAN), "7,0.123457,0.0001,12.3,5.7\n");
  EXPECT_EQ(cb.finish_text(), "loss 0.123457");
  loss = 2.5;  // read when asked
  lr = 3e-5;
  EXPECT_EQ(cb.progress_text(), "loss 2.5000 lr 3.00e-05");
  EXPECT_EQ(cb.metrics_row(8, 0, 0, NAN), "8,2.5,3e-05,0.0,0.0\n");

  loss = 0.123456789;
  report.loss_digits = 9;
  report.progress_detail = [] { return std::string(" (instance 0.1000)"); };
  report.extra_columns = [](double eval) { return std::isnan(eval) ? std::string(",") : "," + std::to_string(eval); };
  set_loss_callbacks(cb, report);
  EXPECT_EQ(cb.progress_text(), "loss 0.1235 (instance 0.1000) lr 3.00e-05");
  EXPECT_EQ(cb.metrics_row(9, 1, 2, NAN), "9,0.123456789,3e-05,1.0,2.0,\n");
  EXPECT_EQ(cb.metrics_row(9, 1, 2, 0.5), "9,0.123456789,3e-05,1.0,2.0,0.500000\n");

  LossReport none;
  EXPECT_NE(test::error_of([&] { set_loss_callbacks(cb, none); }).find("loss and lr"), std::string::npos);
}

TEST(TrainLoop, StopFlagEndsTheRunWithACheckpoint) {
  test::TempDir dir;
  start_run_files(dir.path, {}, "step,eval", true);
  LoopOptions o;
  o.out = dir.path;
  o.steps = 100;
  o.quiet = true;
  LoopRecorder r;
  auto res = run_training_loop(o, r.state, r.callbacks(/*stop_after=*/7));
  EXPECT_TRUE(res.interrupted);
  EXPECT_EQ(r.state.step, 7);
  EXPECT_EQ(r.saves, (std::vector<int64_t>{7}));
  EXPECT_EQ(r.plots, 1);
  // The flag is cleared by the next run, which continues where this one stopped.
  auto res2 = run_training_loop(o, r.state, r.callbacks());
  EXPECT_FALSE(res2.interrupted);
  EXPECT_EQ(r.state.step, 100);
}

TEST(TrainLoop, OpenRunRefusesAnExistingRunAndTrimsResumedMetrics) {
  test::TempDir dir;
  const std::string out = dir / "run";
  const nlohmann::json opts = {{"batch", 4}, {"seed", 1}};
  EXPECT_FALSE(open_run(out, opts, {"batch"}, /*resume=*/false, true).has_value());
  start_run_files(out, opts, "step,loss", true);
  write_file_atomically(out + "/metrics.csv", "step,loss\n5,1\n10,0.5\n15,0.25\n");
  EXPECT_NE(test::error_of([&] { open_run(out, opts, {"batch"}, false, true); }).find("already holds"),
            std::string::npos);
  EXPECT_FALSE(open_run(out, opts, {"batch"}, /*resume=*/true, true).has_value());  // no checkpoint yet
  fs::create_directories(out + "/checkpoint");
  write_file_atomically(out + "/checkpoint/state.json",
                        nlohmann::json{{"step", 10}, {"smooth_loss", 0.5}, {"seconds", 1.0}, {"options", opts}}.dump());
  auto st = open_run(out, opts, {"batch"}, true, true);
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(st->step, 10);
  EXPECT_EQ(read_file(out + "/metrics.csv"), "step,loss\n5,1\n10,0.5\n");
  auto other = opts;
  other["batch"] = 8;
  EXPECT_NE(test::error_of([&] { open_run(out, other, {"batch"}, true, true); }).find("--batch"), std::string::npos);
}

}  // namespace
}  // namespace diffuse
