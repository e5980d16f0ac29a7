#pragma once
// Explicit noise sources: samplers and pipelines draw all randomness through one.
#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace diffuse {

class NoiseSource {
 public:
  virtual ~NoiseSource() = default;
  // Standard normal noise with the shape, dtype and device of `like`.
  virtual torch::Tensor randn_like(const torch::Tensor& like) = 0;
};

// torch's CPU generator (Philox/MT as torch uses, what diffusers and ComfyUI use),
// seeded explicitly; results do not depend on the thread count.
class TorchNoise : public NoiseSource {
 public:
  explicit TorchNoise(uint64_t seed);
  torch::Tensor randn_like(const torch::Tensor& like) override;
  torch::Tensor randn(at::IntArrayRef shape);

 private:
  at::Generator gen_;
};

// Replays a fixed list of tensors (for parity tests against recorded noise).
class ReplayNoise : public NoiseSource {
 public:
  explicit ReplayNoise(std::vector<torch::Tensor> tensors) : tensors_(std::move(tensors)) {}
  torch::Tensor randn_like(const torch::Tensor& like) override;
  size_t used() const { return next_; }

 private:
  std::vector<torch::Tensor> tensors_;
  size_t next_ = 0;
};

}  // namespace diffuse
