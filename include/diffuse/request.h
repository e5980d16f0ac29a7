#pragma once
// One generation request: every option diffuse has, for every kind of model, as plain fields.
// The CLI maps its flags to these fields, the server's native API accepts their JSON, and a
// generated PNG carries them as A1111 "parameters" text. Unset optional fields take the model's
// recommended settings (generation_config.json beside its weights), then the library defaults.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "diffuse/error.h"

namespace diffuse {

struct LoraWeight {
  std::string name;  // LoRA file name without .safetensors, looked up in the model's LoRA folder
  double weight = 1.0;
};

struct GenerationRequest {
  std::string model;  // server: the model's name ("" = the current one); ignored by Model::generate

  // What to draw.
  std::string prompt;           // Stable Diffusion; for class-conditional models, a class name
  std::string negative_prompt;  // Stable Diffusion
  std::string class_label;      // "class" in JSON: name or index ("" = one row per class)

  // How to sample.
  std::string sampler;                      // "" = the model's recommended / default sampler
  std::string schedule;                     // "" = the sampler's default sigma schedule
  std::vector<double> sigmas;               // custom descending sigmas (override schedule and steps)
  std::optional<int> steps;                 // default 20
  std::optional<double> guidance;           // CFG scale (1 = off); SD default 7.5, others 1
  double guidance_rescale = 0.0;            // CFG-rescale phi
  std::array<double, 2> guidance_interval;  // guide only where lo < sigma <= hi
  std::string guide_model;                  // autoguidance model (class / unconditional models)
  std::optional<bool> guide_unconditional;  // run the guide on its null class
  int64_t seed = -1;                        // image i uses seed + i; -1 = random
  std::string rng = "cpu";                  // cpu (torch CPU generator) or philox (A1111 GPU-style)
  std::optional<double> eta;                // ancestral / DDIM noise (default: the sampler's)
  double s_noise = 1.0;

  // Size and count.
  int width = 0, height = 0;      // 0 = the model's native size
  std::optional<int> n;           // images: SD default 1, class / unconditional models 8
  std::optional<int> batch_size;  // images per forward pass: SD default 1, others 64

  // Editing: encoded PNG / JPEG bytes. Every kind of model; the init image's size is the output
  // size unless width and height are given.
  std::string init_image;
  double strength = 0.8;   // img2img: fraction of the schedule re-run (0 = the input, 1 = ignore it)
  std::string mask;        // white = repaint; grey levels blend (a soft mask)
  double mask_blur = 0.0;  // feathers the mask edge (Gaussian sigma in pixels)
  bool mask_invert = false;
  bool inpaint_only_masked = false;  // Stable Diffusion
  int inpaint_only_masked_padding = 32;
  std::array<int, 4> outpaint{0, 0, 0, 0};  // pixels added left, top, right, bottom
  // Inpainting method of class-conditional and unconditional models: "repaint" (the default;
  // Lugmayr et al. 2022) or "blend" (faster: each step's x0 keeps the known region). Stable
  // Diffusion checkpoints always blend (or use their inpainting UNet).
  std::string inpaint_method;
  int jump_length = 10;    // RePaint: steps per resampling jump
  int jump_n_sample = 10;  // RePaint: passes per jump (1 = no resampling)
  // Class of init_image (class-conditional models): DDIM inversion under it to the noise level
  // strength picks, then sampling back under `class` (dual diffusion implicit bridges).
  std::string invert_from;

  // Stable Diffusion add-ons.
  std::vector<LoraWeight> loras;  // also <lora:name:weight> tags in the prompt
  int clip_skip = 0;
  // Compute dtype: fp32, bf16, fp16 (Stable Diffusion only) or auto, the model's LoadOptions::dtype
  // (bf16 on a CPU with native bf16, AVX-512 BF16 or AMX, else fp32; see resolve_dtype). Stable
  // Diffusion computes its UNet and text encoder in it; UNet2DModel and DiT pipelines run their
  // network under bf16 autocast. Results carry the resolved dtype.
  std::string dtype = "auto";
  // How the UNet's and text encoders' weights are kept: "" = as the file stores them (16-bit
  // files stay 16-bit when computed in fp32), "int8" = Linear / Conv2d weights in 8 bits with
  // per-output-channel scales, dequantised one layer at a time into `dtype` (about a quarter
  // of the fp32 memory; biases and norms keep their dtype).
  std::string weights;

  // SDXL micro-conditioning (diffusers' original_size, crops_coords_top_left, target_size) as
  // {height, width} and {top, left}; {0, 0} sizes = the output size. The negative_* sizes
  // condition the unconditional branch (as diffusers, only when both sizes are given; crop
  // default {0, 0}). Refiners: aesthetic_score (default 6) and negative_aesthetic_score (2.5).
  std::array<int, 2> original_size{0, 0}, crop_coords{0, 0}, target_size{0, 0};
  std::array<int, 2> negative_original_size{0, 0}, negative_crop_coords{0, 0}, negative_target_size{0, 0};
  std::optional<double> aesthetic_score, negative_aesthetic_score;
  // SDXL base -> refiner handoff (diffusers' denoising_end / denoising_start, A1111's refiner):
  // the refiner model (path, or a name on the server) runs the steps after the fraction
  // refiner_switch of the schedule, from the base's noisy latents.
  std::string refiner;
  double refiner_switch = 0.8;
  bool vae_tiling = false;
  int vae_tile_size = 0;

  std::string output_format = "png";  // png or jpeg (encode_image)

  GenerationRequest();

  // Problems that need no model: ranges, names of samplers / schedules, formats. Empty when valid.
  std::vector<FieldError> validate() const;
  // Throws RequestError when validate() finds problems.
  void check() const;

  // JSON with the field names above ("class" for class_label; images as base64 or data URLs).
  // from_json rejects unknown fields and wrong types with a RequestError naming the field.
  std::string to_json() const;
  static GenerationRequest from_json(const std::string& json);

  // A1111 "parameters" text (prompt, "Negative prompt: ...", "Steps: 20, Sampler: ..., Seed: 1, ...").
  std::string to_infotext() const;
  // Reads A1111, stable-diffusion.cpp and diffuse infotexts; unknown keys are ignored.
  static GenerationRequest from_infotext(const std::string& text);

  bool operator==(const GenerationRequest& o) const;
  bool operator!=(const GenerationRequest& o) const { return !(*this == o); }
};

// Limits a request must stay within, checked before anything is allocated. The defaults are the
// server's (`diffuse serve --max-side ...`); Model::validate applies sanity(), which only stops
// absurd requests.
struct RequestLimits {
  int max_side = 2048;  // width and height
  int max_steps = 1000;
  int max_n = 64;
  int max_batch = 64;
  int64_t max_pixels = 64LL * 1024 * 1024;  // n x width x height
  size_t max_prompt_bytes = 16 * 1024;
  static RequestLimits sanity() { return {16384, 100000, 1000000, 4096, int64_t(1) << 36, size_t(1) << 20}; }
};
std::vector<FieldError> check_limits(const GenerationRequest& r, const RequestLimits& limits);

}  // namespace diffuse
