// Denoising on held-out Fashion-MNIST: PSNR of the noisy input, the best Gaussian blur and median
// filter (their settings searched per noise level on the same images), and the diffusion model's
// denoiser (mmse: one call) and sampler entered at the noise level (sample), each with the known
// sigma and with the estimated one (estimate_noise_sigma); and the estimator's relative error.
//
// Images: the first --n of the test split (t10k, never seen in training), in [-1, 1]; noise:
// x + sigma * N(0, 1) from a seeded generator, kept in float (neither clipped nor quantised).
// Every output is clamped to [-1, 1] before its PSNR (peak-to-peak 2), as a saved image would be.
// Prints a Markdown table and the CPU.
//
// Usage: denoise_bench [--model DIR] [--n 200] [--sigmas 0.1,0.2,0.4] [--sampler dpm++2m]
//                      [--steps 20] [--seed 0] [--threads 1]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/runtime.h"
#include "eval/denoise_eval.h"
#include "pipelines/denoise.h"
#include "train/dataset.h"

using namespace diffuse;
using Clock = std::chrono::steady_clock;

namespace {

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

struct Row {
  std::string method, setting;
  std::vector<double> psnr;  // per sigma
  double seconds = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string model = std::string(DIFFUSE_SOURCE_DIR) + "/models/fashion-mnist", sampler = "dpm++2m";
  int n = 200, steps = 20, threads = 1;
  uint64_t seed = 0;
  std::vector<double> sigmas = {0.1, 0.2, 0.4};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") {
      model = v;
    } else if (k == "--n") {
      n = std::stoi(v);
    } else if (k == "--steps") {
      steps = std::stoi(v);
    } else if (k == "--sampler") {
      sampler = v;
    } else if (k == "--seed") {
      seed = std::stoull(v);
    } else if (k == "--threads") {
      threads = std::stoi(v);
    } else if (k == "--sigmas") {
      sigmas.clear();
      std::stringstream ss(v);
      for (std::string t; std::getline(ss, t, ',');) sigmas.push_back(std::stod(t));
    } else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  set_threads(threads);
  torch::NoGradGuard ng;
  auto pipe = PixelPipeline::load(model);
  auto data = load_dataset("fashion-mnist", "test");
  auto clean = data.images.slice(0, 0, n).to(torch::kFloat32) / 127.5 - 1;
  n = static_cast<int>(clean.size(0));

  std::vector<Row> rows = {{"noisy input", "", {}, 0},
                           {"Gaussian blur (best)", "", {}, 0},
                           {"median filter (best)", "", {}, 0},
                           {"diffuse denoise mmse, known sigma", "", {}, 0},
                           {"diffuse denoise mmse, auto sigma", "", {}, 0},
                           {"diffuse denoise sample, known sigma", "", {}, 0},
                           {"diffuse denoise sample, auto sigma", "", {}, 0}};
  std::vector<std::string> estimator;
  auto gen = at::detail::createCPUGenerator(seed);
  for (double sigma : sigmas) {
    auto noisy = clean + sigma * torch::randn(clean.sizes(), gen);
    // the estimate per image
    std::vector<double> est(static_cast<size_t>(n));
    double mean_rel = 0, max_rel = 0, mean_est = 0;
    for (int i = 0; i < n; ++i) {
      est[i] = estimate_noise_sigma(noisy[i]);
      const double rel = std::abs(est[i] - sigma) / sigma;
      mean_rel += rel / n;
      mean_est += est[i] / n;
      max_rel = std::max(max_rel, rel);
    }
    // the same noisy images as 8-bit files: clipped to [-1, 1] and quantised
    auto file = ((noisy + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1;
    double mean_rel8 = 0;
    for (int i = 0; i < n; ++i) mean_rel8 += std::abs(estimate_noise_sigma(file[i]) - sigma) / sigma / n;
    char buf[200];
    std::snprintf(buf, sizeof buf, "| %.1f | %.4f | %.1f %% | %.1f %% | %.1f %% |", sigma, mean_est, 100 * mean_rel,
                  100 * max_rel, 100 * mean_rel8);
    estimator.push_back(buf);
    auto timed = [&](Row& row, const std::function<torch::Tensor()>& f) {
      const auto t0 = Clock::now();
      auto out = f();
      row.seconds += std::chrono::duration<double>(Clock::now() - t0).count();
      row.psnr.push_back(mean_psnr(out, clean));
    };
    rows[0].psnr.push_back(mean_psnr(noisy, clean));
    auto blur = best_gaussian_blur(noisy, clean);
    rows[1].psnr.push_back(blur.psnr);
    rows[1].setting += (rows[1].setting.empty() ? "" : ", ") + std::to_string(blur.setting).substr(0, 3) + " px";
    auto med = best_median_filter(noisy, clean);
    rows[2].psnr.push_back(med.psnr);
    rows[2].setting += (rows[2].setting.empty() ? "" : ", ") + std::to_string(static_cast<int>(med.setting)) + "x" +
                       std::to_string(static_cast<int>(med.setting));
    for (int mode = 0; mode < 4; ++mode) {
      const bool sample = mode >= 2, known = mode % 2 == 0;
      timed(rows[3 + mode], [&] {
        if (known) {
          DenoiseOptions o;
          o.sigma = sigma;
          o.sample = sample;
          o.sampler = sampler;
          o.steps = steps;
          o.seed = seed;
          return denoise(pipe, noisy, o);
        }
        auto out = torch::empty_like(noisy);
        for (int i = 0; i < n; ++i) {  // each image at its own estimate
          DenoiseOptions o;
          o.sigma = est[i];
          o.sample = sample;
          o.sampler = sampler;
          o.steps = steps;
          o.seed = seed + static_cast<uint64_t>(i);
          out[i] = denoise(pipe, noisy.slice(0, i, i + 1), o)[0];
        }
        return out;
      });
    }
    std::fprintf(stderr, "sigma %.2f done\n", sigma);
  }
  std::printf(
      "Fashion-MNIST test split, first %d images; model %s; sample mode: %s, %d steps from sigma; "
      "CPU: %s, %d threads\n\n",
      n, model.c_str(), sampler.c_str(), steps, cpu_name().c_str(), torch::get_num_threads());
  std::printf("| method | ");
  for (double s : sigmas) std::printf("PSNR at sigma %.1f (dB) | ", s);
  std::printf("best setting | time (s, all sigmas) |\n|---|");
  for (size_t i = 0; i < sigmas.size(); ++i) std::printf("---|");
  std::printf("---|---|\n");
  for (const auto& r : rows) {
    std::printf("| %s | ", r.method.c_str());
    for (double p : r.psnr) std::printf("%.2f | ", p);
    std::printf("%s | %.1f |\n", r.setting.c_str(), r.seconds);
  }
  std::printf("\nNoise estimator (Donoho's MAD of the diagonal Haar details), per image:\n\n");
  std::printf(
      "| sigma | mean estimate | mean relative error | max relative error | mean relative error, 8-bit "
      "file (clipped) |\n|---|---|---|---|---|\n");
  for (const auto& e : estimator) std::printf("%s\n", e.c_str());
  return 0;
}
