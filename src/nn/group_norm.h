#pragma once
// GroupNorm followed by an activation, as one pass over bf16 activations on the CPU.
//
// Under bf16 autocast, libtorch 1.13 computes a group norm in fp32: the bf16 input is copied to
// fp32, normalised into a new fp32 tensor, activated into another, and cast back to bf16 by the
// convolution that follows; the backward pass makes the same round trips. group_norm_act reads
// the bf16 input once for the statistics and once for the output, computes in fp32 and writes
// bf16: the values the fp32 path hands to the next convolution, rounded at the same point (the
// next layer's bf16 cast), without the fp32 tensors in between.
#include <torch/torch.h>

#include <optional>

#include "nn/activations.h"

namespace diffuse::nn {

// act(norm(x)). The fused kernel runs where x is a bf16 CPU tensor and the norm's affine
// parameters are fp32 (trained fp32 weights under bf16 autocast) and act is SiLU or absent; its
// output is bf16. Everywhere else it is activate_temporary(act, norm(x)) exactly. Callers use it
// where the result feeds a layer that computes in bf16 under autocast (a convolution, a linear
// projection), so that handing it bf16 instead of fp32 changes no value the layer sees.
torch::Tensor group_norm_act(torch::nn::GroupNormImpl& norm, const torch::Tensor& x, std::optional<Activation> act);

// The fused kernel itself, with autograd (gradients for x, weight and bias): x [N, C, ...] bf16
// on the CPU, weight and bias [C] fp32 or undefined, C divisible by groups. Returns bf16.
torch::Tensor group_norm_silu_bf16(const torch::Tensor& x, int64_t groups, const torch::Tensor& weight,
                                   const torch::Tensor& bias, double eps, bool silu);

// True where group_norm_act takes the fused kernel.
bool group_norm_act_fuses(const torch::nn::GroupNormImpl& norm, const torch::Tensor& x, std::optional<Activation> act);

}  // namespace diffuse::nn
