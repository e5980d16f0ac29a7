#pragma once
// Attention in fp32 on the CPU, one (image, head) at a time.
//
// libtorch's CPU bmm without MKL multiplies the matrices of a batch one after another, each with
// every thread, and a projection's heads reach it as strided views that it copies first. At the
// sizes of the UNets trained here (196 or 49 tokens, heads of 32) each product is too small to
// share between threads. fused_attention_fp32 gives each thread whole (image, head) pairs and runs
// scores, softmax and the product with the values while they are in its cache, reading q, k and
// v where they lie (the heads of a [B, N, H*D] projection) and writing the result in that layout.
// Its backward pass does the same; it keeps the probabilities when they take at most a quarter of
// attention_memory_budget() and recomputes them from q and k otherwise.
//
// Built with oneDNN (as nn/winograd_conv.h); elsewhere fused_attention_fp32 returns an undefined
// tensor and the caller multiplies as before.
#include <torch/torch.h>

namespace diffuse::nn {

// softmax(q k^T * scale) v with autograd, for q [B, H, N, D], k and v [B, H, M, D] in fp32 on the
// CPU (each row of D contiguous), no mask. The result has q's shape and lies in memory as
// [B, N, H, D]. Undefined where this does not apply.
torch::Tensor fused_attention_fp32(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   double scale);

}  // namespace diffuse::nn
