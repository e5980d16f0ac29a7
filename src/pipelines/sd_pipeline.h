#pragma once
// Stable Diffusion 1.x / 2.x / XL: a diffusers StableDiffusionPipeline or StableDiffusionXL*Pipeline
// folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL also
// text_encoder_2/ and tokenizer_2/) run over the samplers of diffusion/sampler.h. txt2img, img2img
// (strength), inpainting (9-channel inpainting UNets, or masked img2img for ordinary ones) and
// outpainting by padding, with diffusers' conventions for latents (VAE scaling_factor, initial
// latents scaled by the scheduler's init sigma) and for prompt embeddings (SDXL: penultimate
// hidden states of both encoders concatenated, pooled embeddings of the second, zeros for an
// empty negative prompt, micro-conditioning time ids), so that the same inputs give the same
// images.
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "diffusion/denoiser.h"
#include "diffusion/sampler.h"
#include "diffusion/schedule.h"
#include "models/autoencoder_kl.h"
#include "models/unet2d_condition.h"
#include "pipelines/ldm_convert.h"
#include "pipelines/mask.h"
#include "pipelines/text_encoder.h"
#include "pipelines/vae_tiling.h"

namespace diffuse {

// The components a load builds. A one-shot run can load them one at a time as it needs them
// (text encoders, then the UNet, then the VAE) and release each when done with it
// (release_components), so that its peak memory is that of its largest component rather than of
// all of them together. The pipeline's configuration (architecture, sizes) is known without them.
struct SDComponents {
  bool text_encoders = true, unet = true, vae = true;
};

struct SDPipeline {
  UNet2DConditionModel unet{nullptr};  // null when not loaded (SDComponents)
  AutoencoderKL vae{nullptr};          // null when not loaded
  // The UNet's and the VAE's configurations while they are not loaded (see unet_cfg / vae_cfg).
  UNet2DConditionConfig unet_config;
  AutoencoderKLConfig vae_config;
  VaeTiling vae_tiling;                 // tiled encode / decode for large images (vae_tiling.h)
  std::shared_ptr<SDTextEncoder> text;  // null when the pipeline was loaded without it
  // SDXL's text_encoder_2 (CLIPTextModelWithProjection, OpenCLIP bigG) with tokenizer_2; an SDXL
  // refiner has only this one (`text` null).
  std::shared_ptr<SDTextEncoder> text_2;
  // SDXL (model_index.json): an empty negative prompt conditions on zeros, not on "".
  bool force_zeros_for_empty_prompt = false;
  // SDXL refiner: time ids (original size, crop, aesthetic score) instead of (original size,
  // crop, target size).
  bool requires_aesthetics_score = false;
  NoiseScheduleConfig scheduler;
  std::string scheduler_class = "DDIMScheduler";  // the folder's scheduler (default sampler)
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat32;  // UNet / text encoder compute dtype (the VAE stays float32)
  // The UNet's and text encoders' Linear / Conv2d weights are kept int8 with per-output-channel
  // scales (nn/int8_weights.h), dequantised one layer at a time into `dtype` while they run.
  bool int8_weights = false;
  std::string source;  // folder or file it was loaded from

  // Loads a StableDiffusionPipeline / StableDiffusionInpaintPipeline folder. A missing
  // component or file throws diffuse::Error naming it. fp16 / bf16 UNet and text-encoder weights
  // computed in fp32 stay 16-bit in memory (upcast while they run; identical results). `with_text_encoder` false skips
  // text_encoder/ and tokenizer/ (prompt embeddings must then be given). `int8_weights`: see
  // the member (quantised from the weights as the files hold them).
  // `parts`: the components built (the rest stay null).
  static SDPipeline load(const std::string& dir, torch::Device device = torch::kCPU,
                         torch::Dtype dtype = torch::kFloat32, bool with_text_encoder = true, bool int8_weights = false,
                         const SDComponents& parts = {});
  // Whether `dir` holds a Stable Diffusion pipeline (model_index.json with a StableDiffusion* class).
  static bool is_sd_folder(const std::string& dir);

  // SDXL: a UNet with added text_time conditioning (pooled text embeddings and time ids).
  bool is_xl() const { return unet_cfg().text_time(); }
  // The UNet's / VAE's configuration: the module's when it is loaded, else the one kept.
  const UNet2DConditionConfig& unet_cfg() const { return unet ? unet->config() : unet_config; }
  const AutoencoderKLConfig& vae_cfg() const { return vae ? vae->config() : vae_config; }
  // "SD1", "SD2", "SDXL", "SDXL refiner" (plus " inpainting" for 9-channel UNets).
  std::string architecture() const;
  // The text encoders in diffusers' order (text_encoder, text_encoder_2; those loaded).
  std::vector<const SDTextEncoder*> text_encoders() const;
  bool has_text_encoder() const { return text || text_2; }
  // SDXL: features of the pooled text embeddings and the number of time ids the UNet takes.
  int64_t pooled_dim() const;
  int64_t num_time_ids() const { return requires_aesthetics_score ? 5 : 6; }

