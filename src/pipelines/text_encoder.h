#pragma once
// Prompt text -> embeddings for Stable Diffusion: the CLIP tokenizer and text encoder, as
// diffusers' encode_prompt uses them (also clip_skip, and 16-bit weights upcast while encoding).
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
  // ids [B, T] -> [B, T, hidden]: last_hidden_state, or with clip_skip > 0 the hidden state
  // clip_skip layers before the last, through final_layer_norm (diffusers' clip_skip).
  torch::Tensor encode_ids(const torch::Tensor& ids, int clip_skip = 0) const;
  // One prompt, padded / truncated to 77 tokens -> [1, 77, hidden].
  torch::Tensor encode(const std::string& prompt, int clip_skip = 0) const;
};

}  // namespace diffuse
