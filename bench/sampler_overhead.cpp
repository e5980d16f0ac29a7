// Sampler overhead on a real model: time inside the denoiser (the network plus its
// parameterisation wrapper) vs the whole sampler run, for every sampler.
//
// For each batch size and sampler: x = noise * sigma_0 on the sampler's default schedule
// ("discrete", as `diffuse generate` uses), class labels 0..9 repeated, no guidance. The bound
// denoiser is wrapped by a timer; the whole sampler call is timed too. Per step:
//   step = total / steps, model = time inside the denoiser / steps, overhead = step - model.
// One untimed warm-up call of the denoiser per batch size; each sampler is then run `--repeats`
// times and the table reports the averages over the repeats. Prints a Markdown table.
//
// Usage: sampler_overhead [--model DIR] [--batch 16,1] [--steps 20] [--repeats 2] [--threads 1]
//                         [--sampler NAME,...]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "diffusion/noise.h"
#include "diffusion/sampler.h"
#include "diffusion/sigmas.h"
#include "pipelines/pixel_pipeline.h"

using namespace diffuse;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');)
    if (!t.empty()) out.push_back(t);
  return out;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Timing {
  double total = 0, model = 0;
  long nfe = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string model = "models/fashion-mnist", batches = "16,1", only;
  int steps = 20, repeats = 2, threads = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      model = v;
    else if (k == "--batch")
      batches = v;
    else if (k == "--steps")
      steps = std::atoi(v.c_str());
    else if (k == "--repeats")
      repeats = std::atoi(v.c_str());
    else if (k == "--threads")
      threads = std::atoi(v.c_str());
    else if (k == "--sampler")
      only = v;
    else {
      std::cerr << "unknown option " << k << "\n";
      return 2;
    }
  }
  if (threads > 0) torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  const PixelPipeline pipe = PixelPipeline::load(model);
  const CondDenoiser cd = pipe.denoiser();
  const auto sigmas = make_sigmas("discrete", steps, DiscreteSchedule(pipe.scheduler), pipe.scheduler);
  const int c = pipe.channels(), s = pipe.image_size();
  std::vector<const SamplerDesc*> list;
  if (only.empty())
    for (const auto& d : samplers()) list.push_back(&d);
  else
    for (const auto& n : split(only)) list.push_back(&find_sampler(n));

  std::printf("model %s (%dx%dx%d), schedule discrete, %d steps, %d repeat(s), %d thread(s)\n\n", model.c_str(), c, s,
              s, steps, repeats, torch::get_num_threads());
  std::printf("| batch | sampler | NFE | step ms | model ms | overhead ms | overhead %% |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  double worst = 0;
  std::string worst_name;
  for (const auto& bstr : split(batches)) {
    const int B = std::atoi(bstr.c_str());
    std::vector<int64_t> labels;
    for (int i = 0; i < B; ++i) labels.push_back(pipe.class_conditional() ? i % 10 : 0);
    const Denoiser den = pipe.class_conditional()
                             ? bind(cd, Cond{{{"class_labels", torch::tensor(labels, torch::kInt64)}}})
                             : bind(cd, Cond{});
    const auto x0 = torch::randn({B, c, s, s}, at::detail::createCPUGenerator(0)) * sigmas[0].item<double>();
    den(x0, sigmas.slice(0, 0, 1).expand({B}).contiguous());  // warm-up, untimed
    for (const SamplerDesc* d : list) {
      Timing t;
      Denoiser timed = [&](const torch::Tensor& x, const torch::Tensor& sg) {
        auto a = Clock::now();
        auto out = den(x, sg);
        t.model += seconds(Clock::now() - a);
        ++t.nfe;
        return out;
      };
      for (int r = 0; r < repeats; ++r) {
        TorchNoise noise(1);
        SamplerOptions opt;
        opt.noise = &noise;
        auto a = Clock::now();
        auto out = d->fn(timed, x0, sigmas, opt);
        t.total += seconds(Clock::now() - a);
        if (!torch::isfinite(out).all().item<bool>()) std::cerr << d->name << ": non-finite output\n";
      }
      const double n = double(steps) * repeats;
      const double ov = t.total - t.model, pct = 100.0 * ov / t.total;
      if (pct > worst) worst = pct, worst_name = d->name + " (batch " + bstr + ")";
      std::printf("| %d | %s | %.1f | %.2f | %.2f | %.3f | %.3f |\n", B, d->name.c_str(), t.nfe / double(repeats),
                  1e3 * t.total / n, 1e3 * t.model / n, 1e3 * ov / n, pct);
      std::fflush(stdout);
    }
  }
  std::printf("\nlargest overhead: %.3f %% (%s)\n", worst, worst_name.c_str());
  return 0;
}
