#pragma once
// torch::nn::Linear with ATen's linear as its forward. The C++ frontend's own forward computes
// `matmul(x, w.t())` and then `+= bias`: two passes over the output for 3-D inputs, and under
// bf16 autocast the float32 bias is added to the bf16 product through a float32 temporary (about
// as slow as the product itself). ATen's linear is one addmm for 2-D and contiguous 3-D inputs,
// autocast casts its bias with the weight, and it is what diffusers' modules call.
#include <torch/torch.h>

#include "nn/autocast.h"

namespace diffuse::nn {

class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;

  torch::Tensor forward(const torch::Tensor& input) {
    if (compute_weight.defined() && autocast_enabled(weight.device()))
      return torch::linear(input, compute_weight, compute_bias);
    return torch::linear(input, weight, bias);
  }

  // bf16 copies of weight and bias that forward uses in their place while autocast is on: what
  // autocast would cast them to, kept by a trainer (train/compute_weights.h) so that no step
  // casts them. Not parameters: the state dict, the optimizer and the EMA see weight and bias.
  torch::Tensor compute_weight, compute_bias;
};
TORCH_MODULE(Linear);

}  // namespace diffuse::nn
