// Micro-benchmarks of the blocks Stable Diffusion spends its time in, at SD 1.5's widths, and of
// building its UNet with and without random initialisation (what loading pays):
//   attention/self_1024x640, attention/cross_4096x320, resnet/320_64x64, groupnorm_silu/320_64x64,
//   groupnorm_silu_train/{autocast,fused}_64x32x28x28 (bf16 activations, forward + backward),
//   conv3x3_train/{direct,winograd}_64x64x14x14, attention_train/{libtorch,fused}_64x2x196x32 (fp32,
//   forward + backward, at the Fashion-MNIST preset's 14x14 level),
//   sampler_step/{euler,dpm++2m}, unet_build/{random_init,skip_init}
//   bench_blocks [--benchmark_filter=attention] [google-benchmark flags]
// Threads: DIFFUSE_THREADS (default one per core). The context lines print the CPU and runtime.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "core/runtime.h"
#include "diffusion/sampler.h"
#include "models/unet2d_condition.h"
#include "nn/attention.h"
#include "nn/attention_fp32.h"
#include "nn/autocast.h"
#include "nn/conv2d.h"
#include "nn/group_norm.h"
#include "nn/resnet.h"
#include "nn/skip_init.h"

namespace {

using diffuse::nn::AttentionOptions;

// Self-attention over the 32x32 tokens of SD's second level (640 channels, 8 heads) or
// cross-attention of the 64x64 first level (320 channels) to 77 text tokens of width 768.
void attention(benchmark::State& state, int64_t tokens, int64_t channels, bool cross) {
  torch::manual_seed(0);
  AttentionOptions o(channels, 8, channels / 8);
  if (cross) o.cross_attention_dim = 768;
  diffuse::nn::Attention attn(o);
  attn->eval();
  auto x = torch::randn({2, tokens, channels});
  auto ctx = cross ? torch::randn({2, 77, 768}) : torch::Tensor();
  torch::NoGradGuard ng;
  for (auto _ : state) benchmark::DoNotOptimize(attn->forward(x, ctx).data_ptr<float>());
  state.SetItemsProcessed(state.iterations() * 2);
}

void resnet(benchmark::State& state) {
  torch::manual_seed(0);
  diffuse::nn::ResnetBlock2D block(diffuse::nn::ResnetBlock2DOptions(320, 320, 1280));
  block->eval();
  auto x = torch::randn({2, 320, 64, 64});
  auto temb = torch::randn({2, 1280});
  torch::NoGradGuard ng;
  for (auto _ : state) benchmark::DoNotOptimize(block->forward(x, temb).data_ptr<float>());
  state.SetItemsProcessed(state.iterations() * 2);
}

void groupnorm_silu(benchmark::State& state) {
  auto x = torch::randn({2, 320, 64, 64});
  auto w = torch::ones({320}), b = torch::zeros({320});
  for (auto _ : state) benchmark::DoNotOptimize(torch::silu(torch::group_norm(x, 32, w, b, 1e-5)).data_ptr<float>());
  state.SetItemsProcessed(state.iterations() * 2);
}

// A training step's GroupNorm + SiLU on bf16 activations (the first level of the Fashion-MNIST
// preset), forward and backward: as bf16 autocast computes it in libtorch (fp32 copies of the
// input, the norm and the activation) or in the fused kernel (nn/group_norm.h).
void groupnorm_silu_train(benchmark::State& state, bool fused) {
  torch::manual_seed(0);
  torch::nn::GroupNorm norm(torch::nn::GroupNormOptions(8, 32));
  auto x = torch::randn({64, 32, 28, 28}).to(torch::kBFloat16).requires_grad_();
  auto grad = torch::randn({64, 32, 28, 28}).to(torch::kBFloat16);
  diffuse::nn::AutocastGuard autocast(torch::kCPU, true);
  for (auto _ : state) {
    auto y = fused ? diffuse::nn::group_norm_act(*norm, x, diffuse::nn::Activation::SiLU)
                   : torch::silu(norm(x)).to(torch::kBFloat16);
    y.backward(grad);
    benchmark::DoNotOptimize(x.grad().data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * 64);
}

// A training step's 3x3 convolution in fp32 (64 images, 64 channels, 14x14), forward and both
// backward passes: libtorch's (oneDNN's direct algorithm) or oneDNN's Winograd kernels
// (nn/winograd_conv.h).
void conv3x3_train(benchmark::State& state, bool winograd) {
  torch::manual_seed(0);
  diffuse::nn::Conv2d conv(torch::nn::Conv2dOptions(64, 64, 3).padding(1));
  auto x = torch::randn({64, 64, 14, 14}).requires_grad_();
  auto grad = torch::randn({64, 64, 14, 14});
  const bool before = diffuse::nn::winograd_convolutions();
  diffuse::nn::set_winograd_convolutions(winograd);
  for (auto _ : state) {
    auto g = torch::autograd::grad({conv(x)}, {x, conv->weight, conv->bias}, {grad});
    benchmark::DoNotOptimize(g[0].data_ptr());
  }
  diffuse::nn::set_winograd_convolutions(before);
  state.SetItemsProcessed(state.iterations() * 64);
}

// A training step's attention in fp32 (64 images, 2 heads of 32, 196 tokens; heads read from
// [B, N, H*D] projections), forward and backward: libtorch's matmul, softmax, matmul, or the
// per-head kernel (nn/attention_fp32.h).
void attention_train(benchmark::State& state, bool fused) {
  torch::manual_seed(0);
  const int64_t B = 64, H = 2, N = 196, D = 32;
  std::vector<torch::Tensor> p;
  for (int i = 0; i < 3; ++i) p.push_back(torch::randn({B, N, H * D}).requires_grad_());
  auto heads = [&](const torch::Tensor& t) { return t.view({B, N, H, D}).transpose(1, 2); };
  auto grad = torch::randn({B, H, N, D});
  const double scale = 1.0 / std::sqrt(double(D));
  for (auto _ : state) {
    const auto q = heads(p[0]), k = heads(p[1]), v = heads(p[2]);
    auto o = fused ? diffuse::nn::fused_attention_fp32(q, k, v, scale)
                   : torch::matmul((torch::matmul(q, k.transpose(-1, -2)) * scale).softmax(-1), v);
    auto g = torch::autograd::grad({o}, p, {grad});
    benchmark::DoNotOptimize(g[0].data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * B);
}

// One sampler step on SD latents with a denoiser that costs nothing: the sampler's own overhead.
void sampler_step(benchmark::State& state, const std::string& name) {
  const auto& desc = diffuse::find_sampler(name);
  const auto sigmas = torch::linspace(14.6, 0.03, 21, torch::kFloat64).to(torch::kFloat32);
  const auto sig = torch::cat({sigmas, torch::zeros({1})});
  diffuse::Denoiser d = [](const torch::Tensor& x, const torch::Tensor& s) {
    return x / (1 + s.reshape({-1, 1, 1, 1}).square());
  };
  auto x0 = torch::randn({1, 4, 64, 64});
  diffuse::SamplerOptions opt;
  for (auto _ : state) benchmark::DoNotOptimize(desc.fn(d, x0 * 14.6, sig, opt).data_ptr<float>());
  state.SetItemsProcessed(state.iterations() * 21);  // items = steps
}

// SD 1.5's UNet (860 M parameters, fp32): built as torch::nn initialises it, or inside
// nn::SkipInitGuard as the loaders build it before reading the weights.
void unet_build(benchmark::State& state, bool skip) {
  diffuse::UNet2DConditionConfig cfg;
  cfg.sample_size = {64};
  cfg.cross_attention_dim = 768;
  for (auto _ : state) {
    if (skip) {
      diffuse::nn::SkipInitGuard g;
      diffuse::UNet2DConditionModel m(cfg);
      benchmark::DoNotOptimize(m.get());
    } else {
      diffuse::UNet2DConditionModel m(cfg);
      benchmark::DoNotOptimize(m.get());
    }
  }
}

// The CPU's model name and whether it has native bf16 (AVX-512 BF16 / AMX), from /proc/cpuinfo.
std::string cpu_summary() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model, flags;
  while (std::getline(in, line)) {
    if (model.empty() && line.rfind("model name", 0) == 0) model = line.substr(line.find(':') + 2);
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line;
  }
  std::string extra;
  for (const char* f : {" avx512f", " avx512_bf16", " amx_bf16"})
    if (flags.find(std::string(f) + " ") != std::string::npos) extra += f;
  return model + (extra.empty() ? "" : " (" + extra.substr(1) + ")");
}

}  // namespace

int main(int argc, char** argv) {
  const char* env = std::getenv("DIFFUSE_THREADS");
  const int threads = diffuse::set_threads(env ? std::atoi(env) : 0);
  benchmark::AddCustomContext("cpu", cpu_summary());
  benchmark::AddCustomContext("threads", std::to_string(threads));
  benchmark::AddCustomContext("runtime", diffuse::runtime_summary());
  auto reg = [](const std::string& name, auto fn) {
    return benchmark::RegisterBenchmark(name.c_str(), fn)->Unit(benchmark::kMillisecond)->UseRealTime();
  };
  reg("attention/self_1024x640", [](benchmark::State& s) { attention(s, 1024, 640, false); });
  reg("attention/cross_4096x320", [](benchmark::State& s) { attention(s, 4096, 320, true); });
  reg("resnet/320_64x64", resnet);
  reg("groupnorm_silu/320_64x64", groupnorm_silu);
  reg("groupnorm_silu_train/autocast_64x32x28x28", [](benchmark::State& s) { groupnorm_silu_train(s, false); });
  reg("groupnorm_silu_train/fused_64x32x28x28", [](benchmark::State& s) { groupnorm_silu_train(s, true); });
  reg("conv3x3_train/direct_64x64x14x14", [](benchmark::State& s) { conv3x3_train(s, false); });
  reg("conv3x3_train/winograd_64x64x14x14", [](benchmark::State& s) { conv3x3_train(s, true); });
  reg("attention_train/libtorch_64x2x196x32", [](benchmark::State& s) { attention_train(s, false); });
  reg("attention_train/fused_64x2x196x32", [](benchmark::State& s) { attention_train(s, true); });
  for (const char* name : {"euler", "dpm++2m"})
    reg(std::string("sampler_step/") + name, [name](benchmark::State& s) { sampler_step(s, name); });
  for (const bool skip : {false, true})
    reg(std::string("unet_build/") + (skip ? "skip_init" : "random_init"),
        [skip](benchmark::State& s) { unet_build(s, skip); })
        ->Iterations(1)
        ->Repetitions(3)
        ->Unit(benchmark::kSecond);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
