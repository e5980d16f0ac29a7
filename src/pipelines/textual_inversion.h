#pragma once
// Textual-inversion embeddings from .safetensors: A1111 files (tensor `emb_params` [n, hidden],
// triggered by the file name) and diffusers files ({"<token>": [hidden] or [n, hidden]}). The
// trigger becomes an added token of the tokenizer (matched in the prompt exactly as written, as
// transformers' added tokens are) that encodes to n new rows of the text encoder's token
// embedding table. SDXL files hold `clip_l` [n, 768] and `clip_g` [n, 1280]: one table per text
// encoder, the trigger added to both tokenizers.
#include <string>
#include <vector>

namespace diffuse {

struct SDTextEncoder;
struct SDPipeline;

// Loads one embedding file; `trigger` "" = the file name without extension for `emb_params`
// files, the tensor's name for diffusers files. Returns the trigger. Throws diffuse::Error for a
// file with another layout, a width that is not the text encoder's, or a trigger already in use.
std::string load_embedding(SDTextEncoder& te, const std::string& path, const std::string& trigger = "");

// Loads every DIR/*.safetensors whose file name occurs in one of `texts` (triggered by the file
// name, as A1111's embeddings folder); returns the triggers loaded.
std::vector<std::string> load_embeddings_for(SDTextEncoder& te, const std::string& dir,
                                             const std::vector<std::string>& texts);

// The same for a pipeline: SD 1.x / 2.x files go to its text encoder, SDXL files (clip_l + clip_g)
// to both of an SDXL pipeline's (a refiner takes clip_g only). Throws diffuse::Error for a file of
// the other family or without a text encoder.
std::string load_embedding(SDPipeline& pipe, const std::string& path, const std::string& trigger = "");
std::vector<std::string> load_embeddings_for(SDPipeline& pipe, const std::string& dir,
                                             const std::vector<std::string>& texts);

}  // namespace diffuse
