#pragma once
// Per-image noise generators for pipelines: image i of a batch draws from its own generator
// seeded with first_seed + i, so an image's noise does not depend on the batch it was made in.
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/noise.h"

namespace diffuse {

class PerImageNoise : public NoiseSource {
 public:
  // rng: "cpu" (torch's CPU generator, as diffusers) or "philox" (A1111's GPU-style noise).
  PerImageNoise(const std::string& rng, uint64_t first_seed, int count);
  // Standard normal noise of `shape` for image i (CPU, float32), from image i's generator.
  torch::Tensor randn(size_t i, at::IntArrayRef shape);
  // One row per image, each from its own generator; dtype and device of `like`.
  torch::Tensor randn_like(const torch::Tensor& like) override;

 private:
  std::vector<std::unique_ptr<NoiseSource>> gens_;
};

}  // namespace diffuse
