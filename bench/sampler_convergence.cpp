// Error vs NFE of every deterministic sampler on an exact oracle: the 2-D Gaussian mixture of
// tests/diffusion/oracle.h, whose ideal denoiser is known in closed form (float64 throughout).
//
// For each sampler and step count N (Karras schedule, rho = 7, sigma 20 -> 0.02, then 0):
//   error = max |x - x_ref| over a batch of 8 samples, at the last non-zero sigma (0.02),
//   x_ref = the PF-ODE solution from sigma 20 to 0.02: classical RK4 in log-sigma with 4000 steps
//           (its distance to the 2000-step solution is printed: it must be far below the errors);
//   NFE   = denoiser calls of the whole N-step run (a counting wrapper around the denoiser; one
//           call on the batch counts once). The CSV also gives the calls made before the sample
//           at the last non-zero sigma was reported (nfe_to_last).
// The error is taken before the final step to sigma 0: with an ideal denoiser that step is
// D(x, sigma_min) for every sampler and would hide the solver's error.
//
// Writes <dir>/sampler_convergence.png (log-log, one series per sampler) and
// <dir>/sampler_convergence.csv. Usage: sampler_convergence [dir] (default: docs).
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "core/plot.h"
#include "diffusion/oracle.h"
#include "diffusion/sampler.h"
#include "diffusion/sigmas.h"

using namespace diffuse;

namespace {

constexpr double kSigmaMin = 0.02, kSigmaMax = 20.0;
const std::vector<int> kSteps = {4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64, 80, 100, 128, 160, 200, 256};

struct Run {
  int steps = 0;
  long nfe = 0, nfe_to_last = 0;
  double max_err = 0, rms_err = 0;
};

Run run(const SamplerDesc& d, const Denoiser& D, const torch::Tensor& x, const torch::Tensor& ref, int n) {
  long calls = 0;
  Denoiser counted = [&](const torch::Tensor& xx, const torch::Tensor& s) {
    ++calls;
    return D(xx, s);
  };
  auto sig = karras_sigmas(n, kSigmaMin, kSigmaMax).to(torch::kFloat64);
  torch::Tensor at_last;
  Run r;
  r.steps = n;
  SamplerOptions opt;
  opt.eta = 0;
  opt.callback = [&](const StepInfo& i) {
    if (i.step == n - 2) {
      at_last = i.x;
      r.nfe_to_last = calls;
    }
  };
  d.fn(counted, x, sig, opt);
  r.nfe = calls;
  auto e = at_last - ref;
  r.max_err = e.abs().max().item<double>();
  r.rms_err = e.pow(2).mean().sqrt().item<double>();
  return r;
}

// Least-squares slope of log(err) against log(nfe), negated, over the runs with nfe >= from.
double fit_order(const std::vector<Run>& runs, long from) {
  double sx = 0, sy = 0, sxx = 0, sxy = 0, k = 0;
  for (const auto& r : runs) {
    if (r.nfe < from || !(r.max_err > 1e-13)) continue;  // skip float64 round-off floor
    double lx = std::log(double(r.nfe)), ly = std::log(r.max_err);
    sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly, k += 1;
  }
  return k < 2 ? NAN : -(k * sxy - sx * sy) / (k * sxx - sx * sx);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "docs";
  torch::set_num_threads(1);
  auto mix = oracle::gmm();
  const Denoiser D = mix.denoiser();
  auto x = oracle::randn({8, 2}, 4) * kSigmaMax;
  const double smin = static_cast<float>(kSigmaMin);  // schedules are float32: end exactly on it
  auto ref = oracle::rk4_flow(D, x, kSigmaMax, smin, 4000);
  const double ref_err = (ref - oracle::rk4_flow(D, x, kSigmaMax, smin, 2000)).abs().max().item<double>();
  std::printf("reference: RK4 4000 steps in log-sigma; |4000 - 2000 steps| = %.2e\n", ref_err);

  std::ofstream csv(dir + "/sampler_convergence.csv");
  csv << "sampler,order,steps,nfe,nfe_to_last,max_abs_error,rms_error\n";
  csv.precision(6);
  std::vector<PlotSeries> series;
  // tab10 has 10 colours; the 11th and 12th deterministic samplers get these.
  const std::array<uint8_t, 3> extra[] = {{20, 20, 20}, {0, 0, 140}};
  size_t k = 0;
  std::printf("%-10s %5s %12s %12s %14s\n", "sampler", "order", "err@~20NFE", "err@~200NFE", "slope(NFE>=50)");
  for (const auto& d : samplers()) {
    if (d.stochastic) continue;
    std::vector<Run> runs;
    for (int n : kSteps) runs.push_back(run(d, D, x, ref, n));
    PlotSeries s;
    s.label = d.name == "ddim" ? "ddim (same line as euler)" : d.name;
    s.markers = true;
    s.color = k < 10 ? plot_palette(k) : extra[k - 10];
    ++k;
    auto near = [&](long nfe) {
      const Run* best = &runs[0];
      for (const auto& r : runs)
        if (std::abs(std::log(double(r.nfe) / nfe)) < std::abs(std::log(double(best->nfe) / nfe))) best = &r;
      return best->max_err;
    };
    for (const auto& r : runs) {
      s.x.push_back(double(r.nfe));
      s.y.push_back(r.max_err);
      csv << d.name << "," << d.order << "," << r.steps << "," << r.nfe << "," << r.nfe_to_last << ","
          << std::scientific << r.max_err << "," << r.rms_err << std::defaultfloat << "\n";
    }
    std::printf("%-10s %5d %12.3e %12.3e %14.2f\n", d.name.c_str(), d.order, near(20), near(200), fit_order(runs, 50));
    series.push_back(std::move(s));
  }
  PlotOptions po;
  po.title = "Error vs NFE, Gaussian-mixture oracle";
  po.xlabel = "NFE (denoiser calls; Karras schedule, sigma 20 -> 0.02 -> 0)";
  po.ylabel = "max abs error at sigma = 0.02";
  po.log_x = po.log_y = true;
  po.width = 990;  // text scale 2 (min(w / 400, h / 250) < 2.5): the legend fits the empty lower left
  po.height = 900;
  save_plot(dir + "/sampler_convergence.png", series, po);
  std::printf("wrote %s/sampler_convergence.png and .csv\n", dir.c_str());
  return 0;
}
