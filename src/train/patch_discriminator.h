#pragma once
// The PatchGAN discriminator of taming-transformers / latent diffusion (NLayerDiscriminator):
// 4x4 convolutions, stride 2 down to the patch grid, BatchNorm and LeakyReLU(0.2), one logit per
// patch. Used by `diffuse train-vae` with a hinge loss after a warm-up.
#include <torch/torch.h>

#include <cstdint>

namespace diffuse {

class PatchDiscriminatorImpl : public torch::nn::Module {
 public:
  // `layers` stride-2 stages (taming's n_layers); channels grow ndf, 2ndf, ... up to 8ndf.
  // Weights are initialised as taming does (conv N(0, 0.02), BatchNorm weight N(1, 0.02)).
  PatchDiscriminatorImpl(int64_t in_channels, int64_t ndf = 64, int layers = 3);
  torch::Tensor forward(const torch::Tensor& x);  // [B, C, H, W] -> logits [B, 1, h, w]

  torch::nn::Sequential main{nullptr};
};
TORCH_MODULE(PatchDiscriminator);

// The most stride-2 stages (at most 3) that leave a patch grid of at least 1x1 for `image_size`.
int patch_discriminator_layers(int image_size);

// Hinge losses: discriminator 0.5 * (mean relu(1 - real) + mean relu(1 + fake)); generator -mean(fake).
torch::Tensor hinge_d_loss(const torch::Tensor& logits_real, const torch::Tensor& logits_fake);
torch::Tensor hinge_g_loss(const torch::Tensor& logits_fake);

}  // namespace diffuse
