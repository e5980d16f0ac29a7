#pragma once
// Weights kept in a low-precision storage dtype and computed in a wider one: the guard
// converts a module's floating-point parameters and buffers to the compute dtype for its
// lifetime and back to each tensor's own dtype afterwards. fp16/bf16 -> fp32 -> fp16/bf16 is
// exact, so a model that runs block by block under guards computes exactly what the same
// weights upcast once at load time would, while only one block is held in the wide dtype.
#include <torch/torch.h>

#include <initializer_list>
#include <utility>
#include <vector>

namespace diffuse::nn {

class ComputeDtypeGuard {
 public:
  // With enabled = false the guard does nothing.
  ComputeDtypeGuard(std::initializer_list<torch::nn::Module*> modules, torch::Dtype compute, bool enabled = true);
  ~ComputeDtypeGuard();
  ComputeDtypeGuard(const ComputeDtypeGuard&) = delete;
  ComputeDtypeGuard& operator=(const ComputeDtypeGuard&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, torch::Dtype>> saved_;
};

// True when some floating-point parameter or buffer of `m` is not of dtype `d`.
bool has_other_float_dtype(const torch::nn::Module& m, torch::Dtype d);

}  // namespace diffuse::nn
