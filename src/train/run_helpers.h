#pragma once
// Small pieces every training loop needs: the learning-rate schedule, the resume check of a
// run's options, the EMA update and reading back metrics.csv for plots.
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace diffuse {

// `peak` after a linear warm-up of `warmup` steps; "cosine" then decays to 0 at `total` steps,
// "constant" keeps it.
double scheduled_lr(double peak, int64_t step, int64_t warmup, const std::string& schedule, int64_t total);

// Throws diffuse::Error naming `source` and the option when a key of `keys` differs between the
// options saved in a checkpoint and the current ones.
void check_resume_options(const nlohmann::json& saved, const nlohmann::json& now, const std::vector<std::string>& keys,
                          const std::string& source);

// ema = d * ema + (1 - d) * model with d = min(decay, (1 + step) / (10 + step)).
void update_ema(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& model, double decay,
                int64_t step);

// Skips training steps whose loss or gradients hold NaN / Inf (each with a warning on stderr);
// `max_in_a_row` such steps in a row stop the run with a diffuse::Error, before anything is saved
// (so the last checkpoint stays the last good one).
class NonFiniteGuard {
 public:
  explicit NonFiniteGuard(int max_in_a_row) : max_(max_in_a_row) {}
  // Whether the step may update the weights.
  bool ok(double loss, const std::vector<torch::Tensor>& params, int64_t step);
  int skipped() const { return skipped_; }

 private:
  int max_, in_a_row_ = 0, skipped_ = 0;
};

// The columns of a CSV file with a header line: name -> values (NaN for empty cells).
std::map<std::string, std::vector<double>> read_csv_columns(const std::string& path);

}  // namespace diffuse
