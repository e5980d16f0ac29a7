#pragma once
// Weights in 8 bits: Linear and Conv2d weights kept resident as int8 with one float32 scale per
// output channel (symmetric: scale = max|w| / 127 over the channel, q = round(w / scale)), and
// dequantised into the compute dtype one layer at a time by the same guards that upcast 16-bit
// weights (nn/compute_dtype.h). A quantised layer holds its int8 `weight` parameter and a
// `weight_scale` buffer [out_channels]; its bias and every other tensor keep their dtype.
#include <torch/torch.h>

#include <cstdint>

namespace diffuse::nn {

// The name of the per-output-channel scale buffer a quantised layer registers next to `weight`.
inline constexpr const char* kInt8ScaleName = "weight_scale";

struct Int8Weight {
  torch::Tensor q;      // int8, the weight's shape, values in [-127, 127]
  torch::Tensor scale;  // float32 [out_channels] (dim 0); 0 for an all-zero channel
};

// Symmetric per-output-channel quantisation of a floating-point weight [out, ...], computed in
// float32: |w - dequantize_int8(q, scale)| <= scale / 2 per channel, and weights already on the
// grid (k * scale, some |k| = 127 per channel) come back exactly.
Int8Weight quantize_int8(const torch::Tensor& w);
// q * scale (broadcast over dim 0) in float32, then converted to `dtype`.
torch::Tensor dequantize_int8(const torch::Tensor& q, const torch::Tensor& scale, torch::Dtype dtype = torch::kFloat32);

// Quantises the weight of every Linear and Conv2d in `m` (itself and its descendants) whose
// weight is floating point, in place: the parameter becomes int8 (and stops requiring grad) and
// a `weight_scale` buffer is registered. Returns the number of layers quantised. The other
// tensors are untouched.
int64_t quantize_int8_weights(torch::nn::Module& m);

// The scale buffer of `m`'s own int8 weight; undefined when `m` holds no quantised weight.
torch::Tensor int8_scale_of(const torch::nn::Module& m);

// Module::to(dtype) that leaves quantised weights and their scales as they are (Module::to
// converts every tensor, integer ones included): the floating-point tensors of `m` and its
// descendants other than scales become `dtype`.
void to_dtype_keeping_int8(torch::nn::Module& m, torch::Dtype dtype);

// Bytes of `m`'s parameters and buffers (with its descendants'), as held in memory.
int64_t tensor_bytes(const torch::nn::Module& m);

}  // namespace diffuse::nn
