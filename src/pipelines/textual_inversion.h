#pragma once
// Textual-inversion embeddings from .safetensors: A1111 files (tensor `emb_params` [n, hidden],
// triggered by the file name) and diffusers files ({"<token>": [hidden] or [n, hidden]}). The
// trigger becomes an added token of the tokenizer (matched in the prompt exactly as written, as
// transformers' added tokens are) that encodes to n new rows of the text encoder's token
// embedding table.
#include <string>
#include <vector>

namespace diffuse {

struct SDTextEncoder;

// Loads one embedding file; `trigger` "" = the file name without extension for `emb_params`
// files, the tensor's name for diffusers files. Returns the trigger. Throws diffuse::Error for a
// file with another layout, a width that is not the text encoder's, or a trigger already in use.
std::string load_embedding(SDTextEncoder& te, const std::string& path, const std::string& trigger = "");

// Loads every DIR/*.safetensors whose file name occurs in one of `texts` (triggered by the file
// name, as A1111's embeddings folder); returns the triggers loaded.
std::vector<std::string> load_embeddings_for(SDTextEncoder& te, const std::string& dir,
                                             const std::vector<std::string>& texts);

}  // namespace diffuse
