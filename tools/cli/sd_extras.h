#pragma once
// `diffuse generate` options for Stable Diffusion add-ons: LoRA (--lora, --lora-dir and
// <lora:name:weight> prompt tags), textual-inversion embeddings (--embedding, --embeddings-dir)
// and VAE tiling (--vae-tiling, --vae-tile-size).
#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "pipelines/sd_pipeline.h"

namespace diffuse::cli {

struct SdExtras {
  std::vector<std::string> loras, embeddings;
  std::string lora_dir, embeddings_dir;
  bool vae_tiling = false;
  int vae_tile_size = 0;
};

void add_sd_extra_options(CLI::App* cmd, SdExtras* e);
// Strips <lora:...> tags from the prompts, merges every LoRA, loads the embeddings and sets the
// VAE tiling of `pipe`. Prints one line per LoRA / embedding.
void apply_sd_extras(SDPipeline& pipe, SDOptions& o, const SdExtras& e);

}  // namespace diffuse::cli
