#pragma once
// torch::nn::Conv2d whose fp32 3x3 stride-1 convolutions on the CPU run oneDNN's Winograd kernels
// (nn/winograd_conv.h) where they exist, and libtorch's convolution otherwise. Same options,
// parameters and state-dict names as the frontend's module.
#include <torch/torch.h>

#include <variant>

#include "nn/autocast.h"
#include "nn/winograd_conv.h"

namespace diffuse::nn {

class Conv2dImpl : public torch::nn::Conv2dImpl {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;

  torch::Tensor forward(const torch::Tensor& input) {
    if (winograd_shape() && !autocast_enabled(input.device())) {
      auto out = winograd_conv2d(input, weight, bias);
      if (out.defined()) return out;
    }
    return torch::nn::Conv2dImpl::forward(input);
  }

 private:
  // 3x3, stride 1, zero padding 1, no dilation, one group: the convolutions the kernels compute.
  bool winograd_shape() const {
    using std::get_if;  // torch 1.13's options hold a c10::variant, torch 2 a std::variant
    using std::holds_alternative;
    const auto& o = options;
    const auto* pad = get_if<torch::ExpandingArray<2>>(&o.padding());
    return o.kernel_size()->at(0) == 3 && o.kernel_size()->at(1) == 3 && o.stride()->at(0) == 1 &&
           o.stride()->at(1) == 1 && pad && (*pad)->at(0) == 1 && (*pad)->at(1) == 1 && o.dilation()->at(0) == 1 &&
           o.dilation()->at(1) == 1 && o.groups() == 1 && !o.transposed() &&
           holds_alternative<torch::enumtype::kZeros>(o.padding_mode());
  }
};
TORCH_MODULE(Conv2d);

}  // namespace diffuse::nn
