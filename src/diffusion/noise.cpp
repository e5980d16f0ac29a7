#include "diffusion/noise.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "core/error.h"

namespace diffuse {

TorchNoise::TorchNoise(uint64_t seed) : gen_(at::detail::createCPUGenerator(seed)) {}

torch::Tensor TorchNoise::randn(at::IntArrayRef shape) {
  // torch::randn locks the generator itself.
  return torch::randn(shape, gen_, torch::TensorOptions().dtype(torch::kFloat32));
}

torch::Tensor TorchNoise::randn_like(const torch::Tensor& like) {
  return randn(like.sizes()).to(like.device(), like.scalar_type());
}

torch::Tensor ReplayNoise::randn_like(const torch::Tensor& like) {
  if (next_ >= tensors_.size())
    throw Error("ReplayNoise: exhausted after " + std::to_string(tensors_.size()) + " tensors");
  const auto& t = tensors_[next_];
  if (t.numel() != like.numel())
    throw Error("ReplayNoise: tensor " + std::to_string(next_) + " has " + std::to_string(t.numel()) +
                " elements, expected " + std::to_string(like.numel()));
  ++next_;
  return t.reshape(like.sizes()).to(like.device(), like.scalar_type());
}

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  constexpr uint64_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {
      k[0] += W0;
      k[1] += W1;
    }
    uint64_t p0 = M0 * c[0], p1 = M1 * c[2];
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
  return c;
}

torch::Tensor PhiloxNoise::randn(at::IntArrayRef shape) {
  auto out = torch::empty(shape, torch::TensorOptions().dtype(torch::kFloat32));
  const int64_t n = out.numel();
  if (n > (int64_t{1} << 32)) throw Error("PhiloxNoise: at most 2^32 values per call");
  float* p = out.data_ptr<float>();
  // A1111 multiplies by float32 constants in float64 arithmetic (numpy promotion).
  const double inv = static_cast<double>(2.3283064e-10f);
  const double inv_2pi = static_cast<double>(static_cast<float>(2.3283064e-10 * 6.2831855));
  const std::array<uint32_t, 2> key = {static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32)};
  const uint32_t off = static_cast<uint32_t>(offset_);
  for (int64_t i = 0; i < n; ++i) {
    auto g = philox4x32_10({off, 0u, static_cast<uint32_t>(i), 0u}, key);
    double u = g[0] * inv + inv / 2;
    double v = g[1] * inv_2pi + inv_2pi / 2;
    double s = std::sqrt(-2.0 * std::log(u));
    p[i] = static_cast<float>(s * std::sin(v));
  }
  ++offset_;
  return out;
}

torch::Tensor PhiloxNoise::randn_like(const torch::Tensor& like) {
  return randn(like.sizes()).to(like.device(), like.scalar_type());
}

}  // namespace diffuse
