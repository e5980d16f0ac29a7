#pragma once
// Stable Diffusion 1.x / 2.x / XL: a diffusers StableDiffusionPipeline or StableDiffusionXL*Pipeline
// folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL also
// text_encoder_2/ and tokenizer_2/) run over the samplers of diffusion/sampler.h. txt2img, img2img
// (strength), inpainting (9-channel inpainting UNets, or masked img2img for ordinary ones) and
// outpainting by padding, with diffusers' conventions for latents (VAE scaling_factor, initial
// latents scaled by the scheduler's init sigma) and for prompt embeddings (SDXL: penultimate
// hidden states of both encoders concatenated, pooled embeddings of the second, zeros for an
// empty negative prompt, micro-conditioning time ids), so that the same inputs give the same
// images. Loading is here (sd_pipeline.cpp); generation in sd_generate.h / sd_generate.cpp.
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/denoiser.h"
#include "diffusion/sampler.h"
#include "diffusion/schedule.h"
#include "models/autoencoder_kl.h"
#include "models/unet2d_condition.h"
#include "pipelines/ldm_convert.h"
#include "pipelines/mask.h"
#include "pipelines/sd_generate.h"  // generate(), SDOptions, SDResult
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

// Replaces the pipeline's VAE with the weights of `path` (--vae): a diffusers AutoencoderKL folder,
// or a .safetensors file in diffusers or LDM names (with or without first_stage_model.), such as
// the fp16-fixed SDXL VAE. The architecture and scaling factor stay the model's; the VAE runs in
// float32. Missing, unused or mis-shaped tensors raise a diffuse::Error naming the file.
void replace_vae(SDPipeline& pipe, const std::string& path);

}  // namespace diffuse
