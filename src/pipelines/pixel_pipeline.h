#pragma once
// Class-conditional (or unconditional) image diffusion pipeline: a denoising network
// (UNet2DModel or DiTTransformer2DModel) + its noise schedule + class names, optionally in
// the latent space of an AutoencoderKL. Stored as a diffusers pipeline folder:
//   pixel UNet:   DDPMPipeline  (model_index.json, unet/, scheduler/)
//   latent DiT:   DiTPipeline   (model_index.json, transformer/, vae/, scheduler/, id2label)
//   latent UNet:  LDM layout    (model_index.json, unet/, vae/, scheduler/)
// plus class_names.json (class names and the null class used for classifier-free guidance).
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/denoiser.h"
#include "diffusion/sampler.h"
#include "diffusion/schedule.h"
#include "models/autoencoder_kl.h"
#include "models/diffusion_net.h"

namespace diffuse {

struct PixelPipeline {
  DiffusionNet net;
  AutoencoderKL vae{nullptr};  // latent pipelines only
  NoiseScheduleConfig scheduler;
  std::vector<std::string> class_names;  // empty for unconditional models
  int64_t null_class = -1;               // class id used for the unconditional branch of CFG (-1: none)
  torch::Device device = torch::kCPU;
  std::string source;  // folder it was loaded from

  bool class_conditional() const { return !class_names.empty(); }
  bool latent() const { return static_cast<bool>(vae); }
  int image_size() const;   // side of the generated images (pixels)
  int channels() const;     // channels of the generated images
  int latent_size() const;  // side of the sampled tensor (= image_size() for pixel pipelines)
  int latent_channels() const;
  // Latents of the diffusion model -> images in [-1, 1] nominal (identity for pixel pipelines):
  // vae.decode(z / scaling_factor + shift_factor).
  torch::Tensor decode(const torch::Tensor& z) const;
  // Images [B, channels(), H, W] in [-1, 1] -> latents (the posterior mean; identity for pixel
  // pipelines): (vae.encode(x).mean - shift_factor) * scaling_factor.
  torch::Tensor encode(const torch::Tensor& images) const;
  // Image sides must be multiples of this (the network's size multiple times the VAE's factor).
  int size_step() const;

