#pragma once
// bf16 autocast (CPU and CUDA), hiding the API differences between libtorch 1.13 and 2.x: the
// trainers' bf16 forward passes and dtype bf16 sampling of UNet2DModel / DiT pipelines.
#include <torch/torch.h>

namespace diffuse::nn {

// Whether bf16 autocast is on for `device`'s type on this thread.
bool autocast_enabled(torch::Device device);

class AutocastGuard {
 public:
  // Enables bf16 autocast on `device` while alive (no-op when `enabled` is false).
  AutocastGuard(torch::Device device, bool enabled);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  torch::Device device_;
  bool enabled_;
  bool previous_ = false;
};

}  // namespace diffuse::nn
