#pragma once
// bf16 copies of a model's Linear weights for training under bf16 autocast.
//
// Under autocast every Linear casts its float32 weight and bias to bf16 in each forward pass,
// and autograd casts their bf16 gradients back to float32: two passes over every weight per
// step, which for DiT-S/2's 33 M parameters cost about a sixth of a bf16 step. ComputeWeights
// gives each Linear a bf16 copy of its weight and bias, which it uses under autocast instead
// (nn/linear.h). Backward leaves bf16 gradients on the copies; gather_gradients hands them to
// the float32 parameters as their .grad(), AdamW reads them as they are, and its update pass
// rewrites the copies. The numbers are autocast's: the same bf16 weights in the same products,
// the same gradients, the same float32 update.
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "nn/linear.h"
#include "train/adamw.h"

namespace diffuse {

class ComputeWeights {
 public:
  // Gives every nn::Linear under `model` whose float32 weight requires grad a bf16 copy of its
  // weight and bias, and has `optimizer` keep the copies up to date. The optimizer must hold
  // those weights and biases; the copies are taken from their current values.
  ComputeWeights(torch::nn::Module& model, AdamW& optimizer);
  // The Linear layers use their float32 weights again.
  ~ComputeWeights();
  ComputeWeights(const ComputeWeights&) = delete;
  ComputeWeights& operator=(const ComputeWeights&) = delete;

  // After each backward pass: moves the copies' gradients to their parameters' .grad(), adding
  // them in float32 to a gradient already there (micro-batches).
  void gather_gradients();
  // How many weight and bias tensors have copies.
  int64_t tensors() const { return static_cast<int64_t>(pairs_.size()); }

 private:
  struct Pair {
    torch::Tensor param, copy;
  };
  std::vector<std::shared_ptr<nn::LinearImpl>> layers_;
  std::vector<Pair> pairs_;
};

}  // namespace diffuse
