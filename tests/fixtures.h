#pragma once
// Access to the reference fixtures in tests/fixtures (see its README for their provenance).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <filesystem>
#include <string>

#include "core/safetensors.h"

namespace diffuse::test {

inline std::string fixture(const std::string& rel) { return std::string(DIFFUSE_FIXTURES) + "/" + rel; }
// Max |error| allowed when a float32 forward pass is compared with a reference fixture.
constexpr double kParityTol = 1e-4;

inline std::string source_path(const std::string& rel) { return std::string(DIFFUSE_SOURCE_DIR) + "/" + rel; }

// Max |a - b| as a double (shapes must match).
inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// A fresh empty temporary directory, removed by the destructor.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/diffuse_test_XXXXXX";
    char* p = ::mkdtemp(tmpl);
    if (!p) throw std::runtime_error("mkdtemp failed");
    path = p;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

}  // namespace diffuse::test
