#pragma once
// The softmax of attention scores in bf16, in one pass over memory.
//
// An attention block whose softmax computes in fp32 (diffusers' `upcast_softmax`, and everything
// under bf16 autocast) scales the bf16 scores, copies them to fp32, normalises them into another
// fp32 tensor and casts that back to bf16 for the product with the values; the backward pass
// makes the same round trips, and autograd keeps the fp32 probabilities. scaled_softmax_bf16
// reads the bf16 scores once and writes bf16 probabilities, computing in fp32 in between and
// rounding where the unfused path rounds. For its backward pass it keeps the fp32 probabilities
// when they take at most a quarter of attention_memory_budget() (32 MiB by default), as the
// unfused path does; larger ones it recomputes from the bf16 scores it keeps instead (half the
// memory). Either way the gradient is the same.
#include <torch/torch.h>

namespace diffuse::nn {

// bf16(softmax(fp32(bf16(scores * scale)), dim = -1)), with autograd; scores: bf16 on the CPU. The
// scale is rounded to bf16 first, as ATen does when it multiplies a bf16 tensor by a scalar.
torch::Tensor scaled_softmax_bf16(const torch::Tensor& scores, double scale);

}  // namespace diffuse::nn
