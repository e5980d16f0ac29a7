#include "train/compute_weights.h"

namespace diffuse {

ComputeWeights::ComputeWeights(torch::nn::Module& model, AdamW& optimizer) {
  torch::NoGradGuard ng;
  auto copy_of = [&](const torch::Tensor& param) -> torch::Tensor {
    if (!param.defined()) return {};
    auto copy = param.detach().to(torch::kBFloat16).requires_grad_(true);
    optimizer.mirror(param, copy);
    pairs_.push_back({param, copy});
    return copy;
  };
  for (const auto& m : model.modules(/*include_self=*/true)) {
    auto linear = std::dynamic_pointer_cast<nn::LinearImpl>(m);
    if (!linear || !linear->weight.requires_grad() || linear->weight.scalar_type() != torch::kFloat32) continue;
    if (linear->bias.defined() && (!linear->bias.requires_grad() || linear->bias.scalar_type() != torch::kFloat32))
      continue;
    linear->compute_weight = copy_of(linear->weight);
    linear->compute_bias = copy_of(linear->bias);
    layers_.push_back(linear);
  }
}

ComputeWeights::~ComputeWeights() {
  for (auto& l : layers_) {
    l->compute_weight = torch::Tensor();
    l->compute_bias = torch::Tensor();
  }
}

void ComputeWeights::gather_gradients() {
  torch::NoGradGuard ng;
  for (auto& [param, copy] : pairs_) {
    auto& g = copy.mutable_grad();
    if (!g.defined()) continue;
    auto& dst = param.mutable_grad();
    if (!dst.defined())
      dst = std::move(g);
    else if (dst.scalar_type() == torch::kFloat32)
      dst.add_(g);
    else
      dst = dst.to(torch::kFloat32).add_(g);
    g = torch::Tensor();
  }
}

}  // namespace diffuse
