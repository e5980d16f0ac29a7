#pragma once
// Explicit noise sources: samplers and pipelines draw all randomness through one.
#include <torch/torch.h>

#include <array>
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
// seeded explicitly; results do not depend on the thread count. Noise is always drawn as
// float32 on the CPU, then converted to the dtype and device of `like` (same seed, same
// noise pattern for every dtype and device).
class TorchNoise : public NoiseSource {
 public:
  explicit TorchNoise(uint64_t seed);
  torch::Tensor randn_like(const torch::Tensor& like) override;
  torch::Tensor randn(at::IntArrayRef shape);

 private:
  at::Generator gen_;
};

// Philox4x32-10 counter-based generator with Box-Muller, as A1111 generates "GPU" noise
// (modules/rng_philox.py): element i of call k uses counter {k, 0, i, 0} and key {seed lo, seed hi};
// the first two output words give one normal via Box-Muller (float64 math, float32 result).
// Independent of device and thread count.
class PhiloxNoise : public NoiseSource {
 public:
  explicit PhiloxNoise(uint64_t seed) : seed_(seed) {}
  torch::Tensor randn_like(const torch::Tensor& like) override;
  torch::Tensor randn(at::IntArrayRef shape);  // float32, CPU
  uint64_t offset() const { return offset_; }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

// The Philox4x32-10 block function (Random123 conventions).
std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Replays a fixed list of tensors (for parity tests against recorded noise); each call
// takes the next tensor (same number of elements as `like`), throws diffuse::Error when exhausted.
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
