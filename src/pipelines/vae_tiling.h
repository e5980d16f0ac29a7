#pragma once
// Tiled VAE encode / decode for large images, as diffusers' AutoencoderKL.enable_tiling: the input
// is cut into square tiles (tile_sample_min_size pixels, tile_latent_min_size latents) that overlap
// by a quarter, each tile runs through the encoder or decoder alone, and each tile is blended
// linearly into the one above and the one to its left over the overlap
// (b = a * (1 - t / extent) + b * (t / extent)) before the tiles are cropped and joined. Memory
// then stays that of one tile whatever the image size.
#include <torch/torch.h>

#include <cstdint>
#include <functional>

#include "models/autoencoder_kl.h"

namespace diffuse {

struct VaeTiling {
  bool enabled = false;
  // Tile size in pixels (a multiple of the VAE factor); 0 = the VAE config's sample_size when it
  // is at least 256 (512 for SD 1.x VAEs), else 512.
  int64_t tile = 0;
  double overlap = 0.25;  // diffusers' tile_overlap_factor
  // Images with more pixels than this are tiled even when not enabled (0 = never).
  int64_t auto_above = 1536 * 1536;

  int64_t tile_pixels(const AutoencoderKLConfig& c) const;
  // Whether an image of h x w pixels is tiled (enabled or automatic, and larger than one tile).
  bool applies(const AutoencoderKLConfig& c, int64_t h, int64_t w) const;
};

// Images [B, C, H, W] -> posterior, tiled when `t` applies (else AutoencoderKL::encode).
LatentDistribution vae_encode(AutoencoderKL& vae, const torch::Tensor& images, const VaeTiling& t);
// Latents (unscaled) [B, c, h, w] -> images, tiled when `t` applies (else AutoencoderKL::decode).
torch::Tensor vae_decode(AutoencoderKL& vae, const torch::Tensor& z, const VaeTiling& t);

// The tiling itself: `fn` on tiles of x [B, C, H, W] (`in_tile` wide, every `stride`), outputs
// blended over `extent` and cropped to `row_limit` (output units), joined; one call of fn when a
// single tile covers x. With the default tile sizes the numbers are diffusers' (512 px: stride
// 48 latents, blend 128 px / 16 latents); the stride is taken in latents so that any tile size
// joins up to the full image.
torch::Tensor tiled_apply(const torch::Tensor& x, int64_t in_tile, int64_t stride, int64_t extent, int64_t row_limit,
                          const std::function<torch::Tensor(const torch::Tensor&)>& fn);

// Always tiled (one tile when the input fits in it): the raw moments [B, 2c, h, w] / images.
torch::Tensor tiled_encode_moments(AutoencoderKL& vae, const torch::Tensor& images, int64_t tile_pixels,
                                   double overlap = 0.25);
torch::Tensor tiled_decode(AutoencoderKL& vae, const torch::Tensor& z, int64_t tile_pixels, double overlap = 0.25);

}  // namespace diffuse
