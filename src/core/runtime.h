#pragma once
// Process-wide runtime settings: thread count and device selection.
#include <torch/torch.h>

#include <string>

namespace diffuse {

// Sets intra-op threads; n <= 0 means one per core. Returns the count in use.
int set_threads(int n);
// "cpu", "cuda", "cuda:N" or "auto" (cuda when available). Throws diffuse::Error for bad or unavailable devices.
torch::Device parse_device(const std::string& name);
// One line describing the build and machine: torch version, threads, BLAS, device.
std::string runtime_summary();

}  // namespace diffuse