  // Loads a pipeline folder, or a bare UNet/DiT folder (config.json + weights) with a default DDPM
  // schedule. Throws diffuse::Error when the VAE's latent channels do not match the network.
  static PixelPipeline load(const std::string& dir, torch::Device device = torch::kCPU);
  // Writes the folder (each file atomically).
  void save(const std::string& dir) const;
  // Resolves a class given by name or index; throws diffuse::Error listing valid classes.
  int64_t class_index(const std::string& name_or_index) const;
  // The network as a conditional denoiser (conditioning key "class_labels"). `quantize` feeds
  // integer timesteps; `clamp` applies the scheduler's clip_sample to x0 (off when the sampler
  // clamps, see SamplingPlan). With `compute` kBFloat16 the network runs under bf16 autocast
  // (weights stay fp32) and its output is cast back to fp32, so the samplers stay fp32.
  CondDenoiser denoiser(bool quantize = false, bool clamp = true, torch::Dtype compute = torch::kFloat32) const;
};

struct GenerateOptions {
  int n = 8;
  std::vector<int64_t> classes;  // per image (size n) for class-conditional models; empty = unconditional
  double guidance = 1.0;         // CFG scale (1 = off)
  double cfg_rescale = 0.0;
  // Guidance only for noise levels guidance_sigma_lo < sigma <= guidance_sigma_hi
  // (Kynkaanniemi et al. 2024); the default interval covers every step.
  double guidance_sigma_lo = 0.0;
  double guidance_sigma_hi = INFINITY;
  // Autoguidance (Karras et al. 2024): guide with this weaker version of the model (smaller,
  // or trained for less time) instead of the unconditional branch; `guidance` is then its
  // scale, and unconditional models can be guided too. See check_guide.
  std::shared_ptr<const PixelPipeline> guide;
  // Run the guide unconditionally (its null class): x0 = g(null) + scale (m(c) - g(null)),
  // classifier-free guidance whose unconditional branch is the weaker model.
  bool guide_unconditional = false;
  // ddim and ddpm follow diffusers' DDIMScheduler / DDPMScheduler step for step when no schedule
  // is named (timesteps, initial scaling, clip_sample); the others follow k-diffusion.
  std::string sampler = "dpm++2m";
  std::string schedule = "";  // "" = the sampler's natural default (discrete)
  std::string sigmas = "";    // custom comma-separated sigmas, overrides schedule/steps
  int steps = 20;
  uint64_t seed = 0;        // image i uses seed + i (its noise and sampler noise)
  std::string rng = "cpu";  // cpu: torch's CPU generator (diffusers, ComfyUI); philox: A1111's GPU-style noise
  double eta = NAN;         // NaN = the sampler's default (DDIM 0, ancestral samplers 1)
  double s_noise = 1.0;
  int batch_size = 64;  // images per forward pass
  // Compute dtype of the network (and of the guide's): kFloat32, or kBFloat16 (autocast; the
  // samplers and the VAE of latent pipelines stay fp32).
  torch::Dtype dtype = torch::kFloat32;
  // Sharded generation across processes: only the batches whose index modulo `shards` is `shard`
  // are computed; the other images' rows of the result stay zero. Each computed image is the one
  // an unsharded call gives.
  int shard = 0, shards = 1;
  StepCallback callback;  // progress (step counts per batch)
  // Optional initial standard-normal noise [n, latent C, latent H, latent W] instead of the
  // seeded one (seed interpolation); the samplers' own noise still comes from the seeds.
  torch::Tensor noise;
  // Optional soft class labels [n, classes] (float): each image conditioned on this mix of the
  // class embeddings (class interpolation), instead of `classes`. The networks take float
  // class_labels [B, K] as embedding weights; CFG's unconditional branch is the null class.
  torch::Tensor class_weights;
  int width = 0, height = 0;  // image size in pixels (0 = the model's); multiples of size_step()

  // Editing. Images are [1 or n, channels(), height, width] in [-1, 1].
  torch::Tensor image;    // init image: img2img, inversion, inpainting
  double strength = 1.0;  // fraction of the schedule re-run: 0 returns the image (VAE round trip), 1 ignores it
  torch::Tensor mask;     // [1 or n, 1, height, width] in [0, 1], 1 = repaint; soft values blend
  std::string inpaint = "repaint";  // repaint (Lugmayr et al. 2022) or blend (x0 of the known region replaced)
  int jump_length = 10;             // RePaint resampling: steps per jump
  int jump_n_sample = 10;           // RePaint resampling: passes per jump
  // Class of `image` (>= 0): DDIM inversion under it to the noise level `strength` picks, then
  // sampling back under the target class (dual diffusion implicit bridges).
  int64_t invert_from = -1;
  // Fixed-point iterations per inversion step (see invert_ddim): more exact round trips with
  // ddim / euler on the way back, at (1 + invert_refine) evaluations per step.
  int invert_refine = 2;
};

struct GenerateResult {
  torch::Tensor samples;  // [n, C, H, W] float images ([-1, 1] nominal), before quantisation
  torch::Tensor noise;    // initial standard-normal noise, [n, latent C, latent H, latent W]
  torch::Tensor latents;  // final latents (latent pipelines; undefined for pixel pipelines)
};

GenerateResult generate(const PixelPipeline& pipe, const GenerateOptions& opt);

// Throws diffuse::Error naming `guide.source` unless `guide` samples the same space as `pipe`:
// pixel or latent alike, the same sample shape, the same VAE (latent pipelines) and, when both
// are class-conditional, the same classes. An unconditional main model needs a guide that is
// unconditional or has a null class.
void check_guide(const PixelPipeline& pipe, const PixelPipeline& guide);

// A1111-style "parameters" text for image i of a generation.
std::string generation_parameters(const PixelPipeline& pipe, const GenerateOptions& opt, int index);

}  // namespace diffuse
