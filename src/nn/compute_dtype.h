#pragma once
// Weights kept in a low-precision storage dtype and computed in a wider one: the guard
// converts a module's floating-point parameters and buffers to the compute dtype for its
// lifetime and back to each tensor's own dtype afterwards. fp16/bf16 -> fp32 -> fp16/bf16 is
// exact, so a model that runs block by block under guards computes exactly what the same
// weights upcast once at load time would, while only one block is held in the wide dtype.
// int8 weights (nn/int8_weights.h) are dequantised the same way, into the compute dtype, and
// their int8 tensors put back afterwards.
#include <torch/torch.h>

#include <initializer_list>
#include <optional>
#include <utility>
#include <vector>

namespace diffuse::nn {

class ComputeDtypeGuard {
 public:
  // With enabled = false the guard does nothing; with recurse = false only the modules' own
  // parameters and buffers are converted, not their children's.
  ComputeDtypeGuard(std::initializer_list<torch::nn::Module*> modules, torch::Dtype compute, bool enabled = true,
                    bool recurse = true);
  ComputeDtypeGuard(const std::vector<torch::nn::Module*>& modules, torch::Dtype compute, bool enabled = true,
                    bool recurse = true);
  ~ComputeDtypeGuard();
  ComputeDtypeGuard(const ComputeDtypeGuard&) = delete;
  ComputeDtypeGuard& operator=(const ComputeDtypeGuard&) = delete;

 private:
  std::vector<std::pair<torch::Tensor, torch::Dtype>> saved_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> quantized_;  // parameter, its int8 data
};

// The compute dtype of 16-bit- and int8-stored weights for the current thread: a model's forward sets it
// (ComputeDtypeScope) and its layers honour it one at a time (LayerUpcast in the forward of
// resnet blocks, transformer blocks, Transformer2D's projections, up- and downsamplers), so at
// most one layer's weights are held in the wide dtype instead of a whole block's. Scopes nest;
// nothing is converted while none is set.
class ComputeDtypeScope {
 public:
  explicit ComputeDtypeScope(std::optional<torch::Dtype> compute);
  ~ComputeDtypeScope();
  ComputeDtypeScope(const ComputeDtypeScope&) = delete;
  ComputeDtypeScope& operator=(const ComputeDtypeScope&) = delete;
  static std::optional<torch::Dtype> current();

 private:
  std::optional<torch::Dtype> previous_;
};

// A ComputeDtypeGuard in the thread's compute dtype (none when no scope is set).
class LayerUpcast {
 public:
  explicit LayerUpcast(std::initializer_list<torch::nn::Module*> modules, bool recurse = true);

 private:
  ComputeDtypeGuard guard_;
};

// True when some floating-point parameter or buffer of `m` is not of dtype `d`.
bool has_other_float_dtype(const torch::nn::Module& m, torch::Dtype d);

}  // namespace diffuse::nn
