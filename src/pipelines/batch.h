#pragma once
// Per-image inputs of a batched pipeline call.
#include <torch/torch.h>

#include <string>

namespace diffuse {

// Rows [start, end) of a tensor given for 1 image (broadcast) or for all n images. Undefined stays
// undefined. Throws diffuse::Error naming `what` for another batch size.
torch::Tensor batch_rows(const torch::Tensor& t, int n, int start, int end, const std::string& what);

}  // namespace diffuse
