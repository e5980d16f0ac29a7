#include "pipelines/image_noise.h"

#include "core/error.h"

namespace diffuse {

PerImageNoise::PerImageNoise(const std::string& rng, uint64_t first_seed, int count) {
  if (rng != "cpu" && rng != "philox") throw Error("rng " + rng + ": expected cpu or philox");
  for (int i = 0; i < count; ++i) {
    uint64_t seed = first_seed + static_cast<uint64_t>(i);
    if (rng == "cpu")
      gens_.push_back(std::make_unique<TorchNoise>(seed));
    else
      gens_.push_back(std::make_unique<PhiloxNoise>(seed));
  }
}

torch::Tensor PerImageNoise::randn(size_t i, at::IntArrayRef shape) {
  auto like = torch::empty(shape, torch::kFloat32);
  return gens_.at(i)->randn_like(like);
}

torch::Tensor PerImageNoise::randn_like(const torch::Tensor& like) {
  std::vector<torch::Tensor> rows;
  auto row = torch::empty(like.sizes().slice(1), torch::kFloat32);
  for (auto& g : gens_) rows.push_back(g->randn_like(row));
  return torch::stack(rows).to(like.device(), like.scalar_type());
}

}  // namespace diffuse
