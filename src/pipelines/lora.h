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

#include "models/autoencoder_kl.h"
#include "models/unet2d_condition.h"

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

// The weight a LoRA key names: a parameter of the UNet, or of the text encoder when `text`.
struct LoraKeyTarget {
  std::string weight;  // e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight
  bool text = false;
};
// Every LoRA base name (key without .lora_down.weight / .lora_up.weight / .alpha) the loader
// accepts for a model with these weight names -> the weight it changes: kohya's diffusers-named
// and LDM-named UNet keys, PEFT's unet.* / text_encoder.*, kohya's lora_te_*. Names only, so that
// full-size layouts can be checked without their weights.
std::map<std::string, LoraKeyTarget> lora_key_table(const UNet2DConditionConfig& unet_config,
                                                    const std::vector<std::string>& unet_weights,
                                                    const AutoencoderKLConfig& vae_config,
                                                    const std::vector<std::string>& text_weights);

// Merges the LoRA tensors `lora` (from `source`) into the pipeline's UNet and text encoder.
LoraMergeReport apply_lora(SDPipeline& pipe, const std::map<std::string, torch::Tensor>& lora, double weight,
                           const std::string& source);
// Loads a .safetensors LoRA file and merges it.
LoraMergeReport apply_lora_file(SDPipeline& pipe, const LoraSpec& spec);

}  // namespace diffuse
