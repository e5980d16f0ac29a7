#pragma once
// Deterministic, seed-free parameter and input values shared with the Python script that
// produced the reference numbers in the tests (diffusers 0.28.2 filled the same way):
// parameters in sorted-name order i, v = sin(0.7 j + 1.3 i) over the flat index j, scaled
// by sqrt(3 / fan_in) for weights of rank >= 2, 1 + 0.1 v for norm weights, 4 v for
// time_proj.weight (Fourier features), 0.1 v otherwise; inputs sin(0.37 j).
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "nn/state_dict.h"

namespace diffuse::test {

inline void deterministic_fill(torch::nn::Module& m) {
  torch::NoGradGuard ng;
  int64_t i = 0;
  for (auto& [name, t] : nn::state_dict(m)) {
    const int64_t n = t.numel();
    auto base = torch::sin(torch::arange(n, torch::kFloat64) * 0.7 + static_cast<double>(i) * 1.3);
    torch::Tensor v;
    const bool is_norm_weight =
        name.find("norm") != std::string::npos && name.size() >= 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    if (name == "time_proj.weight")
      v = 4.0 * base;
    else if (t.dim() >= 2)
      v = base * (1.0 / std::sqrt(static_cast<double>(n) / static_cast<double>(t.size(0)))) * std::sqrt(3.0);
    else if (is_norm_weight)
      v = 1.0 + 0.1 * base;
    else
      v = 0.1 * base;
    t.copy_(v.reshape(t.sizes()).to(t.scalar_type()));
    ++i;
  }
}

inline torch::Tensor deterministic_input(at::IntArrayRef shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return torch::sin(torch::arange(n, torch::kFloat64) * 0.37).reshape(shape).to(torch::kFloat32);
}

// FNV-1a 64 of the names joined by '\n'.
inline uint64_t fnv1a(const std::vector<std::string>& names) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) h = (h ^ static_cast<unsigned char>('\n')) * 0x100000001b3ULL;
    for (unsigned char c : names[i]) h = (h ^ c) * 0x100000001b3ULL;
  }
  return h;
}

}  // namespace diffuse::test
