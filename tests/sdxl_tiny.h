#pragma once
// Variants of the tiny SDXL fixture (sdxl_pipeline_tiny) for tests:
//  - tiny_sdxl_folder: the pipeline with tokenizers its vocab-1000 text encoders can take, so
//    prompts run end to end;
//  - tiny_sdxl_refiner: an SDXL refiner cut from it (StableDiffusionXLImg2ImgPipeline without
//    text_encoder, requires_aesthetics_score): the UNet cross-attends to the second encoder's 32
//    features only (attn2 key / value weights cut to them) and its added embedding takes 32 pooled
//    features plus 5 time ids of 8 (72 inputs, the first 72 columns of the base's).
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/atomic_file.h"
#include "core/safetensors.h"
#include "fixtures.h"
#include "sd_tiny_text.h"

namespace diffuse::test {

inline std::string tiny_sdxl_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  const std::string src = fixture("sdxl_pipeline_tiny");
  fs::copy_file(src + "/model_index.json", dir + "/model_index.json", fs::copy_options::overwrite_existing);
  for (const char* c : {"scheduler", "unet", "vae", "text_encoder", "text_encoder_2"})
    if (!fs::exists(dir + "/" + c)) fs::create_directory_symlink(src + "/" + c, dir + "/" + c);
  write_tiny_tokenizer(dir + "/tokenizer");
  write_tiny_tokenizer(dir + "/tokenizer_2");
  fs::copy_file(src + "/tokenizer_2/special_tokens_map.json", dir + "/tokenizer_2/special_tokens_map.json",
                fs::copy_options::overwrite_existing);  // pad '!'
  fs::copy_file(src + "/tokenizer_2/tokenizer_config.json", dir + "/tokenizer_2/tokenizer_config.json",
                fs::copy_options::overwrite_existing);
  return dir;
}

inline std::string tiny_sdxl_refiner(const std::string& dir) {
  namespace fs = std::filesystem;
  using nlohmann::json;
  tiny_sdxl_folder(dir);
  fs::remove(dir + "/text_encoder");
  fs::remove_all(dir + "/tokenizer");
  auto index = json::parse(read_file(dir + "/model_index.json"));
  index["_class_name"] = "StableDiffusionXLImg2ImgPipeline";
  index["text_encoder"] = {nullptr, nullptr};
  index["tokenizer"] = {nullptr, nullptr};
  index["requires_aesthetics_score"] = true;
  index["force_zeros_for_empty_prompt"] = false;
  write_file_atomically(dir + "/model_index.json", index.dump(2));
  const std::string src = fixture("sdxl_pipeline_tiny/unet");
  fs::remove(dir + "/unet");
  fs::create_directories(dir + "/unet");
  auto cfg = json::parse(read_file(src + "/config.json"));
  cfg["cross_attention_dim"] = 32;
  cfg["projection_class_embeddings_input_dim"] = 72;
  write_file_atomically(dir + "/unet/config.json", cfg.dump(2));
  auto sd = safetensors::load(src + "/diffusion_pytorch_model.safetensors");
  auto ends = [](const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  for (auto& [k, v] : sd) {
    if (ends(k, "attn2.to_k.weight") || ends(k, "attn2.to_v.weight")) v = v.slice(1, 32, 64).contiguous();
    if (k == "add_embedding.linear_1.weight") v = v.slice(1, 0, 72).contiguous();
  }
  safetensors::save(dir + "/unet/diffusion_pytorch_model.safetensors", sd, {{"format", "pt"}});
  return dir;
}

// A 9-channel inpainting variant (StableDiffusionXLInpaintPipeline): conv_in takes [latents, mask,
// masked-image latents] with zero weights on the 5 added channels, so it denoises exactly as the
// base UNet does.
inline std::string tiny_sdxl_inpaint(const std::string& dir) {
  namespace fs = std::filesystem;
  using nlohmann::json;
  tiny_sdxl_folder(dir);
  auto index = json::parse(read_file(dir + "/model_index.json"));
  index["_class_name"] = "StableDiffusionXLInpaintPipeline";
  write_file_atomically(dir + "/model_index.json", index.dump(2));
  const std::string src = fixture("sdxl_pipeline_tiny/unet");
  fs::remove(dir + "/unet");
  fs::create_directories(dir + "/unet");
  auto cfg = json::parse(read_file(src + "/config.json"));
  cfg["in_channels"] = 9;
  write_file_atomically(dir + "/unet/config.json", cfg.dump(2));
  auto sd = safetensors::load(src + "/diffusion_pytorch_model.safetensors");
  auto& w = sd.at("conv_in.weight");
  w = torch::cat({w, torch::zeros({w.size(0), 5, w.size(2), w.size(3)})}, 1);
  safetensors::save(dir + "/unet/diffusion_pytorch_model.safetensors", sd, {{"format", "pt"}});
  return dir;
}

}  // namespace diffuse::test
