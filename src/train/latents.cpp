#include "train/latents.h"

#include "core/error.h"
#include "core/progress.h"

namespace diffuse {

Dataset encode_latent_dataset(AutoencoderKL vae, const Dataset& data, bool flip, torch::Device device, bool progress,
                              int batch_size) {
  const auto& c = vae->config();
  const int64_t f = c.downsample_factor();
  if (data.channels() != c.in_channels)
    throw Error(data.source + ": images have " + std::to_string(data.channels()) + " channels but the VAE takes " +
                std::to_string(c.in_channels));
  if (data.images.size(2) % f != 0 || data.images.size(3) % f != 0)
    throw Error(data.source + ": image size " + std::to_string(data.images.size(2)) + "x" +
                std::to_string(data.images.size(3)) + " is not divisible by the VAE's downsampling factor " +
                std::to_string(f));
  const int64_t n = data.size();
  const int64_t passes = flip ? 2 : 1;
  const int64_t lc = c.latent_channels, h = data.images.size(2) / f, w = data.images.size(3) / f;
  auto out = torch::empty({n * passes, 2 * lc, h, w}, torch::kFloat32);
  vae->eval();
  vae->to(device);
  torch::NoGradGuard ng;
  Progress bar(n * passes, "encode", "img", progress);
  for (int64_t pass = 0; pass < passes; ++pass) {
    for (int64_t s = 0; s < n; s += batch_size) {
      const int64_t e = std::min(n, s + batch_size);
      auto x = data.images.slice(0, s, e).to(torch::kFloat32).div(127.5).sub(1.0);
      if (pass == 1) x = x.flip({3});
      auto post = vae->encode(x.to(device));
      auto row = torch::cat({post.mean, post.std()}, 1).to(torch::kCPU, torch::kFloat32);
      out.slice(0, pass * n + s, pass * n + e).copy_(row);
      bar.update(pass * n + e);
    }
  }
  bar.finish();
  Dataset r;
  r.images = out;
  if (data.labelled()) r.labels = passes == 2 ? torch::cat({data.labels, data.labels}) : data.labels;
  r.class_names = data.class_names;
  r.names = data.names;
  if (passes == 2) r.names.insert(r.names.end(), data.names.begin(), data.names.end());
  r.source = data.source;
  return r;
}

torch::Tensor sample_scaled_latents(const AutoencoderKLConfig& vae, const torch::Tensor& posterior, at::Generator& gen,
                                    int64_t offset, int64_t total) {
  const int64_t lc = posterior.size(1) / 2;
  auto mean = posterior.slice(1, 0, lc), std = posterior.slice(1, lc, 2 * lc);
  auto shape = mean.sizes().vec();
  if (total > 0) shape[0] = total;
  auto eps = torch::randn(shape, gen, torch::TensorOptions().dtype(mean.scalar_type())).narrow(0, offset, mean.size(0));
  auto z = mean + std * eps.to(mean.device());
  if (vae.shift_factor) z = z - *vae.shift_factor;
  return z * vae.scaling_factor;
}

}  // namespace diffuse
