#include "sd_extras.h"

#include <cstdio>

#include "core/error.h"
#include "pipelines/lora.h"
#include "pipelines/textual_inversion.h"

namespace diffuse::cli {

void add_sd_extra_options(CLI::App* cmd, SdExtras* e) {
  cmd->add_option("--lora", e->loras, "Stable Diffusion: LoRA file FILE.safetensors[:weight] (repeatable)");
  cmd->add_option("--lora-dir", e->lora_dir, "Folder of NAME.safetensors for <lora:NAME:weight> in the prompt");
  cmd->add_option("--embedding", e->embeddings,
                  "Textual-inversion embedding .safetensors (repeatable; trigger: file name or tensor name)");
  cmd->add_option("--embeddings-dir", e->embeddings_dir,
                  "Folder of embeddings loaded when their file name occurs in the prompts");
  cmd->add_flag("--vae-tiling", e->vae_tiling, "Encode / decode with the VAE in overlapping tiles (large images)");
  cmd->add_option("--vae-tile-size", e->vae_tile_size, "VAE tile size in pixels (default: the VAE's sample size, 512)");
}

void apply_sd_extras(SDPipeline& pipe, SDOptions& o, const SdExtras& e) {
  std::vector<LoraSpec> specs;
  for (const auto& l : e.loras) specs.push_back(parse_lora_arg(l));
  for (std::string* p : {&o.prompt, &o.negative_prompt})
    for (auto& s : extract_prompt_loras(*p, e.lora_dir)) specs.push_back(s);
  for (const auto& s : specs) {
    const auto rep = apply_lora_file(pipe, s);
    std::printf("lora %s (weight %g): %d UNet and %d text-encoder layers\n", s.path.c_str(), s.weight, rep.unet_layers,
                rep.text_layers);
  }
  if (!e.embeddings.empty() || !e.embeddings_dir.empty()) {
    if (!pipe.text) throw Error("--embedding / --embeddings-dir need the text encoder (drop --prompt-embeds)");
    for (const auto& f : e.embeddings) std::printf("embedding %s\n", load_embedding(*pipe.text, f).c_str());
    if (!e.embeddings_dir.empty())
      for (const auto& t : load_embeddings_for(*pipe.text, e.embeddings_dir, {o.prompt, o.negative_prompt}))
        std::printf("embedding %s\n", t.c_str());
  }
  if (e.vae_tile_size < 0) throw Error("--vae-tile-size must be positive");
  pipe.vae_tiling.enabled = e.vae_tiling || e.vae_tile_size > 0;
  pipe.vae_tiling.tile = e.vae_tile_size;
}

}  // namespace diffuse::cli
