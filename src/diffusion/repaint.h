#pragma once
// RePaint (Lugmayr et al. 2022): inpainting with a model that was not trained for it. At every
// step the known region is re-noised from the original image to the step's noise level and the
// unknown region is denoised; resampling jumps (go back up by `jump_length` steps and down again,
// `jump_n_sample` times) let the two regions agree. Timesteps, step and undo step are those of
// diffusers' RePaintScheduler (a DDIM step with eta, the noise shared by the unknown and the known
// part, and the undo step drawn per training timestep).
#include <torch/torch.h>

#include <functional>
#include <vector>

#include "diffusion/denoiser.h"
#include "diffusion/noise.h"
#include "diffusion/sampler.h"

namespace diffuse {

// diffusers' RePaintScheduler.set_timesteps: training timesteps in processing order; an entry
// larger than its predecessor is an undo (re-noising) step.
std::vector<int> repaint_timesteps(int num_train_timesteps, int steps, int jump_length, int jump_n_sample);

struct RePaintOptions {
  int steps = 250;
  int jump_length = 10;
  int jump_n_sample = 10;
  double eta = 0.0;              // 0: DDIM step; 1: DDPM posterior variance
  double x0_clamp = 0.0;         // > 0: clamp x0 (clip_sample); the direction keeps the unclamped noise
  NoiseSource* noise = nullptr;  // required
  StepCallback callback;         // after each denoising step (undo steps are not reported)
  // After every operation: (training timestep, undo?, sample in VP coordinates). For tests.
  std::function<void(int t, bool undo, const torch::Tensor& x_vp)> trace;
};

// Inpaints with the denoiser D (VE coordinates, x = x0 + sigma n). `noise`: the initial standard
// normal sample (diffusers starts from it unscaled at the first timestep); `known`: the original
// image (x0 space, same shape as noise); `mask`: 1 = repaint, 0 = keep, broadcastable to noise,
// soft values blend. `betas` and `alphas_cumprod` [T] are the discrete schedule's (float32).
// Returns the final sample (x0 space); with a binary mask its known region equals `known`.
torch::Tensor sample_repaint(const Denoiser& D, const torch::Tensor& noise, const torch::Tensor& known,
                             const torch::Tensor& mask, const torch::Tensor& betas, const torch::Tensor& alphas_cumprod,
                             const RePaintOptions& opt);

}  // namespace diffuse
