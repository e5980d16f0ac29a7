#pragma once
// `diffuse generate` for Stable Diffusion models (pipeline folders and single-file checkpoints).
#include <CLI/CLI.hpp>
#include <string>

#include "pipelines/pixel_pipeline.h"
#include "sd_extras.h"

namespace diffuse::cli {

// Where generated images go: FILE.png (grid), DIR/ (one PNG each) or FILE.safetensors (raw tensors).
enum class OutKind { Grid, Dir, Raw };
// Validates --out before any work (throws diffuse::Error).
OutKind output_kind(const std::string& out);

struct SdArgs {
  std::string prompt, negative_prompt, image, mask, latents, prompt_embeds, outpaint, dtype = "fp32", prediction,
                                                                                      model_config;
  int width = 0, height = 0, clip_skip = 0, only_masked_padding = 32;
  double strength = 0.8, mask_blur = 0;
  bool only_masked = false;
  bool timings = false;  // --timings: a JSON line of stage times on stderr
  SdExtras extras;       // LoRA, embeddings, VAE tiling (sd_extras.h)
  // options shared with pixel models whose SD default differs, set when given on the command line
  const CLI::Option *guidance = nullptr, *sampler = nullptr, *batch = nullptr, *num = nullptr;
};

// Registers the SD-only options of `generate`.
void add_sd_options(CLI::App* cmd, SdArgs* a);
// Whether --model names a Stable Diffusion model.
bool is_sd_model(const std::string& path);
// Runs a Stable Diffusion generation with the shared options in `g`.
void run_sd_generate(const std::string& model, const std::string& out, const std::string& device, int nrow,
                     const GenerateOptions& g, const SdArgs& a);

}  // namespace diffuse::cli
