#pragma once
// GELU on bf16 and fp32 activations on the CPU, computed in fp32 in one pass.
//
// libtorch 1.13 computes GELU and its gradient on bf16 tensors element by element without its
// vector code: in a DiT-S/2 training step under bf16 autocast they took a third of the step. The
// kernel here gives the same values (computed in fp32, rounded once to bf16, as ATen does) with
// vectorised loops. fp32 tensors take the same loops without the rounding: ATen's fp32 GELU and
// its gradient took a tenth of an fp32 DiT-S/2 step, and lose the far left tail to cancellation.
#include <torch/torch.h>

namespace diffuse::nn {

// torch::gelu(x) (tanh_approximation: torch::gelu(x, "tanh")); bf16 and fp32 CPU tensors take the
// fused kernel, everything else ATen's.
torch::Tensor gelu(const torch::Tensor& x, bool tanh_approximation = false);

// The fused kernel, with autograd; x: bf16 on the CPU.
torch::Tensor gelu_bf16(const torch::Tensor& x, bool tanh_approximation);

}  // namespace diffuse::nn
