#pragma once
// Prompt text -> embeddings for Stable Diffusion: the CLIP tokenizer and text encoder, as
// diffusers' encode_prompt uses them (also clip_skip, and 16-bit weights upcast while encoding).
// SDXL's encoders take hidden states differently (`penultimate`) and give pooled embeddings.
#include <torch/torch.h>

#include <optional>
#include <string>

#include "models/clip_text.h"
#include "models/clip_tokenizer.h"

namespace diffuse {

struct SDTextEncoder {
  CLIPTokenizer tokenizer;
  CLIPTextModel model{nullptr};
  // Set when the weights are kept 16-bit and computed in this dtype (upcast while encoding).
  std::optional<torch::Dtype> compute_dtype;
  // SDXL (StableDiffusionXLPipeline.encode_prompt): the hidden state before the last layer,
  // without final_layer_norm, clip_skip layers further back (hidden_states[-(clip_skip + 2)]).
  bool penultimate = false;
  // ids [B, T] -> [B, T, hidden]: last_hidden_state, or with clip_skip > 0 the hidden state
  // clip_skip layers before the last, through final_layer_norm (diffusers' clip_skip); see
  // `penultimate`. `pooled` (optional) receives [B, P]: text_embeds of a model with a projection
  // (SDXL's pooled_prompt_embeds), else pooler_output; float32 on the CPU.
  torch::Tensor encode_ids(const torch::Tensor& ids, int clip_skip = 0, torch::Tensor* pooled = nullptr) const;
  // One prompt, padded / truncated to 77 tokens -> [1, 77, hidden].
  torch::Tensor encode(const std::string& prompt, int clip_skip = 0) const;
};

}  // namespace diffuse
