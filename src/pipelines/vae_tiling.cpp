#include "pipelines/vae_tiling.h"

#include <algorithm>
#include <functional>
#include <vector>

#include "core/error.h"

namespace diffuse {

namespace {

// diffusers' blend_v (dim 2) / blend_h (dim 3): b's first rows / columns fade in from a's last ones.
void blend(const torch::Tensor& a, torch::Tensor& b, int64_t extent, int64_t dim) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double t = static_cast<double>(y) / static_cast<double>(extent);
    auto by = b.select(dim, y);
    by.copy_(a.select(dim, a.size(dim) - extent + y) * (1 - t) + by * t);
  }
}

// (tile, stride) in latents for a tile of `tile_pixels` with the given overlap.
std::pair<int64_t, int64_t> latent_tile_stride(int64_t f, int64_t tile_pixels, double overlap) {
  if (tile_pixels < f || tile_pixels % f != 0)
    throw Error("VAE tiling: tile size " + std::to_string(tile_pixels) + " must be a positive multiple of " +
                std::to_string(f));
  const int64_t latent_tile = tile_pixels / f;
  const auto stride = static_cast<int64_t>(static_cast<double>(latent_tile) * (1 - overlap));
  if (stride <= 0) throw Error("VAE tiling: overlap must be below 1 and leave a stride of a latent at least");
  return {latent_tile, stride};
}

}  // namespace

torch::Tensor tiled_apply(const torch::Tensor& x, int64_t in_tile, int64_t stride, int64_t extent, int64_t row_limit,
                          const std::function<torch::Tensor(const torch::Tensor&)>& fn) {
  if (in_tile <= 0 || stride <= 0 || row_limit <= 0) throw Error("VAE tiling: tile and stride must be positive");
  if (x.size(2) <= in_tile && x.size(3) <= in_tile) return fn(x);  // one tile covers it
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < x.size(2); i += stride) {
    std::vector<torch::Tensor> row;
    for (int64_t j = 0; j < x.size(3); j += stride)
      row.push_back(fn(x.slice(2, i, std::min(i + in_tile, x.size(2))).slice(3, j, std::min(j + in_tile, x.size(3))))
                        .contiguous());
    rows.push_back(std::move(row));
  }
  std::vector<torch::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<torch::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      auto& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, extent, 2);
      if (j > 0) blend(rows[i][j - 1], tile, extent, 3);
      result_row.push_back(tile.slice(2, 0, row_limit).slice(3, 0, row_limit));
    }
    result_rows.push_back(torch::cat(result_row, 3));
  }
  return torch::cat(result_rows, 2);
}

int64_t VaeTiling::tile_pixels(const AutoencoderKLConfig& c) const {
  if (tile > 0) return tile;
  return c.sample_size >= 256 ? c.sample_size : 512;
}

bool VaeTiling::applies(const AutoencoderKLConfig& c, int64_t h, int64_t w) const {
  const bool on = enabled || (auto_above > 0 && h * w > auto_above);
  const int64_t t = tile_pixels(c);
  return on && (h > t || w > t);
}

torch::Tensor tiled_encode_moments(AutoencoderKL& vae, const torch::Tensor& images, int64_t tile_pixels,
                                   double overlap) {
  const int64_t f = vae->config().downsample_factor();
  const auto [latent_tile, stride] = latent_tile_stride(f, tile_pixels, overlap);
  return tiled_apply(images.to(vae->device(), vae->dtype()), tile_pixels, stride * f, latent_tile - stride, stride,
                     [&](const torch::Tensor& tile) {
                       auto h = vae->encoder->forward(tile);
                       return vae->quant_conv ? vae->quant_conv->forward(h) : h;
                     });
}

torch::Tensor tiled_decode(AutoencoderKL& vae, const torch::Tensor& z, int64_t tile_pixels, double overlap) {
  const int64_t f = vae->config().downsample_factor();
  const auto [latent_tile, stride] = latent_tile_stride(f, tile_pixels, overlap);
  return tiled_apply(z, latent_tile, stride, tile_pixels - stride * f, stride * f,
                     [&](const torch::Tensor& tile) { return vae->decode(tile); });
}

LatentDistribution vae_encode(AutoencoderKL& vae, const torch::Tensor& images, const VaeTiling& t) {
  const auto& c = vae->config();
  const int64_t f = c.downsample_factor();
  if (images.dim() != 4 || images.size(1) != c.in_channels || images.size(2) % f != 0 || images.size(3) % f != 0 ||
      !t.applies(c, images.size(2), images.size(3)))
    return vae->encode(images);  // (which also reports bad shapes)
  auto parts = tiled_encode_moments(vae, images, t.tile_pixels(c), t.overlap).chunk(2, 1);
  return {parts[0], torch::clamp(parts[1], -30.0, 20.0)};
}

torch::Tensor vae_decode(AutoencoderKL& vae, const torch::Tensor& z, const VaeTiling& t) {
  const auto& c = vae->config();
  const int64_t f = c.downsample_factor();
  if (z.dim() != 4 || !t.applies(c, z.size(2) * f, z.size(3) * f)) return vae->decode(z);
  return tiled_decode(vae, z, t.tile_pixels(c), t.overlap);
}

}  // namespace diffuse