  int64_t vae_scale_factor() const { return vae_cfg().downsample_factor(); }
  int64_t latent_channels() const { return vae_cfg().latent_channels; }
  bool is_inpaint_model() const { return unet_cfg().in_channels == 9; }
  // Which components are loaded.
  SDComponents loaded() const { return {has_text_encoder(), static_cast<bool>(unet), static_cast<bool>(vae)}; }
  // Default image size: the UNet's sample_size times the VAE factor.
  int default_size() const;

  // Images [B, 3, H, W] in [-1, 1] -> the posterior of scaled latents (mean, std times scaling_factor).
  LatentDistribution encode(const torch::Tensor& images) const;
  // Scaled latents -> images [B, 3, H, W] in [-1, 1] (not clamped), float32.
  torch::Tensor decode(const torch::Tensor& latents) const;
  // The UNet as a conditional denoiser: conditioning "encoder_hidden_states" [B, L, C],
  // for 9-channel inpainting UNets "c_concat" [B, 5, h, w] (mask, masked-image latents)
  // concatenated to the scaled input as diffusers does, and for SDXL "text_embeds" [B, P] and
  // "time_ids" [B, 5 or 6]. `quantize` feeds integer timesteps;
  // `clamp` applies the scheduler's clip_sample (off when the sampler clamps, see SamplingPlan).
  CondDenoiser denoiser(bool quantize = false, bool clamp = true) const;
};

// A Stable Diffusion model from a pipeline folder or a single-file .safetensors checkpoint
// (original LDM / A1111 names, see ldm_convert.h). `prediction` ("" = the model's own, else
// epsilon | v_prediction) overrides the scheduler's prediction type. .ckpt files are refused.
// A single-file .safetensors checkpoint (see ldm_convert.h). fp16 / bf16 weights computed in
// fp32 stay 16-bit in memory and are upcast block by block while they run (identical results);
// for bf16 compute they are converted once. The scheduler is diffusers' SD DDIM configuration (epsilon).
// `int8_weights` (SDPipeline::int8_weights): quantised part by part while loading.
SDPipeline load_single_file(const std::string& path, torch::Device device = torch::kCPU,
                            torch::Dtype dtype = torch::kFloat32, bool with_text_encoder = true,
                            const LdmConfigOverrides& overrides = {}, bool int8_weights = false,
                            const SDComponents& parts = {});
// `config_dir` (single files only, "" = none): a diffusers pipeline folder whose unet/, vae/,
// text_encoder/ config.json and scheduler/ config replace what the tensors cannot tell (diffusers'
// from_single_file(config=...)); its weights are not read.
SDPipeline load_sd(const std::string& path, torch::Device device = torch::kCPU, torch::Dtype dtype = torch::kFloat32,
                   bool with_text_encoder = true, const std::string& prediction = "",
                   const std::string& config_dir = "", bool int8_weights = false, const SDComponents& parts = {});
// Moves the components of `from` that `pipe` lacks into it (both loaded from the same model with
// other SDComponents), and drops those `keep` does not name; the configuration stays.
void merge_components(SDPipeline& pipe, SDPipeline&& from);
void release_components(SDPipeline& pipe, const SDComponents& keep);

// SDXL micro-conditioning (diffusers' original_size, crops_coords_top_left, target_size,
// aesthetic_score and their negative_* counterparts), as (height, width) and (top, left) pairs.
// Unset sizes are the output size; unset crops (0, 0).
struct SizeConditioning {
  std::optional<std::array<int, 2>> original_size, crop_coords, target_size;
  std::optional<std::array<int, 2>> negative_original_size, negative_crop_coords, negative_target_size;
  double aesthetic_score = 6.0, negative_aesthetic_score = 2.5;  // refiners
};

// Replaces the pipeline's VAE with the weights of `path` (--vae): a diffusers AutoencoderKL folder,
// or a .safetensors file in diffusers or LDM names (with or without first_stage_model.), such as
// the fp16-fixed SDXL VAE. The architecture and scaling factor stay the model's; the VAE runs in
// float32. Missing, unused or mis-shaped tensors raise a diffuse::Error naming the file.
void replace_vae(SDPipeline& pipe, const std::string& path);

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
