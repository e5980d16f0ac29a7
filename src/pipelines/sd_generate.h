#pragma once
// Generation with a Stable Diffusion pipeline (sd_pipeline.h, which includes this header): the
// options and result of generate(), SDXL prompt encoding and micro-conditioning, the base ->
// refiner split, and the A1111-style "parameters" text.
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include "diffusion/sampler.h"

namespace diffuse {

struct SDPipeline;

// SDXL micro-conditioning (diffusers' original_size, crops_coords_top_left, target_size,
// aesthetic_score and their negative_* counterparts), as (height, width) and (top, left) pairs.
// Unset sizes are the output size; unset crops (0, 0).
struct SizeConditioning {
  std::optional<std::array<int, 2>> original_size, crop_coords, target_size;
  std::optional<std::array<int, 2>> negative_original_size, negative_crop_coords, negative_target_size;
  double aesthetic_score = 6.0, negative_aesthetic_score = 2.5;  // refiners
};

struct SDOptions {
  int n = 1;                  // images
  int width = 0, height = 0;  // 0 = default_size()
  std::string prompt, negative_prompt;
  // diffusers' prompt_embeds / negative_prompt_embeds: [1 or n, L, C]; override the prompts.
  torch::Tensor prompt_embeds, negative_prompt_embeds;
  // SDXL: diffusers' pooled_prompt_embeds / negative_pooled_prompt_embeds [1 or n, P], required with
  // the embeddings they go with.
  torch::Tensor pooled_prompt_embeds, negative_pooled_prompt_embeds;
  SizeConditioning size_cond;  // SDXL
  int clip_skip = 0;           // hidden layers skipped at the end of the text encoder
  // diffusers' latents=: [1 or n, C, h, w] standard-normal starting latents, scaled by the
  // scheduler's init sigma as diffusers does. Undefined: drawn from the seeds.
  torch::Tensor latents;
  double guidance = 7.5;  // CFG scale (> 1 enables guidance)
  double cfg_rescale = 0.0;
  // Guidance only for noise levels guidance_sigma_lo < sigma <= guidance_sigma_hi
  // (Kynkaanniemi et al. 2024); the default interval covers every step.
  double guidance_sigma_lo = 0.0;
  double guidance_sigma_hi = INFINITY;
  std::string sampler;   // "" = the folder's scheduler class (DDIMScheduler -> ddim)
  std::string schedule;  // "" = diffusers' timesteps for the sampler
  std::string sigmas;    // custom comma-separated sigmas
  int steps = 20;
  uint64_t seed = 0;        // image i uses seed + i
  std::string rng = "cpu";  // cpu | philox
  double eta = NAN;         // NaN = the sampler's default
  double s_noise = 1.0;
  int batch_size = 1;  // images per UNet call (times 2 with CFG)
  // Sharded generation across processes: only the batches whose index modulo `shards` is `shard`
  // are computed; the other images' rows of the result stay zero. Each computed image is the one
  // an unsharded call gives.
  int shard = 0, shards = 1;
  // img2img / inpainting: init image [1 or n, 3, H, W] in [-1, 1] (H, W = height, width).
  torch::Tensor image;
  double strength = 0.8;  // img2img: fraction of the schedule re-run (1 = from pure noise)
  // Inpainting: [1 or n, 1, H, W] in [0, 1], 1 = repaint. Requires `image`.
  torch::Tensor mask;
  double mask_blur = 0;          // Gaussian blur sigma of the mask in pixels (A1111's mask blur)
  bool only_masked = false;      // inpaint only a crop around the mask, resized to width x height
  int only_masked_padding = 32;  // pixels of context around the mask's bounding box
  // Base -> refiner handoff (diffusers' denoising_end / denoising_start): with the training
  // timesteps t of the schedule and cutoff = round(1000 * (1 - fraction)), `denoising_end` runs
  // only the steps with t >= cutoff and returns the noisy latents (SDResult::x_end, not decoded);
  // `denoising_start` runs the steps with t < cutoff from `start_latents` ([1 or n, C, h, w], the
  // x_end of the first model, in the sampler's sigma-scaled form), ignoring image and strength.
  double denoising_end = NAN, denoising_start = NAN;
  torch::Tensor start_latents;
  // false: the latents are not decoded (SDResult::samples undefined); decode_samples decodes them
  // later, as a one-shot run does after releasing the UNet.
  bool decode = true;
  StepCallback callback;
};

struct SDResult {
  torch::Tensor samples;  // [n, 3, H, W] float in [-1, 1] nominal (decoded, not clamped)
  torch::Tensor latents;  // [n, C, h, w] final (scaled) latents as diffusers returns them
  torch::Tensor noise;    // [n, C, h, w] the starting standard-normal noise
  // [n, C, h, w] the sampler's latents at the last sigma (x0 + sigma * noise); with denoising_end
  // what a refiner starts from (`samples` is then undefined: nothing is decoded)
  torch::Tensor x_end;
};

// The split of a schedule for denoising_end / denoising_start = `fraction`: the number of steps
// (of sigmas.size(0) - 1) whose timestep is at least round(T * (1 - fraction)) (diffusers' rule).
int64_t denoising_split(const SDPipeline& pipe, const torch::Tensor& sigmas, double fraction);

SDResult generate(const SDPipeline& pipe, const SDOptions& opt);

// The images of a generation run with `decode` false: its latents decoded batch by batch (the
// rows of the shard's batches; the others stay zero).
torch::Tensor decode_samples(const SDPipeline& pipe, const SDOptions& opt, const torch::Tensor& latents);

// The prompt embeddings a generation conditions on: the options' embeddings where given, else
// their prompts encoded (SDXL: zeros for an empty negative prompt where the model asks for them),
// the negative ones (with guidance only) matched to the positive's length. Passing them back as
// the options' embeddings gives the same generation without the text encoders.
struct PromptEmbeddings {
  torch::Tensor cond, uncond, cond_pooled, uncond_pooled;
};
PromptEmbeddings encode_prompts(const SDPipeline& pipe, const SDOptions& opt);

// SDXL time ids [1, 5 or 6] for an output of height x width (diffusers' _get_add_time_ids):
// [orig_h, orig_w, crop_top, crop_left, target_h, target_w], or for refiners
// [orig_h, orig_w, crop_top, crop_left, aesthetic_score]; `negative` gives the unconditional row.
torch::Tensor sdxl_time_ids(const SDPipeline& pipe, const SizeConditioning& c, int height, int width, bool negative);

// SDXL prompt encoding: the weighted chunk encodings of every text encoder concatenated along
// the features ([1, 77 * chunks, 768 + 1280] for a base) and the pooled embeddings of the last one
// ([1, 1280]).
struct PromptEncoding {
  torch::Tensor embeds, pooled;
};
PromptEncoding encode_prompt(const SDPipeline& pipe, const std::string& prompt, int clip_skip = 0);

// A1111-style "parameters" text for image i of a generation.
std::string sd_generation_parameters(const SDPipeline& pipe, const SDOptions& opt, int index);

}  // namespace diffuse
