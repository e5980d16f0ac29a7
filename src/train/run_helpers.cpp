#include "train/run_helpers.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "train/fused_updates.h"

namespace diffuse {

double scheduled_lr(double peak, int64_t step, int64_t warmup, const std::string& schedule, int64_t total) {
  double warm = warmup > 0 ? std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup)) : 1.0;
  double f = 1.0;
  if (schedule == "cosine")
    f = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, static_cast<double>(step) /
                                                       static_cast<double>(std::max<int64_t>(1, total)))));
  return peak * warm * f;
}

void check_resume_options(const nlohmann::json& saved, const nlohmann::json& now, const std::vector<std::string>& keys,
                          const std::string& source) {
  for (const auto& key : keys)
    if (saved.contains(key) && saved[key] != now[key]) {
      // The global batch is --batch x processes: either may change, not their product.
      const std::string what = key == "global_batch" ? "global batch (--batch x processes)" : "--" + key;
      throw Error(source + ": --resume with a different " + what + " (checkpoint has " + saved[key].dump() + ", now " +
                  now[key].dump() + ")");
    }
}

void update_ema(const std::vector<torch::Tensor>& ema, const std::vector<torch::Tensor>& model, double decay,
                int64_t step) {
  torch::NoGradGuard ng;
  const double d = std::min(decay, (1.0 + static_cast<double>(step)) / (10.0 + static_cast<double>(step)));
  for (size_t i = 0; i < ema.size(); ++i) {
    auto e = ema[i];
    if (!ema_update_fused(e, model[i].detach(), float(d))) ema[i].mul_(d).add_(model[i].detach(), 1.0 - d);
  }
}

std::map<std::string, std::vector<double>> read_csv_columns(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open");
  auto split = [](const std::string& line) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    if (!line.empty() && line.back() == ',') cells.emplace_back();
    return cells;
  };
  std::string line;
  std::getline(f, line);
  const auto header = split(line);
  std::map<std::string, std::vector<double>> cols;
  for (const auto& h : header) cols[h];
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    auto cells = split(line);
    for (size_t i = 0; i < header.size(); ++i) {
      double v = NAN;
      if (i < cells.size() && !cells[i].empty()) {
        try {
          v = std::stod(cells[i]);
        } catch (const std::exception&) {
          throw Error(path + ": not a number: '" + cells[i] + "'");
        }
      }
      cols[header[i]].push_back(v);
    }
  }
  return cols;
}

bool NonFiniteGuard::ok(double loss, const std::vector<torch::Tensor>& params, int64_t step) {
  bool finite = std::isfinite(loss);
  if (finite) {
    std::vector<torch::Tensor> norms;
    for (const auto& p : params)
      if (p.grad().defined()) norms.push_back(p.grad().detach().abs().max().to(torch::kFloat32));
    finite = norms.empty() || torch::isfinite(torch::stack(norms)).all().item<bool>();
  }
  if (finite) {
    in_a_row_ = 0;
    return true;
  }
  ++skipped_;
  ++in_a_row_;
  std::fprintf(stderr, "\nwarning: step %lld: %s is not finite; the step is skipped (%d in a row)\n",
               static_cast<long long>(step), std::isfinite(loss) ? "a gradient" : "the loss", in_a_row_);
  if (in_a_row_ >= max_)
    throw Error("training diverged: " + std::to_string(in_a_row_) +
                " steps in a row with NaN or Inf loss or "
                "gradients (up to step " +
                std::to_string(step) +
                "); the last checkpoint is the last good one. "
                "Lower --lr or enable --grad-clip");
  return false;
}

}  // namespace diffuse
