#pragma once
// Comparing a fused bf16 kernel's output with the unfused computation it replaces.
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace diffuse::test {

// |got - want| <= |want| * 2^-7 + atol elementwise: at most one bf16 rounding step apart.
inline void expect_within_a_rounding(const torch::Tensor& got, const torch::Tensor& want, double atol,
                                     const char* what) {
  auto g = got.to(torch::kFloat), w = want.to(torch::kFloat);
  auto excess = ((g - w).abs() - w.abs() / 128 - atol).max().item<double>();
  EXPECT_LE(excess, 0.0) << what << ": max abs diff " << (g - w).abs().max().item<double>();
}

}  // namespace diffuse::test
