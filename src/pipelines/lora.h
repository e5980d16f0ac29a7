#pragma once
// LoRA for Stable Diffusion, merged into the weights: W += weight * (alpha / rank) * up @ down
// (flattened for conv layers, 3x3 down-projections included). Key formats:
//  - kohya / A1111: lora_unet_<diffusers module path with '_'>.lora_down.weight / .lora_up.weight /
//    .alpha, lora_te_text_model_encoder_layers_0_self_attn_q_proj...; kohya's LDM-named UNet keys
//    (lora_unet_input_blocks_1_1_proj_in...) through the diffusers <-> LDM name table of ldm_convert;
//  - diffusers / PEFT: unet.<module>.lora_A.weight / lora_B.weight (optional .alpha),
//    text_encoder.<module>.lora_A.weight / lora_B.weight;
//  - SDXL: kohya's lora_unet_* (LDM / SGM names such as lora_unet_input_blocks_4_1_...), lora_te1_*
//    (CLIP ViT-L) and lora_te2_* (OpenCLIP bigG); diffusers' text_encoder_2.*.
// A file whose keys do not all name layers of the model (a LoRA for another architecture, or a
// LoRA variant this loader does not know) is refused with a diffuse::Error listing them, before
// any weight changes.
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace diffuse {

struct SDPipeline;

struct LoraSpec {
  std::string path;
  double weight = 1.0;
};

// "FILE[:weight]" (the weight after the last ':' when it parses as a number).
LoraSpec parse_lora_arg(const std::string& arg);
// Removes A1111 <lora:name:weight> / <lora:name> tags from `prompt` and returns them with the
// path resolved as DIR/name.safetensors (an error names a missing file or an empty `lora_dir`).
std::vector<LoraSpec> extract_prompt_loras(std::string& prompt, const std::string& lora_dir);

struct LoraMergeReport {
  int unet_layers = 0, text_layers = 0;
};

// Merges the LoRA tensors `lora` (from `source`) into the pipeline's UNet and text encoder.
LoraMergeReport apply_lora(SDPipeline& pipe, const std::map<std::string, torch::Tensor>& lora, double weight,
                           const std::string& source);
// Loads a .safetensors LoRA file and merges it.
LoraMergeReport apply_lora_file(SDPipeline& pipe, const LoraSpec& spec);

}  // namespace diffuse
