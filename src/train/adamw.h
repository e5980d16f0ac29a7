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

  // One update with learning rate `lr` using the parameters' current .grad().
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return t_; }

  // State as tensors: "<param>.exp_avg", "<param>.exp_avg_sq"; the step count is returned separately.
  std::map<std::string, torch::Tensor> state() const;
  void load_state(const std::map<std::string, torch::Tensor>& st, int64_t steps, const std::string& source);

 private:
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<torch::Tensor> m_, v_;
  Options opt_;
  int64_t t_ = 0;
};

// Clips the global L2 norm of the gradients to `max_norm`; returns the norm before clipping.
double clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace diffuse
