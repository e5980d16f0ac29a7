#pragma once
// Animations of class-conditional and unconditional models (pixel or latent): the denoising
// trajectory of one sample, or an interpolation between seeds and between classes.
//
//   diffuse::AnimationRequest req;
//   req.mode = "interpolate";
//   req.generation.class_label = "sneaker";
//   req.to_class = "sandal";
//   auto res = diffuse::animate(model, req);  // res.bytes: an animated GIF
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/error.h"
#include "diffuse/model.h"
#include "diffuse/request.h"

namespace diffuse {

struct AnimationRequest {
  std::string mode = "trajectory";  // trajectory | interpolate
  // trajectory: frames spread over the run's steps + 1 states (default: every state, at most
  // steps + 1); interpolate: samples from t = 0 to 1 (default 16). At least 2.
  std::optional<int> frames;
  double fps = 8;              // (0, 100]
  std::string format = "gif";  // gif | webp
  // Each image is upscaled by a whole factor (nearest neighbour) to at least this side.
  int frame_size = 128;
  bool captions = true;  // a strip above each frame: step and sigma, or the interpolation's t
  // interpolate: the last frame's class (class-conditional models; the first frame's is
  // generation.class_label) and seed (default: generation.seed + 1 unless to_class is given, then
  // the same seed).
  std::string to_class;
  std::optional<int64_t> to_seed;
  // The sampling settings: class, sampler, schedule, sigmas, steps, guidance, guide_model, seed,
  // rng, eta, s_noise. n, sizes and the Stable Diffusion fields do not apply.
  GenerationRequest generation;

  // Problems that need no model; empty when valid.
  std::vector<FieldError> validate() const;
};

struct AnimationResult {
  std::string bytes;  // the encoded GIF or WebP
  int frames = 0, width = 0, height = 0;
  std::string infotext;      // the parameters (also a GIF comment)
  AnimationRequest request;  // as run: defaults filled in, seed resolved
  double seconds = 0;
};

// Throws RequestError naming the field at fault (mode, frames, fps, format, frame_size, to_class,
// to_seed, class, steps, ...; "model" for Stable Diffusion models).
AnimationResult animate(const Model& model, const AnimationRequest& request, const GenerateHooks& hooks = {});

}  // namespace diffuse
