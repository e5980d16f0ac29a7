#pragma once
// AUTOMATIC1111-style prompts: attention weights `(word)` x1.1, `((word))` x1.21, `(word:1.3)`,
// `[word]` /1.1, escapes `\(` `\)` `\[` `\]` `\\`, `BREAK`, and unbalanced brackets as A1111
// treats them (an unclosed bracket weights everything after it; a stray closing bracket is
// text). Prompts of any length are encoded in 75-token chunks, each wrapped in start / end
// tokens and padded to 77, run through the text encoder separately, weighted per token with the
// chunk's mean restored (A1111's "Original" emphasis), and concatenated along the sequence axis.
// A prompt without weights and at most 75 tokens encodes exactly as diffusers' encode_prompt.
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "models/clip_tokenizer.h"

namespace diffuse {

struct SDTextEncoder;

struct PromptFragment {
  std::string text;
  double weight = 1.0;  // kBreakWeight marks a BREAK
  bool is_break() const;
};
constexpr double kBreakWeight = -1.0;

// A1111's parse_prompt_attention: fragments with their weights, runs of equal weight merged;
// an empty prompt gives one empty fragment. A weight that is no number (`(a:1.2.3)`) throws
// diffuse::Error naming it.
std::vector<PromptFragment> parse_prompt_attention(const std::string& text);

// One 77-token text-encoder window: ids (start, up to 75 tokens, end, padding) and per-token weights.
struct PromptChunk {
  std::vector<int64_t> ids;
  std::vector<double> weights;
  bool weighted() const;
};

// The chunks of a prompt (A1111's tokenize_line): fragments tokenized separately, 75 tokens a
// chunk, BREAK starts a new chunk, and when a chunk fills up the words after its last comma
// (if it lies within the last `comma_backtrack` tokens) move to the next chunk. Layout of a
// chunk as transformers pads: start, tokens, end, pad... (`chunk_len` = 77 in all).
std::vector<PromptChunk> prompt_chunks(const CLIPTokenizer& tok, const std::string& prompt, int64_t chunk_len = 77,
                                       int comma_backtrack = 20);

// The weighted chunk encoding [1, 77 * chunks, hidden] (clip_skip as SDTextEncoder::encode_ids).
// `min_chunks` appends chunks of the empty prompt (A1111 pads the shorter of prompt and negative).
// `pooled` (optional) receives the pooled output [1, P] of the first chunk, unweighted (A1111's
// SDXL conditioning; diffusers' pooled_prompt_embeds for prompts of up to 75 tokens).
torch::Tensor encode_weighted_prompt(const SDTextEncoder& te, const std::string& prompt, int clip_skip = 0,
                                     int64_t min_chunks = 1, torch::Tensor* pooled = nullptr);

// Makes two prompt embeddings [B, L, C] the same length by appending empty-prompt chunks
// (encoded with `te`) to the shorter one when both lengths are multiples of 77; otherwise
// (or without a text encoder) they are left as they are.
void match_prompt_lengths(const SDTextEncoder* te, torch::Tensor& a, torch::Tensor& b, int clip_skip = 0);
// The same for embeddings that concatenate the features of several encoders (SDXL: CLIP-L and
// OpenCLIP bigG); the empty chunk is the concatenation of each encoder's. Empty `encoders`: as
// without a text encoder.
void match_prompt_lengths(const std::vector<const SDTextEncoder*>& encoders, torch::Tensor& a, torch::Tensor& b,
                          int clip_skip = 0);

}  // namespace diffuse
