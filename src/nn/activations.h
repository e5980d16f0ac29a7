#pragma once
// Activation functions by diffusers' names ("silu"/"swish", "mish", "gelu", "relu").
#include <torch/torch.h>

#include <string>

namespace diffuse::nn {

enum class Activation { SiLU, Mish, GELU, ReLU };

// Parses a diffusers `act_fn` name; throws diffuse::Error listing the known names.
Activation parse_activation(const std::string& name);
std::string activation_name(Activation a);

torch::Tensor activate(Activation a, const torch::Tensor& x);

}  // namespace diffuse::nn
