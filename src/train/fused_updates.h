#pragma once
// The optimizer's and the EMA's per-parameter updates as single passes over memory.
//
// Written with tensor operations, an AdamW step reads and writes each parameter's four tensors
// about twenty times (m and v scaled and accumulated, sqrt, division, eps, the update) and the
// EMA update five times; for DiT-S/2's 33 M parameters that was a quarter of a bf16 training
// step. These loops read each tensor once and write it once, with the same formulas (the
// tensor-operation path in train/adamw.cpp and train/run_helpers.cpp stays for everything else).
#include <torch/torch.h>

namespace diffuse {

struct AdamWStep {
  float beta1, beta2, eps;
  float one_minus_beta1, one_minus_beta2;  // computed in double, as the tensor operations' scalars
  float decay;                             // 1 - lr * weight_decay: p is scaled by it first
  float step_size;                         // lr / (1 - beta1^t)
  float bc2_sqrt;                          // sqrt(1 - beta2^t)
  float grad_scale = 1.f;                  // the gradient is multiplied by it first (clipping)
};

// g = grad_scale g; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2; p = decay p -
// step_size m / (sqrt(v) / bc2_sqrt + eps); mirror = bf16(p) when mirror is defined. Returns
// false, touching nothing, unless p, m and v are contiguous fp32 CPU tensors of one size, g is
// one of fp32 or bf16 and mirror (if defined) bf16, both contiguous, on the CPU and of that size.
bool adamw_step_fused(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v, const AdamWStep& s,
                      const torch::Tensor& mirror = {});

// ema = d ema + (1 - d) p. Returns false, touching nothing, unless both are contiguous fp32 CPU
// tensors of one size.
bool ema_update_fused(torch::Tensor& ema, const torch::Tensor& p, float d);

}  // namespace diffuse
