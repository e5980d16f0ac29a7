#pragma once
// Checks for the fused bf16 kernels: their output against the unfused computation they replace,
// and their independence of the thread count.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

namespace diffuse::test {

// |got - want| <= |want| * 2^-7 + atol elementwise: at most one bf16 rounding step apart.
inline void expect_within_a_rounding(const torch::Tensor& got, const torch::Tensor& want, double atol,
                                     const char* what) {
  auto g = got.to(torch::kFloat), w = want.to(torch::kFloat);
  auto excess = ((g - w).abs() - w.abs() / 128 - atol).max().item<double>();
  EXPECT_LE(excess, 0.0) << what << ": max abs diff " << (g - w).abs().max().item<double>();
}

// run() (returning tensors) on 1 and then 2 threads gives identical tensors.
template <typename F>
void expect_same_on_one_and_two_threads(const F& run) {
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const std::vector<torch::Tensor> one = run();
  at::set_num_threads(2);
  const std::vector<torch::Tensor> two = run();
  at::set_num_threads(before);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(torch::equal(one[i], two[i])) << "output " << i;
}

}  // namespace diffuse::test
