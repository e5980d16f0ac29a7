#pragma once
// Building a module only to overwrite every parameter with loaded weights need not pay for its
// random initialisation: torch::nn's initialisers fill each weight serially from the CPU
// generator, which for Stable Diffusion's UNet (860 M values) costs more than reading the
// weights. Inside a SkipInitGuard the random fills (uniform_, normal_) leave tensors as
// allocated; everything else runs normally, and the generator is not advanced.
//
// Use it only around the construction of a module whose parameters are then all loaded
// strictly (nn::load_state_dict): a parameter the weights do not cover would keep whatever
// memory it was given. Deterministic buffers (position tables, constants) are unaffected.
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace diffuse::nn {

class SkipInitGuard {
 public:
  SkipInitGuard();
  SkipInitGuard(const SkipInitGuard&) = delete;
  SkipInitGuard& operator=(const SkipInitGuard&) = delete;

 private:
  c10::impl::IncludeDispatchKeyGuard include_;
};

}  // namespace diffuse::nn
