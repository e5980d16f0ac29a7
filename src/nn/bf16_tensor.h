#pragma once
// The raw bf16 bits of a CPU tensor, for the fused kernels' loops (nn/vector_math.h).
#include <torch/torch.h>

#include <cstdint>

namespace diffuse::nn {

inline const uint16_t* bf16_bits(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
inline uint16_t* bf16_bits_mutable(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

}  // namespace diffuse::nn
