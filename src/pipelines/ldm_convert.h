#pragma once
// Single-file Stable Diffusion checkpoints in the original LDM / A1111 naming
// (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.text_model.* or
// OpenCLIP's cond_stage_model.model.*) and SDXL's SGM naming (conditioner.embedders.N.transformer.
// text_model.* for CLIP ViT-L, conditioner.embedders.N.model.* for OpenCLIP ViT-bigG, label_emb.0.*
// for the added conditioning) <-> diffusers state dicts for UNet2DConditionModel, AutoencoderKL
// and CLIPTextModel(WithProjection). The architecture is read from the tensors: in_channels
// (9 = inpainting), block widths and layers per block, which levels have attention and how deep
// their transformers are, the context width (768 = SD 1.x with CLIP ViT-L, 1024 = SD 2.x with
// OpenCLIP ViT-H, 2048 = SDXL base, 1280 = SDXL refiner), the added-embedding width (time ids:
// 6 base, 5 refiner), the VAE widths and the text encoders' sizes. What tensors cannot tell
// (group-norm groups, attention heads) follows the SD conventions (32 groups; SD1 8 heads, SD2 and
// SDXL 64-wide heads) unless a config override is given. OpenCLIP's fused in_proj is split into
// q/k/v and its text_projection (x @ P) transposed into a Linear weight.
#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "models/autoencoder_kl.h"
#include "models/clip_text.h"
#include "models/unet2d_condition.h"

namespace diffuse {

using TensorMap = std::map<std::string, torch::Tensor>;

struct LdmCheckpoint {
  std::string architecture;  // "SD1", "SD2", "SDXL", "SDXL refiner", plus " inpainting" for 9-channel UNets
  bool openclip = false;     // SD 2.x text encoder (gelu, penultimate layer)
  bool xl = false;           // SDXL (SGM naming, text_time UNet)
  UNet2DConditionConfig unet_config;
  AutoencoderKLConfig vae_config;
  CLIPTextConfig text_config;         // SDXL: CLIP ViT-L (empty `text` for a refiner)
  CLIPTextConfig text_2_config;       // SDXL: OpenCLIP ViT-bigG with projection
  TensorMap unet, vae, text, text_2;  // diffusers / transformers names, stored dtypes
  std::vector<std::string> ignored;   // known tensors that are not weights (noise schedule, position_ids, ...)
};

// Config keys (diffusers JSON) applied over the detected configs, e.g. {"norm_num_groups": 8}.
struct LdmConfigOverrides {
  nlohmann::json unet = nlohmann::json::object(), vae = nlohmann::json::object(), text = nlohmann::json::object();
  nlohmann::json text_2 = nlohmann::json::object();  // SDXL's second text encoder
};

// Converts every tensor of an LDM checkpoint. Unknown keys, missing components and shapes the
// converted model would not accept raise one diffuse::Error listing them (`source` names the file).
LdmCheckpoint convert_ldm(const TensorMap& tensors, const std::string& source,
                          const LdmConfigOverrides& overrides = {});

// A VAE file in LDM names without the first_stage_model. prefix (encoder.down.0.block.0..., the
// form of stand-alone VAE files such as sdxl_vae.safetensors) -> diffusers names for `config`.
// Unknown keys raise a diffuse::Error listing them.
TensorMap convert_ldm_vae(const TensorMap& tensors, const AutoencoderKLConfig& config, const std::string& source);

// The inverse: diffusers state dicts (SD1 layout) -> LDM names, for writing A1111-style checkpoints.
TensorMap to_ldm(const UNet2DConditionConfig& unet_config, const TensorMap& unet, const AutoencoderKLConfig& vae_config,
                 const TensorMap& vae, const TensorMap& text);

}  // namespace diffuse
