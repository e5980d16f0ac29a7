#include "nn/activations.h"

#include "core/error.h"

namespace diffuse::nn {

Activation parse_activation(const std::string& name) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "mish") return Activation::Mish;
  if (name == "gelu") return Activation::GELU;
  if (name == "relu") return Activation::ReLU;
  throw Error("unknown activation function '" + name + "' (expected silu, swish, mish, gelu or relu)");
}

std::string activation_name(Activation a) {
  switch (a) {
    case Activation::SiLU:
      return "silu";
    case Activation::Mish:
      return "mish";
    case Activation::GELU:
      return "gelu";
    case Activation::ReLU:
      return "relu";
  }
  return "silu";
}

torch::Tensor activate(Activation a, const torch::Tensor& x) {
  switch (a) {
    case Activation::SiLU:
      return torch::silu(x);
    case Activation::Mish:
      return torch::mish(x);
    case Activation::GELU:
      return torch::gelu(x);
    case Activation::ReLU:
      return torch::relu(x);
  }
  return x;
}

torch::Tensor activate_temporary(Activation a, torch::Tensor x) {
  if (torch::GradMode::is_enabled() && x.requires_grad()) return activate(a, x);
  switch (a) {
    case Activation::SiLU:
      return torch::silu_(x);
    case Activation::Mish:
      return torch::mish_(x);
    case Activation::GELU:
      return torch::gelu_(x);
    case Activation::ReLU:
      return torch::relu_(x);
  }
  return x;
}

}  // namespace diffuse::nn
