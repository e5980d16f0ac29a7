#pragma once
// AdamW (Loshchilov & Hutter) with its state kept as named tensors, so a
// checkpoint is plain safetensors and a resumed run continues bit for bit.
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace diffuse {

class AdamW {
 public:
  struct Options {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  };
  AdamW(std::vector<std::pair<std::string, torch::Tensor>> params, Options opt);

  // One update with learning rate `lr` using the parameters' current .grad() times grad_scale (a
  // clipping factor, see grad_norm); a parameter without a gradient is left as it is (as
  // PyTorch's optimizers do). A gradient may be bf16 for a float32 parameter (train/compute_weights.h).
  void step(double lr, double grad_scale = 1.0);
  // Keeps `copy` (a bf16 tensor of param's shape) equal to param rounded to bf16 after every step,
  // written in the update's own pass. `param` must be one of the optimizer's parameters.
  void mirror(const torch::Tensor& param, torch::Tensor copy);
  // Drops the gradients (PyTorch's set_to_none): the next backward pass stores each gradient
  // instead of adding it to zeros.
  void zero_grad();
  int64_t steps() const { return t_; }

  // State as tensors: "<param>.exp_avg", "<param>.exp_avg_sq"; the step count is returned separately.
  std::map<std::string, torch::Tensor> state() const;
  void load_state(const std::map<std::string, torch::Tensor>& st, int64_t steps, const std::string& source);

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> m_, v_, mirrors_;
  Options opt_;
  int64_t t_ = 0;
};

// The global L2 norm of the gradients, and the factor that clips it to max_norm (1 when the norm is
// within max_norm, when max_norm is 0, or when the norm is not finite).
struct GradNorm {
  double norm = 0, scale = 1;
};
GradNorm grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// Clips the global L2 norm of the gradients to `max_norm` in place; returns the norm before clipping.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace diffuse
