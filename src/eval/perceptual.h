#pragma once
// A perceptual distance on one of this project's feature networks (eval/classifier.h), for
// training autoencoders (`diffuse train-vae --perceptual DIR`). LPIPS' recipe without its learned
// layer weights (they are trained on human judgements that are not available here): at the end of
// each convolutional stage the activations are unit-normalised along channels, and the distance is
// the squared difference summed over channels, averaged over positions, then over stages.
// Identical images are at distance 0; the distance is symmetric, bounded by 4 and differentiable
// in both images. The network is frozen (eval mode, no parameter gradients).
#include <torch/torch.h>

#include <string>

#include "eval/classifier.h"

namespace diffuse {

class PerceptualDistance {
 public:
  PerceptualDistance() = default;
  // `net` is put in eval mode and its parameters stop requiring gradients.
  explicit PerceptualDistance(Classifier net, std::string source = "");
  // Loads a classifier folder; errors name `dir`.
  static PerceptualDistance load(const std::string& dir, torch::Device device = torch::kCPU);

  bool defined() const { return static_cast<bool>(net_); }
  const ClassifierConfig& config() const { return net_->config(); }
  const std::string& source() const { return source_; }

  // Throws diffuse::Error (naming the network's folder) unless images of `channels` x `size` x
  // `size` can be compared: the channels must match; other sizes are resized to the network's.
  void check_input(int channels, int size) const;
  // a, b: float images in [-1, 1], [N, C, H, W] of equal shape, on the network's device -> [N].
  torch::Tensor operator()(const torch::Tensor& a, const torch::Tensor& b) const;

 private:
  Classifier net_{nullptr};
  std::string source_;
};

}  // namespace diffuse
