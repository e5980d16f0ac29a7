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
// The same on a temporary the caller no longer needs (a norm's output): in place when no gradient
// is recorded, so a block holds one full-size tensor fewer at its peak (the VAE decoder's last
// levels at large sizes); the values are those of activate().
torch::Tensor activate_temporary(Activation a, torch::Tensor x);

}  // namespace diffuse::nn
