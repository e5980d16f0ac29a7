#pragma once
// 3x3 convolutions in fp32 on the CPU through oneDNN's Winograd kernels.
//
// libtorch runs every fp32 convolution with oneDNN's direct algorithm. For 3x3 kernels with stride
// 1 the Winograd algorithm F(4x4, 3x3) does the same work with about a quarter of the
// multiplications; oneDNN has it for AVX-512 CPUs, and at the shapes of the UNets trained here
// (64 images of 32-256 channels at 7x7-28x28) its forward, data-gradient and weight-gradient passes
// take 0.5-0.75 of the direct ones' time. The results are fp32 too but not the same bits: the
// transforms add rounding (relative differences of a few 1e-6 against the direct algorithm, which
// tests/nn/winograd_conv_test.cpp bounds).
//
// Built when CMake finds oneDNN's headers (Debian: libdnnl-dev); elsewhere, and on CPUs without
// the kernels, winograd_conv2d returns an undefined tensor and callers run libtorch's convolution.
#include <torch/torch.h>

namespace diffuse::nn {

// Whether fp32 3x3 stride-1 convolutions on the CPU may use the Winograd kernels (default: yes).
// Off, every convolution runs libtorch's own, bit for bit as before.
void set_winograd_convolutions(bool on);
bool winograd_convolutions();

// Whether this build and CPU have the kernels at all.
bool winograd_available();

// conv2d(input, weight, bias, stride 1, padding 1) with autograd, through the Winograd kernels:
// input [N, C, H, W] fp32 on the CPU (contiguous or channels-last), weight [O, C, 3, 3] fp32, bias
// [O] or undefined, C and O multiples of 16 (oneDNN's channel blocks). Returns an undefined tensor
// where the kernels do not apply (switched off, not built, another dtype or device, other channel
// counts, or a shape oneDNN does not take); the caller then convolves as usual.
torch::Tensor winograd_conv2d(const torch::Tensor& input, const torch::Tensor& weight, const torch::Tensor& bias);

}  // namespace diffuse::nn
