#pragma once
// State dicts under diffusers' names: modules register submodules with the
// names diffusers uses, so parameter paths match checkpoint keys directly.
#include <torch/torch.h>

#include <map>
#include <string>

namespace diffuse::nn {

using StateDict = std::map<std::string, torch::Tensor>;

// Parameters and buffers of `m`, keyed by their dotted paths.
StateDict state_dict(const torch::nn::Module& m);

// Copies `sd` into `m` (converting dtype). Strict: any missing key, unexpected key or
// shape mismatch raises one diffuse::Error that names `source` and lists them all.
void load_state_dict(torch::nn::Module& m, const StateDict& sd, const std::string& source);

}  // namespace diffuse::nn
