#include "train/patch_discriminator.h"

#include <algorithm>

namespace diffuse {

namespace {
torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t stride, bool bias) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 4).stride(stride).padding(1).bias(bias));
}
torch::nn::LeakyReLU lrelu() { return torch::nn::LeakyReLU(torch::nn::LeakyReLUOptions().negative_slope(0.2)); }
}  // namespace

PatchDiscriminatorImpl::PatchDiscriminatorImpl(int64_t in_channels, int64_t ndf, int layers) {
  torch::nn::Sequential seq;
  seq->push_back(conv(in_channels, ndf, 2, true));
  seq->push_back(lrelu());
  int64_t mult = 1;
  for (int n = 1; n < layers; ++n) {
    int64_t prev = mult;
    mult = std::min<int64_t>(int64_t{1} << n, 8);
    seq->push_back(conv(ndf * prev, ndf * mult, 2, false));
    seq->push_back(torch::nn::BatchNorm2d(ndf * mult));
    seq->push_back(lrelu());
  }
  int64_t prev = mult;
  mult = std::min<int64_t>(int64_t{1} << layers, 8);
  seq->push_back(conv(ndf * prev, ndf * mult, 1, false));
  seq->push_back(torch::nn::BatchNorm2d(ndf * mult));
  seq->push_back(lrelu());
  seq->push_back(conv(ndf * mult, 1, 1, true));
  main = register_module("main", seq);
  torch::NoGradGuard ng;
  for (auto& m : main->modules(false)) {
    if (auto* c = m->as<torch::nn::Conv2d>()) {
      c->weight.normal_(0.0, 0.02);
    } else if (auto* b = m->as<torch::nn::BatchNorm2d>()) {
      b->weight.normal_(1.0, 0.02);
      b->bias.zero_();
    }
  }
}

torch::Tensor PatchDiscriminatorImpl::forward(const torch::Tensor& x) { return main->forward(x); }

int patch_discriminator_layers(int image_size) {
  // Each stride-2 stage halves the size; the two final 4x4 stride-1 convolutions take a pixel each.
  int layers = 3;
  while (layers > 1 && (image_size >> layers) < 3) --layers;
  return layers;
}

torch::Tensor hinge_d_loss(const torch::Tensor& logits_real, const torch::Tensor& logits_fake) {
  return 0.5 * (torch::relu(1.0 - logits_real).mean() + torch::relu(1.0 + logits_fake).mean());
}

torch::Tensor hinge_g_loss(const torch::Tensor& logits_fake) { return -logits_fake.mean(); }

}  // namespace diffuse
