#pragma once
// The denoising objective of `diffuse train`: for clean samples x0 it draws timesteps, noise and
// class dropout, noises x0 (x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise), gives the target of the
// prediction type (epsilon: the noise; v_prediction: sqrt(a_t) noise - sqrt(1 - a_t) x0; sample: x0)
// and the loss: the batch mean of the per-sample MSE, weighted by Min-SNR-gamma (Hang et al. 2023)
// when gamma > 0.
//
// A batch may be a slice of a larger (global) batch: the random draws are made for the whole
// global batch and sliced, so the slices of several processes hold exactly what one process with
// the global batch draws.
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "diffusion/denoiser.h"

namespace diffuse {

struct DiffusionObjectiveOptions {
  std::string prediction = "epsilon";  // epsilon | v_prediction | sample
  double class_dropout = 0.0;          // probability of replacing a label by null_class
  int64_t null_class = -1;             // label of the unconditional model (-1: none, no dropout)
  bool always_null = false;            // every sample gets null_class (an unconditional DiT)
  double min_snr_gamma = 0.0;          // 0 = plain MSE
};

// Rows [offset, offset + size of the batch) of a global batch of `total` rows (0 = the batch itself).
struct BatchSlice {
  int64_t offset = 0;
  int64_t total = 0;
};

// The random part of one training batch and what follows from it.
struct DiffusionDraw {
  torch::Tensor t;       // int64 [B] timesteps
  torch::Tensor noise;   // like x0
  torch::Tensor labels;  // int64 [B] after class dropout (undefined for an unconditional model)
  torch::Tensor xt;      // the noised samples, the network's input
  torch::Tensor target;  // what the network learns to predict
};

class DiffusionObjective {
 public:
  // alphas_cumprod: float32 [T] (make_alphas_cumprod), on the device the batches will be on.
  // diffuse::Error for an unknown prediction type or a dropout outside [0, 1).
  DiffusionObjective(torch::Tensor alphas_cumprod, DiffusionObjectiveOptions options);

  // Draws, in this order on `gen` (a CPU generator): timesteps [total], noise [total, ...] and, when
  // labels are given, a null_class and class_dropout > 0, the dropout mask [total]; keeps the rows of
  // `slice`. x0 [B, C, H, W] and labels [B] (undefined: unconditional) may live on any device.
  DiffusionDraw draw(const torch::Tensor& x0, const torch::Tensor& labels, at::Generator& gen,
                     BatchSlice slice = {}) const;

  // The Min-SNR weight of each timestep (ones when gamma = 0), SNR = a / (1 - a):
  // epsilon min(SNR, gamma) / SNR, v_prediction min(SNR, gamma) / (SNR + 1), sample min(SNR, gamma).
  torch::Tensor weights(const torch::Tensor& t) const;

  // Mean over the batch of weight(t) * mean((output - target)^2) per sample: a scalar.
  torch::Tensor loss(const torch::Tensor& output, const DiffusionDraw& draw) const;

  int64_t num_train_timesteps() const { return alphas_cumprod_.size(0); }
  const DiffusionObjectiveOptions& options() const { return opt_; }

 private:
  torch::Tensor alphas_cumprod_;
  DiffusionObjectiveOptions opt_;
  Prediction pred_;
};

}  // namespace diffuse
