#include "eval/perceptual.h"

#include "core/error.h"

namespace diffuse {

PerceptualDistance::PerceptualDistance(Classifier net, std::string source)
    : net_(std::move(net)), source_(std::move(source)) {
  net_->eval();
  for (auto& p : net_->parameters()) p.set_requires_grad(false);
}

PerceptualDistance PerceptualDistance::load(const std::string& dir, torch::Device device) {
  return PerceptualDistance(load_classifier(dir, device), dir);
}

void PerceptualDistance::check_input(int channels, int size) const {
  const auto& cfg = config();
  const std::string name = source_.empty() ? std::string("the perceptual network") : source_;
  if (channels != cfg.in_channels)
    throw Error(name + ": the perceptual network takes " + std::to_string(cfg.in_channels) +
                " channel(s) but the images have " + std::to_string(channels) + " (it was trained on " +
                (cfg.dataset.empty() ? std::string("other data") : cfg.dataset) + ")");
  if (size < 8) throw Error(name + ": images of " + std::to_string(size) + " px are too small to compare");
}

torch::Tensor PerceptualDistance::operator()(const torch::Tensor& a, const torch::Tensor& b) const {
  if (!defined()) throw Error("perceptual distance: no network");
  if (!a.defined() || !b.defined() || a.dim() != 4 || a.sizes() != b.sizes())
    throw Error("perceptual distance: expected two image batches [N, C, H, W] of equal shape");
  check_input(static_cast<int>(a.size(1)), static_cast<int>(std::min(a.size(2), a.size(3))));
  const int64_t n = a.size(0);
  // One pass over both batches; resizing (when the sizes differ) is differentiable.
  auto x = prepare_classifier_input(torch::cat({a, b}), config(), /*allow_resize=*/true, "perceptual images");
  Classifier net = net_;  // the holder shares the module; forward needs a non-const one
  auto stages = net->stage_outputs(x);
  torch::Tensor total;
  for (const auto& h : stages) {
    auto f = h.to(torch::kFloat32);
    // LPIPS' normalisation: x / (sqrt(sum_c x^2) + eps).
    auto unit = f / (f.pow(2).sum(1, /*keepdim=*/true).sqrt() + 1e-10);
    auto d = (unit.narrow(0, 0, n) - unit.narrow(0, n, n)).pow(2).sum(1).mean({1, 2});
    total = total.defined() ? total + d : d;
  }
  return total / static_cast<double>(stages.size());
}

}  // namespace diffuse
