#pragma once
// Test helper shared by the model tests: the number of values in a module's state dict.
#include <cstdint>

#include "nn/state_dict.h"

namespace diffuse::test {

inline int64_t param_count(const torch::nn::Module& m) {
  int64_t n = 0;
  for (auto& [k, v] : nn::state_dict(m)) n += v.numel();
  return n;
}

}  // namespace diffuse::test
