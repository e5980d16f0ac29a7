// Micro-benchmark: UNet2DModel forward (inference) and forward + backward (one training
// pass without the optimizer) for the `diffuse train` presets, in images per second.
//   bench_unet [--benchmark_filter=small] [google-benchmark flags]
// Threads: DIFFUSE_THREADS (default one per core), as `--threads` of the CLI.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>
#include <string>

#include "core/runtime.h"
#include "models/unet2d.h"
#include "train/presets.h"

namespace {

struct Case {
  const char* preset;
  int image_size, channels, classes, batch;
};

// Fashion-MNIST shapes (28x28x1, 10 classes + null) for the small presets, CIFAR-10 for the DDPM one.
const Case kCases[] = {
    {"tiny", 28, 1, 11, 64}, {"small", 28, 1, 11, 64}, {"medium", 28, 1, 11, 64}, {"ddpm-cifar10", 32, 3, 0, 8}};

void run(benchmark::State& state, const Case& c, bool backward) {
  torch::manual_seed(0);
  auto cfg = diffuse::UNet2DConfig::from_json(diffuse::unet_preset(c.preset, c.image_size, c.channels, c.classes));
  diffuse::UNet2DModel model(cfg);
  if (backward)
    model->train();
  else
    model->eval();
  auto x = torch::randn({c.batch, c.channels, c.image_size, c.image_size});
  auto t = torch::randint(1000, {c.batch}).to(torch::kFloat32);
  torch::Tensor y = c.classes > 0 ? torch::randint(c.classes, {c.batch}, torch::kInt64) : torch::Tensor();
  for (auto _ : state) {
    if (backward) {
      model->zero_grad();
      auto loss = (model->forward(x, t, y) - x).pow(2).mean();
      loss.backward();
      benchmark::DoNotOptimize(loss.item<float>());
    } else {
      torch::NoGradGuard ng;
      auto out = model->forward(x, t, y);
      benchmark::DoNotOptimize(out.data_ptr<float>());
    }
  }
  state.SetItemsProcessed(state.iterations() * c.batch);
  state.counters["batch"] = c.batch;
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("DIFFUSE_THREADS");
  const int threads = diffuse::set_threads(env ? std::atoi(env) : 0);
  benchmark::AddCustomContext("threads", std::to_string(threads));
  benchmark::AddCustomContext("runtime", diffuse::runtime_summary());
  for (const auto& c : kCases) {
    benchmark::RegisterBenchmark((std::string("unet_forward/") + c.preset).c_str(),
                                 [&c](benchmark::State& s) { run(s, c, false); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark((std::string("unet_train/") + c.preset).c_str(),
                                 [&c](benchmark::State& s) { run(s, c, true); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
