#pragma once
// Process-wide runtime settings: thread count and device selection.
#include <torch/torch.h>

#include <string>

namespace diffuse {

// Sets intra-op threads; n <= 0 means one per core. Returns the count in use.
int set_threads(int n);
// Makes the calling thread's tensor operations run on that thread alone, for helper threads
// (batch loaders, writers) beside the thread that computes. Otherwise the first parallel
// operation on a helper gives it a team of OpenMP threads of its own; with more such threads than
// cores, OpenMP stops spinning at its barriers and every parallel region of the main computation
// sleeps and wakes its threads (measured: about 10 % of a training step on 2 cores).
void use_one_thread_here();
// The same for the calling thread while alive; its thread count comes back afterwards. For a
// thread that takes part in a loop run by plain threads (parallel_chunks): its OpenMP team would
// otherwise spin on the cores the others need.
class OneThreadHere {
 public:
  OneThreadHere();
  ~OneThreadHere();
  OneThreadHere(const OneThreadHere&) = delete;
  OneThreadHere& operator=(const OneThreadHere&) = delete;

 private:
  int previous_;
};
// "cpu", "cuda", "cuda:N" or "auto" (cuda when available). Throws diffuse::Error for bad or unavailable devices.
torch::Device parse_device(const std::string& name);
// Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX-BF16), from /proc/cpuinfo, read once.
bool cpu_has_native_bf16();
// The same test on the text of /proc/cpuinfo: a "flags" line lists avx512_bf16 or amx_bf16.
bool cpuinfo_has_native_bf16(const std::string& cpuinfo);
// The compute dtype that "auto" stands for on `device`: bf16 on a CPU with native bf16, fp32 on
// other CPUs and on CUDA. Other names are returned as they are.
std::string resolve_dtype(const std::string& dtype, const torch::Device& device, bool native_bf16);
std::string resolve_dtype(const std::string& dtype, const torch::Device& device);
// One line describing the build and machine: torch version, threads, BLAS, device.
std::string runtime_summary();

}  // namespace diffuse
