#pragma once
// Animations of a class-conditional or unconditional pipeline: the denoising trajectory of one
// sample, and spherical interpolation between seeds (initial noise) and between classes (soft
// class labels: a mix of the class embeddings).
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/image.h"
#include "pipelines/pixel_pipeline.h"

namespace diffuse {

// One state of a sampling run: the sample x_i at sigma_i and the denoiser's x0 estimate from it.
struct TrajectoryState {
  int step = 0;  // 0 = the initial noise; the last state is the finished sample
  double sigma = 0;
  torch::Tensor x;   // [C, H, W] image in [-1, 1] nominal: x_i / sqrt(1 + sigma_i^2) (diffusers' x_t), decoded
  torch::Tensor x0;  // [C, H, W] the x0 estimate, decoded
};

// Runs `opt` (n must be 1) and returns the states whose index is in `keep` (of the run's steps + 1
// states), ascending, decoded through the VAE for latent pipelines. Throws diffuse::Error for an
// index outside [0, steps].
std::vector<TrajectoryState> sample_trajectory(const PixelPipeline& pipe, GenerateOptions opt,
                                               const std::vector<int>& keep);

// Standard-normal initial noise [C, H, W] of the sampled space for `seed`, exactly as generate()
// draws image 0 of a run with that seed.
torch::Tensor seed_noise(const PixelPipeline& pipe, const std::string& rng, uint64_t seed);

// Spherical linear interpolation between a and b (t in [0, 1]); linear when they are parallel.
torch::Tensor slerp(const torch::Tensor& a, const torch::Tensor& b, double t);

// `frames` >= 2 samples along t = 0 .. 1: the initial noise slerped from seed_noise(seed_a) to
// seed_noise(seed_b), and for class-conditional pipelines the class weights moved linearly from
// class_a to class_b (one-hot ends). Every frame uses seed_a's sampler noise. `opt` gives the
// sampler settings; its n, noise, classes and class_weights are replaced. Returns [frames, C, H, W].
torch::Tensor interpolation_samples(const PixelPipeline& pipe, GenerateOptions opt, uint64_t seed_a, uint64_t seed_b,
                                    int64_t class_a, int64_t class_b, int frames);

// State indices of `frames` frames spread evenly over `states` states (first and last included).
std::vector<int> spread_frames(int frames, int states);

// Images [C, H, W] in [-1, 1] side by side (a 4 px white gap), each upscaled by `factor` (nearest
// neighbour), under a white strip with `caption` in a 5x7 pixel font (no strip when empty).
Image compose_frame(const std::vector<torch::Tensor>& panels, int factor, const std::string& caption);
// The height of compose_frame's caption strip.
constexpr int kCaptionHeight = 12;
constexpr int kPanelGap = 4;

}  // namespace diffuse
