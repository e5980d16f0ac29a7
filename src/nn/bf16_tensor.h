#pragma once
// bf16 CPU tensors as the fused kernels' loops (nn/vector_math.h) read and write them.
#include <torch/torch.h>

#include <cstdint>

namespace diffuse::nn {

inline const uint16_t* bf16_bits(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
inline uint16_t* bf16_bits_mutable(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// A gradient handed to a kernel's backward pass, as contiguous bf16.
inline torch::Tensor bf16_contiguous(const torch::Tensor& t) { return t.to(torch::kBFloat16).contiguous(); }

}  // namespace diffuse::nn
