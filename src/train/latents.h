#pragma once
// Latent datasets for `diffuse train --latent VAE_DIR`: the images are encoded once by the
// VAE's encoder and the posterior (mean, std) of every image is kept in memory; each time an
// item is drawn, a fresh latent is sampled from it (the LDM recipe), then scaled by the VAE's
// scaling_factor (after subtracting shift_factor).
#include <torch/torch.h>

#include <cstdint>

#include "models/autoencoder_kl.h"
#include "train/dataset.h"

namespace diffuse {

// Encodes every image of `data` (uint8 [N, C, H, W] with C = the VAE's in_channels and H, W
// divisible by its downsampling factor; diffuse::Error otherwise). With `flip`, the mirrored
// images are encoded too and appended (labels and names repeated), so horizontal flips stay
// exact in latent space. Returns a dataset whose `images` are float32 [M, 2 * latent_channels,
// h, w]: the posterior mean in the first half of the channels, its standard deviation in the second.
Dataset encode_latent_dataset(AutoencoderKL vae, const Dataset& data, bool flip, torch::Device device,
                              bool progress = true, int batch_size = 64);

// A latent sample for a batch of encode_latent_dataset rows: (mean + std * eps - shift) * scale,
// eps drawn from `gen`. With `total` > 0 the batch is rows [offset, offset + B) of a global batch
// of `total` rows: eps is drawn for all of them and sliced.
torch::Tensor sample_scaled_latents(const AutoencoderKLConfig& vae, const torch::Tensor& posterior, at::Generator& gen,
                                    int64_t offset = 0, int64_t total = 0);

}  // namespace diffuse
