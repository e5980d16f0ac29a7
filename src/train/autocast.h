#pragma once
// bf16 autocast for training (CPU and CUDA), hiding the API differences between
// libtorch 1.13 and 2.x.
#include <torch/torch.h>

namespace diffuse {

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

}  // namespace diffuse
